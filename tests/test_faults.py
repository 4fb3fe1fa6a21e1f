"""Faults injected for real (a proxy between crds-job and S3, signals, kills): nothing lost, nothing bad kept.

Every test ends by checking the cache: each file under a final name holds
exactly the bucket's bytes, and no temporary file outlives a finished run.
"""

from __future__ import annotations

import collections
import fcntl
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import (
    CANNOT_RESERVE,
    READ_ONLY_MOUNTS,
    Run,
    assert_cache_verified,
    cache_files,
    can_reserve,
    file_sha1,
    largest_wfi_reference,
    new_bucket,
    parse_logs,
    run_read_only,
    snapshot,
)
from faults import FaultProxy, Rule

from crds_job.cache import temp_path
from crds_job.errors import ExitCode
from crds_job.sample import context


@pytest.fixture
def proxy(s3):
    with FaultProxy(s3.endpoint) as running:
        yield running


def through(bucket, proxy, **extra) -> dict[str, str]:
    return bucket.env(AWS_ENDPOINT_URL_S3=proxy.endpoint, **extra)


def finals_verified(cache: str, sample) -> int:
    """Check every file under a final name; return how many there are (temp files may remain)."""
    meta = sample.metadata()
    count = 0
    for relative in cache_files(cache):
        name = os.path.basename(relative)
        if name.startswith(".") or not relative.startswith(("mappings", "references")):
            continue
        assert file_sha1(os.path.join(cache, relative)) == meta[name]["sha1sum"], relative
        count += 1
    return count


@pytest.mark.parametrize("fault", ["503", "500", "reset", "truncate", "flip", "slow"])
@pytest.mark.parametrize("where", ["references/", "mappings/", "config/"])
def test_transient_faults_are_survived(roman_bucket, proxy, fault, where):
    proxy.rules = [Rule(fault, path=where, times=3, delay=0.2)]
    run = roman_bucket.run("roman", "ops", env=through(roman_bucket, proxy))
    assert run.returncode == 0, run.stderr
    assert proxy.faults(), "the faults really happened"
    if fault in ("reset", "truncate", "flip"):
        assert run.events("retrying"), "crds-job refetched the broken file"
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
    assert finals_verified(roman_bucket.cache, roman_bucket.sample) == run.event("plan")["mappings"] + 30


@pytest.mark.parametrize("fault, code, words", [
    ("500", ExitCode.S3_ACCESS, "S3 kept failing"),
    ("reset", ExitCode.S3_ACCESS, "S3 kept failing"),
    ("truncate", ExitCode.S3_ACCESS, "S3 kept failing"),
    ("flip", ExitCode.INTEGRITY, "arrived with sha1"),  # our sha1 catches it; the SDK's CRC32 is not asked for
])
def test_a_fault_that_does_not_pass_ends_in_a_clear_error(roman_bucket, proxy, fault, code, words):
    victim = largest_wfi_reference(roman_bucket)
    proxy.rules = [Rule(fault, path=victim)]
    run = roman_bucket.run("roman", "ops", "--retries", "2", env=through(roman_bucket, proxy))
    assert run.returncode == code, run.stderr
    (error,) = run.errors
    assert words in error["event"] and victim in error["event"]
    assert victim not in {os.path.basename(f) for f in cache_files(roman_bucket.cache)}
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
    # --retries 2: two tries of each request, and two attempts of the file. A 5xx the SDK retries
    # itself, twice in all, and no more (not two file attempts of two requests each); a body that
    # breaks or comes wrong (a reset, a flipped byte), which the SDK cannot see, fetch tries again.
    retried = len([line for line in run.events("retrying") if line["file"] == victim])
    assert retried == (0 if fault == "500" else 1), run.stderr
    if fault in ("500", "flip"):
        assert len(proxy.gets(victim)) == 2, proxy.gets(victim)


