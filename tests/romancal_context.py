"""A Roman context for the real romancal pipeline (tests/test_romancal.py), modeled on crds's own specs.

Each rmap's header is the real one shipped in the crds wheel (``crds/roman/specs/wfi_<type>.rmap``: its
``parkey``, ``classes``, ``filekind``...), with a selector of our own on the exposure's keys: a row
for the exposure's detector (or exposure type, for the ``pars-*`` types) and one for another
(``WFI02``, ``WFI_GRISM``), whose references lie in the bucket too and must never be fetched for it.
``dustmap`` matches ``ROMAN.FIELD`` (``north``/``south``), a key no exposure has: romancal asks for
both with a header of its own. The reference files themselves are written by ``romancal_make.py``
in romancal's venv; this module only names them, lays the mappings out and publishes the bytes.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from typing import Any

from crds_job.sample.context import SampleBucket, render_mapping

CONTEXT = "roman_0001.pmap"
IMAP = "roman_wfi_0001.imap"
USEAFTER = "2020-01-01 00:00:00"

#: The exposure: what crds matches on, in the dataset's own keywords.
EXPOSURE = {
    "ROMAN.META.INSTRUMENT.NAME": "WFI",
    "ROMAN.META.INSTRUMENT.DETECTOR": "WFI01",
    "ROMAN.META.INSTRUMENT.OPTICAL_ELEMENT": "F158",
    "ROMAN.META.EXPOSURE.TYPE": "WFI_IMAGE",
    "ROMAN.META.EXPOSURE.START_TIME": "2025-06-01 00:00:00",
}
#: Pointing at galactic latitude +30: every star is in the north map's hemisphere.
POINTING = {"ra": 270.0, "dec": 66.56}
#: Another exposure's values: its rows name references this exposure must not fetch.
OTHER = {"ROMAN.META.INSTRUMENT.DETECTOR": "WFI02", "ROMAN.META.EXPOSURE.TYPE": "WFI_GRISM"}
#: E(B-V) of the small north and south dust maps: what dust_ebv must read back.
DUST = {"north": 0.05, "south": 0.07}

#: The reference types ExposurePipeline's steps open (romancal 1.1.0, each step's reference_file_types).
STEP_REFERENCES = ("mask", "saturation", "refpix", "darkdecaysignal", "linearity", "inverselinearity",
                   "integralnonlinearity", "readnoise", "gain", "dark", "distortion", "photom", "flat", "apcorr",
                   "epsf")
#: The step parameter types: the pipeline's and each of its 13 steps' (Step.get_config_reftype()).
PARS = ("pars-exposurepipeline", "pars-dqinitstep", "pars-saturationstep", "pars-refpixstep", "pars-darkdecaystep",
        "pars-wfi18transientstep", "pars-linearitystep", "pars-rampfitstep", "pars-darkcurrentstep",
        "pars-assignwcsstep", "pars-flatfieldstep", "pars-photomstep", "pars-sourcecatalogstep",
        "pars-tweakregstep")
TYPES = (*STEP_REFERENCES, *PARS, "dustmap")


def spec_header(reftype: str) -> dict[str, Any]:
    """The real rmap header of ``reftype`` from the installed crds (``crds/roman/specs``)."""
    import crds

    path = os.path.join(os.path.dirname(crds.__file__), "roman", "specs", f"wfi_{reftype}.rmap")
    with open(path) as handle:
        module = ast.parse(handle.read())
    for statement in module.body:
        if isinstance(statement, ast.Assign) and getattr(statement.targets[0], "id", "") == "header":
            return ast.literal_eval(statement.value)
    raise ValueError(f"{path} has no header")


@dataclass
class Reference:
    """One reference file: its type, name, the match values of its row, and whether it is the exposure's."""

    reftype: str
    name: str
    match: tuple[str, ...]
    chosen: bool
    order: dict[str, Any] = field(default_factory=dict)  # what romancal_make.py needs to write it


def _row(keys: tuple[str, ...], other: bool) -> tuple[str, ...]:
    """The exposure's values of ``keys`` or, for ``other``, another exposure's (its first differing key)."""
    values = [EXPOSURE[key] for key in keys]
    if other:
        for index, key in enumerate(keys):
            if key in OTHER:
                values[index] = OTHER[key]
                break
    return tuple(values)


