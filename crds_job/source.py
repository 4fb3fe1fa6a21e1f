"""What a warm reads its files from: the one small interface of every source.

``remote.Bucket`` (S3, through s3fs) and ``crds_server.ServerSource`` (a CRDS
server over HTTPS, through fsspec's HTTP filesystem) are the sources;
``offline.CacheSource`` (the cache's own copies) stands in for either when it
cannot be reached. A warm reads a source's objects by area (``config``,
``mappings``, ``pickles``, ``references``) and name, and nothing else of it.
"""

from __future__ import annotations

from typing import Protocol

from .remote import Part


class Where(Protocol):
    """Where a source's files are, as messages name them."""

    observatory: str
    environment: str
    context_areas: tuple[str, ...]  # where a context may be: its mappings, or its pickle too (a bucket)

    def uri(self, area: str, name: str = "") -> str:
        """The address of ``name`` in ``area`` (of the area itself without a name)."""


class Source(Protocol):
    location: Where
    credentials: str  # how requests are signed, for the log: never a secret
    anonymous: bool  # whether requests go unsigned, as datasets named by s3:// URIs are then read

    async def read(self, area: str, name: str, most: int | None = None) -> bytes:
        """A small object whole (``most``: a bound on its size); ``remote.Missing`` if absent."""

    async def read_part(self, area: str, name: str, size: int, span: tuple[int, int] | None = None,
                        checked: bool = False) -> Part:
        """Bytes ``[start, end)`` of an object of ``size`` bytes (all of it without ``span``)."""

    async def size(self, area: str, name: str) -> int | None:
        """An object's size, or None when there is no such object."""

    async def list_names(self, area: str, suffix: str) -> list[str]:
        """The names in ``area`` ending with ``suffix``."""

    async def name_context(self, requested: str) -> str | None:
        """The literal .pmap for a name only this source can resolve (a date, ``build``), else None:
        the config's own names (``latest``...) are resolved from the config, by ``server_config``."""
