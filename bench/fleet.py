"""Benchmark: a fleet of crds-job processes started at once against a throttled S3.

What a night of calibration does to one prefix: N jobs (8, 16, 32 by default)
start together, each warming the whole context (``--all-references``
semantics: no dataset) with default options, through ``ThrottlingProxy``
(crds_job/sample/throttle.py, validated against the SDK in
tests/test_throttle_proxy.py) in front of a local S3 (SeaweedFS): S3's
``503 SlowDown`` above ``--rate`` GET/s, and a first-byte delay on every GET.
Each fleet runs on its own caches, then on one shared cache. Reported per
fleet: exit codes, throttled answers, GETs per (jobs × files), GETs per file
delivered, and the slowest job against the fastest.

    python bench/fleet.py                 # 350 small files, 8/16/32 jobs, 300 GET/s, 30 ms
    python bench/fleet.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import collections
import datetime
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from warm import BUCKET, PREFIX, Mix, publish, sample_for, seed

from crds_job.sample import context, server
from crds_job.sample.throttle import ThrottlingProxy


def complete(cache: str, sample: context.SampleBucket) -> bool:
    """Whether ``cache`` holds every file of the context with its published sha1."""
    meta = sample.metadata()
    for name in list(sample.mappings) + sorted(sample.references_of[sample.contexts[-1]]):
        path = os.path.join(cache, "mappings" if name.endswith("map") else "references", "roman", name)
        try:
            with open(path, "rb") as handle:
                if hashlib.sha1(handle.read()).hexdigest() != meta[name]["sha1sum"]:
                    return False
        except FileNotFoundError:
            return False
    return True


def fleet(s3: server.LocalS3, proxy: ThrottlingProxy, sample: context.SampleBucket, jobs: int, shared: bool,
          workdir: str) -> dict[str, object]:
    """Start ``jobs`` warms at once; wait for all; their exit codes, times and the proxy's counts."""
    proxy.reset_counts()
    files = len(sample.mappings) + len(sample.references_of[sample.contexts[-1]])
    caches = [os.path.join(workdir, "shared" if shared else f"cache-{n}") for n in range(jobs)]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CRDS", "AWS_"))}
    base.update(s3.client_env(), AWS_ENDPOINT_URL_S3=proxy.endpoint, CRDS_S3_BUCKET=BUCKET, CRDS_S3_PREFIX=PREFIX,
                PYTHONPYCACHEPREFIX=os.path.join(workdir, "pycache"))
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-m", "crds_job", "roman", "ops"], env=dict(base, CRDS_PATH=cache),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for cache in caches]
    seconds, codes = [], []
    pending = dict(enumerate(processes))
    while pending:
        for n, process in list(pending.items()):
            if process.poll() is not None:
                codes.append(process.returncode)
                seconds.append(time.perf_counter() - started)
                del pending[n]
        time.sleep(0.02)
    verified = sum(complete(cache, sample) for cache in caches)
    for cache in set(caches):
        shutil.rmtree(cache, ignore_errors=True)
    delivered = files * (1 if shared else jobs)
    return {"jobs": jobs, "shared": shared, "codes": collections.Counter(codes), "throttled": proxy.throttled,
            "verified": verified,
            "gets": proxy.gets, "per_job_file": proxy.gets / (jobs * files), "per_delivered": proxy.gets / delivered,
            "fastest": min(seconds), "slowest": max(seconds)}


def row(result: dict[str, object]) -> str:
    codes = ", ".join(f"{code}×{count}" for code, count in sorted(result["codes"].items()))  # type: ignore[union-attr]
    where = "one shared cache" if result["shared"] else "own caches"
    return (f"| {result['jobs']} | {where} | {codes} | {result['verified']}/{result['jobs']} | "
            f"{result['throttled']:,} | {result['per_job_file']:.2f}× | "
            f"{result['per_delivered']:.2f}× | {result['fastest']:.1f} | {result['slowest']:.1f} | "
            f"{result['slowest'] / result['fastest']:.2f}× |")  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", default="8,16,32", help="fleet sizes, comma separated")
    parser.add_argument("--files", type=int, default=350, help="references of the context, about")
    parser.add_argument("--rate", type=float, default=300.0, help="GET/s above which S3 answers SlowDown")
    parser.add_argument("--delay", type=float, default=0.03, help="first-byte delay of every GET, seconds")
    parser.add_argument("--server", default="seaweedfs", choices=("seaweedfs", "moto"))
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    sizes = [4] if args.quick else [int(n) for n in args.jobs.split(",")]
    mix = Mix("small files (1-20 kB)", 40 if args.quick else args.files, 1_000, 20_000)
    sample = sample_for(mix)
    files = len(sample.mappings) + len(sample.references_of[sample.contexts[-1]])
    workdir = tempfile.mkdtemp(prefix="crds-job-fleet-")
    lines = [f"{datetime.date.today()} on {platform.machine()}, {os.cpu_count()} CPUs; Python "
             f"{platform.python_version()}; S3: {args.server} on loopback behind the throttling proxy "
             f"({args.rate:g} GET/s, {args.delay * 1000:g} ms first byte); crds-job with default options.", "",
             f"## Fleets: {files} files a job ({mix.name})", "",
             "| jobs | caches | exit codes | verified caches | 503s | GETs / (jobs × files) | "
             "GETs per file delivered | fastest s | slowest s | slowest / fastest |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    try:
        with server.LocalS3(args.server) as s3:
            seed(s3, sample)
            with ThrottlingProxy(s3.endpoint, rate=args.rate, delay=args.delay) as proxy:
                subprocess.run([sys.executable, "-c", "import crds_job.cli"], check=True,
                               env=dict(os.environ, PYTHONPYCACHEPREFIX=os.path.join(workdir, "pycache")))
                for jobs in sizes:
                    for shared in (False, True):
                        result = fleet(s3, proxy, sample, jobs, shared, workdir)
                        print(row(result), file=sys.stderr)
                        lines.append(row(result))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    publish(text, args.out)


if __name__ == "__main__":
    main()
