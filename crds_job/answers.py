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
each dataset's name and the bytes crds reads of it (an ASDF file's tree, up
to its first block; anything else whole), the crds that chose (its package's
file, size and time: a new install is a new crds), the ``CRDS_*`` variables
of the job (which may change crds's matching), and what the selection asks
(strict or guessed, ``--reftypes``, ``--header``). Datasets read from a URL,
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

from .bestrefs import Answer, Choice, Skipped
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
_CHUNK = 1 << 20


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
                        _crds_identity(), selection.strict, list(selection.reftypes),
                        list(selection.header),
                        sorted((name, value) for name, value in environ.items()
                               if name.startswith("CRDS_") and name != "CRDS_PATH")]
    for name in selection.datasets:
        digest = _digest(name)
        if digest is None:
            return None
        parts.append([name, digest])
    return hashlib.sha1(json.dumps(parts).encode()).hexdigest()


def _crds_identity() -> str:
    """Which crds the child will import (found, not imported: that is what is being saved)."""
    try:
        spec = importlib.util.find_spec("crds")
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.origin:
        return ""
    info = os.stat(spec.origin)
    return f"{spec.origin}:{info.st_size}:{info.st_mtime_ns}"


def _digest(path: str) -> str | None:
    """sha1 of what crds reads of a local dataset: an ASDF file's tree, else the whole file; None if unreadable."""
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as handle:
            asdf = handle.read(len(_ASDF_MAGIC)) == _ASDF_MAGIC
            handle.seek(0)
            tail = b""
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                window = tail + chunk
                end = window.find(_ASDF_BLOCK) if asdf else -1
                if end >= 0:
                    digest.update(window[:end])
                    return f"asdf:{digest.hexdigest()}"
                keep = len(_ASDF_BLOCK) - 1 if asdf else 0  # a block's magic may straddle two chunks
                digest.update(window[: len(window) - keep])
                tail = window[len(window) - keep:]
            digest.update(tail)
    except OSError:
        return None
    return f"{'asdf' if asdf else 'file'}:{digest.hexdigest()}"


def recall(cache: Cache, context: str, found: str) -> Answer | None:
    """The answer kept under ``found`` (a key), if there is one and it reads as one."""
    path = os.path.join(folder(cache.root, cache.observatory, context), found + ".json")
    try:
        with open(path, encoding="utf-8") as handle:
            kept = json.load(handle)
        return Answer(choices=[_choice(one) for one in kept["choices"]],
                      skipped=[Skipped(one["dataset"], one["reason"]) for one in kept["skipped"]],
                      crds=str(kept["crds"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent, or not ours: asked again
        return None


def _choice(kept: Mapping[str, Any]) -> Choice:
    return Choice(dataset=str(kept["dataset"]), instrument=str(kept["instrument"]),
                  references={str(kind): str(name) for kind, name in kept["references"].items()},
                  not_applicable=tuple(map(str, kept["not_applicable"])),
                  unmatched={str(kind): str(why) for kind, why in kept["unmatched"].items()},
                  candidates={str(kind): {"absent": list(map(str, found["absent"])),
                                          "files": list(map(str, found["files"]))}
                              for kind, found in kept["candidates"].items()})


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
