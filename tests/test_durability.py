"""The journal that stands in for per-file fsyncs on a local disk, and what a warm does after a crash.

A crash of the machine cannot be staged here, so its trace is: journals
left as a warm leaves them, renamed and tagged as another boot's (which is
what a later warm sees after a restart), and files under final names whose
bytes never reached the disk (corrupted in place, cut short).
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import Run, assert_cache_verified, parse_logs, run_job

from crds_job import durability
from crds_job.errors import ExitCode

CHECKED = "checked the files a warm wrote just before the machine crashed or restarted"
OTHER_BOOT = "00000000-0000-4000-8000-000000000000"
GAIN = "references/roman/roman_wfi_gain_0002.asdf"
DARK = "references/roman/roman_wfi_dark_0006.asdf"

LOCAL = durability.filesystem_type(
    os.path.realpath(os.environ.get("TMPDIR", "/tmp")), open(durability.MOUNTINFO).read()
) in durability.LOCAL_FILESYSTEMS if os.path.exists(durability.MOUNTINFO) else False
NOT_LOCAL = "the test's temp folder is not on a local filesystem (or no /proc), where crds-job fsyncs each file"


def journals(cache: str) -> list[str]:
    return sorted(glob.glob(os.path.join(cache, durability.FOLDER, "*.json")))


def named_by(journal: str) -> set[str]:
    with open(journal) as handle:
        return {f["path"] for f in json.load(handle)["files"]}


def named(cache: str) -> set[str]:
    """Every path the cache's journals name."""
    return {path for journal in journals(cache) for path in named_by(journal)}


def as_another_boots(cache: str) -> None:
    """Make the journals look like those a warm left before the machine restarted."""
    for path in journals(cache):
        with open(path) as handle:
            body = json.load(handle)
        body["boot_id"] = OTHER_BOOT
        folder, name = os.path.split(path)
        with open(os.path.join(folder, OTHER_BOOT + name[name.index("."):]), "w") as handle:
            json.dump(body, handle)
        os.unlink(path)


