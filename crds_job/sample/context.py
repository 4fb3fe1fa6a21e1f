"""Generate a CRDS bucket's content: contexts, mappings, references, server_config.

The mappings are what the real crds client accepts: the header fields it
requires, the selector classes it knows, and the header ``sha1sum`` stamped
the way the client checks it. Reference bytes are pseudo-random (seeded), so
a bucket is the same every time it is built with the same arguments.
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

#: Roman WFI reference types with their real match keywords (crds/roman/specs).
ROMAN_KINDS: dict[str, tuple[str, ...]] = {
    "dark": ("ROMAN.META.INSTRUMENT.DETECTOR", "ROMAN.META.EXPOSURE.TYPE"),
    "flat": ("ROMAN.META.INSTRUMENT.DETECTOR", "ROMAN.META.INSTRUMENT.OPTICAL_ELEMENT"),
    "gain": ("ROMAN.META.INSTRUMENT.DETECTOR",),
    "readnoise": ("ROMAN.META.INSTRUMENT.DETECTOR", "ROMAN.META.EXPOSURE.TYPE"),
    "linearity": ("ROMAN.META.INSTRUMENT.DETECTOR",),
    "mask": ("ROMAN.META.INSTRUMENT.DETECTOR",),
    "saturation": ("ROMAN.META.INSTRUMENT.DETECTOR",),
    "photom": ("ROMAN.META.INSTRUMENT.DETECTOR",),
    "area": ("ROMAN.META.INSTRUMENT.DETECTOR",),
    "distortion": ("ROMAN.META.INSTRUMENT.DETECTOR", "ROMAN.META.INSTRUMENT.OPTICAL_ELEMENT"),
}
ROMAN_TIME_KEY = "ROMAN.META.EXPOSURE.START_TIME"
ROMAN_VALUES = {
    "ROMAN.META.EXPOSURE.TYPE": "WFI_IMAGE",
    "ROMAN.META.INSTRUMENT.OPTICAL_ELEMENT": "F158",
}
USE_AFTER = "2020-01-01 00:00:00"

#: A header for which every sample Roman rmap has a match (detector WFI01).
ROMAN_DATASET_HEADER = {
    "ROMAN.META.INSTRUMENT.NAME": "WFI",
    "ROMAN.META.INSTRUMENT.DETECTOR": "WFI01",
    "ROMAN.META.EXPOSURE.TYPE": "WFI_IMAGE",
    "ROMAN.META.INSTRUMENT.OPTICAL_ELEMENT": "F158",
    "ROMAN.META.EXPOSURE.START_TIME": "2025-01-01 00:00:00",
}


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
    extra_config: dict = field(default_factory=dict)
    #: For each context, each reference type's choice for ROMAN_DATASET_HEADER: the oracle of the tests.
    expected: dict[str, dict[str, str]] = field(default_factory=dict)

    def reference_bytes(self, name: str) -> bytes:
        """The deterministic content of reference ``name``."""
        rng = random.Random(f"{self.seed}:{name}")
        return rng.randbytes(self.reference_sizes[name])

    def objects(self) -> Iterator[tuple[str, Callable[[], bytes]]]:
        """(key, producer of bytes) for every mapping and reference; config last."""
        for name, data in sorted(self.mappings.items()):
            yield f"mappings/{self.observatory}/{name}", (lambda data=data: data)
        for name in sorted(self.reference_sizes):
            yield f"references/{self.observatory}/{name}", (lambda name=name: self.reference_bytes(name))

    def metadata(self) -> dict[str, dict[str, str]]:
        """download_metadata as the server publishes it: size (a string) and sha1 of every file."""
        meta = {}
        for name, data in self.mappings.items():
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
            "context_history": [[f"2025-01-0{i + 1} 00:00:00", c, "sample"] for i, c in enumerate(self.contexts)],
            "mappings": sorted(self.mappings),
            "bad_files_list": [],
            "bad_files": "",
            "force_remote_mode": False,
            "crds_version": {"str": "14.0.3"},
            "download_metadata": crds_encode(self.metadata()),
        }
        info.update(self.extra_config)
        return (repr(info) + "\n").encode()


def roman(
    contexts: int = 2,
    detectors: int = 3,
    kinds: tuple[str, ...] = tuple(ROMAN_KINDS),
    size: Callable[[random.Random, str], int] = default_size,
    seed: int = 0,
    first_serial: int = 50,
) -> SampleBucket:
    """A Roman bucket with ``contexts`` successive contexts of WFI rules.

    Each context after the first updates one rmap (a new version naming new
    references), as a real delivery does, so that contexts share most files.
    """
    rng = random.Random(seed)
    bucket = SampleBucket(observatory="roman", seed=seed)
    rmap_serial = {kind: 0 for kind in kinds}
    ref_serial = {kind: 0 for kind in kinds}
    current: dict[str, str] = {}
    first_detector_ref: dict[str, str] = {}

    def new_rmap(kind: str) -> str:
        rmap_serial[kind] += 1
        name = f"roman_wfi_{kind}_{rmap_serial[kind]:04d}.rmap"
        keys = ROMAN_KINDS[kind]
        rows = []
        for number in range(1, detectors + 1):
            ref_serial[kind] += 1
            ref = f"roman_wfi_{kind}_{ref_serial[kind]:04d}.asdf"
            bucket.reference_sizes[ref] = size(rng, ref)
            if number == 1:
                first_detector_ref[kind] = ref
            match = (f"WFI{number:02d}",) + tuple(ROMAN_VALUES[key] for key in keys[1:])
            rows.append(f"    {match!r} : UseAfter({{\n        {USE_AFTER!r} : {ref!r},\n    }}),\n")
        header = {
            "classes": ("Match", "UseAfter"),
            "derived_from": "crds-job sample generator",
            "file_ext": ".asdf",
            "filekind": kind.upper(),
            "filetype": kind.upper(),
            "instrument": "WFI",
            "mapping": "REFERENCE",
            "name": name,
            "observatory": "ROMAN",
            "parkey": (keys, (ROMAN_TIME_KEY,)),
            "suffix": kind,
            "text_descr": f"{kind} reference",
        }
        bucket.mappings[name] = render_mapping(header, "Match({\n" + "".join(rows) + "})").encode()
        return name

    for kind in kinds:
        current[kind] = new_rmap(kind)
    for number in range(contexts):
        if number:
            kind = kinds[(number - 1) % len(kinds)]
            current[kind] = new_rmap(kind)
        serial = first_serial + number
        imap = f"roman_wfi_{serial:04d}.imap"
        imap_header = {
            "derived_from": "crds-job sample generator", "instrument": "WFI", "mapping": "INSTRUMENT",
            "name": imap, "observatory": "ROMAN", "parkey": ("REFTYPE",),
        }
        selections = "".join(f"    {kind.upper()!r} : {current[kind]!r},\n" for kind in kinds)
        bucket.mappings[imap] = render_mapping(imap_header, "{\n" + selections + "}").encode()
        pmap = f"roman_{serial:04d}.pmap"
        pmap_header = {
            "derived_from": "crds-job sample generator", "mapping": "PIPELINE", "name": pmap,
            "observatory": "ROMAN", "parkey": ("ROMAN.META.INSTRUMENT.NAME",),
        }
        bucket.mappings[pmap] = render_mapping(pmap_header, "{\n" + f"    'WFI' : {imap!r},\n" + "}").encode()
        bucket.contexts.append(pmap)
        bucket.expected[pmap] = dict(first_detector_ref)
    return bucket
