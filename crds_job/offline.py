"""The cache itself as the source, for when S3 cannot be reached.

A calibration whose cache is already complete needs no network: the command
runs offline anyway. So when S3 keeps failing after every retry (``remote.
Unreachable``), ``warm`` goes through the same steps once more with this
source in the bucket's place: the bucket's config and the context's rules
are read from the cache's own copies (the mappings checked against the
config's sha1s, as always), and nothing else can be read. A warm that needs
any file the cache lacks then fails, and the job ends with S3's own error.

It answers the few reads a warm makes of a source (``read``, ``read_part``,
``size``, ``list_names``), as ``remote.Bucket`` does.
"""

from __future__ import annotations

import os

from . import names
from .cache import Cache, open_in_cache
from .remote import Missing, Oversized, Part
from .source import Where

#: How the log names the credentials of this source.
CREDENTIALS = "none: the cache alone"


class CacheSource:
    """The files of one cache, read as a warm reads a bucket's."""

    def __init__(self, cache: Cache, location: Where, anonymous: bool) -> None:
        self.location = location
        self.credentials = CREDENTIALS
        self.anonymous = anonymous  # as S3 was read before it went away: datasets named by s3:// URIs still are
        self._cache = cache

    def _path(self, area: str, name: str) -> str:
        return os.path.join(self._cache.folder(area), names.check_name(name))

    def _absent(self, area: str, name: str) -> Missing:
        return Missing(f"{name} is not in the cache's {area}", "the cache cannot stand in for the bucket")

    async def read(self, area: str, name: str, most: int | None = None) -> bytes:
        """The cache's copy of a small file (the bucket's config, as the last warm wrote it)."""
        try:
            with open_in_cache(self._path(area, name)) as handle:
                data = handle.read(most + 1 if most is not None else -1)
        except FileNotFoundError:
            raise self._absent(area, name) from None
        if most is not None and len(data) > most:
            raise Oversized(f"the cache's {name} is over the {most} bytes any such file could be",
                            "remove it: the next warm from the bucket writes it again")
        return data

    async def read_part(self, area: str, name: str, size: int, span: tuple[int, int] | None = None,
                        checked: bool = False) -> Part:
        """Nothing is fetched from a cache into itself: a file it lacks is missing here."""
        raise self._absent(area, name)

    async def size(self, area: str, name: str) -> int | None:
        """The size of the cache's copy (a pickle's, whose size the metadata may not publish)."""
        info = self._cache.present(self._path(area, name))
        return None if info is None else info.st_size

    async def name_context(self, requested: str) -> str | None:
        """Offline, only the cache's config names contexts: a date or ``build`` needs the source."""
        return None

    async def list_names(self, area: str, suffix: str) -> list[str]:
        try:
            found = os.listdir(self._cache.folder(area))
        except FileNotFoundError:
            return []
        return sorted(name for name in found if name.endswith(suffix) and not name.startswith("."))
