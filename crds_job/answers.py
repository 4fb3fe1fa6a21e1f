"""crds's answers for datasets, kept in the cache: a job that meets the same datasets again skips crds.

Asking crds costs a selective warm most of its time before the command runs
(a child process that imports crds and asdf with every installed extension,
then reads the headers: 1.5 to 2.5 s), where the rest of a warm on a warm cache
takes a few hundred ms. A retried job, a re-run on a persistent cache, or an
array job that calibrates the same exposure again asks the same question of
the same rules: the answer is kept beside the cache's files and reused.

The answer is reused only for the same question, by a key over everything
that can change it: the context and its rules' files, by name and by the sha1
the bucket publishes (each is verified against it before use),
each dataset's name and what crds reads of it (an ASDF file's tree, up to its
first block; any other file by its identity: device, inode, size and times),
the code that reads and chooses (crds, asdf, astropy and the datamodels, by
their installed files; crds-job's own questions, by their bytes), the
``CRDS_*`` variables of the job (which may change crds's matching; not
crds-job's own ``CRDS_JOB_*``), and what the selection asks (strict or
guessed, ``--reftypes``, ``--header``). Datasets read from a URL,
and associations (whose members are other files), are never kept: their
bytes are not all in the key. A kept answer is still data from the cache:
every name it gives must be one the context names (``plan.narrow``), and every
file is verified as any other.

Layout: ``.crds-job-answers/<observatory>/<context>/<key>.json``, removed by a
prune with the context's record.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from . import bestrefs, datasets
from .bestrefs import Answer, Skipped, choice_of
from .cache import Cache
from .datasets import Selection, is_association, is_url
from .errors import CrdsJobError
from .plan import Entry

FOLDER = ".crds-job-answers"
#: Bumped when the kept answer's form or the key's meaning changes: older answers are then not found.
FORMAT = 1
#: What ends an ASDF file's tree: the magic of its first binary block.
_ASDF_BLOCK = b"\xd3BLK"
_ASDF_MAGIC = b"#ASDF"
#: Most bytes read of an ASDF file for its tree (a Roman exposure's is tens of kB); beyond, its identity.
TREE_MOST = 16 * 2**20
#: The packages whose install changes what crds is given or chooses (a header's values: a date's form).
READERS = ("crds", "asdf", "astropy", "roman_datamodels", "stdatamodels")
#: crds-job's own variables: its settings, which never change crds's answer (its questions are keyed as such).
OURS = "CRDS_JOB_"


def folder(root: str, observatory: str, context: str = "") -> str:
    """Where the answers for ``context`` are kept (all contexts' without it)."""
    return os.path.join(root, FOLDER, observatory, context) if context else os.path.join(root, FOLDER, observatory)


def key(context: str, rules: Iterable[Entry], selection: Selection, environ: Mapping[str, str]) -> str | None:
    """The key of this question, or None where its answer is not to be kept (see the module's docstring).

    ``rules``: the files of the context's rules, whose names and sha1s (the bucket's) are in the key too:
    a bucket that republished a mapping under its old name would otherwise be answered from the old one.
    """
    if not selection.datasets or any(is_url(name) or is_association(name) for name in selection.datasets):
        return None
    parts: list[Any] = [FORMAT, context, sorted((entry.name, entry.size, entry.sha1) for entry in rules),
                        _code_identity(), selection.strict, list(selection.reftypes), list(selection.header),
                        sorted((name, value) for name, value in environ.items()
                               if name.startswith("CRDS_") and not name.startswith(OURS) and name != "CRDS_PATH")]
    for name in selection.datasets:
        digest = _digest(name)
        if digest is None:
            return None
        parts.append([name, digest])
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


def _code_identity() -> list[str]:
    """What code answers: the packages that read headers and choose (crds, asdf and the datamodels that
    read a tree: each found, not imported, by its file's path, size and time, so that another install is
    another key), and this package's own questions to them (``bestrefs``, ``datasets``: their bytes)."""
    found = []
    for package in READERS:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            info = os.stat(spec.origin)
            found.append(f"{spec.origin}:{info.st_size}:{info.st_mtime_ns}")
        else:
            found.append(f"{package}: absent")
    for module in (bestrefs, datasets):
        with open(module.__file__ or "", "rb") as handle:
            found.append(hashlib.sha1(handle.read()).hexdigest())
    return found


def _digest(path: str) -> str | None:
    """What crds reads of a local dataset, or None if it cannot be read: an ASDF file's tree (its bytes up
    to its first block, if within ``TREE_MOST``), else the file's identity (device, inode, size, times),
    which a change of its content changes: a FITS exposure may be GBs, and is not read here."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            identity = f"file:{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"
            head = handle.read(TREE_MOST)
    except OSError:
        return None
    end = head.find(_ASDF_BLOCK) if head.startswith(_ASDF_MAGIC) else -1
    if end < 0 and head.startswith(_ASDF_MAGIC) and len(head) == info.st_size:  # all tree, no block
        end = len(head)
    return f"asdf:{hashlib.sha1(head[:end]).hexdigest()}" if end >= 0 else identity


def recall(cache: Cache, context: str, found: str) -> Answer | None:
    """The answer kept under ``found`` (a key), if there is one and it reads as one."""
    path = os.path.join(folder(cache.root, cache.observatory, context), found + ".json")
    try:
        with open(path, encoding="utf-8") as handle:
            kept = json.load(handle)
        return Answer(choices=[choice_of(one, context) for one in kept["choices"]],
                      skipped=[Skipped(one["dataset"], one["reason"]) for one in kept["skipped"]],
                      crds=str(kept["crds"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CrdsJobError):  # absent, or not ours
        return None


def remember(cache: Cache, context: str, found: str, answer: Answer) -> None:
    """Keep ``answer`` under ``found``, atomically; not one that came through an association. A cache
    that cannot take it (full, another writer on it) loses only the saving: the warm goes on."""
    if any(choice.association for choice in answer.choices):
        return
    data = json.dumps({"choices": [choice.report() for choice in answer.choices],
                       "skipped": [{"dataset": one.dataset, "reason": one.reason} for one in answer.skipped],
                       "crds": answer.crds}).encode("utf-8")
    try:
        cache.write_now(os.path.join(folder(cache.root, cache.observatory, context), found + ".json"), data,
                        fsync=False)
    except (OSError, CrdsJobError):
        pass