def test_throttling_that_never_ends_gives_up_after_the_patience_and_keeps_the_rest(roman_bucket, proxy):
    """S3's SlowDown uses no attempt (--retries 2 would have ended it at the second GET): the job slows
    down and tries again for as long as files complete, then gives up, having finished every other file."""
    victim = largest_wfi_reference(roman_bucket)
    proxy.rules = [Rule("503", path=victim)]
    run = roman_bucket.run("roman", "ops", "--retries", "2", "--patience", "2", env=through(roman_bucket, proxy))
    assert run.returncode == ExitCode.S3_ACCESS, run.stderr
    (error,) = run.errors
    assert "S3 kept throttling the job: no file (nor part of one) completed in the last" in error["event"]
    assert victim in error["event"] and "raise --patience" in error["event"]
    assert len(proxy.gets(victim)) > 2, "tried again beyond --retries: throttling is no failed attempt"
    assert run.event("S3 is throttling the job: slowing down")["level"] == "warning"
    assert victim not in {os.path.basename(f) for f in cache_files(roman_bucket.cache)}
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
    assert finals_verified(roman_bucket.cache, roman_bucket.sample) == run.event("plan")["mappings"] + 30 - 1


def test_a_damaged_file_the_bucket_publishes_no_sha1_for_is_caught_by_the_sdk(roman_bucket, proxy):
    """With no sha1 to check, the size would pass a flipped byte: the SDK's CRC32 of the object must catch it."""
    victim = largest_wfi_reference(roman_bucket)
    published = roman_bucket.sample.metadata()[victim]
    roman_bucket.publish_metadata({victim: {**published, "sha1sum": "none"}})
    proxy.rules = [Rule("flip", path=victim)]
    run = roman_bucket.run("roman", "ops", "--retries", "2", env=through(roman_bucket, proxy))
    assert run.returncode == ExitCode.INTEGRITY, run.stderr
    (error,) = run.errors
    assert "arrived damaged" in error["event"] and victim in error["event"]
    assert victim not in {os.path.basename(f) for f in cache_files(roman_bucket.cache)}
    assert len(proxy.gets(victim)) == 2, "two attempts (--retries 2): the SDK does not retry a 200"
    # The failure cancels whatever was still in flight: how much that is depends on timing.
    kept = finals_verified(roman_bucket.cache, roman_bucket.sample)
    gets = len(proxy.gets(victim))
    proxy.rules = []
    run = roman_bucket.run("roman", "ops", env=through(roman_bucket, proxy))
    assert run.returncode == 0, run.stderr
    plan = run.event("plan")
    assert plan["fetch_files"] == plan["mappings"] + plan["references"] - kept, "what was kept is not fetched again"
    assert len(proxy.gets(victim)) > gets, "the damaged file was fetched again"
    (path,) = [f for f in cache_files(roman_bucket.cache) if os.path.basename(f) == victim]
    assert file_sha1(os.path.join(roman_bucket.cache, path)) == published["sha1sum"], "the bucket's bytes, undamaged"


