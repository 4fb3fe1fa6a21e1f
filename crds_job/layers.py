"""Lower layers: read-only caches under the writable one (``--lower``).

A shared cache (an EFS volume, a cache baked into a volume image) often holds
most of what a job needs. A reference found there, at its path in that cache's
own layout, as a regular file of the planned size (and sha1, with
``--verify-existing``), is not fetched: the writable cache gets a symbolic link
to it, which the crds library follows, so the command sees one cache.

The rules that keep this safe: a layer is only ever read; a file is taken from
a layer only if it is a regular file there (a link inside a layer is not
followed); the link crds-job makes is absolute and leads to the file's real
path; and a link found in the writable cache is accepted only if it leads into
a layer named for this job (``Cache.lower_target``), else it is refused. Only
references come from a layer: the context's rules (mappings, pickles) and the
config are what the warm reads and checks itself, always from its source.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from .cache import Cache, sha1_of
from .errors import CacheError, UsageError
from .plan import Entry


def real_roots(paths: Sequence[str], cache: str) -> tuple[str, ...]:
    """The layers' real paths, checked: existing folders, none of them the cache or inside it (or it in one)."""
    roots = []
    upper = os.path.realpath(cache)
    for path in paths:
        real = os.path.realpath(path)
        if not os.path.isdir(real):
            raise UsageError(f"--lower {path} is not a folder", "name an existing cache folder, or drop it")
        if os.path.commonpath([real, upper]) in (real, upper):
            raise UsageError(f"--lower {path} and the cache {cache} overlap",
                             "a lower layer is another cache than the one filled")
        roots.append(real)
    return tuple(dict.fromkeys(roots))


class Layers:
    """The lower layers of one warm, in the order named: the first that holds a file gives it."""

    def __init__(self, roots: tuple[str, ...], observatory: str) -> None:
        self.caches = [Cache.open(root, observatory, None) for root in roots]

    def __bool__(self) -> bool:
        return bool(self.caches)

    def find(self, entry: Entry) -> str | None:
        """The path of ``entry``'s file in the first layer that holds it as a regular file of its size."""
        if entry.area != "references":
            return None
        for layer in self.caches:
            path = layer.path(entry)
            if os.path.realpath(path) != path:  # reached through a link inside the layer: not followed
                continue
            try:
                info = os.lstat(path)
            except OSError:  # absent, or unreadable: as good as absent in a layer that is only read
                continue
            if stat.S_ISREG(info.st_mode) and info.st_size == entry.size:
                return path
        return None

    @staticmethod
    def verified(entry: Entry, path: str) -> bool:
        """Whether the layer's file has the planned sha1 (``--verify-existing``)."""
        try:
            return entry.accepts_sha1(sha1_of(path)[0])
        except (OSError, CacheError):
            return False
