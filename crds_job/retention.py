"""Retention: prune a long-lived cache without removing a file anyone may still open.

A cache that outlives one job (a shared volume, a node's disk) only grows: a
context every few weeks. ``crds-job --prune`` keeps the files of the contexts
to keep (``--keep-contexts N`` most recently warmed here, ``--keep`` named
ones) and/or caps the references' bytes by least recent use
(``--max-bytes``), and removes the rest.

Safe beside warms and calibrations on the same cache, through three things
in ``.crds-job-leases/`` at the cache's root:

- the **gate** (``prune.lock``): a warm holds it shared from before it looks
  at what the cache holds until its lease is written; a prune holds it
  exclusively while it reads the leases and removes files. So a prune never
  runs between a warm's survey of the cache and that warm's lease.
- a **lease** per warm (``leases/<id>.json``): the files of its plan, and an
  exclusive ``flock`` on the lease held by the process for as long as it
  lives: through the ``exec``, by the calibration command that inherits its
  descriptor. A lease whose lock can be taken is expired (its process is
  gone; on NFSv4/EFS a dead client's locks lapse with its lease). A file
  named by a live lease is never removed.
- a **record** per context warmed (``contexts/<obs>/<context>.json``): every
  file warmed for it here and when it was last warmed: what ``--keep-contexts``
  and ``--keep`` keep. The use that ``--max-bytes`` orders by is a file's
  access time, which each warm that plans the file sets to now (reads may too).

A file younger than ``GRACE`` seconds is never removed either: a warm of a
cache that did not exist yet writes its first mappings before it can hold
the gate of a folder that did not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import answers
from .cache import AREAS, TEMP_SUFFIX, Cache, out_of_room
from .errors import CacheError, UsageError

FOLDER = ".crds-job-leases"
#: Seconds since its last use (``last_use``) under which a file is never pruned.
GRACE = 600.0
#: Seconds a warm waits for a prune to end before it says why it waits.
PATIENCE = 10.0
#: The areas a prune removes from: the config is every context's, and never removed.
PRUNED = tuple(area for area in AREAS if area != "config")


def _folder(root: str, *parts: str) -> str:
    return os.path.join(root, FOLDER, *parts)


def _lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _locked_or_said(fd: int, kind: int, root: str) -> bool:
    """``_lock``, with a filesystem that has no locks (an NFS mount with ``nolock`` off, ENOLCK) said so."""
    try:
        return _lock(fd, kind)
    except OSError as exc:
        raise CacheError(f"cannot lock {_folder(root, 'prune.lock')}: {exc.strerror}",
                         "mount the cache with locks (NFS: without nolock): a cache shared by jobs needs them"
                         ) from None


@dataclass
class Gate:
    """The gate of one cache, held shared (a warm) or exclusive (a prune); ``release`` lets it go."""

    fd: int | None = None

    @classmethod
    async def enter(cls, root: str, exclusive: bool, log: Any, patience: float = PATIENCE) -> Gate:
        """Wait for the gate of the cache at ``root`` (which exists), saying so after ``patience`` s."""
        try:
            os.makedirs(_folder(root), exist_ok=True)
            fd = os.open(_folder(root, "prune.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise CacheError(f"cannot open {_folder(root, 'prune.lock')}: {exc.strerror}",
                             f"let uid {os.geteuid()} write {_folder(root)} (every job on this cache writes its "
                             "lease there), or mount the cache read-only for this job") from None
        kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        waited = 0.0
        try:
            while not _locked_or_said(fd, kind, root):
                if waited < patience <= waited + 0.2:
                    log.info("waiting for the warms of this cache to reach their leases" if exclusive
                             else "waiting for a prune of this cache to end", cache=root)
                waited += 0.2
                await asyncio.sleep(0.2)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def release(self) -> None:
        """Let the gate go (again: a no-op)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def _writing(what: str) -> Iterator[None]:
    """A failure to write crds-job's own bookkeeping: a full disk (71), else the cache's (73)."""
    try:
        yield
    except OSError as exc:
        raise out_of_room(exc, what) or CacheError(f"cannot write {what}: {exc.strerror}",
                                                   "make the cache writable by the job's user") from None


def take_lease(root: str, observatory: str, context: str, files: Iterable[str]) -> int:
    """Write a lease on ``files`` (paths relative to the cache) and hold it: the returned descriptor
    is inheritable, so the command this process execs holds it too, until it ends."""
    with _writing(_folder(root, "leases")):
        return _take_lease(root, observatory, context, files)