@pytest.mark.parametrize("fault, parts, words, code", [
    # one GET per file: a body past the object's size, refused unread; the same answer each time: final
    ("long", "1", "arrived with", ExitCode.BUCKET_CONTENT),
    # ranged parts: a body past the part's size; which part fails first is timing, so parts never
    # make the verdict final
    ("long", "4", "a GET of bytes ", ExitCode.INTEGRITY),
    ("whole", "4", "answered a GET of bytes ", ExitCode.INTEGRITY),  # a server that ignores ranges: 200, all of it
])
def test_an_answer_that_is_not_the_bytes_asked_for_is_refused_before_it_is_read(roman_bucket, proxy, fault, parts,
                                                                                words, code):
    """Never more bytes held than asked for, whatever the server sends: nor a wrong answer read to its end.

    With no sha1 published only the size guards the file, so the answer is checked as it comes.
    """
    victim = largest_wfi_reference(roman_bucket)
    published = roman_bucket.sample.metadata()[victim]
    roman_bucket.publish_metadata({victim: {**published, "sha1sum": "none"}})
    part_size = -(-int(published["size"]) // int(parts))
    proxy.rules = [Rule(fault, path=victim, extra=64 << 20)]
    run = roman_bucket.run("roman", "ops", "--retries", "2", "--part-size", str(part_size),
                           env=through(roman_bucket, proxy))
    assert run.returncode == code, run.stderr
    (error,) = run.errors
    assert words in error["event"] and victim in error["event"], error
    assert victim not in {os.path.basename(f) for f in cache_files(roman_bucket.cache)}
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


@pytest.mark.parametrize("fault", ["reset", "truncate"])  # a 5xx answer the SDK retries itself
def test_a_part_that_fails_in_transit_is_fetched_again_alone(roman_bucket, proxy, fault):
    """The parts already written and hashed are kept: only the broken one is requested again."""
    victim = largest_wfi_reference(roman_bucket)
    size = roman_bucket.sample.reference_sizes[victim]
    parts = 8
    proxy.rules = [Rule(fault, path=victim, times=1)]
    run = roman_bucket.run("roman", "ops", "--part-size", str(-(-size // parts)), env=through(roman_bucket, proxy))
    assert run.returncode == 0, run.stderr
    (retry,) = [line for line in run.events("retrying") if line["file"] == victim]
    assert retry["part"].startswith("bytes ")
    assert len(proxy.gets(victim)) == parts + 1, proxy.gets(victim)
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
    assert finals_verified(roman_bucket.cache, roman_bucket.sample) == run.event("plan")["mappings"] + 30


def test_one_blip_that_breaks_every_part_in_flight_costs_one_attempt(roman_bucket, proxy):
    """Five parts reset at once are one failure of the network, not five: the file still has its retries."""
    victim = largest_wfi_reference(roman_bucket)
    size = roman_bucket.sample.reference_sizes[victim]
    parts = 8
    proxy.rules = [Rule("reset", path=victim, times=5)]  # the first five of the eight, all in flight together
    run = roman_bucket.run("roman", "ops", "--retries", "2", "--part-size", str(-(-size // parts)),
                           env=through(roman_bucket, proxy))
    assert run.returncode == 0, run.stderr
    assert len([line for line in run.events("retrying") if line["file"] == victim]) == 1
    assert len(proxy.gets(victim)) == parts + 5, proxy.gets(victim)
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


def test_parts_failing_for_good_use_the_files_attempts_not_their_own(roman_bucket, proxy):
    """--retries bounds the file's attempts, however many parts it has: each part is tried at most that often."""
    victim = largest_wfi_reference(roman_bucket)
    size = roman_bucket.sample.reference_sizes[victim]
    parts, retries = 8, 3
    proxy.rules = [Rule("reset", path=victim)]
    run = roman_bucket.run("roman", "ops", "--retries", str(retries), "--part-size", str(-(-size // parts)),
                           env=through(roman_bucket, proxy))
    assert run.returncode == ExitCode.S3_ACCESS, run.stderr
    assert "S3 kept failing" in run.errors[0]["event"] and victim in run.errors[0]["event"]
    assert len([line for line in run.events("retrying") if line["file"] == victim]) == retries - 1
    assert len(proxy.gets(victim)) <= parts * retries, proxy.gets(victim)
    assert victim not in {os.path.basename(f) for f in cache_files(roman_bucket.cache)}


def test_an_object_replaced_between_its_parts_is_never_spliced(roman_bucket, proxy):
    """Parts of two versions of an object would pass a size check: their ETags must agree."""
    victim = largest_wfi_reference(roman_bucket)
    published = roman_bucket.sample.metadata()[victim]
    roman_bucket.publish_metadata({victim: {**published, "sha1sum": "none"}})  # only the size to check
    newer = random.Random(7).randbytes(int(published["size"]))  # the same size, other bytes

    def replace() -> None:
        roman_bucket.put(f"references/roman/{victim}", newer)

    proxy.rules = [Rule("act", path=victim, times=1, action=replace)]
    # Replaced as the second of the file's requests goes upstream: the first part is of the older version.
    proxy.rules.insert(0, Rule("slow", path=victim, times=1, delay=0))
    part_size = -(-int(published["size"]) // 4)
    run = roman_bucket.run("roman", "ops", "--concurrency", "1", "--part-size", str(part_size),
                           env=through(roman_bucket, proxy))
    assert run.returncode == 0, run.stderr
    assert any("changed in the bucket while its parts were read" in line["error"]
               for line in run.events("retrying") if line["file"] == victim), run.events("retrying")
    (path,) = [f for f in cache_files(roman_bucket.cache) if os.path.basename(f) == victim]
    with open(os.path.join(roman_bucket.cache, path), "rb") as handle:
        assert handle.read() == newer, "the newer version whole, not a splice of the two"


@pytest.mark.parametrize("fault, words", [
    ("403", "(credentials: env); grant s3:GetObject and s3:ListBucket on s3://"),
    ("403", "S3 also answers 403, not 404, for a missing object"),  # the Terraform role's ListBucket is by prefix
    ("expired", "refused the credentials (env) with ExpiredToken"),
])
def test_credentials_and_permissions_refused(roman_bucket, proxy, fault, words):
    proxy.rules = [Rule(fault, path="server_config")]
    run = roman_bucket.run("roman", "ops", env=through(roman_bucket, proxy))
    assert run.returncode == ExitCode.S3_ACCESS
    (error,) = run.errors
    assert words in error["event"] and "; " in error["event"]
    assert not os.path.exists(roman_bucket.cache) or not cache_files(roman_bucket.cache)


def test_undecodable_download_metadata(roman_bucket):
    config = roman_bucket.sample.server_config().decode()
    broken = config.replace("'crds_payload': '", "'crds_payload': '!!not base64!!")
    roman_bucket.put("config/roman/server_config", broken.encode())
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.BUCKET_CONTENT
    assert "download_metadata does not decode" in run.errors[0]["event"]


# ----- signals and kills --------------------------------------------------------------------------

def slow_bucket(s3, tmp_path):
    """A bucket big enough, behind a slow proxy, that a warm lasts long enough to interrupt."""
    sample = context.roman(detectors=8, size=lambda rng, name: rng.choice([1000, 50_000, 400_000]))
    return new_bucket(s3, sample, str(tmp_path / "cache"))


def start(bucket, env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crds_job", "roman", "ops", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_event(process: subprocess.Popen, event: str) -> list[str]:
    """Read the process's log lines until ``event`` (the rest stays in the pipe)."""
    lines = []
    for line in process.stderr:
        lines.append(line)
        if json.loads(line).get("event") == event:
            return lines
    raise AssertionError(f"no {event!r} line before the process ended: {''.join(lines)}")


def finish(process: subprocess.Popen, lines: list[str]) -> Run:
    out, err = process.communicate(timeout=120)
    stderr = "".join(lines) + err
    return Run(process.returncode, out, stderr, *parse_logs(stderr))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_a_signal_stops_the_warm_and_removes_its_temp_files(s3, tmp_path, proxy, signum, code):
    bucket = slow_bucket(s3, tmp_path)
    proxy.rules = [Rule("slow", path="references/", delay=0.3)]
    process = start(bucket, through(bucket, proxy), "--concurrency", "4")
    lines = wait_for_event(process, "plan")
    time.sleep(0.5)  # transfers are under way
    process.send_signal(signum)
    run = finish(process, lines)
    assert run.returncode == code == ExitCode(code)
    (error,) = run.errors
    assert f"interrupted by {signal.Signals(signum).name}" in error["event"]
    assert not run.events("warmed"), "it stopped instead of finishing"
    assert not [f for f in cache_files(bucket.cache) if os.path.basename(f).startswith(".")], "no temp file left"
    finals_verified(bucket.cache, bucket.sample)
    written = set(cache_files(bucket.cache))
    assert "config/roman/ref_cache_subdir_mode" in written, "the layout is written first"
    assert not written & {"config/roman/server_config", "config/roman/bad_files.txt"}, "these go last, once complete"


def test_a_files_blocks_are_reserved_before_its_bytes_arrive(roman_bucket, proxy):
    """The whole file's space is taken when its download starts (fewer allocations; no room fails early)."""
    os.makedirs(roman_bucket.cache)
    if not can_reserve(roman_bucket.cache):
        pytest.skip(CANNOT_RESERVE)
    meta = roman_bucket.sample.metadata()
    name = max((n for n in meta if not n.endswith("map")), key=lambda n: int(meta[n]["size"]))
    size = int(meta[name]["size"])
    proxy.rules = [Rule("slow", path=re.escape(name), delay=2)]
    process = start(roman_bucket, through(roman_bucket, proxy))
    temp = temp_path(os.path.join(roman_bucket.cache, "references", "roman", name))
    # Watched until its blocks are all there or the job ends: the temp file exists
    # (it is the lock) a moment before the blocks are reserved.
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        try:
            info = os.stat(temp)
        except FileNotFoundError:
            time.sleep(0.01)
            continue
        seen.append((info.st_size, info.st_blocks * 512))
        if seen[-1][1] >= size:
            break
    run = finish(process, [])
    assert run.returncode == 0, run.stderr
    assert seen, "the temp file was never seen while its answer was held back"
    written, reserved = seen[-1]
    assert written == 0 and reserved >= size > 0, "every block taken before the first byte arrived"
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


def test_kill_9_at_random_points_then_resume(s3, tmp_path, proxy):
    """SIGKILL mid-warm, ten times: only verified files under final names; each rerun fetches only what is missing."""
    sample = context.roman(detectors=18, size=lambda rng, name: rng.choice([1000, 50_000, 400_000]))
    bucket = new_bucket(s3, sample, str(tmp_path / "cache"))
    total = len(sample.references_of["roman_0051.pmap"]) + 12  # pmap, imap, ten rmaps
    proxy.rules = [Rule("slow", path="references/", delay=0.1)]
    env = through(bucket, proxy)
    rng = random.Random(5)
    counts, left, swept = [], [], 0
    for _round in range(10):
        process = start(bucket, env, "--concurrency", "3", "--part-size", "128KiB", "--memory-budget", "512KiB")
        lines = wait_for_event(process, "plan")
        swept += sum(1 for line in lines if "removed temporary files" in line)
        time.sleep(rng.uniform(0.1, 0.8))
        process.kill()
        process.communicate(timeout=60)
        counts.append(finals_verified(bucket.cache, bucket.sample))
        left.append(len([f for f in cache_files(bucket.cache) if os.path.basename(f).startswith(".")]))
    assert all(count < total for count in counts), "every kill landed mid-warm"
    assert counts == sorted(counts) and counts[-1] > counts[0], "each run kept what the last one verified"
    assert sum(left[:-1]) and swept, "killed writers left temp files, and the next run removed them"
    run = bucket.run("roman", "ops", env=env)
    assert run.returncode == 0, run.stderr
    assert run.event("warmed")["files_fetched"] == total - counts[-1], "only what was missing"
    assert_cache_verified(bucket.cache, bucket.sample)


def test_a_writer_waiting_to_replace_a_corrupt_mapping_keeps_the_copy_another_writer_fixed(roman_bucket, proxy):
    """We play the other writer: we hold the rmap's lock while crds-job finds its cached copy corrupt."""
    env = through(roman_bucket, proxy)
    assert roman_bucket.run("roman", "ops", env=env).returncode == 0
    name = "roman_wfi_mask_0001.rmap"
    final = os.path.join(roman_bucket.cache, "mappings", "roman", name)
    good = open(final, "rb").read()
    with open(final, "r+b") as handle:
        handle.seek(len(good) - 2)
        handle.write(bytes([good[-2] ^ 0x01]))  # same size, another sha1
    temp = temp_path(final)
    lock = os.open(temp, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)  # mid-download, as another writer would be
    before = len(proxy.gets(name))
    process = start(roman_bucket, env)
    try:
        lines = wait_for_event(process, "cached file is corrupt, fetching it again")
        os.write(lock, good)
        os.rename(temp, final)  # the other writer commits its verified copy, then lets go
    finally:
        os.close(lock)
    run = finish(process, lines)
    assert run.returncode == 0, run.stderr
    assert len(proxy.gets(name)) == before and run.event("warmed")["files_fetched"] == 0, "nothing fetched again"
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


def test_concurrent_writers_download_each_file_once(s3, tmp_path, proxy):
    bucket = slow_bucket(s3, tmp_path)
    proxy.rules = [Rule("slow", path="(references|mappings)/", delay=0.05)]
    env = through(bucket, proxy)
    processes = [start(bucket, env, "--concurrency", "4") for _ in range(4)]
    runs = [finish(process, []) for process in processes]
    assert [run.returncode for run in runs] == [0, 0, 0, 0], [run.stderr[-500:] for run in runs]
    assert_cache_verified(bucket.cache, bucket.sample)
    gets = proxy.gets("(references|mappings)/")
    # A GET the server failed (and the SDK repeated) is not a download; a body delivered twice is.
    downloads = collections.Counter(r.path for r in gets if r.status < 300)
    assert downloads and max(downloads.values()) == 1, (downloads.most_common(3),
                                                        [(r.path, r.status) for r in gets if r.status >= 300])
    fetched = sum(run.event("warmed")["files_fetched"] for run in runs)
    plan = runs[0].event("plan")
    assert fetched == plan["mappings"] + plan["references"], "between them, every file was fetched once"


def test_a_second_first_warm_in_another_layout_is_refused_not_mixed_in(s3, tmp_path, proxy):
    """The layout is on disk before any reference: a warm asking another one stops, one asking none adopts it."""
    bucket = slow_bucket(s3, tmp_path)
    proxy.rules = [Rule("slow", path="references/", delay=0.3)]
    env = through(bucket, proxy)
    first = start(bucket, env, "--ref-subdir-mode", "instrument", "--concurrency", "4")
    lines = wait_for_event(first, "plan")
    with open(os.path.join(bucket.cache, "config", "roman", "ref_cache_subdir_mode")) as handle:
        assert handle.read() == "instrument", "written before the references"
    other = bucket.run("roman", "ops", "--ref-subdir-mode", "flat", env=env)
    assert other.returncode == ExitCode.CACHE
    assert "is organised 'instrument', but 'flat' was asked for" in other.errors[0]["event"]
    adopting = bucket.run("roman", "ops", env=env)  # its references, if flat, would be found below
    assert adopting.returncode == 0, adopting.stderr
    assert finish(first, lines).returncode == 0
    assert_cache_verified(bucket.cache, bucket.sample)
    flat = [f for f in os.listdir(os.path.join(bucket.cache, "references", "roman"))
            if os.path.isfile(os.path.join(bucket.cache, "references", "roman", f))]
    assert not flat, f"references outside the instrument folders: {flat[:3]}"


# ----- read-only and hostile caches ------------------------------------------------------------------

@pytest.mark.skipif(not READ_ONLY_MOUNTS, reason="needs user+mount namespaces (unshare -rm) for a read-only bind mount")
def test_a_read_only_cache_is_used_as_is_or_refused_when_incomplete(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    before = snapshot(roman_bucket.cache)
    show = "import os; print(os.environ['CRDS_CONTEXT'], os.environ['CRDS_READONLY_CACHE'])"
    run = run_read_only(roman_bucket, "roman", "ops", "--verify-existing", "--", sys.executable, "-c", show)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["roman_0051.pmap", "1"]
    assert run.events("read-only cache holds every planned file")
    assert snapshot(roman_bucket.cache) == before
    missing = os.path.join(roman_bucket.cache, "references/roman/roman_wfi_gain_0002.asdf")
    os.unlink(missing)
    run = run_read_only(roman_bucket, "roman", "ops")
    assert run.returncode == ExitCode.CACHE
    (error,) = run.errors
    assert "is on a read-only mount and lacks 1 file(s), e.g. roman_wfi_gain_0002.asdf" in error["event"]


def test_a_link_planted_in_the_cache_is_refused_and_never_followed(roman_bucket, tmp_path):
    assert roman_bucket.run("roman", "ops").returncode == 0
    outside = tmp_path / "outside.asdf"
    outside.write_bytes(b"precious")
    victim = os.path.join(roman_bucket.cache, "references/roman/roman_wfi_gain_0002.asdf")
    os.unlink(victim)
    os.symlink(outside, victim)
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.CACHE
    assert "roman_wfi_gain_0002.asdf is a symbolic link" in run.errors[0]["event"]
    assert outside.read_bytes() == b"precious"


@pytest.mark.parametrize("name", ["server_config", "ref_cache_subdir_mode"])
def test_a_config_file_replaced_by_a_link_is_refused_not_read_through(roman_bucket, tmp_path, name):
    assert roman_bucket.run("roman", "ops").returncode == 0
    path = os.path.join(roman_bucket.cache, "config/roman", name)
    outside = tmp_path / name
    outside.write_bytes(open(path, "rb").read())
    os.unlink(path)
    os.symlink(outside, path)
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.CACHE, run.stderr
    assert f"{name} is a symbolic link" in run.errors[0]["event"]


def test_something_else_than_a_file_at_a_temp_files_name_is_refused(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    victim = os.path.join(roman_bucket.cache, "references/roman/roman_wfi_gain_0002.asdf")
    os.unlink(victim)
    os.mkfifo(temp_path(victim))
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.CACHE, run.stderr
    assert "is not a regular file" in run.errors[0]["event"]


def test_a_config_file_another_writer_holds_is_waited_for_not_skipped(roman_bucket):
    """That writer may die before its rename: a warm reporting success must leave the config in place."""
    assert roman_bucket.run("roman", "ops").returncode == 0
    final = os.path.join(roman_bucket.cache, "config/roman/server_config")
    os.unlink(final)
    holder = ("import fcntl, os, sys\n"
              "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX)\n"
              "print('held', flush=True)\n"
              "sys.stdin.readline()\n")  # then exits, its lock gone and its temp file left, as kill -9 leaves them
    with subprocess.Popen([sys.executable, "-c", holder, temp_path(final)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as other:
        assert other.stdout.readline().strip() == "held"
        process = start(roman_bucket, roman_bucket.env())
        lines = wait_for_event(process, "plan")
        time.sleep(1.0)  # the warm has nothing to fetch: it is at the config, waiting
        assert process.poll() is None, "it waits for the other writer"
        other.stdin.write("go\n")
        other.stdin.flush()
    run = finish(process, lines)
    assert run.returncode == 0, run.stderr
    assert os.path.exists(final)
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


def test_a_cache_folder_linked_outside_is_refused(roman_bucket, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.makedirs(os.path.join(roman_bucket.cache, "references"))
    os.symlink(elsewhere, os.path.join(roman_bucket.cache, "references/roman"))
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.CACHE
    assert "leads outside the cache" in run.errors[0]["event"]
    assert list(elsewhere.iterdir()) == [], "nothing was written through the link"


def test_a_file_failing_for_good_lets_the_files_in_flight_finish(roman_bucket, proxy):
    """A retryable failure (69) leaves the others to complete: the rerun the job runner makes has less to do."""
    victim = largest_wfi_reference(roman_bucket)
    proxy.rules = [Rule("500", path=victim), Rule("slow", path="references/", delay=1.5)]  # the first match applies
    run = roman_bucket.run("roman", "ops", "--retries", "1", env=through(roman_bucket, proxy))
    assert run.returncode == ExitCode.S3_ACCESS, run.stderr
    assert victim in run.errors[0]["event"]
    assert finals_verified(roman_bucket.cache, roman_bucket.sample) == run.event("plan")["mappings"] + 30 - 1
    rerun = roman_bucket.run("roman", "ops")  # straight to S3: the fault is gone
    assert rerun.returncode == 0 and rerun.event("plan")["fetch_files"] == 1


def test_a_file_throttled_beyond_its_retries_still_comes(roman_bucket, proxy):
    """Five SlowDowns in a row, with --retries 2: no attempt is used by throttling, and the file arrives."""
    victim = largest_wfi_reference(roman_bucket)
    proxy.rules = [Rule("503", path=victim, times=5)]
    run = roman_bucket.run("roman", "ops", "--retries", "2", env=through(roman_bucket, proxy))
    assert run.returncode == 0, run.stderr
    assert len(proxy.gets(victim)) == 6, proxy.gets(victim)
    assert run.event("warmed")["throttled"] >= 1 and not run.events("retrying")
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
