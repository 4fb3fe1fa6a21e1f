"""Generate a CRDS bucket's content: contexts, mappings, references, server_config.

The mappings are what the real crds client accepts: the header fields it
requires, the selector classes it knows (``Match`` of ``UseAfter``), and the
header ``sha1sum`` stamped the way the client checks it. Reference bytes are
pseudo-random (seeded), so a bucket is the same every time it is built with
the same arguments. One machinery, three observatories: ``roman()``, ``hst()`` and ``jwst()``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..mapping import header_checksum

SizeFunction = Callable[[random.Random, str], int]


@dataclass(frozen=True)
class Rule:
    """One reference type of one instrument: the keywords its rmap matches on."""

    filekind: str  # as in the imap and the rmap's name: dark, biasfile...
    match_keys: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]  # match values per row; the first row matches the sample dataset
    suffix: str  # of reference names: dark, bia...
    extension: str = ".fits"
    header: dict = field(default_factory=dict)  # extra rmap header fields (reffile_switch...)


@dataclass(frozen=True)
class Observatory:
    """How one observatory names and dates its files."""

    name: str
    instrument_key: str  # the pmap's parkey
    date_keys: tuple[str, ...]
    file_ext: str
    rules: dict[str, tuple[Rule, ...]]  # by instrument, upper case as in the pmap
    reference_name: Callable[[str, Rule, int], str]


def _roman_reference(instrument: str, rule: Rule, serial: int) -> str:
    return f"roman_{instrument.lower()}_{rule.filekind}_{serial:04d}{rule.extension}"


#: The last letter of an HST reference's nine-character CDBS stem tells its instrument.
_CDBS_LETTER = {"ACS": "j", "WFC3": "i", "WFPC2": "u"}


def _cdbs_reference(instrument: str, rule: Rule, serial: int) -> str:
    """An HST CDBS-style name: nine characters, then the type's suffix (GEIS: no suffix)."""
    stem = f"{serial:08d}{_CDBS_LETTER[instrument]}"
    return f"{stem}_{rule.suffix}{rule.extension}" if rule.extension == ".fits" else f"{stem}{rule.extension}"


_DETECTOR = "ROMAN.META.INSTRUMENT.DETECTOR"
_EXPOSURE = "ROMAN.META.EXPOSURE.TYPE"
_ELEMENT = "ROMAN.META.INSTRUMENT.OPTICAL_ELEMENT"


def _roman_rule(kind: str, *keys: str) -> Rule:
    values = {_EXPOSURE: "WFI_IMAGE", _ELEMENT: "F158"}
    rows = tuple((f"WFI{n:02d}",) + tuple(values[key] for key in keys) for n in range(1, 19))
    return Rule(kind, (_DETECTOR,) + keys, rows, suffix=kind, extension=".asdf")


#: Roman WFI reference types with their real match keywords (crds/roman/specs), one row per detector.
ROMAN = Observatory(
    name="roman",
    instrument_key="ROMAN.META.INSTRUMENT.NAME",
    date_keys=("ROMAN.META.EXPOSURE.START_TIME",),
    file_ext=".asdf",
    rules={"WFI": (
        _roman_rule("dark", _EXPOSURE), _roman_rule("flat", _ELEMENT), _roman_rule("gain"),
        _roman_rule("readnoise", _EXPOSURE), _roman_rule("linearity"), _roman_rule("mask"),
        _roman_rule("saturation"), _roman_rule("photom"), _roman_rule("area"), _roman_rule("distortion", _ELEMENT),
    )},
    reference_name=_roman_reference,
)

#: A header every sample Roman rule matches with its first row (detector WFI01).
ROMAN_DATASET_HEADER = {
    "ROMAN.META.INSTRUMENT.NAME": "WFI",
    "ROMAN.META.INSTRUMENT.DETECTOR": "WFI01",
    "ROMAN.META.EXPOSURE.TYPE": "WFI_IMAGE",
    "ROMAN.META.INSTRUMENT.OPTICAL_ELEMENT": "F158",
    "ROMAN.META.EXPOSURE.START_TIME": "2025-01-01 00:00:00",
}


