"""Which input datasets a selective warm is for: named ones, or those found in the command.

Pure: the rule that picks datasets out of a calibration command's arguments,
so that ``crds-job roman ops strun romancal.pipeline.ExposurePipeline
l1_img.asdf`` warms only what ``l1_img.asdf`` needs. The rule, as docs/datasets.md
states it: an argument of COMMAND (not its program, not an option) that ends
in a dataset suffix and is either an existing file or a URL. A command run
through a shell (``sh -c "exec strun ... /data/exposure-$INDEX.asdf"``, as
array jobs do to pick their exposure) is looked into: the words of its script,
read as the shell will (variables, positional parameters, globs). Found that way,
a candidate is only a guess (``out_cal.asdf`` may be an output to be, an
``.asdf`` a parameter file): one that turns out missing or unreadable is
skipped, not fatal. Datasets named with ``--datasets`` are meant: strict.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import string
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

#: How a Roman (stpipe) association's name ends: it stands for its members.
ASSOCIATION_SUFFIX = "_asn.json"
#: Suffixes of the dataset formats found in a command: FITS (plain or compressed), ASDF, a Roman association.
SUFFIXES = (".fits", ".fits.gz", ".fit", ".fits.fz", ".asdf", ASSOCIATION_SUFFIX)
#: FITS suffixes crds does not know by name (it would sniff the bytes, and fail on a gzip).
_FITS_ALIASES = (".fits.gz", ".fits.fz", ".fit")
#: URL schemes read through fsspec (its registry knows more; these are the ones jobs use).
URL_SCHEMES = ("s3://", "gs://", "az://", "abfs://", "http://", "https://", "file://")
#: Shells whose ``-c SCRIPT`` is looked into for datasets.
SHELLS = ("sh", "bash", "dash", "ash", "zsh")


def is_url(name: str) -> bool:
    return name.lower().startswith(URL_SCHEMES)


def crds_name(name: str) -> str:
    """The name to give crds for ``name``'s format: ``x.fits.gz`` -> ``x.fits`` (astropy reads either)."""
    for alias in _FITS_ALIASES:
        if name.lower().endswith(alias):
            return name[: -len(alias)] + ".fits"
    return name


def base_name(source: str) -> str:
    """The file name of a path or URL: of a URL's path, without its query (a presigned URL's signature)."""
    path = urllib.parse.urlsplit(source).path if is_url(source) else source
    return path.rstrip("/").rsplit("/", 1)[-1]


def looks_like_dataset(argument: str) -> bool:
    """An argument that names a dataset by its suffix (``l1_img.asdf``, ``s3://b/x_raw.fits``,
    ``https://b.s3.amazonaws.com/x_raw.fits?X-Amz-Signature=...``)."""
    return not argument.startswith("-") and base_name(argument).lower().endswith(SUFFIXES)


def is_association(name: str) -> bool:
    """Whether ``name`` is a Roman association (``r0000101_asn.json``), read for its members."""
    return base_name(name).lower().endswith(ASSOCIATION_SUFFIX)


@dataclass(frozen=True)
class Selection:
    """The datasets of one warm and where they came from ("--datasets", "command", "--header",
    "--reftypes" or "none"); and a header the command builds itself, with the types it asks for."""

    datasets: tuple[str, ...]
    source: str
    not_found: tuple[str, ...] = ()  # dataset-like command arguments that are not files: outputs
    header: tuple[tuple[str, str], ...] = ()  # --header: a dataset of its own, with no file
    reftypes: tuple[str, ...] = ()  # --reftypes: the only types chosen, for the datasets and the header

    @property
    def selective(self) -> bool:
        return bool(self.datasets or self.header or self.reftypes)

    @property
    def headers(self) -> list[tuple[str, dict[str, str]]]:
        """The headers asked for without a file, by name: ``--header``'s, or with ``--reftypes`` alone
        an empty one (every reference of those types the rules can select)."""
        if self.header:
            return [("--header " + ",".join(f"{key}={value}" for key, value in self.header), dict(self.header))]
        return [("--reftypes " + ",".join(self.reftypes), {})] if self.reftypes and not self.datasets else []

    @property
    def strict(self) -> bool:
        """Named by the user: each must be read. Found in the command: a guess, skipped if not a dataset."""
        return self.source == "--datasets"

    def local_missing(self, exists: Callable[[str], bool] = os.path.isfile) -> list[str]:
        """Named local datasets that are not there (checked before anything is fetched)."""
        return [name for name in self.datasets if self.strict and not is_url(name) and not exists(name)]


