"""A fleet of jobs started at once against a throttled S3: slowed down, never failed.

A night of calibration starts hundreds of pods together against one prefix,
which S3 throttles (503 SlowDown) until it repartitions. Here N crds-job
processes start at once through ``ThrottlingProxy`` (validated against the
SDK in test_throttle_proxy) at a rate that binds; each must end 0 with a
verified cache. No time is asserted: bench/fleet.py measures the figures.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import assert_cache_verified, new_bucket, parse_logs

from crds_job.sample import context
from crds_job.sample.throttle import ThrottlingProxy

JOBS = 8


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "crds_job", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("shared", [False, True], ids=["own caches", "one shared cache"])
def test_a_fleet_through_a_throttled_s3_all_ends_0_with_verified_caches(s3, tmp_path, shared):
    sample = context.roman()
    bucket = new_bucket(s3, sample, str(tmp_path / "cache"))
    files = len(sample.references_of["roman_0051.pmap"]) + 12  # references, and the context's mappings
    # 40 GET/s for 8 jobs of 32 connections each: most first GETs are throttled.
    with ThrottlingProxy(s3.endpoint, rate=40, burst=4) as proxy:
        caches = [str(tmp_path / ("shared" if shared else f"cache-{n}")) for n in range(JOBS)]
        jobs = [start(["roman", "ops", "--retries", "2"],
                      bucket.env(AWS_ENDPOINT_URL_S3=proxy.endpoint, CRDS_PATH=cache)) for cache in caches]
        results = [(job.wait(timeout=240), job.stderr.read() if job.stderr else "") for job in jobs]
        throttled, gets = proxy.throttled, proxy.gets
    for code, stderr in results:
        assert code == 0, stderr[-3000:]
    for cache in set(caches):
        assert_cache_verified(cache, sample)
    assert throttled > 0, "the rate bound: some GETs were answered SlowDown"
    if not shared:  # 8 times the GETs: beyond what the SDK's own attempts absorb, fetch slows down too
        logs = [line for _, stderr in results for line in parse_logs(stderr)[0]]
        assert any(line["event"] == "S3 is throttling the job: slowing down" for line in logs)
    delivered = files * (1 if shared else JOBS)
    # Reported, not asserted (bench/fleet.py holds the figures): GETs per file delivered.
    print(f"{JOBS} jobs, {'one shared cache' if shared else 'own caches'}: {gets} GETs, {throttled} throttled, "
          f"{gets / delivered:.2f} GETs per file delivered", file=sys.stderr)