def _hst_rule(kind: str, keys: tuple[str, ...], rows: list[tuple[str, ...]], suffix: str, switch: str,
              extension: str = ".fits", extra_keys: tuple[str, ...] = (), relevance: str = "ALWAYS",
              parkey_relevance: dict[str, str] | None = None) -> Rule:
    """``extra_keys``: keywords crds's own hooks for this type read (crds/hst/<instrument>.py);
    ``relevance``, ``parkey_relevance``: the expressions of the type's spec (crds/hst/specs), which
    crds compiles when it loads the rmap, and again when it loads a pickle of it."""
    header = {"reffile_format": "IMAGE", "reffile_required": "NONE", "reffile_switch": switch.upper(),
              "rmap_relevance": relevance, "parkey_relevance": parkey_relevance or {}, "extra_keys": extra_keys,
              "filetype": suffix.upper()}
    return Rule(kind, keys, tuple(rows), suffix=suffix, extension=extension, header=header)


#: HST: a few real reference types of ACS, WFC3 and WFPC2 (GEIS), with real keywords.
HST = Observatory(
    name="hst",
    instrument_key="INSTRUME",
    date_keys=("DATE-OBS", "TIME-OBS"),
    file_ext=".fits",
    rules={
        "ACS": (
            _hst_rule("biasfile", ("DETECTOR", "CCDAMP", "CCDGAIN"),
                      [("WFC", "ABCD", "2.0"), ("HRC", "C", "1.0"), ("WFC", "A", "1.0")], "bia", "biascorr",
                      extra_keys=("NUMCOLS", "NUMROWS", "LTV1", "LTV2", "XCORNER", "YCORNER", "CCDCHIP"),
                      relevance='((DETECTOR != "SBC") and (BIASCORR != "OMIT"))'),
            _hst_rule("darkfile", ("DETECTOR", "CCDAMP", "CCDGAIN"),
                      [("WFC", "ABCD", "2.0"), ("HRC", "C", "1.0")], "drk", "darkcorr",
                      relevance='(DARKCORR != "OMIT")',
                      parkey_relevance={"ccdgain": '(DETECTOR != "SBC")', "ccdamp": '(DETECTOR != "SBC")'}),
            _hst_rule("pfltfile", ("DETECTOR", "FILTER1", "FILTER2"),
                      [("WFC", "F606W", "CLEAR2L"), ("WFC", "F814W", "CLEAR2L")], "pfl", "flatcorr"),
        ),
        "WFC3": (
            _hst_rule("biasfile", ("DETECTOR", "CCDAMP"), [("UVIS", "ABCD"), ("IR", "ABCD")], "bia", "biascorr",
                      extra_keys=("SUBARRAY", "APERTURE"), relevance='((DETECTOR == "UVIS") and (BIASCORR != "OMIT"))'),
            _hst_rule("darkfile", ("DETECTOR", "CCDAMP"), [("UVIS", "ABCD"), ("IR", "ABCD")], "drk", "darkcorr"),
        ),
        "WFPC2": (
            _hst_rule("flatfile", ("MODE", "FILTER1"), [("FULL", "F555W"), ("AREA", "F814W")], "flt", "flatcorr",
                      extension=".r4h"),
        ),
    },
    reference_name=_cdbs_reference,
)

#: Headers (one per instrument) that every sample HST rule of that instrument matches with its first row.
#: Besides the matched keywords, the ones crds's hooks for these types read, as a raw dataset has them.
HST_DATASET_HEADERS = {
    "ACS": {"INSTRUME": "ACS", "DETECTOR": "WFC", "CCDAMP": "ABCD", "CCDGAIN": "2.0", "FILTER1": "F606W",
            "FILTER2": "CLEAR2L", "DATE-OBS": "2020-06-01", "TIME-OBS": "00:00:00", "APERTURE": "WFC",
            "OBSTYPE": "IMAGING", "NUMCOLS": "4144", "NUMROWS": "2068", "LTV1": "24.0", "LTV2": "0.0",
            "XCORNER": "0", "YCORNER": "0", "CCDCHIP": "1"},
    "WFC3": {"INSTRUME": "WFC3", "DETECTOR": "UVIS", "CCDAMP": "ABCD", "CCDGAIN": "1.5", "DATE-OBS": "2020-06-01",
             "TIME-OBS": "00:00:00", "APERTURE": "UVIS", "SUBARRAY": "F", "OBSTYPE": "IMAGING",
             "BINAXIS1": "1", "BINAXIS2": "1", "FILTER": "F606W"},
}


