"""crds-job as a process against a real S3 endpoint: what a warm leaves in the cache, and what it runs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import os
import re
import subprocess
import sys
import time

import pytest
import structlog
from conftest import Bucket, assert_cache_verified, cache_files, new_bucket
from faults import FaultProxy, Rule

from crds_job import cli, remote
from crds_job import settings as crds_settings
from crds_job.cache import Cache, file_id
from crds_job.durability import EACH, Durability
from crds_job.fetch import Fetcher
from crds_job.plan import Entry
from crds_job.progress import Progress
from crds_job.sample import context, server


def largest_reference(bucket) -> str:
    """The cached path of the largest reference of the latest context."""
    files = cache_files(bucket.cache)
    name = max((f for f in files if f.startswith("references/")), key=files.get)
    return os.path.join(bucket.cache, name)


def test_warm_fills_the_crds_layout_with_verified_files(roman_bucket):
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "", "nothing of ours on stdout"
    assert run.foreign == [], "every line on stderr is a JSON log line"
    files = cache_files(roman_bucket.cache)
    latest = context.roman()
    assert {f"mappings/roman/{n}" for n in ("roman_0051.pmap", "roman_wfi_0051.imap")} <= set(files)
    assert not any(f.startswith("mappings/roman/roman_0050") for f in files), "only the latest context's mappings"
    config = {f"config/roman/{name}" for name in ("server_config", "ref_cache_subdir_mode", "bad_files.txt")}
    assert config <= set(files)
    with open(os.path.join(roman_bucket.cache, "config/roman/ref_cache_subdir_mode")) as handle:
        assert handle.read() == "flat"
    references = [f for f in files if f.startswith("references/roman/")]
    warmed = run.event("warmed")
    plan = run.event("plan")
    assert warmed["files_fetched"] == len(references) + plan["mappings"]
    assert warmed["bytes_fetched"] == plan["bytes"] == sum(files[f] for f in files if not f.startswith("config"))
    assert len(references) == plan["references"] == 30
    assert_cache_verified(roman_bucket.cache, latest)
    assert run.event("context resolved")["context"] == "roman_0051.pmap"


def test_second_run_over_a_warm_cache_fetches_nothing(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    before = {p: os.stat(os.path.join(roman_bucket.cache, p)).st_mtime_ns for p in cache_files(roman_bucket.cache)}
    again = roman_bucket.run("roman", "ops")
    assert again.returncode == 0
    assert again.event("warmed")["files_fetched"] == 0
    assert again.event("warmed")["files_present"] == again.event("plan")["mappings"] + again.event("plan")["references"]
    after = {p: os.stat(os.path.join(roman_bucket.cache, p)).st_mtime_ns for p in cache_files(roman_bucket.cache)}
    assert before == after, "a warm cache is not rewritten, config included"


def test_dry_run_prints_the_plan_and_writes_nothing(roman_bucket):
    run = roman_bucket.run("roman", "ops", "--dry-run", "--", "false")
    assert run.returncode == 0, run.stderr
    assert not os.path.exists(roman_bucket.cache)
    report = json.loads(run.stdout)
    totals = report["totals"]
    assert report["context"] == "roman_0051.pmap" and report["bucket"] == roman_bucket.name
    assert totals["files"] == len(report["files"]) == totals["mappings"] + totals["references"]
    assert totals["fetch_files"] == totals["files"] and totals["cached_files"] == 0
    assert totals["bytes"] == sum(f["size"] for f in report["files"])
    names = {f["name"]: f for f in report["files"]}
    dark = names["roman_wfi_dark_0004.asdf"]
    assert dark["path"] == "references/roman/roman_wfi_dark_0004.asdf" and dark["instrument"] == "wfi"
    assert not run.events("exec"), "a dry run runs nothing"
    assert run.event("a dry run: the command was not run")["command"] == ["false"]  # and says so


def test_dry_run_after_a_partial_warm_shows_what_is_cached(roman_bucket):
    assert roman_bucket.run("roman", "ops", "--mappings-only").returncode == 0
    report = json.loads(roman_bucket.run("roman", "ops", "--dry-run").stdout)
    cached = {f["name"] for f in report["files"] if f["cached"]}
    assert cached == {f["name"] for f in report["files"] if f["kind"] != "reference"}
    assert report["totals"]["fetch_bytes"] == sum(f["size"] for f in report["files"] if f["kind"] == "reference")


def test_mappings_only_and_instruments(roman_bucket):
    run = roman_bucket.run("roman", "ops", "--mappings-only")
    assert run.returncode == 0
    assert not any(f.startswith("references") for f in cache_files(roman_bucket.cache))
    run = roman_bucket.run("roman", "ops", "--instruments", "wfi")
    assert run.returncode == 0 and run.event("plan")["references"] == 30
    bad = roman_bucket.run("roman", "ops", "--instruments", "nircam")
    assert bad.returncode == 64 and "nircam not in context roman_0051.pmap" in bad.errors[0]["event"]


def test_a_pinned_older_context_is_warmed_and_both_coexist(roman_bucket):
    run = roman_bucket.run("roman", "ops", CRDS_CONTEXT="roman_0050.pmap")
    assert run.returncode == 0, run.stderr
    files = cache_files(roman_bucket.cache)
    assert "mappings/roman/roman_0050.pmap" in files and "references/roman/roman_wfi_dark_0001.asdf" in files
    assert "references/roman/roman_wfi_dark_0004.asdf" not in files
    assert roman_bucket.run("roman", "ops").returncode == 0
    assert "references/roman/roman_wfi_dark_0004.asdf" in cache_files(roman_bucket.cache)


def test_instrument_layout(roman_bucket):
    run = roman_bucket.run("roman", "ops", "--ref-subdir-mode", "instrument")
    assert run.returncode == 0, run.stderr
    files = cache_files(roman_bucket.cache)
    assert "references/roman/wfi/roman_wfi_flat_0001.asdf" in files
    with open(os.path.join(roman_bucket.cache, "config/roman/ref_cache_subdir_mode")) as handle:
        assert handle.read() == "instrument"
    clash = roman_bucket.run("roman", "ops", "--ref-subdir-mode", "flat")
    assert clash.returncode == 73 and "organised 'instrument'" in clash.errors[0]["event"]
    assert roman_bucket.run("roman", "ops").event("warmed")["files_fetched"] == 0, "the cache keeps its layout"


def large_files_bucket(s3, tmp_path) -> Bucket:
    """A context whose references ending in 1 are 2.5 MB, the rest 10 bytes: many parts beside whole files."""
    big = lambda rng, name: 2_500_000 if name.endswith("1.asdf") else 10  # noqa: E731
    return new_bucket(s3, context.roman(size=big), str(tmp_path / "cache"))


def test_large_files_in_ranged_parts_arrive_intact(s3, tmp_path):
    bucket = large_files_bucket(s3, tmp_path)
    with FaultProxy(s3.endpoint) as proxy:  # no fault: it only records the requests
        run = bucket.run("roman", "ops", "--part-size", "64KiB", "--memory-budget", "256KiB", "--concurrency", "4",
                         AWS_ENDPOINT_URL_S3=proxy.endpoint)
    assert run.returncode == 0, run.stderr
    assert_cache_verified(bucket.cache, bucket.sample)
    large = [os.path.basename(path) for path, size in cache_files(bucket.cache).items() if size == 2_500_000]
    assert large
    for name in large:
        spans = sorted(tuple(map(int, r.range.removeprefix("bytes=").split("-"))) for r in proxy.gets(re.escape(name)))
        assert len(spans) == -(-2_500_000 // 65536), "one ranged GET per 64 KiB part"
        assert spans[0][0] == 0 and spans[-1][1] == 2_500_000 - 1
        assert all(end - start + 1 <= 65536 and nxt == end + 1 for (start, end), (nxt, _) in itertools.pairwise(spans))
    small = [r for r in proxy.gets(r"\.asdf$") if not any(name in r.path for name in large)]
    assert small and all(r.range is None for r in small), "a file within one part: one whole GET"


def test_bytes_in_flight_stay_within_the_memory_budget_and_requests_within_the_concurrency(s3, tmp_path):
    """What keeps the peak RSS bounded whatever the file sizes: counted at the server's side."""
    bucket = large_files_bucket(s3, tmp_path)
    with FaultProxy(s3.endpoint) as proxy:
        proxy.rules = [Rule("slow", path="references/", delay=0.05)]  # so that requests overlap
        run = bucket.run("roman", "ops", "--part-size", "64KiB", "--memory-budget", "256KiB", "--concurrency", "6",
                         AWS_ENDPOINT_URL_S3=proxy.endpoint)
    assert run.returncode == 0, run.stderr
    assert_cache_verified(bucket.cache, bucket.sample)
    assert proxy.peak_bytes <= 256 * 1024, proxy.peak_bytes
    assert 2 <= proxy.peak_gets <= 6, proxy.peak_gets


