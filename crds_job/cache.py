"""The local CRDS cache (``CRDS_PATH``): where each file goes, and how it gets there safely.

The layout is the crds client's: ``mappings/<obs>/``, ``references/<obs>/``
(flat, or one folder per instrument), ``config/<obs>/``. The client learns the
reference layout only from ``config/<obs>/ref_cache_subdir_mode``, so that
file is always written, and an existing cache keeps the layout it has.

A file reaches its final name only by ``rename`` after its size and sha1
matched, so a final name never holds partial or unverified bytes. The bytes
are written to ``.<name>.crds-job.part`` beside it, and that temp file is also
the lock: its writer holds an exclusive ``flock`` on it, so several processes
(or pods sharing a volume) never write the same file at once, a waiting one
takes over a temp file whose writer died, and a stale temp file left by a
killed job is removed by the next run. ``flock`` is honoured across NFSv4/EFS
clients. On a volume mounted without locks across nodes (``nolock``) two
writers share one temp file and can corrupt it: docs/cache.md says to let one
warm fill such a cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from . import names
from .errors import DESCRIPTORS_EXHAUSTED, CacheError, CrdsJobError, DiskFullError, TooManyOpenFiles
from .plan import Entry

MODE_FILE = "ref_cache_subdir_mode"
#: The folders of a CRDS cache (each holding one folder per observatory), as the crds client lays
#: them out; crds-job writes in these and nowhere else. S3 buckets use the same names.
AREAS = ("config", "mappings", "pickles", "references")
MODES = ("flat", "instrument")
DEFAULT_MODE = "flat"  # as S3 stores references, and as crds_s3_set configures
TEMP_SUFFIX = ".crds-job.part"
#: Seconds a warm waits for another writer of a file before it says so in the log.
CLAIM_PATIENCE = 10.0
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
#: On Linux, DONTNEED on dirty pages starts their writeback without waiting for it.
_ADVICE = getattr(os, "POSIX_FADV_DONTNEED", None) if hasattr(os, "posix_fadvise") else None
#: fallocate(2)'s flag to reserve blocks without changing the file's size.
_KEEP_SIZE = 1
#: The errors that mean the cache's filesystem (or the user's quota on it) is full.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def c_function(name: str, *argtypes: Any) -> Any:
    """The C library's function ``name`` (returning an int, errno kept), None where there is none."""
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):  # no such C library or function: macOS, some minimal images
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