def _jwst_reference(instrument: str, rule: Rule, serial: int) -> str:
    """A name like JWST's own: ``jwst_nircam_dark_0001.fits``."""
    return f"jwst_{instrument.lower()}_{rule.filekind}_{serial:04d}{rule.extension}"


_NRC_DETECTORS = ("NRCA1", "NRCA2", "NRCA3", "NRCA4", "NRCB1", "NRCB2", "NRCB3", "NRCB4", "NRCALONG", "NRCBLONG")
_MIRI_DETECTORS = ("MIRIMAGE", "MIRIFULONG", "MIRIFUSHORT")
#: The value of each matched keyword in every row but the detector's: the sample exposure's.
_JWST_VALUES = {
    "META.EXPOSURE.TYPE": {"NIRCAM": "NRC_IMAGE", "MIRI": "MIR_IMAGE"},
    "META.SUBARRAY.NAME": {"NIRCAM": "FULL", "MIRI": "FULL"},
    "META.INSTRUMENT.FILTER": {"NIRCAM": "F200W", "MIRI": "F770W"},
    "META.INSTRUMENT.PUPIL": {"NIRCAM": "CLEAR"},
    "META.INSTRUMENT.BAND": {"MIRI": "N/A"},  # MIRI's imager has no band: N/A matches any value, as in real rmaps
    "META.EXPOSURE.READPATT": {"MIRI": "FAST"},
}


def _jwst_rule(instrument: str, kind: str, *keys: str, filetype: str = "", text_descr: str = "") -> Rule:
    """A rule matching on ``keys`` (the real rmap's parkeys, crds/jwst/specs), one row per detector.

    The detector is always the first key here (the real dark's puts the exposure type first: order is
    immaterial to matching); ``filetype``/``text_descr`` are the real spec's where they differ from the kind.
    """
    detectors = {"NIRCAM": _NRC_DETECTORS, "MIRI": _MIRI_DETECTORS}[instrument]
    rows = tuple((detector,) + tuple(_JWST_VALUES[key][instrument] for key in keys) for detector in detectors)
    header = {"filetype": filetype or kind.upper(), "text_descr": text_descr or kind.capitalize()}
    return Rule(kind, ("META.INSTRUMENT.DETECTOR",) + keys, rows, suffix=kind, header=header)


_FILTER, _PUPIL, _BAND = "META.INSTRUMENT.FILTER", "META.INSTRUMENT.PUPIL", "META.INSTRUMENT.BAND"
_EXP_TYPE, _SUBARRAY, _READPATT = "META.EXPOSURE.TYPE", "META.SUBARRAY.NAME", "META.EXPOSURE.READPATT"

#: JWST: NIRCam's detector-level types and a few of MIRI's, with their real match keywords.
JWST = Observatory(
    name="jwst",
    instrument_key="META.INSTRUMENT.NAME",
    date_keys=("META.OBSERVATION.DATE", "META.OBSERVATION.TIME"),
    file_ext=".fits",
    rules={
        "NIRCAM": (
            _jwst_rule("NIRCAM", "dark", _EXP_TYPE, _SUBARRAY, text_descr="Dark reference"),
            _jwst_rule("NIRCAM", "flat", _FILTER, _PUPIL, filetype="PIXEL-TO-PIXEL FLAT", text_descr="Flat Field"),
            _jwst_rule("NIRCAM", "gain", _FILTER),
            _jwst_rule("NIRCAM", "readnoise", _FILTER, text_descr="Read Noise"),
            _jwst_rule("NIRCAM", "mask", _FILTER, text_descr="Bad Pixel Mask"),
            _jwst_rule("NIRCAM", "saturation", _FILTER),
            _jwst_rule("NIRCAM", "linearity", _FILTER, text_descr="Detector Linearity Correction Coefficients"),
        ),
        "MIRI": (
            _jwst_rule("MIRI", "dark", _FILTER, _READPATT, _SUBARRAY, text_descr="Dark Frame"),
            _jwst_rule("MIRI", "flat", _FILTER, _BAND, _READPATT, _SUBARRAY, filetype="PIXEL-TO-PIXEL FLAT",
                       text_descr="Flat Field"),
            _jwst_rule("MIRI", "gain", _FILTER, _BAND, _SUBARRAY),
            _jwst_rule("MIRI", "readnoise", _FILTER, text_descr="Read Noise"),
        ),
    },
    reference_name=_jwst_reference,
)

