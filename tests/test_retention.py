"""Retention (``--prune``): a long-lived cache kept to what is needed, never under a running job.

Files are aged by hand (their access and modification times; a warm sets the first to its time of use) so that
the grace every recent file gets (``retention.GRACE``) does not hide what a test
is about: a lease, a kept context, the order of use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import assert_cache_verified, cache_files, new_bucket, parse_logs
from test_crds_acceptance import GET_REFERENCES, NO_NETWORK, check

from crds_job import retention
from crds_job.errors import ExitCode
from crds_job.sample import context

OLD, NEW = "roman_0050.pmap", "roman_0051.pmap"
DAY = 86400


def age(cache: str, seconds: float = DAY, only: set[str] | None = None) -> None:
    """Make the cache's files (``only`` these, relative paths) last used ``seconds`` ago."""
    then = time.time() - seconds
    for path in cache_files(cache):
        if path.startswith(("mappings", "references")) and (only is None or path in only):
            os.utime(os.path.join(cache, path), (then, then), follow_symlinks=False)


def areas(cache: str) -> set[str]:
    return {path for path in cache_files(cache) if path.startswith(("mappings", "references"))}


@pytest.fixture
def two_contexts(roman_bucket):
    """The cache of a job that warmed the old context, then the new one."""
    for pinned in (OLD, NEW):
        run = roman_bucket.run("roman", "ops", "--context", pinned)
        assert run.returncode == 0, run.stderr
    age(roman_bucket.cache)
    return roman_bucket


def only_new(s3, tmp_path) -> set[str]:
    """What a cache holds with the new context alone: what keeping it keeps."""
    alone = new_bucket(s3, context.roman(), str(tmp_path / "new-alone"))
    run = alone.run("roman", "ops", "--context", NEW)
    assert run.returncode == 0, run.stderr
    return areas(alone.cache)