def references(folder: str) -> list[Reference]:
    """Every reference of the context, to be written under ``folder``."""
    made = []
    for reftype in TYPES:
        header = spec_header(reftype)
        match_keys = tuple(header["parkey"][0])
        extension = header["file_ext"]
        if reftype == "dustmap":
            rows = [(("north",), True), (("south",), True)]  # both are the exposure's: romancal asks for both
        elif any(key in OTHER for key in match_keys):
            rows = [(_row(match_keys, False), True), (_row(match_keys, True), False)]
        else:
            rows = [(_row(match_keys, False), True)]  # darkdecaysignal: one file for every detector
        for serial, (match, chosen) in enumerate(rows, start=1):
            name = f"roman_wfi_{reftype}_{serial:04d}{extension}"
            values = {**EXPOSURE, **dict(zip(match_keys, match, strict=True))}
            order = {"reftype": reftype, "path": os.path.join(folder, name), "useafter": USEAFTER,
                     "detector": values["ROMAN.META.INSTRUMENT.DETECTOR"],
                     "optical_element": values["ROMAN.META.INSTRUMENT.OPTICAL_ELEMENT"],
                     "exposure_type": values["ROMAN.META.EXPOSURE.TYPE"]}
            if reftype == "dustmap":
                order.update(field=match[0], value=DUST[match[0]])
            made.append(Reference(reftype, name, match, chosen, order))
    return made


def make_order(folder: str, exposure_path: str) -> dict[str, Any]:
    """What ``romancal_make.py`` is to write: every reference, and the exposure."""
    return {
        "references": [reference.order for reference in references(folder)],
        "exposure": {"path": exposure_path, "detector": EXPOSURE["ROMAN.META.INSTRUMENT.DETECTOR"],
                     "optical_element": EXPOSURE["ROMAN.META.INSTRUMENT.OPTICAL_ELEMENT"],
                     "exposure_type": EXPOSURE["ROMAN.META.EXPOSURE.TYPE"],
                     "start_time": EXPOSURE["ROMAN.META.EXPOSURE.START_TIME"], **POINTING},
    }


def _selector(header: dict[str, Any], rows: list[Reference]) -> str:
    """Match rows, each a UseAfter where the spec's classes say so; a one-key row is keyed by its value."""
    use_after = "UseAfter" in header.get("classes", ("Match", "UseAfter"))
    lines = []
    for reference in rows:
        key = reference.match[0] if len(reference.match) == 1 else reference.match
        value = repr(reference.name)
        if use_after:
            value = f"UseAfter({{\n        {USEAFTER!r} : {value},\n    }})"
        lines.append(f"    {key!r} : {value},\n")
    return "Match({\n" + "".join(lines) + "})"


@dataclass
class RomancalBucket(SampleBucket):
    """A SampleBucket whose references are real files (``files``: name -> path) instead of seeded bytes."""

    files: dict[str, str] = field(default_factory=dict)
    #: Every reference of the context, the exposure's and another's.
    all_references: list[Reference] = field(default_factory=list)

    def reference_bytes(self, name: str) -> bytes:
        with open(self.files[name], "rb") as handle:
            return handle.read()

    @property
    def chosen(self) -> dict[str, set[str]]:
        """For each type, the references the exposure's calibration uses (dustmap: both)."""
        found: dict[str, set[str]] = {}
        for reference in self.all_references:
            if reference.chosen:
                found.setdefault(reference.reftype, set()).add(reference.name)
        return found

    @property
    def others(self) -> set[str]:
        """The references of another detector or exposure type: never to be fetched for this exposure."""
        return {reference.name for reference in self.all_references if not reference.chosen}


def build(folder: str) -> RomancalBucket:
    """The bucket's content, once ``romancal_make.py`` has written the references into ``folder``."""
    made = references(folder)
    bucket = RomancalBucket(observatory="roman", contexts=[CONTEXT], all_references=made)
    rmaps = {}
    for reftype in TYPES:
        header = spec_header(reftype)
        header.pop("sha1sum", None)
        name = f"roman_wfi_{reftype}_0001.rmap"
        header.update(name=name, derived_from=f"crds-job tests from crds/roman/specs/wfi_{reftype}.rmap")
        rows = [reference for reference in made if reference.reftype == reftype]
        bucket.mappings[name] = render_mapping(header, _selector(header, rows)).encode()
        rmaps[reftype] = name
    imap_header = {"derived_from": "crds-job tests", "instrument": "WFI", "mapping": "INSTRUMENT", "name": IMAP,
                   "observatory": "ROMAN", "parkey": ("REFTYPE",)}
    rows = "".join(f"    {reftype!r} : {name!r},\n" for reftype, name in rmaps.items())
    bucket.mappings[IMAP] = render_mapping(imap_header, "{\n" + rows + "}").encode()
    pmap_header = {"derived_from": "crds-job tests", "mapping": "PIPELINE", "name": CONTEXT, "observatory": "ROMAN",
                   "parkey": ("ROMAN.META.INSTRUMENT.NAME",)}
    bucket.mappings[CONTEXT] = render_mapping(pmap_header, "{\n" + f"    'WFI' : {IMAP!r},\n" + "}").encode()
    for reference in made:
        bucket.files[reference.name] = reference.order["path"]
        bucket.reference_sizes[reference.name] = os.path.getsize(reference.order["path"])
    bucket.references_of[CONTEXT] = set(bucket.files)
    bucket.expected[CONTEXT] = {"wfi": {kind: min(names) for kind, names in bucket.chosen.items()}}
    return bucket