#: Headers (one per instrument) that every sample JWST rule of that instrument matches with its first row,
#: in the data model's keywords (what stpipe hands crds.getreferences), plus the exposure type and
#: subarray crds's JWST hooks read (crds/jwst/locate.py).
JWST_DATASET_HEADERS = {
    "NIRCAM": {"META.INSTRUMENT.NAME": "NIRCAM", "META.INSTRUMENT.DETECTOR": "NRCA1", "META.INSTRUMENT.FILTER": "F200W",
               "META.INSTRUMENT.PUPIL": "CLEAR", "META.EXPOSURE.TYPE": "NRC_IMAGE", "META.SUBARRAY.NAME": "FULL",
               "META.EXPOSURE.READPATT": "RAPID", "META.OBSERVATION.DATE": "2023-06-01",
               "META.OBSERVATION.TIME": "00:00:00"},
    "MIRI": {"META.INSTRUMENT.NAME": "MIRI", "META.INSTRUMENT.DETECTOR": "MIRIMAGE", "META.INSTRUMENT.FILTER": "F770W",
             "META.EXPOSURE.TYPE": "MIR_IMAGE", "META.SUBARRAY.NAME": "FULL", "META.EXPOSURE.READPATT": "FAST",
             "META.OBSERVATION.DATE": "2023-06-01", "META.OBSERVATION.TIME": "00:00:00"},
}


#: Use-after dates, oldest first; a sample dataset (2020 and later) picks the last one.
DATES = ("1991-01-01 00:00:00", "2002-03-01 00:00:00", "2009-06-01 00:00:00", "2016-01-01 00:00:00",
         "2019-01-01 00:00:00")


def render_mapping(header: dict, selector: str) -> str:
    """Mapping text with its header sha1sum stamped as the crds client checks it."""
    header = dict(header, sha1sum="")
    body = "".join(f"    {key!r} : {value!r},\n" for key, value in sorted(header.items()))
    text = f"header = {{\n{body}}}\n\nselector = {selector}\n"
    return text.replace("'sha1sum' : '',", f"'sha1sum' : {header_checksum(text)!r},")


def crds_encode(obj: object) -> dict[str, str]:
    """The server's encoding of download_metadata: base64 of gzip of JSON."""
    payload = base64.b64encode(gzip.compress(json.dumps(obj).encode())).decode("ascii")
    return {"crds_encoded": "1.0", "crds_payload": payload}


def default_size(rng: random.Random, name: str) -> int:
    """Test-sized references: mostly a few kB, now and then up to 3 MB."""
    if rng.random() < 0.9:
        return rng.choice([0, 1, 700, 4096, 20_000, 65_536])
    return rng.randint(1_000_000, 3_000_000)


