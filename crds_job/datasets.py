"""Which input datasets a selective warm is for: named ones, or those found in the command.

Pure: the rule that picks datasets out of a calibration command's arguments,
so that ``crds-job roman ops strun romancal.pipeline.ExposurePipeline
l1_img.asdf`` warms only what ``l1_img.asdf`` needs. The rule, as the README
states it: an argument of COMMAND (not its program, not an option) that ends
in a dataset suffix and is either an existing file or a URL. An argument that
looks like a dataset but does not exist is an output to be, not an input.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Suffixes of the dataset formats crds reads headers from (FITS, GEIS headers, ASDF).
SUFFIXES = (".fits", ".fits.gz", ".fit", ".fits.fz", ".asdf", ".r0h", ".d0h", ".q0h", ".c0h")
#: URL schemes read through fsspec (its registry knows more; these are the ones jobs use).
URL_SCHEMES = ("s3://", "gs://", "az://", "abfs://", "http://", "https://", "file://")


def is_url(name: str) -> bool:
    return name.lower().startswith(URL_SCHEMES)


def looks_like_dataset(argument: str) -> bool:
    """An argument that names a dataset by its suffix (``l1_img.asdf``, ``s3://b/x_raw.fits``)."""
    return not argument.startswith("-") and argument.lower().endswith(SUFFIXES)


@dataclass(frozen=True)
class Selection:
    """The datasets of one warm and where they came from ("--datasets", "command" or "none")."""

    datasets: tuple[str, ...]
    source: str
    not_found: tuple[str, ...] = ()  # dataset-like command arguments that are not files: outputs

    @property
    def selective(self) -> bool:
        return bool(self.datasets)


def select(
    named: Sequence[str],
    command: Sequence[str],
    whole_context: bool,
    exists: Callable[[str], bool] = os.path.isfile,
) -> Selection:
    """The datasets to warm for: ``named`` ones, else those among ``command[1:]``.

    ``whole_context`` (``--all-references``, ``--instruments``, ``--mappings-only``)
    turns the detection in the command off.
    """
    if named:
        return Selection(tuple(named), "--datasets")
    if whole_context or len(command) < 2:
        return Selection((), "none")
    candidates = [argument for argument in command[1:] if looks_like_dataset(argument)]
    found = tuple(dict.fromkeys(a for a in candidates if is_url(a) or exists(a)))
    missing = tuple(a for a in candidates if a not in found)
    return Selection(found, "command" if found else "none", missing)
