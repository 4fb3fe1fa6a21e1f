"""The bucket's ``config/<obs>/server_config``: contexts, and every file's size and sha1.

The crds client reads this object with ``ast.literal_eval``: a Python literal
dict, never code. Its ``download_metadata`` (``crds_encode``d: base64 of gzip
of JSON) maps every file name to its size and sha1; that is what each
downloaded byte is checked against. The object is untrusted input, so its
size, its decompressed size and its shape are all bounded and checked.
"""

from __future__ import annotations

import ast
import base64
import binascii
import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

from . import names
from .errors import BucketContentError, ContextAbsent, UsageError

#: The object's name in config/<obs>/ (the only config object the client knows).
NAME = "server_config"

#: Far above any real server_config (HST's lists tens of thousands of files).
MAX_CONFIG_BYTES = 64 * 2**20
#: Bound on the JSON that download_metadata inflates to (a gzip bomb stops here).
MAX_METADATA_BYTES = 512 * 2**20

_SHA1 = re.compile(r"[0-9a-f]{40}\Z")
DATE_CONTEXT = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class FileInfo:
    """What the bucket publishes about one file."""

    size: int
    sha1: str  # "" when the bucket publishes none; the file is then size-checked only


@dataclass(frozen=True)
class ServerConfig:
    observatory: str
    raw: dict[str, Any]  # the dict as published, for the cache's own copy
    metadata: dict[str, FileInfo]

    @property
    def bad_files(self) -> list[str]:
        return [str(name) for name in self.raw.get("bad_files_list", []) or []]

    def context(self, field: str) -> str | None:
        value = self.raw.get(field)
        return str(value) if value else None

    @property
    def default_context(self) -> str | None:
        """The context the crds client uses when none is pinned: latest, else operational."""
        return self.context("latest_context") or self.context("operational_context")


def _fail(what: str) -> BucketContentError:
    return BucketContentError(
        f"the bucket's {NAME} is unusable: {what}",
        "check --bucket/--prefix point at a CRDS cache, or report it to the bucket's maintainers",
    )


def inflate(payload: str) -> bytes:
    """A ``crds_payload`` (base64 of gzip), inflated within a bound: the client's ``crds_decode``."""
    # Line breaks, as base64.encodebytes writes them, the client's decoder skips: so do we.
    compressed = base64.b64decode("".join(payload.split()).encode("ascii"), validate=True)
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
    data = inflater.decompress(compressed, MAX_METADATA_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"download_metadata inflates past {MAX_METADATA_BYTES} bytes")
    return data


def decode_metadata(value: Any) -> dict[str, FileInfo]:
    """Decode ``download_metadata`` (crds_encode'd or plain) into FileInfo by name."""
    try:
        if isinstance(value, dict) and "crds_encoded" in value:
            value = json.loads(inflate(str(value["crds_payload"])))
    except (KeyError, ValueError, TypeError, binascii.Error, zlib.error, UnicodeError, RecursionError) as exc:
        raise _fail(f"download_metadata does not decode ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise _fail("download_metadata is not a dict of files")
    files: dict[str, FileInfo] = {}
    for name, info in value.items():
        try:
            size = int(info["size"])
            sha1 = str(info.get("sha1sum", "") or "").lower()
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError):  # Overflow: JSON's Infinity
            raise _fail(f"download_metadata entry {name!r} has no integer size") from None
        if size < 0:
            raise _fail(f"download_metadata entry {name!r} has a negative size")
        if sha1 in ("none", ""):
            sha1 = ""
        elif not _SHA1.match(sha1):
            raise _fail(f"download_metadata entry {name!r} has a malformed sha1sum {sha1[:60]!r}")
        files[str(name)] = FileInfo(size=size, sha1=sha1)
    return files


def parse(data: bytes, observatory: str) -> ServerConfig:
    """Parse the bytes of a server_config object, refusing anything but a literal dict."""
    if len(data) > MAX_CONFIG_BYTES:
        raise _fail(f"it is {len(data)} bytes, over the {MAX_CONFIG_BYTES} a real one could be")
    try:
        raw = ast.literal_eval(data.decode("utf-8"))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise _fail(f"it is not a Python literal dict ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise _fail(f"it is a {type(raw).__name__}, not a dict")
    published = str(raw.get("observatory", "")).lower()
    if published != observatory:
        raise _fail(f"it is for observatory {published!r}, not {observatory!r}")
    if "download_metadata" not in raw:
        raise _fail("it has no download_metadata, so no file could be checked")
    bad_files = raw.get("bad_files_list") or []
    if not isinstance(bad_files, (list, tuple)) or not all(isinstance(name, str) for name in bad_files):
        raise _fail("its bad_files_list is not a list of file names")
    return ServerConfig(observatory=observatory, raw=raw, metadata=decode_metadata(raw["download_metadata"]))


def resolve_context(requested: str | None, config: ServerConfig) -> str:
    """Turn the requested context (or none) into the literal .pmap to warm.

    The rules are the crds client's (``get_final_context``), so the command
    that runs afterwards would pick the same context by itself.
    """
    obs = config.observatory
    symbolic = {
        None: "latest_context",
        "latest": "latest_context",
        "operational": "latest_context",
        f"{obs}-latest": "latest_context",
        f"{obs}-operational": "latest_context",
        f"{obs}-edit": "edit_context",
        f"{obs}-versions": "versions_context",
    }
    key = requested.lower() if requested else None
    if key in symbolic:
        field = symbolic[key]
        context = config.default_context if field == "latest_context" else config.context(field)
        if not context:
            raise _fail(f"it names no {field}")
        if not names.is_context_name(context, obs):
            raise _fail(f"its {field} {context!r} is not a {obs} .pmap name")
        return context
    assert requested is not None
    # ContextAbsent: with --source auto, the CRDS server is asked instead.
    if key in ("build", f"{obs}-build"):
        raise ContextAbsent(f"context {requested!r} needs a CRDS server to resolve",
                            "pin a literal .pmap with --context or CRDS_CONTEXT, or read a server (--source)")
    if DATE_CONTEXT.search(requested):
        raise ContextAbsent(f"date-based context {requested!r} cannot be resolved from S3 (crds refuses it too)",
                            "pin a literal .pmap with --context or CRDS_CONTEXT, or read a server (--source)")
    if not names.is_context_name(requested, obs):
        raise UsageError(f"context {requested!r} is not a {obs} .pmap name",
                         f"use e.g. {obs}_0042.pmap, latest or {obs}-operational")
    return requested


#: Fields the cached copy adds or stamps; the rest is the bucket's, as published.
_CACHE_FIELDS = ("status", "connected", "last_synced")


def same_as_cached(config: ServerConfig, cached_text: str) -> bool:
    """True when the cache's server_config already says what the bucket says."""
    try:
        cached = ast.literal_eval(cached_text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    if not isinstance(cached, dict):
        return False

    def published(info: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in info.items() if key not in _CACHE_FIELDS}

    return published(cached) == published(config.raw)


def for_cache(config: ServerConfig, synced_at: str) -> str:
    """The server_config text the offline client will read from the cache.

    As ``crds sync`` writes it: the bucket's dict, marked as not connected.
    ``last_synced`` is added if the bucket has none, because the client reads
    that attribute when it falls back to the cached config.
    """
    info = dict(config.raw)
    info["status"] = "cache"
    info["connected"] = False
    info.setdefault("last_synced", synced_at)
    return repr(info) + "\n"
