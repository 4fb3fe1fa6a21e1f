"""Scratch folders in TMPDIR that outlive no job, even one killed outright.

A selective warm gives crds a scratch CRDS_PATH (``warm._Warm.choose``). A
``finally`` removes it, but not after SIGKILL (an OOM kill, a pod's grace
period running out): on a host whose TMPDIR outlives its jobs, one more folder
each time. Each folder is locked while in use; the next job removes the ones
no live job holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

from .errors import CacheError

PREFIX = "crds-job-scratch-"
#: The file whose flock says a folder is in use.
LOCK = ".in-use"
#: A folder younger than this is left alone, locked or not: its job may not have locked it yet.
GRACE_SECONDS = 60.0


def _held(folder: str) -> bool:
    """Whether a live job holds ``folder`` (or may be about to); False only for a dead job's."""
    try:
        if time.time() - os.lstat(folder).st_mtime < GRACE_SECONDS:
            return True
        fd = os.open(os.path.join(folder, LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # gone, another user's (mode 0700), or no lock file: not ours to judge
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # an unlocked folder stays unlocked: its job is gone
    return False


def sweep(parent: str | None = None) -> int:
    """Remove the scratch folders of jobs that are gone; return how many."""
    removed = 0
    for folder in glob.glob(os.path.join(glob.escape(parent or tempfile.gettempdir()), PREFIX + "*")):
        if not os.path.islink(folder) and os.path.isdir(folder) and not _held(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


@contextlib.contextmanager
def folder() -> Iterator[str]:
    """A new scratch folder in TMPDIR, locked while in use and removed after; stale ones swept first.

    TMPDIR's trouble is the job's environment's, not the cache's data: a ``CacheError`` that says so.
    """
    sweep()
    path = None
    try:
        path = tempfile.mkdtemp(prefix=PREFIX)
        fd = os.open(os.path.join(path, LOCK), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        raise CacheError(f"no scratch directory for crds to choose references in: {exc}",
                         "give the job a writable TMPDIR (a /tmp volume on a read-only root)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)
