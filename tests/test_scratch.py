"""Scratch folders in TMPDIR: removed after use, and after a job killed outright by the next one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from crds_job import scratch
from crds_job.errors import CacheError


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    """TMPDIR as the jobs see it: this test's own folder."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # tempfile caches TMPDIR once read
    return tmp_path


def age(path, seconds: float = 2 * scratch.GRACE_SECONDS) -> None:
    then = os.stat(path).st_mtime - seconds
    os.utime(path, (then, then))


def test_a_folder_in_use_is_kept_and_removed_after(tmpdir_env):
    with scratch.folder() as path:
        assert os.path.dirname(path) == str(tmpdir_env) and os.path.basename(path).startswith(scratch.PREFIX)
        age(path)
        assert scratch.sweep() == 0 and os.path.isdir(path)  # locked: a live job's, however old
    assert not os.path.exists(path)


def test_a_killed_jobs_folder_is_removed_by_the_next(tmpdir_env):
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom crds_job import scratch\n"
                              "with scratch.folder() as path:\n    print(path, flush=True)\n    time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    path = child.stdout.readline().strip()
    child.kill()
    child.wait()
    child.stdout.close()
    assert os.path.isdir(path)  # SIGKILL: no finally ran
    assert scratch.sweep() == 0, "a young folder may be a live job's not yet locked"
    age(path)
    others = [tmpdir_env / "crds-job-scratch-nolock", tmpdir_env / "someone-elses"]
    for other in others:
        other.mkdir()
        age(other)
    with scratch.folder() as fresh:  # the next job sweeps first
        assert not os.path.exists(path) and os.path.isdir(fresh)
    assert all(other.is_dir() for other in others)  # no lock file, or not ours by name: left alone


def test_a_tmpdir_the_job_cannot_write_is_said_as_such(tmpdir_env, monkeypatch):
    not_a_folder = tmpdir_env / "a-file"
    not_a_folder.write_text("")
    monkeypatch.setattr("tempfile.tempdir", str(not_a_folder))  # as tempfile settled on it
    with pytest.raises(CacheError, match="no scratch directory for crds") as raised, scratch.folder():
        pass
    assert "writable TMPDIR" in raised.value.todo
