"""What a warm reads its files from: the one small interface of every source.

``remote.Bucket`` (S3, through s3fs) is the source; ``offline.CacheSource``
(the cache's own copies) stands in for it when S3 cannot be reached. A warm
reads a source's objects by area (``config``, ``mappings``, ``pickles``,
``references``) and name, and nothing else of it.
"""

from __future__ import annotations

from typing import Protocol

from .environments import Location
from .remote import Part


class Source(Protocol):
    location: Location
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
