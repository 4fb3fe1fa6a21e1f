"""Sample input datasets: a raw HST FITS exposure, a Roman ASDF exposure, with real keywords.

Only their headers matter to crds; the data arrays are small zeros (or as
large as asked, to show that a header is read without the data).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def write_fits(path: str, header: Mapping[str, str], data_bytes: int = 0) -> str:
    """A raw exposure: the header in the primary HDU, a SCI extension of about ``data_bytes``."""
    import numpy
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    for key, value in header.items():
        primary.header[key] = value
    side = max(1, int((data_bytes / 4) ** 0.5))
    science = fits.ImageHDU(numpy.zeros((side, side), dtype="float32"), name="SCI")
    fits.HDUList([primary, science]).writeto(path, overwrite=True)
    return path


def write_association(path: str, instrument: str, members: Mapping[str, str]) -> str:
    """An HST association table listing ``members`` (name: MEMTYPE, e.g. ``EXP-DTH``, ``PROD-DTH``), all present."""
    import numpy
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    primary.header["INSTRUME"] = instrument
    primary.header["FILETYPE"] = "ASN_TABLE"
    names = [name.upper() for name in members]
    table = fits.BinTableHDU.from_columns([
        fits.Column(name="MEMNAME", format="14A", array=numpy.array(names)),
        fits.Column(name="MEMTYPE", format="14A", array=numpy.array(list(members.values()))),
        fits.Column(name="MEMPRSNT", format="L", array=numpy.ones(len(names), dtype=bool)),
    ], name="ASN")
    fits.HDUList([primary, table]).writeto(path, overwrite=True)
    return path


def _tree(header: Mapping[str, str]) -> dict[str, Any]:
    """``{"ROMAN.META.INSTRUMENT.NAME": "WFI"}`` -> ``{"roman": {"meta": {"instrument": {"name": "WFI"}}}}``."""
    tree: dict[str, Any] = {}
    for key, value in header.items():
        *parents, leaf = key.lower().split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def write_asdf(path: str, header: Mapping[str, str], data_bytes: int = 0) -> str:
    """A Roman exposure as an ASDF tree (``roman.meta...``), with a ``data`` array of about ``data_bytes``."""
    import asdf
    import numpy

    tree = _tree(header)
    tree["roman"]["data"] = numpy.zeros(max(1, data_bytes // 4), dtype="float32")
    asdf.AsdfFile(tree).write_to(path)
    return path