def _take_lease(root: str, observatory: str, context: str, files: Iterable[str]) -> int:
    folder = _folder(root, "leases")
    os.makedirs(folder, exist_ok=True)
    name = uuid.uuid4().hex
    temp = os.path.join(folder, f".{name}{TEMP_SUFFIX}")
    fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # locked before it has its name: never seen unlocked while alive
        body = {"observatory": observatory, "context": context, "host": socket.gethostname(), "pid": os.getpid(),
                "started": time.time(), "files": sorted(set(files))}
        os.write(fd, json.dumps(body).encode())
        os.rename(temp, os.path.join(folder, f"{name}.json"))
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.set_inheritable(fd, True)
    with contextlib.suppress(OSError):  # housekeeping: a failure here is the next prune's to see
        _expire_some(folder, EXPIRED_PER_LEASE)
    return fd


#: Expired leases a warm removes as it takes its own: a cache that is never pruned does not collect them.
EXPIRED_PER_LEASE = 4


def _expire_some(folder: str, most: int) -> None:
    """Remove up to ``most`` expired leases (their lock free), in a warm: under the gate held shared, so no
    prune reads them meanwhile; another warm may remove the same one first."""
    removed = 0
    for name in os.listdir(folder):
        if removed >= most:
            return
        if name.startswith("."):  # another warm's lease being written: locked only once it is opened
            continue
        path = os.path.join(folder, name)
        if _expired(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            removed += 1


def _expired(path: str) -> bool | None:
    """Whether the lease at ``path`` is expired: its lock is free, its process gone. None: no such lease.

    Tested with a shared lock, which its holder's exclusive one refuses: over NFS a lock is a byte-range
    lock, and an exclusive one would need the file open for writing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return _lock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)


def record(root: str, observatory: str, context: str, files: Iterable[str]) -> None:
    """Add ``files`` to what was warmed here for ``context``, and date it now: what a prune keeps."""
    with _writing(_folder(root, "contexts", observatory)):
        _record(root, observatory, context, files)


def _record(root: str, observatory: str, context: str, files: Iterable[str]) -> None:
    folder = _folder(root, "contexts", observatory)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{context}.json")
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            known = _read(path).get("files", [])
        except CacheError:  # a record a crash left unreadable: rewritten from this warm's files
            known = []
        temp = f"{path}.{os.getpid()}{TEMP_SUFFIX}"
        with open(temp, "w", encoding="utf-8") as handle:
            json.dump({"context": context, "warmed": time.time(), "files": sorted(set(known) | set(files))}, handle)
        os.replace(temp, path)


def touch(paths: Iterable[str]) -> None:
    """Mark files as used now: their access time (a link's own), which is what ``--max-bytes`` orders by.
    Not the modification time, which stays the time the file was written."""
    now = time.time_ns()
    for path in paths:
        with contextlib.suppress(OSError):  # gone, or a read-only cache: use is a hint, not a promise
            os.utime(path, ns=(now, os.lstat(path).st_mtime_ns), follow_symlinks=False)


def last_use(info: os.stat_result) -> float:
    """When a file was last used: warmed (its access time, set by ``touch``), read, or written."""
    return max(info.st_atime, info.st_mtime)


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            found = json.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CacheError(f"cannot read {path}: {exc}", "remove that file (what it named is then no longer kept by "
                         f"it); never the whole {FOLDER} folder while jobs run") from None
    return found if isinstance(found, dict) else {}


@dataclass
class Pruned:
    """What a prune removed (or, dry, would remove) and kept."""

    removed: list[tuple[str, int]] = field(default_factory=list)  # (path relative to the cache, bytes)
    kept_contexts: list[str] = field(default_factory=list)
    leased: int = 0  # files kept because a live lease names them
    leases_live: int = 0
    leases_expired: int = 0
    young: int = 0  # files kept because they were used less than GRACE seconds ago
    references_bytes: int = 0  # what the references hold after the prune

    def report(self) -> dict[str, Any]:
        return {"removed_files": len(self.removed), "removed_bytes": sum(size for _, size in self.removed),
                "kept_contexts": self.kept_contexts, "leased_files": self.leased, "leases_live": self.leases_live,
                "leases_expired": self.leases_expired, "young_files": self.young,
                "references_bytes": self.references_bytes}


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CacheError(f"cannot remove {path}: {exc.strerror}", "prune as the user the cache's files belong to"
                         ) from None


def _leases(root: str, expire: bool) -> tuple[set[str], int, int]:
    """The files named by live leases, and how many leases were live and expired (removed if ``expire``)."""
    folder = _folder(root, "leases")
    files: set[str] = set()
    live = expired = 0
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        state = True if name.endswith(TEMP_SUFFIX) else _expired(path)  # a temp: its writer died before renaming it
        if state is None:
            continue
        if state:
            expired += 1
            if expire:
                _remove(path)
        else:
            live += 1
            files.update(_read(path).get("files", []))
    return files, live, expired


def _contexts(root: str, observatory: str) -> dict[str, dict[str, Any]]:
    folder = _folder(root, "contexts", observatory)
    if not os.path.isdir(folder):
        return {}
    return {name[:-len(".json")]: _read(os.path.join(folder, name))
            for name in os.listdir(folder) if name.endswith(".json")}


def _files(cache: Cache) -> Iterator[tuple[str, os.stat_result]]:
    """Every file (or link) of the observatory's pruned areas: relative path, lstat."""
    for area in PRUNED:
        top = cache.folder(area)
        if os.path.realpath(top) != os.path.join(os.path.realpath(cache.root), area, cache.observatory):
            raise CacheError(f"{top} leads outside the cache {cache.root} through a symbolic link",
                             "remove the link; a prune removes files only inside the cache")
        for folder, _, names in os.walk(top):
            for name in names:
                path = os.path.join(folder, name)
                with contextlib.suppress(FileNotFoundError):
                    yield os.path.relpath(path, cache.root), os.lstat(path)


async def prune(cache: Cache, keep_contexts: int | None, keep: tuple[str, ...], max_bytes: int | None,
                dry_run: bool, log: Any, now: float | None = None) -> Pruned:
    """Prune ``cache`` (one observatory's part of it) under its gate; see the module's doc."""
    if not os.path.isdir(cache.root):
        raise UsageError(f"cache {cache.root} does not exist", "point --cache at the cache to prune")
    gate = await Gate.enter(cache.root, exclusive=True, log=log)
    try:
        return _prune(cache, keep_contexts, keep, max_bytes, dry_run, now if now is not None else time.time())
    finally:
        gate.release()


def _prune(cache: Cache, keep_contexts: int | None, keep: tuple[str, ...], max_bytes: int | None, dry_run: bool,
           now: float) -> Pruned:
    done = Pruned()
    leased, done.leases_live, done.leases_expired = _leases(cache.root, expire=not dry_run)
    records = _contexts(cache.root, cache.observatory)
    by_context = keep_contexts is not None or bool(keep)
    unknown = [name for name in keep if name not in records]
    if unknown:
        raise UsageError(f"no warm of {', '.join(unknown)} is recorded in cache {cache.root}",
                         f"keep contexts warmed here: {', '.join(sorted(records)) or 'none is recorded'}")
    recent = sorted(records, key=lambda name: records[name].get("warmed", 0), reverse=True)
    kept = set(keep) | set(recent[:keep_contexts or 0])
    done.kept_contexts = sorted(kept)
    needed = {path for name in kept for path in records[name].get("files", [])}
    named = {path for name in keep for path in records[name].get("files", [])}  # beyond even --max-bytes
    files = dict(_files(cache))
    removable: list[tuple[float, str, int]] = []  # (last use, path, bytes): oldest first once sorted
    for path, info in files.items():
        if os.path.basename(path).startswith("."):  # a temp file: a writer's, or swept by the next warm
            continue
        if path in leased:
            done.leased += 1
        elif now - last_use(info) < GRACE:
            done.young += 1
        else:
            removable.append((last_use(info), path, info.st_size))
    removable.sort()
    going = [(path, size) for _, path, size in removable if by_context and path not in needed]
    gone = {path for path, _ in going}
    total = sum(info.st_size for path, info in files.items()
                if path.startswith("references" + os.sep) and path not in gone)
    if max_bytes is not None:
        for _, path, size in removable:
            if total <= max_bytes:
                break
            if path.startswith("references" + os.sep) and path not in gone and path not in named:
                going.append((path, size))
                total -= size
    done.references_bytes = total
    done.removed = going
    if not dry_run:
        for path, _ in going:
            _remove(os.path.join(cache.root, path))
        if by_context:
            for name in set(records) - kept:
                for suffix in (".json", ".json.lock"):
                    _remove(os.path.join(_folder(cache.root, "contexts", cache.observatory), name + suffix))
                shutil.rmtree(answers.folder(cache.root, cache.observatory, name), ignore_errors=True)  # a saving
        cache.sweep(also=(answers.FOLDER,))
    return done