def test_verify_existing_finds_and_replaces_a_corrupt_cached_file(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    victim = largest_reference(roman_bucket)
    with open(victim, "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0xFF]))
    trusting = roman_bucket.run("roman", "ops")
    assert trusting.event("warmed")["files_fetched"] == 0, "by default a right-sized file is trusted"
    checking = roman_bucket.run("roman", "ops", "--verify-existing")
    assert checking.returncode == 0
    assert checking.event("warmed")["files_fetched"] == 1
    assert any(line["event"] == "cached file is corrupt, fetching it again" for line in checking.logs)
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


def test_a_truncated_cached_file_is_fetched_again(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    victim = largest_reference(roman_bucket)
    size = os.path.getsize(victim)
    os.truncate(victim, size // 2)
    run = roman_bucket.run("roman", "ops")
    assert run.event("warmed")["files_fetched"] == 1
    assert os.path.getsize(victim) == size


def test_the_command_replaces_us_with_the_crds_environment(roman_bucket):
    show = ("import json, os, sys; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('CRDS')}));"
            "sys.exit(3)")
    run = roman_bucket.run("roman", "ops", "--", sys.executable, "-c", show,
                           CRDS_CONFIG_URI="s3://elsewhere/config", CRDS_MODE="s3", CRDS_REFPATH="/elsewhere",
                           CRDS_MAPPATH="/elsewhere/m", CRDS_CFGPATH="/elsewhere/c", CRDS_PATH_SINGLE="/elsewhere")
    assert run.returncode == 3, "the command's own exit code"
    env = json.loads(run.stdout)
    assert env["CRDS_PATH"] == roman_bucket.cache
    assert env["CRDS_CONTEXT"] == "roman_0051.pmap"
    assert env["CRDS_OBSERVATORY"] == "roman"
    assert env["CRDS_SERVER_URL"] == "https://roman-crds-serverless.stsci.edu"
    assert env["CRDS_READONLY_CACHE"] == "1"
    for gone in ("CRDS_CONFIG_URI", "CRDS_MODE", "CRDS_S3_BUCKET", "CRDS_S3_PREFIX", "CRDS_REFPATH",
                 "CRDS_MAPPATH", "CRDS_CFGPATH", "CRDS_PATH_SINGLE"):
        assert gone not in env, f"{gone} would send crds off the cache"
    assert run.event("exec")["offline"] is True


def test_allow_fetch_exports_what_crds_s3_set_would(roman_bucket):
    show = "import json, os; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('CRDS')}))"
    run = roman_bucket.run("roman", "ops", "--allow-fetch", "--", sys.executable, "-c", show)
    env = json.loads(run.stdout)
    base = f"s3://{roman_bucket.name}/roman/crds"
    assert env["CRDS_MODE"] == "s3" and env["CRDS_S3_ENABLED"] == "1" and env["CRDS_DOWNLOAD_MODE"] == "plugin"
    assert env["CRDS_CONFIG_URI"] == f"{base}/config/roman"
    assert env["CRDS_MAPPING_URI"] == f"{base}/mappings/roman"
    assert env["CRDS_REFERENCE_URI"] == f"{base}/references/roman"
    assert env["CRDS_DOWNLOAD_PLUGIN"].startswith("crds_s3_get ${FILENAME}")
    assert "CRDS_READONLY_CACHE" not in env


def test_the_command_takes_our_process_over_and_its_signals_are_its_own(roman_bucket):
    """exec, not spawn-and-wait: the command has crds-job's pid, so a runner's SIGTERM reaches it."""
    import signal

    command = ("import os, signal, sys, time\n"
               "signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n"
               "print(os.getpid(), flush=True)\n"
               "time.sleep(120)\n")
    process = subprocess.Popen([sys.executable, "-m", "crds_job", "roman", "ops", "--", sys.executable, "-c", command],
                               env=roman_bucket.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        printed = process.stdout.readline()
        assert printed.strip() == str(process.pid), (printed, process.stderr.read() if not printed else "")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 42, "the command's own handler ran"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def signal_masks(status: str) -> dict[str, int]:
    """The ignored and blocked signal masks of /proc/<pid>/status, as integers."""
    return {key: int(value, 16) for key, value in
            (line.split(":\t") for line in status.splitlines() if line.startswith(("SigIgn", "SigBlk")))}


def test_the_command_starts_with_the_signals_a_shell_would_give_it(roman_bucket):
    """Python ignores SIGPIPE and SIGXFSZ, and the warm holds the stop signals: none of that passes on."""
    import signal

    run = roman_bucket.run("roman", "ops", "--", "cat", "/proc/self/status")
    assert run.returncode == 0, run.stderr
    masks = signal_masks(run.stdout)
    for number in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        bit = 1 << (number - 1)
        assert not masks["SigIgn"] & bit and not masks["SigBlk"] & bit, signal.Signals(number).name


def test_a_stop_signal_ignored_at_start_stays_ignored_for_the_warm_and_the_command(roman_bucket):
    """``nohup crds-job ...`` and ``crds-job ... &`` in a script: what the caller ignores, we ignore and pass on."""
    import signal

    def ignoring() -> None:
        for number in (signal.SIGHUP, signal.SIGINT):
            signal.signal(number, signal.SIG_IGN)

    done = subprocess.run([sys.executable, "-m", "crds_job", "roman", "ops", "--", "cat", "/proc/self/status"],
                          env=roman_bucket.env(), capture_output=True, text=True, timeout=120, preexec_fn=ignoring)
    assert done.returncode == 0, done.stderr
    masks = signal_masks(done.stdout)
    for number in (signal.SIGHUP, signal.SIGINT):
        assert masks["SigIgn"] & 1 << (number - 1), signal.Signals(number).name
    assert not masks["SigIgn"] & 1 << (signal.SIGTERM - 1), "one not ignored at start still gets its default"


def test_a_stop_signal_held_since_the_warm_ended_stops_the_job_instead_of_the_command(tmp_path):
    """From the warm's end to the exec SIGINT/SIGTERM wait, then stop the job: none is lost."""
    script = ("import os, signal, sys\n"
              "from crds_job import launch\n"
              "from crds_job.errors import Interrupted\n"
              "launch.hold_stop_signals()\n"
              "os.kill(os.getpid(), signal.SIGTERM)  # as the env file is being written, say\n"
              "try:\n"
              "    launch.exec_command(['sh', '-c', 'echo the command ran'], dict(os.environ))\n"
              "except Interrupted as stopped:\n"
              "    print(stopped, flush=True)\n"
              "    sys.exit(stopped.exit_code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stderr
    assert done.stdout.startswith("interrupted by SIGTERM as the warm ended, before any command started; ")


def test_a_stop_signal_landing_as_the_warm_returns_is_not_lost():
    """The signal comes after the work's last await: no loop pass will run a loop callback for it."""
    script = ("import asyncio, os, signal, sys\n"
              "from crds_job import cli\n"
              "from crds_job.errors import Interrupted\n"
              "async def work():\n"
              "    await asyncio.sleep(0)\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    return 'done'\n"
              "try:\n"
              "    print(cli.run_stoppable(work))\n"
              "except Interrupted as stopped:\n"
              "    print(stopped)\n"
              "    sys.exit(stopped.exit_code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, (done.stdout, done.stderr)
    assert done.stdout.startswith("interrupted by SIGTERM as the warm ended")


def test_a_dry_run_blocked_on_its_reader_still_stops_on_sigterm(roman_bucket):
    """Signals are held from the warm's end only where something must not be cut short (env file, exec)."""
    import fcntl
    import signal

    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: the plan will not fit, and nobody reads it
    process = subprocess.Popen([sys.executable, "-m", "crds_job", "--dry-run", "roman", "ops"],
                               env=roman_bucket.env(), stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    try:
        for line in process.stderr:
            if json.loads(line).get("event") == "plan":
                break
        for _ in range(100):  # until it waits on the full pipe
            with open(f"/proc/{process.pid}/wchan") as wchan:
                if "pipe" in wchan.read():
                    break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == -signal.SIGTERM
    finally:
        os.close(read_end)
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_command_that_cannot_start_is_reported_even_to_a_stderr_nobody_reads(roman_bucket):
    """The command's default SIGPIPE is given only to the command: our own error line must not kill us."""
    process = subprocess.Popen([sys.executable, "-m", "crds_job", "roman", "ops", "--", "no-such-calibration-command"],
                               env=roman_bucket.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    process.stderr.close()
    assert process.wait(timeout=120) == 127


def test_a_dry_run_read_only_in_part_is_no_failure(roman_bucket):
    """``crds-job --dry-run ... | head``: the reader leaving early is not a bug of ours (70)."""
    process = subprocess.Popen([sys.executable, "-m", "crds_job", "--dry-run", "roman", "ops"],
                               env=roman_bucket.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # before the plan is written
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 0, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("stderr_is", ["closed", "a pipe nobody reads"])
def test_without_a_working_stderr_the_job_still_runs_and_stdout_stays_the_commands(roman_bucket, stderr_is):
    command = [sys.executable, "-m", "crds_job", "roman", "ops", "--", "sh", "-c", "echo the command ran"]
    if stderr_is == "closed":
        process = subprocess.Popen(["sh", "-c", 'exec "$@" 2>&-', "sh", *command], env=roman_bucket.env(),
                                   stdout=subprocess.PIPE, text=True)
    else:
        process = subprocess.Popen(command, env=roman_bucket.env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        process.stderr.close()
    stdout, _ = process.communicate(timeout=120)
    assert (process.returncode, stdout) == (0, "the command ran\n")
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


def test_env_file_hands_the_environment_to_a_later_container(roman_bucket, tmp_path):
    env_file = tmp_path / "shared" / "crds.env"
    run = roman_bucket.run("roman", "ops", "--env-file", str(env_file))
    assert run.returncode == 0
    text = env_file.read_text()
    assert f"export CRDS_PATH={roman_bucket.cache}" in text
    assert "export CRDS_CONTEXT=roman_0051.pmap" in text and "unset CRDS_CONFIG_URI" in text


def test_env_files_are_written_through_one_temp_file_that_the_next_job_takes_over(tmp_path):
    """A job killed before its rename leaves one temp file per env file, not one more each time."""
    env_file = tmp_path / "crds.env"
    left = tmp_path / ".crds.env.crds-job.part"
    left.write_text("export CRDS_PATH=/half-wri")  # a killed job's
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # jobs writing the same file at once
        list(pool.map(lambda n: cli.write_env_file(str(env_file), f"export N={n}\n" * 1000), range(32)))
    assert os.listdir(tmp_path) == ["crds.env"]
    (line,) = set(env_file.read_text().splitlines())  # one writer's whole text, never two interleaved
    assert line.startswith("export N=") and oct(env_file.stat().st_mode & 0o777) == "0o644"


def test_env_file_keeps_a_cache_path_that_is_not_utf8(roman_bucket, tmp_path):
    """Linux paths are bytes: the env file gives the shell the very bytes the job was given."""
    cache = os.fsencode(str(tmp_path)) + b"/cache-\xff"
    env_file = tmp_path / "crds.env"
    done = subprocess.run([sys.executable, "-m", "crds_job", "roman", "ops", b"--cache", cache,
                           "--env-file", str(env_file)], env=roman_bucket.env(), capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = subprocess.run(["sh", "-c", '. "$1" && printf %s "$CRDS_PATH"', "sh", str(env_file)],
                           capture_output=True, check=True).stdout
    assert shown == cache and os.path.isdir(cache + b"/mappings/roman")


def test_progress_lines_appear_on_a_slow_warm(roman_bucket):
    run = roman_bucket.run("roman", "ops", "--concurrency", "1", "--progress-interval", "0.01")
    assert run.returncode == 0
    lines = run.events("progress")
    assert lines, "a warm longer than the interval reports progress"
    assert {"files_done", "files_total", "bytes_done", "bytes_total", "mb_per_s", "eta_s"} <= set(lines[0])


def test_console_log_format_is_plain_text(roman_bucket):
    done = subprocess.run([sys.executable, "-m", "crds_job", "--log-format", "console", "roman", "ops"],
                          env=roman_bucket.env(), capture_output=True, text=True)
    assert done.returncode == 0
    assert "warmed" in done.stderr and not done.stderr.lstrip().startswith("{")


def test_an_hst_bucket_by_stscis_name_with_geis_pairs(s3, tmp_path):
    sample = context.hst()
    name = "hst-crds-cache-test"
    if name not in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]:
        server.seed(s3.client(), name, "", sample)
    bucket = Bucket(s3=s3, name=name, prefix="", sample=sample, cache=str(tmp_path / "cache"))
    env = bucket.env()
    env.pop("CRDS_S3_BUCKET"), env.pop("CRDS_S3_PREFIX")
    run = bucket.run("hst", "test", env=env)
    assert run.returncode == 0, run.stderr
    assert run.event("context resolved")["source"] == "s3://hst-crds-cache-test/hst"
    references = {os.path.basename(f) for f in cache_files(bucket.cache) if f.startswith("references/hst/")}
    assert references == sample.references_of["hst_0051.pmap"]
    assert {"00000001u.r4h", "00000001u.r4d"} <= references, "a GEIS header comes with its data file"
    assert_cache_verified(bucket.cache, sample)
    acs_only = tmp_path / "acs"
    run = bucket.run("hst", "test", "--instruments", "acs", "--cache", str(acs_only), env=env)
    assert run.returncode == 0
    names = {os.path.basename(f) for f in cache_files(str(acs_only)) if f.startswith("references/")}
    assert names and all(n.endswith(("j_bia.fits", "j_drk.fits", "j_pfl.fits")) for n in names)
    assert any(f.startswith("mappings/hst/hst_wfpc2") for f in cache_files(str(acs_only))), "all mappings"


def test_the_generic_aws_endpoint_variable_works_too(roman_bucket):
    env = roman_bucket.env()
    env["AWS_ENDPOINT_URL"] = env.pop("AWS_ENDPOINT_URL_S3")
    run = roman_bucket.run("roman", "ops", env=env)
    assert run.returncode == 0, run.stderr
    assert run.event("warmed")["files_fetched"] == 42


def test_allow_fetch_lets_crds_fetch_a_miss_from_s3_itself(roman_bucket):
    """Only mappings are warmed; with --allow-fetch the command's crds fetches references via crds_s3_get."""
    fetch = ("import crds, json; print(json.dumps(crds.getreferences("
             f"{context.ROMAN_DATASET_HEADER!r}, observatory='roman', reftypes=['dark', 'flat'])))")
    env = roman_bucket.env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # crds_s3_get, aws
    run = roman_bucket.run("roman", "ops", "--mappings-only", "--allow-fetch", "--", sys.executable, "-c", fetch,
                           env=env)
    assert run.returncode == 0, run.stderr
    refs = json.loads(run.stdout.strip().splitlines()[-1])
    assert {k: os.path.basename(v) for k, v in refs.items()} == {
        "dark": "roman_wfi_dark_0004.asdf", "flat": "roman_wfi_flat_0001.asdf"}
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
    assert all(os.path.getsize(path) == roman_bucket.sample.reference_sizes[os.path.basename(path)]
               for path in refs.values())


def test_a_corrupt_cached_mapping_is_fetched_again(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    rmap = os.path.join(roman_bucket.cache, "mappings", "roman", "roman_wfi_mask_0001.rmap")
    data = bytearray(open(rmap, "rb").read())
    data[-2] ^= 0x01  # same size, another sha1
    with open(rmap, "wb") as handle:
        handle.write(data)
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == 0, run.stderr
    assert [line["file"] for line in run.events("cached file is corrupt, fetching it again")] == [
        "roman_wfi_mask_0001.rmap"]
    assert run.event("warmed")["files_fetched"] == 1
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


def test_a_corrupt_copy_another_writer_replaced_first_is_not_fetched_again(roman_bucket, monkeypatch):
    """Two writers find one corrupt copy; the one that gets the lock second keeps the first one's fix."""
    assert roman_bucket.run("roman", "ops").returncode == 0
    path = largest_reference(roman_bucket)
    good = open(path, "rb").read()
    with open(path, "r+b") as handle:
        handle.write(bytes([good[0] ^ 0xFF]))
    corrupt = file_id(os.lstat(path))
    for key, value in roman_bucket.env().items():
        monkeypatch.setenv(key, value)
    settings = crds_settings.parse(["roman", "ops"], os.environ)
    cache = Cache.open(settings.cache, "roman", None)
    meta = roman_bucket.sample.metadata()[os.path.basename(path)]
    entry = Entry(os.path.basename(path), "reference", int(meta["size"]), meta["sha1sum"], "wfi")

    async def fetch(stale):
        async with remote.Bucket(settings.location, settings.concurrency, settings.retries) as bucket:
            progress = Progress()
            fetcher = Fetcher(bucket, settings, progress, structlog.get_logger(),
                              Durability(settings.cache, EACH))
            try:
                return await fetcher.fetch_file(entry, cache, stale), progress
            finally:
                fetcher.close()

    fixed = path + ".fixed"
    with open(fixed, "wb") as handle:
        handle.write(good)
    os.rename(fixed, path)  # the other writer's verified copy
    fetched, progress = asyncio.run(fetch(stale=corrupt))
    assert not fetched and progress.bytes_transferred == 0, "nothing downloaded"
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
    fetched, progress = asyncio.run(fetch(stale=file_id(os.lstat(path))))
    assert fetched and progress.bytes_transferred == entry.size, "the copy found corrupt is replaced"
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
    with open(path, "r+b") as handle:
        handle.write(bytes([good[0] ^ 0xFF]))
    fetched, _ = asyncio.run(fetch(stale=(0, 0)))  # as if inode numbers were not stable (some FUSE mounts)
    assert fetched, "a copy that only seems new is checked, and replaced"
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