@dataclass
class SampleBucket:
    """The objects of one observatory's cache, by key under the bucket's prefix."""

    observatory: str
    contexts: list[str] = field(default_factory=list)
    mappings: dict[str, bytes] = field(default_factory=dict)
    reference_sizes: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    #: For each context and instrument, each type's choice for the sample dataset: the tests' oracle.
    expected: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    #: For each context, every reference it names.
    references_of: dict[str, set[str]] = field(default_factory=dict)
    #: Pickled contexts by name (``hst_0051.pmap.pkl``), as HST buckets hold them (``sample.pickles``).
    pickles: dict[str, bytes] = field(default_factory=dict)
    #: Whether the bucket holds the mapping files (STScI's HST buckets do not: pickles only).
    with_mappings: bool = True
    #: Whether download_metadata lists the pickles too, with their sha1 (not known of STScI's).
    pickles_listed: bool = False

    def reference_bytes(self, name: str) -> bytes:
        """The deterministic content of reference ``name``."""
        return random.Random(f"{self.seed}:{name}").randbytes(self.reference_sizes[name])

    def objects(self) -> Iterator[tuple[str, Callable[[], bytes]]]:
        """(key, producer of bytes) for every mapping, pickle and reference, below the prefix."""
        for name, data in sorted(self.mappings.items()) if self.with_mappings else ():
            yield f"mappings/{self.observatory}/{name}", (lambda data=data: data)
        for name, data in sorted(self.pickles.items()):
            yield f"pickles/{self.observatory}/{name}", (lambda data=data: data)
        for name in sorted(self.reference_sizes):
            yield f"references/{self.observatory}/{name}", (lambda name=name: self.reference_bytes(name))

    def metadata(self) -> dict[str, dict[str, str]]:
        """download_metadata as the server publishes it: size (a string) and sha1 of every file.

        Every mapping's, even where the bucket holds none: it is the server's list.
        """
        meta = {}
        for name, data in [*self.mappings.items(), *(self.pickles.items() if self.pickles_listed else ())]:
            meta[name] = {"size": str(len(data)), "sha1sum": hashlib.sha1(data).hexdigest()}
        for name in self.reference_sizes:
            data = self.reference_bytes(name)
            meta[name] = {"size": str(len(data)), "sha1sum": hashlib.sha1(data).hexdigest()}
        return meta

    def server_config(self) -> bytes:
        """The config/<obs>/server_config object, as a Python literal dict."""
        latest = self.contexts[-1]
        info = {
            "observatory": self.observatory,
            "operational_context": latest,
            "latest_context": latest,
            "edit_context": latest,
            "versions_context": latest,
            "context_history": [[f"2025-01-{i + 1:02d} 00:00:00", c, "sample"] for i, c in enumerate(self.contexts)],
            "mappings": sorted(self.mappings),
            "bad_files_list": [],
            "bad_files": "",
            "force_remote_mode": False,
            "crds_version": {"str": "14.0.3"},
            "download_metadata": crds_encode(self.metadata()),
        }
        return (repr(info) + "\n").encode()


