"""What a CRDS file name may be, and what kind of file it names.

Every name crds-job writes to disk comes from a mapping or from the bucket's
config, i.e. from data we did not write. A name is therefore accepted only
when it is a plain base name in the character set CRDS itself uses, so that
no name can climb out of the cache (``../x``), point elsewhere (``/etc/x``),
hide (``.x``) or smuggle control or look-alike characters.
"""

from __future__ import annotations

import re

MAPPING_EXTENSIONS = (".pmap", ".imap", ".rmap")

#: Values a mapping may hold in place of a file: "not applicable", "omit".
SPECIAL_VALUES = frozenset({"n/a", "temp_n/a", "omit", "temp_omit"})

#: The characters of CRDS file names (e.g. roman_wfi_dark_0042.asdf, x1a1234bu.r4h).
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}\Z")

#: HST GEIS headers (``*.rNh``) whose data partner (``*.rNd``) must come too.
_GEIS_HEADER = re.compile(r"\w+\.r[0-9]h\Z")


class UnsafeName(ValueError):
    """A name that is not a plain CRDS base name."""


def is_special(value: str) -> bool:
    """True for the placeholders (N/A, OMIT, ...) that name no file."""
    return value.lower() in SPECIAL_VALUES


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe plain base name, else raise UnsafeName."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name:
        raise UnsafeName(f"{name!r} is not a plain CRDS file name")
    return name


def kind_of(name: str) -> str:
    """'pmap', 'imap', 'rmap' for mappings, 'reference' for everything else."""
    for extension in MAPPING_EXTENSIONS:
        if name.endswith(extension):
            return extension[1:]
    return "reference"


def geis_partner(name: str) -> str | None:
    """The data file that must accompany an HST GEIS header file, if ``name`` is one."""
    if _GEIS_HEADER.match(name):
        return name[:-1] + "d"
    return None


def is_context_name(name: str, observatory: str) -> bool:
    """True for a literal pipeline context of ``observatory`` (e.g. roman_0055.pmap)."""
    try:
        check_name(name)
    except UnsafeName:
        return False
    return name.endswith(".pmap") and name.lower().startswith(observatory)