def _find_fallocate() -> Callable[[int, int, int, int], int] | None:
    """The C library's ``fallocate``, where there is one with a 64-bit offset.

    Not ``os.posix_fallocate``: it changes the file's size (which the size check
    reads) and, where the filesystem cannot reserve (NFS before 4.2, EFS), glibc
    emulates it by writing every block, which would double the bytes written.
    """
    if ctypes.sizeof(ctypes.c_long) != 8:
        return None
    return c_function("fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)


_FALLOCATE = _find_fallocate()


#: What tells a file from its replacement under the same name: a rename brings another inode.
FileId = tuple[int, int]


def file_id(info: os.stat_result) -> FileId:
    return (info.st_dev, info.st_ino)


@contextlib.contextmanager
def reading(path: str) -> Iterator[None]:
    """Reading what the cache holds: a file or folder the job may not read stops it with exit 73.

    An absent file (``FileNotFoundError``) is the caller's to handle: usually not an error.
    """
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # opened by ``open_in_cache``: a link
            raise link_refused(exc.filename or path) from None
        raise CacheError(f"cannot read {exc.filename or path} in the cache: {exc.strerror}",
                         "make the cache readable by the job's user (its files and the folders above them), "
                         "or point --cache elsewhere") from exc


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


@contextlib.contextmanager
def open_in_cache(path: str, mode: str = "rb", **options: Any) -> Iterator[Any]:
    """``open`` a file of the cache to read it: a symbolic link there is refused, never followed,
    and a file the job may not read stops it (``reading``)."""
    with reading(path), open(path, mode, opener=_no_follow, **options) as handle:
        yield handle


def sha1_of(path: str) -> tuple[str, FileId]:
    """A file's sha1, and the identity of the very file it was computed from."""
    digest = hashlib.sha1()
    with open_in_cache(path) as handle:
        while chunk := handle.read(4 * 2**20):
            digest.update(chunk)
        return digest.hexdigest(), file_id(os.fstat(handle.fileno()))


def nearest_existing(path: str) -> str:
    """``path`` (absolute), or its nearest ancestor that exists: where a cache yet to be made will be."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def link_refused(path: str) -> CacheError:
    """The error for a symbolic link found where the cache holds a file or folder of its own."""
    return CacheError(f"{path} is a symbolic link", "remove it; crds-job never follows links in the cache")


def temp_path(final: str) -> str:
    folder, name = os.path.split(final)
    return os.path.join(folder, f".{name}{TEMP_SUFFIX}")


def out_of_room(exc: OSError, path: str) -> CrdsJobError | None:
    """The clear error for a resource exhausted writing ``path`` (space, quota, file size, descriptors), or None.

    Not the cache's fault, so not its exit code: a full disk is 71; too few
    file descriptors for ``--concurrency`` is a setting to change (64).
    """
    if exc.errno in _NO_SPACE:
        return DiskFullError(
            f"the cache filesystem ran out of space writing {path}",
            "give the cache volume more room (see --dry-run for the bytes needed) or warm fewer files",
        )
    if exc.errno == errno.EFBIG:  # the job's RLIMIT_FSIZE (Python ignores its SIGXFSZ), or the filesystem's
        return DiskFullError(f"{path} grew larger than the job may write a file there",
                             "raise the job's file size limit (ulimit -f), or give the cache a filesystem "
                             "that holds files this large")
    if exc.errno in DESCRIPTORS_EXHAUSTED:
        return TooManyOpenFiles(f"writing {path}")
    return None


@dataclass
class Claim:
    """The exclusive right to write one cache file: an open, flock'ed temp file.

    It ends exactly once, by ``commit`` or ``release``: the descriptor is
    closed once only, since a number closed twice may by then belong to
    another file opened by another thread.
    """

    fd: int
    temp: str
    final: str
    open: bool = True

    def _close(self) -> None:
        if self.open:
            self.open = False
            os.close(self.fd)

    def release(self) -> None:
        """Give up without committing: the temp file goes, the lock with it."""
        if not self.open:
            return
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass
        finally:
            self._close()

    def reserve(self, size: int) -> None:
        """Reserve the disk blocks of a ``size``-byte file before writing it.

        The filesystem then allocates them at once, in few extents, rather than
        page by page as the bytes are written back: on the benchmark's large-file
        mix that took about 4 % off a warm's CPU time (median of 30 paired
        rounds; its duration changed within the noise). A disk too full for the
        file (filled by another writer since the warm's space check) fails here,
        before its bytes are downloaded. On tmpfs (a memory-backed emptyDir),
        which allocates and zeroes the pages at once, it costs about 0.4 ms per
        MB, which is why it runs in a disk thread. Where reserving is not
        supported it is skipped: an optimisation, not a guarantee.
        """
        if _FALLOCATE is None or size <= 0:
            return
        if _FALLOCATE(self.fd, _KEEP_SIZE, 0, size) != 0:
            code = ctypes.get_errno()
            if code in _NO_SPACE:
                raise OSError(code, os.strerror(code), self.temp)

    def append(self, chunks: list[bytes], flush_early: bool) -> None:
        """Write ``chunks`` at the temp file's end.

        With ``flush_early`` the kernel starts writing them to disk at once (as
        PostgreSQL's ``*_flush_after`` settings do): the disk then works while
        the rest of the file downloads, and commit's fsync waits for the last
        part only. Pages under writeback stay cached; none is dropped.
        """
        start = os.lseek(self.fd, 0, os.SEEK_CUR)
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.fd, view):]
        if flush_early and _ADVICE is not None:
            os.posix_fadvise(self.fd, start, os.lseek(self.fd, 0, os.SEEK_CUR) - start, _ADVICE)

    def commit(self, fsync: bool) -> None:
        """Make the (verified) temp file the final file, atomically."""
        try:
            if fsync:
                os.fsync(self.fd)
            os.rename(self.temp, self.final)
        except OSError as exc:
            self.release()
            raise out_of_room(exc, self.final) or CacheError(
                f"could not move {self.temp} into place: {exc.strerror}",
                "check the cache volume's permissions and health",
            ) from exc
        self._close()


def still_at(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd``: a lock taken on a temp file is worth
    something only while no finished writer has renamed that file away."""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False


def _try_lock(final: str) -> Claim | None:
    """One non-blocking attempt at the temp-file lock of ``final``."""
    temp = temp_path(final)
    try:
        fd = os.open(temp, _OPEN_FLAGS, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_refused(temp) from None
        raise out_of_room(exc, temp) or CacheError(
            f"cannot create {temp}: {exc.strerror}", "make the cache directory writable by the job's user"
        ) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device planted there
        os.close(fd)
        raise CacheError(f"{temp} is not a regular file", "remove it and run the job again")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    if not still_at(fd, temp):  # we hold a lock, but on a file that a writer that finished renamed away
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    return Claim(fd=fd, temp=temp, final=final)


def _fill(claim: Claim, data: bytes, fsync: bool) -> None:
    """Write small ``data`` through ``claim`` and move it into place."""
    try:
        claim.append([data], flush_early=False)
    except OSError as exc:
        claim.release()
        raise out_of_room(exc, claim.final) or CacheError(f"cannot write {claim.final}: {exc.strerror}",
                                                        "check the cache volume") from exc
    claim.commit(fsync)


class Cache:
    """One observatory's part of a CRDS cache directory."""

    def __init__(self, root: str, observatory: str, mode: str, lowers: tuple[str, ...] = ()) -> None:
        self.root = root
        self.observatory = observatory
        self.mode = mode
        #: The read-only caches under this one (``--lower``, real paths): the only places a link in it may lead.
        self.lowers = lowers
        self._folders_checked: set[str] = set()

    # ----- layout -------------------------------------------------------------------------

    def folder(self, area: str, instrument: str = "") -> str:
        parts = [self.root, area, self.observatory]
        if area == "references" and self.mode == "instrument" and instrument:
            parts.append(instrument)
        return os.path.join(*parts)

    def path(self, entry: Entry) -> str:
        return os.path.join(self.folder(entry.area, entry.instrument), names.check_name(entry.name))

    def relpath(self, entry: Entry) -> str:
        return os.path.relpath(self.path(entry), self.root)

    def config_path(self, name: str) -> str:
        return os.path.join(self.folder("config"), name)

    # ----- opening ------------------------------------------------------------------------

    @staticmethod
    def existing_mode(root: str, observatory: str) -> str | None:
        path = os.path.join(root, "config", observatory, MODE_FILE)
        try:
            with open_in_cache(path, "r", encoding="utf-8", errors="replace") as handle:
                return handle.read().strip() or None
        except FileNotFoundError:
            return None

    @classmethod
    def open(cls, root: str, observatory: str, requested_mode: str | None, lowers: tuple[str, ...] = ()) -> Cache:
        """The cache at ``root``, in the layout it already has, else ``requested_mode``."""
        if os.path.exists(root) and not os.path.isdir(root):
            raise CacheError(f"cache path {root} exists and is not a directory", "point --cache at a directory")
        existing = cls.existing_mode(root, observatory)
        if existing is not None and existing not in MODES:
            raise CacheError(f"cache {root} is organised {existing!r}, which crds-job cannot fill",
                             f"use a cache organised {' or '.join(MODES)}")
        if existing and requested_mode and existing != requested_mode:
            raise CacheError(
                f"cache {root} is organised {existing!r}, but {requested_mode!r} was asked for",
                "drop --ref-subdir-mode / CRDS_REF_SUBDIR_MODE or use another cache directory",
            )
        return cls(root, observatory, existing or requested_mode or DEFAULT_MODE, lowers)

    async def settle_layout(self, requested_mode: str | None, prepare: Callable[[str, bytes], bool]) -> Cache:
        """The cache in the layout it is to have, written down before any reference is.

        Written first, under the mode file's lock, rather than with the rest
        of the config at the end: two first warms of one empty cache would
        otherwise each fill it in the layout it asked for. The first to write
        it decides; the other adopts it, or is refused if it asked for another.
        ``prepare(path, data)`` runs before it is written (a journal names it)
        and says whether to fsync it.
        """
        final = self.config_path(MODE_FILE)
        claim = await self.claim(final)
        try:
            settled = Cache.open(self.root, self.observatory, requested_mode, self.lowers)
            if self.existing_mode(self.root, self.observatory) is None:
                data = settled.mode.encode("utf-8")
                _fill(claim, data, prepare(final, data))
        finally:
            claim.release()  # a no-op once committed
        return settled

    def writable(self) -> bool:
        """False when the cache is on a read-only mount or not ours to write."""
        return os.access(nearest_existing(self.root), os.W_OK)

    def why_unwritable(self) -> tuple[str, str]:
        """Why the cache cannot be written, and what to do: two different fixes.

        A read-only mount is to be mounted writable (or warmed elsewhere); a folder
        this user may not write, typically a root-owned bind mount under a
        container's non-root user, is to be given to that user.
        """
        where = nearest_existing(self.root)
        if os.statvfs(where).f_flag & os.ST_RDONLY:
            return "is on a read-only mount", "warm it with a writable mount first, or mount it writable for this job"
        info = os.stat(where)
        uid = os.geteuid()
        return (f"is not writable by uid {uid} ({where} belongs to uid {info.st_uid}, {stat.filemode(info.st_mode)})",
                f"give it to uid {uid} (chown -R {uid} on the host) or run the job as its owner (docker run --user)")

    def ensure_folder(self, folder: str) -> None:
        """Create ``folder`` inside the cache, refusing any link that leads outside it.

        Checked once per folder and job: a warm writes thousands of files into a few folders.
        """
        if folder in self._folders_checked:
            return
        if os.path.commonpath([os.path.abspath(self.root), os.path.abspath(folder)]) != os.path.abspath(self.root):
            raise CacheError(f"{folder} is outside the cache {self.root}",  # a bug: names are checked first
                             "report it; crds-job writes only inside the cache")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise out_of_room(exc, folder) or CacheError(
                f"cannot create {folder}: {exc.strerror}", "make the cache directory writable by the job's user"
            ) from exc
        root = os.path.realpath(self.root)
        if os.path.commonpath([root, os.path.realpath(folder)]) != root:
            raise CacheError(f"{folder} leads outside the cache {self.root} through a symbolic link",
                             "remove the link; crds-job writes only inside the cache")
        self._folders_checked.add(folder)

    # ----- state of files -----------------------------------------------------------------

    def present(self, path: str) -> os.stat_result | None:
        """The ``lstat`` of the regular file at ``path``, None if absent; a link is refused, but for
        to a regular file in a lower layer (``--lower``): that file's ``lstat`` then."""
        try:
            with reading(path):
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    info = os.lstat(self.lower_target(path))
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            raise CacheError(f"{path} is not a regular file", "remove it and run the job again")
        return info

    def lower_target(self, path: str) -> str:
        """The file in a lower layer that the link at ``path`` names: its absolute, real path, which
        must lie inside a layer named for this job. Any other link is refused, never followed."""
        if not self.lowers:
            raise link_refused(path)
        target = os.readlink(path)
        real = os.path.realpath(target)
        if not (os.path.isabs(target) and real == os.path.normpath(target)
                and any(os.path.commonpath([real, lower]) == lower for lower in self.lowers)):
            raise CacheError(f"{path} is a symbolic link to {target}, which is in no lower layer of this job "
                             f"({', '.join(self.lowers)})",
                             "name the layer it leads to with --lower, or remove the link (it is fetched again)")
        return real

    def resolved(self, path: str) -> str:
        """Where the bytes of the cache's file at ``path`` are: the lower layer's file it links to, or itself."""
        with reading(path):
            return self.lower_target(path) if os.path.islink(path) else path

    async def link(self, final: str, target: str, size: int) -> bool:
        """Make ``final`` a link to ``target``, a verified file of a lower layer of ``size`` bytes; False if
        another writer put a file of that size there first. Under the file's claim, as a write: never over
        another's. What is there otherwise (a copy of another size, a link left dangling) is replaced:
        removed, then linked, so that a reader may find it absent but never wrong."""
        claim = await self.claim(final)
        try:
            if self.present_size(final) == size:
                return False
            if os.path.lexists(final):
                os.unlink(final)
            os.symlink(target, final)
            return True
        except OSError as exc:
            raise out_of_room(exc, final) or CacheError(f"cannot link {final} in the cache: {exc.strerror}",
                                                        "make the cache writable by the job's user") from exc
        finally:
            claim.release()

    def present_size(self, path: str) -> int | None:
        info = self.present(path)
        return None if info is None else info.st_size

    def holds(self, path: str, size: int, stale: FileId | None = None) -> bool:
        """Whether ``path`` has a file of ``size`` that is not ``stale``, the copy found corrupt.

        With several writers, another one may have replaced a corrupt copy
        since it was found: its replacement is verified, and is kept.
        """
        info = self.present(path)
        return info is not None and info.st_size == size and (stale is None or file_id(info) != stale)

    # ----- writing ------------------------------------------------------------------------

    async def claim(self, final: str, poll: float = 0.2, waiting: Callable[[], None] | None = None,
                    patience: float = CLAIM_PATIENCE) -> Claim:
        """Wait for the exclusive right to write ``final`` (another writer may hold it).

        The wait has no bound: the other writer may be slow, not dead (a dead
        one's lock is gone). After ``patience`` seconds ``waiting`` is called,
        once, so that a warm stuck behind a frozen writer says why.
        """
        self.ensure_folder(os.path.dirname(final))
        waited = 0.0
        while True:
            claim = _try_lock(final)
            if claim is not None:
                return claim
            if waiting is not None and waited < patience <= waited + poll:
                waiting()
            waited += poll
            await asyncio.sleep(poll)

    async def write(self, final: str, data: bytes, fsync: bool) -> None:
        """Write small ``data`` to ``final`` atomically, after whoever is writing it now.

        Waited for, not skipped: that writer may be killed before its rename,
        and a warm that then reported success would leave the cache without
        the file (the config, which the crds client cannot do without).
        """
        claim = await self.claim(final)
        _fill(claim, data, fsync)

    async def remove(self, final: str, found: FileId) -> None:
        """Remove ``final``, a verified file its reader cannot use, if it is still the copy ``found``:
        under its lock, so that no writer is replacing it meanwhile, and never another writer's
        replacement. The next warm fetches it again."""
        claim = await self.claim(final)
        try:
            info = self.present(final)
            if info is not None and file_id(info) == found:
                os.unlink(final)
        finally:
            claim.release()

    def write_now(self, final: str, data: bytes, fsync: bool) -> bool:
        """Write small ``data`` to ``final`` atomically, unless another writer holds it.

        Returns False when another process is writing the same file right now;
        the caller decides whether that matters.
        """
        self.ensure_folder(os.path.dirname(final))
        claim = _try_lock(final)
        if claim is None:
            return False
        _fill(claim, data, fsync)
        return True

    def stale_temps(self, also: tuple[str, ...] = ()) -> Iterator[str]:
        """Temp files in the cache's folders, every observatory's (ours, or left by killed jobs), and in
        the folders ``also`` names (crds-job's own, written the same way: ``answers``).

        Every observatory's: a warm of one killed mid-file leaves a temp file
        holding its whole reserved size, and the next warm of the shared
        volume may be of another. Links are not followed (``os.walk``'s default).
        """
        for area in (*AREAS, *also):
            top = os.path.join(self.root, area)
            if os.path.islink(top):  # refused where it matters (``reading``); never walked into
                continue
            for folder, _dirs, files in os.walk(top):
                for name in files:
                    if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                        yield os.path.join(folder, name)

    def sweep(self, also: tuple[str, ...] = ()) -> int:
        """Remove temp files whose writer is gone (in ``also`` too); those still locked are left alone."""
        removed = 0
        for temp in self.stale_temps(also):
            final = os.path.join(os.path.dirname(temp), os.path.basename(temp)[1:-len(TEMP_SUFFIX)])
            claim = _try_lock(final)
            if claim is not None:
                claim.release()
                removed += 1
        return removed

    def check_space(self, needed: int) -> None:
        """Refuse to start a warm the filesystem cannot hold."""
        free = shutil.disk_usage(nearest_existing(self.root)).free
        if needed > free:
            raise DiskFullError(
                f"the cache filesystem has {free} bytes free but the warm needs {needed} "
                f"(short by {needed - free})",
                "give the cache volume more room, or narrow the warm (--instruments, --datasets)",
            )