def generate(
    spec: Observatory,
    contexts: int = 2,
    rows: int = 3,
    dates: int = 1,
    instruments: tuple[str, ...] | None = None,
    size: SizeFunction = default_size,
    seed: int = 0,
    first_serial: int = 50,
) -> SampleBucket:
    """A bucket of ``contexts`` successive contexts of ``spec``'s rules.

    Each rmap has ``rows`` match rows (at most the rule's) of ``dates``
    use-after dates each, so ``rows * dates`` references. Each context after
    the first updates one rmap (a new version naming new references), as a
    real delivery does, so contexts share most of their files.
    """
    rng = random.Random(seed)
    bucket = SampleBucket(observatory=spec.name, seed=seed)
    chosen = {name: rules for name, rules in spec.rules.items() if instruments is None or name in instruments}
    rmap_serial: dict[tuple[str, str], int] = {}
    ref_serial: dict[tuple[str, str], int] = {}
    current: dict[tuple[str, str], tuple[str, str, set[str]]] = {}  # -> (rmap, first-row choice, refs)

    def new_rmap(instrument: str, rule: Rule) -> tuple[str, str, set[str]]:
        key = (instrument, rule.filekind)
        rmap_serial[key] = rmap_serial.get(key, 0) + 1
        name = f"{spec.name}_{instrument.lower()}_{rule.filekind}_{rmap_serial[key]:04d}.rmap"
        lines, names = [], set()
        choice = ""
        for values in rule.rows[:rows]:
            entries = []
            for date in DATES[-dates:]:
                ref_serial[key] = ref_serial.get(key, 0) + 1
                ref = spec.reference_name(instrument, rule, ref_serial[key])
                bucket.reference_sizes[ref] = size(rng, ref)
                names.add(ref)
                if ref.endswith("h") and ref[-3] == "r":  # a GEIS header brings its data file
                    bucket.reference_sizes[ref[:-1] + "d"] = size(rng, ref[:-1] + "d")
                    names.add(ref[:-1] + "d")
                entries.append(f"        {date!r} : {ref!r},\n")
                if values == rule.rows[0]:
                    choice = ref
            lines.append(f"    {values!r} : UseAfter({{\n{''.join(entries)}    }}),\n")
        header = {
            "classes": ("Match", "UseAfter"), "derived_from": "crds-job sample generator",
            "file_ext": rule.extension, "filekind": rule.filekind.upper(), "filetype": rule.filekind.upper(),
            "instrument": instrument, "mapping": "REFERENCE", "name": name, "observatory": spec.name.upper(),
            "parkey": (rule.match_keys, spec.date_keys), "suffix": rule.suffix,
            "text_descr": f"{rule.filekind} reference", **rule.header,
        }
        bucket.mappings[name] = render_mapping(header, "Match({\n" + "".join(lines) + "})").encode()
        return name, choice, names

    everything = [(instrument, rule) for instrument, rules in chosen.items() for rule in rules]
    for instrument, rule in everything:
        current[(instrument, rule.filekind)] = new_rmap(instrument, rule)
    for number in range(contexts):
        if number:
            instrument, rule = everything[(number - 1) % len(everything)]
            current[(instrument, rule.filekind)] = new_rmap(instrument, rule)
        serial = first_serial + number
        pmap = f"{spec.name}_{serial:04d}.pmap"
        selections = {}
        for instrument, rules in chosen.items():
            imap = f"{spec.name}_{instrument.lower()}_{serial:04d}.imap"
            rows_text = "".join(f"    {rule.filekind.upper()!r} : {current[(instrument, rule.filekind)][0]!r},\n"
                                for rule in rules)
            header = {"derived_from": "crds-job sample generator", "instrument": instrument,
                      "mapping": "INSTRUMENT", "name": imap, "observatory": spec.name.upper(), "parkey": ("REFTYPE",)}
            bucket.mappings[imap] = render_mapping(header, "{\n" + rows_text + "}").encode()
            selections[instrument] = imap
        header = {"derived_from": "crds-job sample generator", "mapping": "PIPELINE", "name": pmap,
                  "observatory": spec.name.upper(), "parkey": (spec.instrument_key,)}
        pmap_rows = "".join(f"    {instrument!r} : {imap!r},\n" for instrument, imap in selections.items())
        bucket.mappings[pmap] = render_mapping(header, "{\n" + pmap_rows + "}").encode()
        bucket.contexts.append(pmap)
        bucket.expected[pmap] = {
            instrument.lower(): {rule.filekind: current[(instrument, rule.filekind)][1] for rule in rules}
            for instrument, rules in chosen.items()
        }
        bucket.references_of[pmap] = set().union(*(refs for _, _, refs in current.values()))
    return bucket


def roman(contexts: int = 2, detectors: int = 3, dates: int = 1, size: SizeFunction = default_size,
          seed: int = 0) -> SampleBucket:
    """A Roman bucket: WFI rules, one match row per detector (up to 18)."""
    return generate(ROMAN, contexts=contexts, rows=detectors, dates=dates, size=size, seed=seed)


def hst(contexts: int = 2, dates: int = 2, instruments: tuple[str, ...] | None = None,
        size: SizeFunction = default_size, seed: int = 0) -> SampleBucket:
    """An HST bucket: ACS, WFC3 and WFPC2 rules (WFPC2's GEIS references come in pairs)."""
    return generate(HST, contexts=contexts, rows=99, dates=dates, instruments=instruments, size=size, seed=seed)


def jwst(contexts: int = 2, detectors: int = 3, dates: int = 1, instruments: tuple[str, ...] | None = None,
         size: SizeFunction = default_size, seed: int = 0) -> SampleBucket:
    """A JWST bucket, for a stand-in CRDS server (no JWST S3 bucket exists): NIRCam and MIRI rules,
    one match row per detector (up to NIRCam's 10, MIRI's 3)."""
    return generate(JWST, contexts=contexts, rows=detectors, dates=dates, instruments=instruments, size=size,
                    seed=seed)