class _ShellTemplate(string.Template):
    """``$NAME``, ``${NAME}`` and the positional ``$1``, ``${12}`` as a shell reads them (``$10`` is ``${1}0``)."""

    idpattern = r"(?a:[_a-z][_a-z0-9]*|[0-9])"
    braceidpattern = r"(?a:[_a-z][_a-z0-9]*|[0-9]+)"


#: ``$@`` and ``$*``, quoted or not, braced or not: all the positional parameters.
_ALL_POSITIONAL = re.compile(r'"\$(?:[@*]|\{[@*]\})"|\$(?:[@*]|\{[@*]\})')
#: What makes a word a glob pattern for the shell.
_GLOB_MAGIC = re.compile(r"[*?[]")


def arguments(command: Sequence[str], environ: Mapping[str, str],
              matches: Callable[[str], list[str]] = glob.glob) -> list[str]:
    """The words of ``command`` after its program; for ``sh -c SCRIPT [NAME ARGS...]``, the words of SCRIPT.

    Read as the shell will: its variables expanded from ``environ``, the
    command's own environment (``$AWS_BATCH_JOB_ARRAY_INDEX``...); ``$1``...
    and ``$@`` from ARGS (the usual way to hand a file to ``sh -c``); a glob
    (``/data/j8bt06*_raw.fits``) to the files it ``matches``, sorted, or
    itself if none; a relative path after ``cd DIR`` in DIR. A script the shell would read differently (quotes left
    open) adds nothing: a guess, never an error.
    """
    if os.path.basename(command[0]) in SHELLS and len(command) > 2 and command[1] == "-c":
        positional = list(command[3:])
        values = {**environ, **{str(number): value for number, value in enumerate(positional)}}
        script = _ALL_POSITIONAL.sub(lambda _match: shlex.join(positional[1:]), command[2])
        try:
            words = shlex.split(_ShellTemplate(script).safe_substitute(values), comments=True)
        except ValueError:
            return []
        return [found for word in _after_cd(words)
                for found in (sorted(matches(word)) or [word] if _GLOB_MAGIC.search(word) and not is_url(word)
                              else [word])]
    return list(command[1:])


def _after_cd(words: list[str]) -> list[str]:
    """``words`` with a dataset-like relative path after ``cd DIR`` made relative to DIR, as the shell opens it."""
    folder, resolved = "", []
    for index, word in enumerate(words):
        if index and words[index - 1] == "cd" and not word.startswith("-"):
            folder = os.path.join(folder, word)
        elif folder and looks_like_dataset(word) and not is_url(word) and not os.path.isabs(word):
            word = os.path.join(folder, word)
        resolved.append(word)
    return resolved


def select(
    named: Sequence[str],
    command: Sequence[str],
    whole_context: bool,
    exists: Callable[[str], bool] = os.path.isfile,
    environ: Mapping[str, str] | None = None,
    header: Sequence[tuple[str, str]] = (),
    reftypes: Sequence[str] = (),
) -> Selection:
    """The datasets to warm for: ``named`` ones, else those among the command's ``arguments``.

    ``whole_context`` (``--all-references``, ``--instruments``, ``--mappings-only``)
    turns the detection in the command off, and so does ``header``: a command that
    builds its own header names no dataset to look for. ``reftypes`` narrows the
    types chosen; with no dataset, it alone stands for a header with nothing in it.
    """
    if named or header:
        return Selection(tuple(named), "--datasets" if named else "--header", header=tuple(header),
                         reftypes=tuple(reftypes))
    nothing = "--reftypes" if reftypes else "none"
    if whole_context or len(command) < 2:
        return Selection((), nothing, reftypes=tuple(reftypes))
    words = arguments(command, os.environ if environ is None else environ)
    candidates = [argument for argument in words if looks_like_dataset(argument)]
    found = tuple(dict.fromkeys(a for a in candidates if is_url(a) or exists(a)))
    missing = tuple(a for a in candidates if a not in found)
    return Selection(found, "command" if found else nothing, missing, reftypes=tuple(reftypes))