def flip_a_byte(path: str) -> None:
    with open(path, "r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))


# ----- which mode, where ---------------------------------------------------------------------------

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /mnt/efs rw shared:2 - nfs4 fs-1.efs:/ rw,vers=4.1
31 22 0:27 / /mnt/my\\040cache rw shared:3 - tmpfs tmpfs rw
32 30 0:28 / /mnt/efs/local rw shared:4 - xfs /dev/sdb rw
33 22 0:29 / /mnt/efs rw shared:5 - fuse.s3fs s3fs rw
"""


@pytest.mark.parametrize("path, kind", [
    ("/", "ext4"), ("/tmp/crds", "ext4"), ("/mnt/my cache/crds", "tmpfs"),
    ("/mnt/efs/local/x", "xfs"),  # the innermost mount point
    ("/mnt/efs/x", "fuse.s3fs"),  # of two at one point, the later hides the earlier
    ("/mnt/efsx", "ext4"),  # a prefix of the name is not a parent
])
def test_the_filesystem_of_a_path_is_the_innermost_mount(path, kind):
    assert durability.filesystem_type(path, MOUNTINFO) == kind


def test_the_journal_is_kept_only_where_a_boot_id_tells_a_crash(tmp_path):
    cache = str(tmp_path / "cache")
    each = durability.Durability.choose(cache, fsync=True, fsync_each=True)
    assert each.mode == durability.EACH and each.needs_fsync(os.path.join(cache, "x"))
    none = durability.Durability.choose(cache, fsync=False, fsync_each=False)
    assert none.mode == durability.NONE and not none.needs_fsync(os.path.join(cache, "x"))
    default = durability.Durability.choose(cache, fsync=True, fsync_each=False)
    assert default.mode == (durability.JOURNAL if LOCAL else durability.EACH)


# ----- the writer's side ------------------------------------------------------------------------------

def test_a_journal_is_locked_while_its_warm_runs_and_its_files_skip_the_fsync(tmp_path):
    root = str(tmp_path / "cache")
    journal = durability.Durability(root, durability.JOURNAL, OTHER_BOOT)
    covered, other = os.path.join(root, GAIN), os.path.join(root, DARK)
    assert journal.needs_fsync(covered) and journal.needs_fsync(other)
    journal.cover([(covered, 3, "a" * 40)])
    assert not journal.needs_fsync(covered) and journal.needs_fsync(other), "only what a journal names"
    (written,) = journals(root)
    assert named_by(written) == {GAIN}
    with open(written) as handle:
        with pytest.raises(BlockingIOError):
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        journal.close()
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the warm is over: free to retire or check
    assert journals(root) == [written], "it stays, for a later warm"


@pytest.mark.skipif(not LOCAL, reason=NOT_LOCAL)
def test_a_warm_names_every_file_it_writes_in_a_journal_first(roman_bucket):
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == 0, run.stderr
    assert run.event("plan")["durability"] == durability.JOURNAL
    fetched = run.event("warmed")["files_fetched"]
    written = {os.path.relpath(p, roman_bucket.cache) for p in glob.glob(f"{roman_bucket.cache}/*/roman/*")}
    assert len(written) == fetched + 3  # and the three config files
    assert named(roman_bucket.cache) == written
    boot = open(durability.BOOT_ID).read().strip()
    assert all(os.path.basename(j).startswith(boot + ".") for j in journals(roman_bucket.cache))
    before = journals(roman_bucket.cache)
    again = roman_bucket.run("roman", "ops")
    assert again.event("warmed")["files_fetched"] == 0
    assert journals(roman_bucket.cache) == before, "a warm that writes nothing keeps no journal"


@pytest.mark.parametrize("flag", ["--fsync-each", "--no-fsync"])
def test_with_fsync_each_or_none_there_is_no_journal(roman_bucket, flag):
    run = roman_bucket.run("roman", "ops", flag)
    assert run.returncode == 0, run.stderr
    assert run.event("plan")["durability"] == (durability.EACH if flag == "--fsync-each" else durability.NONE)
    assert journals(roman_bucket.cache) == []


# ----- a later warm's side ----------------------------------------------------------------------------

@pytest.mark.skipif(not LOCAL, reason=NOT_LOCAL)
def test_after_a_restart_the_files_a_journal_names_are_checked_and_the_bad_ones_fetched_again(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    as_another_boots(roman_bucket.cache)
    flip_a_byte(os.path.join(roman_bucket.cache, GAIN))  # its bytes never reached the disk
    os.truncate(os.path.join(roman_bucket.cache, DARK), 10)  # nor all of these
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == 0, run.stderr
    checked = run.events(CHECKED)
    assert len(checked) == 5, "pmap, imaps, rmaps, the layout, references and config: a journal each"
    assert sorted(path for check in checked for path in check["first"]) == [DARK, GAIN]
    assert run.event("warmed")["files_fetched"] == 2
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
    assert not any(OTHER_BOOT in j for j in journals(roman_bucket.cache)), "a checked journal goes"
    assert os.path.exists(os.path.join(roman_bucket.cache, "config/roman/server_config"))


@pytest.mark.skipif(not LOCAL, reason=NOT_LOCAL)
def test_a_journal_of_this_boot_is_trusted_and_retired_once_old(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    old, recent = journals(roman_bucket.cache)[0], journals(roman_bucket.cache)[1:]
    past = time.time() - durability.RETIRE_AFTER - 5
    os.utime(old, (past, past))
    flip_a_byte(os.path.join(roman_bucket.cache, GAIN))  # not a crash: this boot's files are not re-hashed
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == 0, run.stderr
    assert not run.events(CHECKED)
    assert run.event("warmed")["files_fetched"] == 0
    assert journals(roman_bucket.cache) == recent, "the old one retired, the recent ones kept"


@pytest.mark.skipif(not LOCAL, reason=NOT_LOCAL)
def test_a_journal_being_checked_by_another_warm_is_waited_for(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    as_another_boots(roman_bucket.cache)
    (held,) = [j for j in journals(roman_bucket.cache) if GAIN in named_by(j)]
    # Another warm checking that journal: it finds GAIN bad, removes it, then the journal; it goes
    # on only once our warm says it waits, so the test does not depend on who is faster.
    other = ("import fcntl, os, sys; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
             "print('held', flush=True); sys.stdin.readline(); os.unlink(sys.argv[2]); os.unlink(sys.argv[1])")
    gain = os.path.join(roman_bucket.cache, GAIN)
    with subprocess.Popen([sys.executable, "-c", other, held, gain], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as checker:
        assert checker.stdout.readline().strip() == "held"
        with subprocess.Popen([sys.executable, "-m", "crds_job", "roman", "ops"], env=roman_bucket.env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as job:
            lines = []
            for line in job.stderr:
                lines.append(line)
                if '"event": "waiting for another warm checking a journal"' in line:
                    assert os.path.basename(held) in line
                    checker.stdin.write("go\n")
                    checker.stdin.flush()
            returncode = job.wait(timeout=120)
    run = Run(returncode, "", "".join(lines), *parse_logs("".join(lines)))
    assert run.returncode == 0, run.stderr
    assert run.event("waiting for another warm checking a journal")
    assert os.path.basename(held) not in {check["journal"] for check in run.events(CHECKED)}
    assert run.event("warmed")["files_fetched"] == 1, "GAIN, trusted only once the other check was done"
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
    assert not any(OTHER_BOOT in journal for journal in journals(roman_bucket.cache))


@pytest.mark.skipif(not LOCAL, reason=NOT_LOCAL)
def test_after_a_restart_the_caches_layout_is_read_only_once_checked(roman_bucket):
    assert roman_bucket.run("roman", "ops", "--ref-subdir-mode", "instrument").returncode == 0
    as_another_boots(roman_bucket.cache)
    with open(os.path.join(roman_bucket.cache, "config/roman/ref_cache_subdir_mode"), "wb") as handle:
        handle.write(b"\0" * 10)  # its bytes never reached the disk
    run = roman_bucket.run("roman", "ops", "--ref-subdir-mode", "instrument")
    assert run.returncode == 0, run.stderr
    assert "config/roman/ref_cache_subdir_mode" in {p for check in run.events(CHECKED) for p in check["first"]}
    with open(os.path.join(roman_bucket.cache, "config/roman/ref_cache_subdir_mode")) as handle:
        assert handle.read() == "instrument"
    assert run.event("warmed")["files_fetched"] == 0, "the references, in their instrument folders, all kept"


def test_a_journal_naming_a_path_outside_the_cache_is_refused(roman_bucket, tmp_path):
    assert roman_bucket.run("roman", "ops", "--no-fsync").returncode == 0
    victim = tmp_path / "precious"
    victim.write_bytes(b"keep me")
    folder = os.path.join(roman_bucket.cache, durability.FOLDER)
    os.makedirs(folder)
    with open(os.path.join(folder, f"{OTHER_BOOT}.1.x.json"), "w") as handle:
        json.dump({"boot_id": OTHER_BOOT, "files": [{"path": "../precious", "size": 1, "sha1": None}]}, handle)
    run = run_job(["roman", "ops"], roman_bucket.env())
    assert run.returncode == ExitCode.CACHE
    assert "names '../precious', a path outside the cache's folders" in run.errors[0]["event"]
    # Which files it named is unknown: re-hashing one warm's files would not be enough.
    assert "--verify-existing once for every context and observatory warmed into it" in run.errors[0]["event"]
    assert victim.read_bytes() == b"keep me"
    with open(os.path.join(folder, f"{OTHER_BOOT}.1.x.json"), "w") as handle:  # nor another journal
        json.dump({"boot_id": OTHER_BOOT, "files": [{"path": f"{durability.FOLDER}/a.json", "size": 1,
                                                     "sha1": None}]}, handle)
    run = run_job(["roman", "ops"], roman_bucket.env())
    assert run.returncode == ExitCode.CACHE
    assert "a path outside the cache's folders" in run.errors[0]["event"]


def test_a_journal_folder_linked_outside_the_cache_is_refused(roman_bucket, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / f"{OTHER_BOOT}.1.x.json").write_text(json.dumps({"boot_id": OTHER_BOOT, "files": []}))
    os.makedirs(roman_bucket.cache)
    os.symlink(outside, os.path.join(roman_bucket.cache, durability.FOLDER))
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.CACHE
    assert f"{durability.FOLDER} is a symbolic link" in run.errors[0]["event"]
    assert os.listdir(outside) == [f"{OTHER_BOOT}.1.x.json"]
