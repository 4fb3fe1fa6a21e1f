"""How the cache's files survive a crash of the machine, not only of the job.

A file is renamed into place only once verified, so a killed *job* never
leaves a bad file. A crashed *machine* can: the rename may reach the disk
before the bytes do, leaving a final name with the right size but bytes that
were never written, which a later warm would trust by its size. An fsync of
each file before its rename prevents that, but each fsync waits for the disk
to flush what was written so far: on the benchmark's VM those flushes cost
0.14-0.45 s of a 2 s warm of large files (bench/RESULTS.md).

So on a local filesystem a warm keeps a journal instead. Before it renames a
file without fsync, a journal naming that file (its size and sha1) is on the
disk: written and fsync'ed while little is yet written, tagged with the
kernel's boot id, and locked by the warm while it runs. A later warm that
finds an unlocked journal of another boot (the machine crashed or restarted
since) re-hashes the files it names and removes the wrong ones before it
trusts anything, then drops the journal. A journal of the current boot names
files whose bytes the kernel holds, which it serves correctly until a crash;
a later warm retires it with one ``syncfs`` once it is old, when there is
little left to flush.

Where the journal cannot be trusted, files are fsync'ed one by one, as before:
on network filesystems (NFS, EFS, Lustre, FUSE...), whose cache may be shared
by machines with different boot ids and whose ``close`` already sends the
bytes to the server; where the kernel has no boot id; and for a folder of the
cache mounted apart, which the retiring ``syncfs`` would not flush.
``--fsync-each`` asks for that everywhere, ``--no-fsync`` for neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .cache import AREAS, DEFAULT_MODE, Cache, c_function, link_refused, nearest_existing, out_of_room, sha1_of
from .errors import CacheError

#: The journals' folder, at the cache's root: crds reads only its own folders.
FOLDER = ".crds-job-journal"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
MOUNTINFO = "/proc/self/mountinfo"
#: Local filesystems whose own journal keeps a new folder's entry once fsync'ed (not ext2).
LOCAL_FILESYSTEMS = frozenset({"ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "bcachefs", "jfs",
                               "tmpfs", "ramfs", "overlay"})
#: A journal of this boot older than this is retired: the kernel has written its pages back by then.
RETIRE_AFTER = 60.0
#: The three modes, as the log names them.
EACH, JOURNAL, NONE = "fsync each file", "journal", "none"

_ESCAPED = re.compile(r"\\([0-7]{3})")
_SYNCFS = c_function("syncfs", ctypes.c_int)


def filesystem_type(path: str, mountinfo: str) -> str | None:
    """The type of the filesystem where ``path`` (absolute, resolved) lies, per ``mountinfo``.

    The innermost mount point wins, and of two at one point the later, which hides the earlier.
    """
    best, kind = "", None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        point = _ESCAPED.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, right.split()[0]
    return kind


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _age(path: str) -> float:
    """Seconds since ``path`` was last modified (0 if it is gone)."""
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0


def _syncfs(fd: int) -> None:
    """Flush the filesystem that holds ``fd`` (every one, where the C library has no ``syncfs``).

    Its failure is raised: a write the disk refused must not let a journal go.
    """
    if _SYNCFS is None:
        os.sync()
    elif _SYNCFS(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _fsync_folder(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(path: str) -> int | None:
    """An exclusive lock on journal ``path``; None if someone holds it or it is gone.

    Not ``cache``'s temp-file lock: a journal is never created here, only taken.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.lstat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except OSError:  # locked, or unlinked by whoever held it
        pass
    os.close(fd)
    return None


async def _wait_for(path: str, log: Any) -> int | None:
    """The lock on journal ``path`` once whoever checks it lets go; None if they dropped it."""
    said = False
    while (fd := _lock(path)) is None:
        if not os.path.exists(path):
            return None
        if not said:  # a warm that seems stuck says why
            log.info("waiting for another warm checking a journal", journal=os.path.basename(path))
            said = True
        await asyncio.sleep(0.2)
    return fd