def test_keep_contexts_removes_what_only_older_contexts_need_and_crds_accepts_the_rest(two_contexts, s3, tmp_path):
    bucket, kept = two_contexts, only_new(s3, tmp_path)
    before = areas(bucket.cache)
    assert kept < before
    dry = bucket.run("roman", "ops", "--prune", "--keep-contexts", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert {f["path"] for f in report["files"]} == before - kept and report["kept_contexts"] == [NEW]
    assert report["removed_bytes"] == sum(f["size"] for f in report["files"]) > 0
    assert areas(bucket.cache) == before, "a dry run removes nothing"
    run = bucket.run("roman", "ops", "--prune", "--keep-contexts", "1")
    assert run.returncode == 0, run.stderr
    assert run.event("pruned")["removed_files"] == len(before - kept)
    assert areas(bucket.cache) == kept
    records = os.listdir(os.path.join(bucket.cache, retention.FOLDER, "contexts", "roman"))
    assert sorted(records) == [f"{NEW}.json", f"{NEW}.json.lock"], "the pruned context's record goes too"
    calibrated = bucket.run("roman", "ops", "--", sys.executable, "-c", GET_REFERENCES)
    assert calibrated.returncode == 0, calibrated.stderr
    assert calibrated.event("warmed")["files_fetched"] == 0, "the kept context is whole"
    check(calibrated.stdout, bucket, NEW, bucket.cache)
    assert_cache_verified(bucket.cache, bucket.sample)


def test_keep_names_contexts_and_refuses_one_never_warmed_here(two_contexts):
    bucket = two_contexts
    run = bucket.run("roman", "ops", "--prune", "--keep", OLD)
    assert run.returncode == 0, run.stderr
    assert run.event("pruned")["kept_contexts"] == [OLD]
    assert all(os.path.exists(os.path.join(bucket.cache, "references", "roman", name))
               for name in bucket.sample.references_of[OLD])
    refused = bucket.run("roman", "ops", "--prune", "--keep", "roman_0049.pmap")
    assert refused.returncode == ExitCode.USAGE
    assert "no warm of roman_0049.pmap is recorded" in refused.errors[0]["event"]


def test_max_bytes_removes_the_least_recently_used_references_first(roman_bucket):
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == 0, run.stderr
    folder = os.path.join(roman_bucket.cache, "references", "roman")
    names = sorted(os.listdir(folder))
    for rank, name in enumerate(names):  # the first name is the least recently used
        then = time.time() - DAY + rank * 60
        os.utime(os.path.join(folder, name), (then, then))
    sizes = {name: os.path.getsize(os.path.join(folder, name)) for name in names}
    cap = sum(sizes.values()) // 2
    pruned = roman_bucket.run("roman", "ops", "--prune", "--max-bytes", str(cap))
    assert pruned.returncode == 0, pruned.stderr
    left = sorted(os.listdir(folder))
    assert left == names[len(names) - len(left):], "the most recently used stay"
    assert sum(sizes[name] for name in left) <= cap < sum(sizes[name] for name in names[len(names) - len(left) - 1:])
    assert pruned.event("pruned")["references_bytes"] == sum(sizes[name] for name in left)


def test_recently_used_files_are_never_removed(roman_bucket):
    run = roman_bucket.run("roman", "ops", "--context", OLD)
    assert run.returncode == 0, run.stderr
    pruned = roman_bucket.run("roman", "ops", "--prune", "--max-bytes", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.event("pruned")["removed_files"] == 0 and pruned.event("pruned")["young_files"] > 0


LATE_CALIBRATION = NO_NETWORK + f"""
import json, os, sys, time, crds
from crds_job.sample.context import ROMAN_DATASET_HEADER
open(sys.argv[1], "w").close()              # exec'd: its warm is over, its lease lives on in this process
while not os.path.exists(sys.argv[2]):      # the references are opened only once told to
    time.sleep(0.05)
refs = crds.getreferences(ROMAN_DATASET_HEADER, observatory="roman", context="{OLD}")
for path in refs.values():
    with open(path, "rb") as handle:
        handle.read()
print(json.dumps(refs))
"""


def test_prune_racing_warms_and_a_late_calibration_loses_nothing(two_contexts, tmp_path):
    bucket = two_contexts
    ready, go = str(tmp_path / "ready"), str(tmp_path / "go")
    job = [sys.executable, "-m", "crds_job", "roman", "ops"]
    calibration = subprocess.Popen([*job, "--context", OLD, "--", sys.executable, "-c", LATE_CALIBRATION, ready, go],
                                   env=bucket.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(ready) and calibration.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(ready), calibration.communicate()[1]
        age(bucket.cache)  # its warm used them just now: only its lease protects them from here
        racers = [subprocess.Popen([*job, "--context", NEW], env=bucket.env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for _ in range(4)]
        prune = subprocess.Popen([*job, "--prune", "--keep-contexts", "1"], env=bucket.env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for process in [*racers, prune]:
            _, err = process.communicate(timeout=240)
            assert process.returncode == 0, err
        pruned = next(line for line in parse_logs(err)[0] if line.get("event") == "pruned")
        assert pruned["leases_live"] >= 1 and pruned["leased_files"] > 0, pruned
        open(go, "w").close()
        out, err = calibration.communicate(timeout=120)
    finally:
        if calibration.poll() is None:
            calibration.kill()
    assert calibration.returncode == 0, err
    opened = json.loads(out)
    assert {os.path.basename(path) for path in opened.values()} == set(bucket.sample.expected[OLD]["wfi"].values())
    # The calibration has ended: its lease with it. Its context's own files can go now.
    age(bucket.cache)
    after = bucket.run("roman", "ops", "--prune", "--keep-contexts", "1")
    assert after.returncode == 0, after.stderr
    assert after.event("pruned")["leases_live"] == 0 and after.event("pruned")["removed_files"] > 0
    names = set(os.listdir(os.path.join(bucket.cache, "references", "roman")))
    assert names == bucket.sample.references_of[NEW]
    final = bucket.run("roman", "ops", "--", sys.executable, "-c", GET_REFERENCES)
    assert final.returncode == 0, final.stderr
    assert final.event("warmed")["files_fetched"] == 0
    check(final.stdout, bucket, NEW, bucket.cache)
    assert_cache_verified(bucket.cache, bucket.sample)


@pytest.mark.parametrize("args, message", [
    (["--prune"], "--prune needs to be told what to keep"),
    (["--keep-contexts", "2"], "only apply to --prune"),
    (["--prune", "--max-bytes", "1G", "--", "true"], "--prune runs no command"),
])
def test_prune_asked_wrongly_says_so(roman_bucket, args, message):
    run = roman_bucket.run("roman", "ops", *args)
    assert run.returncode == ExitCode.USAGE and message in run.errors[0]["event"], run.stderr


def test_leases_of_ended_jobs_do_not_pile_up_in_a_cache_never_pruned(roman_bucket):
    for _ in range(3):
        run = roman_bucket.run("roman", "ops")
        assert run.returncode == 0, run.stderr
    leases = os.listdir(os.path.join(roman_bucket.cache, retention.FOLDER, "leases"))
    assert len(leases) == 1, "each warm removes the expired leases it finds; its own expires when it ends"


def test_max_bytes_caps_the_recent_contexts_but_never_one_named_by_keep(two_contexts, s3, tmp_path):
    bucket, kept = two_contexts, only_new(s3, tmp_path)
    run = bucket.run("roman", "ops", "--prune", "--keep", NEW, "--max-bytes", "1")
    assert run.returncode == 0, run.stderr
    assert areas(bucket.cache) == kept, "the cap removes only what no context named by --keep needs"
    assert run.event("pruned")["references_bytes"] > 1
    capped = bucket.run("roman", "ops", "--prune", "--keep-contexts", "1", "--max-bytes", "1")
    assert capped.returncode == 0, capped.stderr
    assert not os.listdir(os.path.join(bucket.cache, "references", "roman")), "a disk's cap beats --keep-contexts"