@dataclass
class Durability:
    """One warm's way of making its renamed files survive a crash (see the module's doc)."""

    root: str
    mode: str
    boot: str | None = None
    _covered: set[str] = field(default_factory=set)
    _held: list[int] = field(default_factory=list)
    _devices: dict[str, int] = field(default_factory=dict)

    @classmethod
    def choose(cls, root: str, fsync: bool, fsync_each: bool) -> Durability:
        boot = _read_text(BOOT_ID) or None
        if not fsync:
            return cls(root, NONE, boot)
        kind = filesystem_type(os.path.realpath(nearest_existing(root)), _read_text(MOUNTINFO) or "")
        if fsync_each or boot is None or kind not in LOCAL_FILESYSTEMS:
            return cls(root, EACH, boot)
        return cls(root, JOURNAL, boot)

    @property
    def folder(self) -> str:
        """The journals' folder; never through a link, which could lead outside the cache."""
        folder = os.path.join(self.root, FOLDER)
        if os.path.islink(folder):
            raise link_refused(folder)
        return folder

    @property
    def writes_back_early(self) -> bool:
        """Whether files' writeback starts part by part, fsync'ed or not (see ``Claim.append``).

        With a journal too: at 16 times the benchmark's small mix (787 MB) a
        warm that left its pages dirty took 13.4 s against 12.3 s with an fsync
        each (medians of 4), and 12.5 s once it started their writeback. On the
        large mix that cost 1.07x of the limit against 1.05x, within the noise
        (12 paired rounds).
        """
        return self.mode != NONE

    def needs_fsync(self, path: str) -> bool:
        """Whether ``path`` must be fsync'ed before its rename: no durable journal names it."""
        return self.mode == EACH or (self.mode == JOURNAL and path not in self._covered)

    # ----- the writer's side ------------------------------------------------------------------

    def _device(self, folder: str) -> int:
        """The device ``folder`` is (or, once made, will be) on."""
        if folder not in self._devices:
            self._devices[folder] = os.stat(nearest_existing(folder)).st_dev
        return self._devices[folder]

    def cover(self, files: Iterable[tuple[str, int, str]]) -> None:
        """Make a journal naming ``files`` (path, size, sha1 or "") durable, before any is renamed.

        In the journal mode only. Not a file already covered, nor one on another
        filesystem than the journal's (a folder of the cache mounted apart), which
        a retiring ``syncfs`` would not flush: those are fsync'ed.
        """
        if self.mode != JOURNAL:
            return
        try:
            home = self._device(self.root)
            new = {path: (size, sha1) for path, size, sha1 in files
                   if path not in self._covered and self._device(os.path.dirname(path)) == home}
            if not new:
                return
            name = f"{self.boot}.{os.getpid()}.{secrets.token_hex(6)}.json"
            body = {"boot_id": self.boot, "files": [{"path": os.path.relpath(path, self.root), "size": size,
                                                     "sha1": sha1 or None} for path, (size, sha1) in new.items()]}
            self._write(name, json.dumps(body).encode("utf-8"))
        except OSError as exc:
            raise out_of_room(exc, self.root) or CacheError(
                f"cannot write a journal in {self.root}: {exc.strerror}", "check the cache volume"
            ) from exc
        self._covered.update(new)

    def _write(self, name: str, data: bytes) -> None:
        """Write journal ``name`` durably under its final name, and keep holding its lock."""
        folder = self.folder
        os.makedirs(folder, exist_ok=True)
        temp, final = os.path.join(folder, f".{name}.tmp"), os.path.join(folder, name)
        try:
            with open(temp, "xb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # before its final name is visible: a live journal is locked
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
                os.rename(temp, final)
                self._held.append(os.dup(handle.fileno()))  # the same open file, so the same lock
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_folder(folder)
        if len(self._held) == 1:  # the folder's own entry too, whoever made it
            _fsync_folder(self.root)

    def close(self) -> None:
        """The warm is over: its journals stay, unlocked and dated now, for a later warm to retire."""
        while self._held:
            fd = self._held.pop()
            with contextlib.suppress(OSError):  # only the age a later warm sees
                os.utime(fd)
            os.close(fd)

    # ----- a later warm's side ----------------------------------------------------------------

    async def recover(self, log: Any) -> None:
        """Deal with the journals other warms left, before anything in the cache is read."""
        if not os.path.isdir(self.root):
            return
        cache = Cache(self.root, "", DEFAULT_MODE)  # for its locks and checks, which need no layout
        try:
            await self._recover(cache, log)
        except OSError as exc:
            raise out_of_room(exc, self.folder) or CacheError(
                f"cannot check the journals in {self.folder}: {exc.strerror}",
                f"check the cache volume; if a journal is broken, {_UNKNOWN_FILES}",
            ) from exc

    async def _recover(self, cache: Cache, log: Any) -> None:
        folder = self.folder
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return
        writable = cache.writable()
        old: list[str] = []
        for name in names:
            path = os.path.join(folder, name)
            if name.startswith("."):  # never renamed into place, so it covered nothing
                if writable and _age(path) > RETIRE_AFTER and (fd := _lock(path)) is not None:
                    os.unlink(path)
                    os.close(fd)
            elif self.boot is not None and name.startswith(self.boot + "."):
                if writable and _age(path) > RETIRE_AFTER:
                    old.append(path)
            elif (fd := await _wait_for(path, log)) is None:
                continue  # another warm checked it meanwhile
            elif not writable:
                os.close(fd)
                raise CacheError(
                    f"cache {self.root} holds files written just before the machine crashed or "
                    f"restarted, not yet checked (journal {path})",
                    "mount it writable for one crds-job run, which checks them",
                )
            else:
                await _check_journal(fd, path, cache, log)
        if old:
            await _retire(old, log)


async def _check_journal(fd: int, path: str, cache: Cache, log: Any) -> None:
    """Re-hash the files a journal of another boot names, remove the wrong ones, then drop it."""
    try:
        files = _journal_files(fd, path)
        removed = [rel for rel, size, sha1 in files if not await _check_file(cache, rel, size, sha1)]
        await asyncio.to_thread(_syncfs, fd)  # the removals are on the disk before the journal goes
        os.unlink(path)
    finally:
        os.close(fd)
    log.warning("checked the files a warm wrote just before the machine crashed or restarted",
                journal=os.path.basename(path), files=len(files), removed=len(removed), first=removed[:5])


async def _retire(paths: list[str], log: Any) -> None:
    """Flush the files that finished journals of this boot name, with one ``syncfs``, then drop them."""
    held = [(path, fd) for path in paths if (fd := _lock(path)) is not None]  # not those still in use
    try:
        if held:
            try:
                await asyncio.to_thread(_syncfs, held[0][1])
            except OSError as exc:  # they stay, for the next warm to retry, or to check after a crash
                log.warning("could not flush the cache's filesystem; its journals are kept", error=str(exc))
                return
            for path, _fd in held:
                os.unlink(path)
    finally:
        for _path, fd in held:
            os.close(fd)


def _journal_files(fd: int, path: str) -> list[tuple[str, int, str | None]]:
    """The (relative path, size, sha1) a journal names, each path checked to lie in the cache's folders."""
    with os.fdopen(os.dup(fd), "rb") as handle:
        data = handle.read()
    try:
        files = [(str(f["path"]), int(f["size"]), f["sha1"]) for f in json.loads(data)["files"]]
    except (ValueError, KeyError, TypeError, OverflowError) as exc:
        raise CacheError(f"journal {path} is unreadable ({exc})", _UNKNOWN_FILES) from None
    for rel, _size, _sha1 in files:
        parts = rel.split(os.sep)
        if parts[0] not in AREAS or ".." in parts or os.path.normpath(rel) != rel or "\0" in rel:
            raise CacheError(f"journal {path} names {rel!r}, a path outside the cache's folders", _UNKNOWN_FILES)
    return files


#: What to do with a journal that cannot be trusted: which files it named, and so which a crash may
#: have damaged, is unknown; --verify-existing re-hashes only the files of the warm it runs with.
_UNKNOWN_FILES = ("remove it, then empty the cache, or run --verify-existing once for every context and "
                  "observatory warmed into it")


async def _check_file(cache: Cache, rel: str, size: int, sha1: str | None) -> bool:
    """Keep the file at ``rel`` only if its size and sha1 are the journal's; False if removed."""
    final = os.path.join(cache.root, rel)
    claim = await cache.claim(final)  # no writer may replace it while it is checked
    try:
        if os.path.islink(final):  # linked since to a lower layer's file (--lower) by a later warm: not written here
            return True
        info = cache.present(final)
        if info is None:
            return True
        if sha1 and info.st_size == size and (await asyncio.to_thread(sha1_of, final))[0] == sha1:
            return True
        os.unlink(final)
        return False
    finally:
        claim.release()
