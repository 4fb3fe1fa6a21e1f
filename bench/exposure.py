"""Benchmark: one exposure's references, as users fetch them today and with crds-job; and what it costs.

What a user runs today is not ``crds sync`` but ``source crds_s3_set roman ops; strun ...``: the
pipeline's crds asks ``getreferences`` for the exposure's header and fetches each reference it
lacks, lazily, one after another, through a ``crds_s3_get`` process per file. Here, on the same
bucket behind the same shaped path to S3 (``ThrottlingProxy``, no rate limit: a first-byte delay,
default 30 ms, and a per-connection bandwidth cap, default 90 MB/s), on cold caches, alternated:

1. crds-job: a selective warm of the exposure (named in the command), then exec of a command that
   asks crds ``getreferences`` for it, offline;
2. the user's way: that same ``getreferences`` with ``crds_s3_set``'s environment (the crds client in
   its S3 plugin mode, crds_s3_get and awscli), on an empty cache, as stpipe calls it.

Both end with every reference of the exposure on disk; the time is the whole process's. Also the
cost per exposure: GET requests and bytes read from S3 by crds-job, cold and on a warm cache.

    python bench/exposure.py              # a few minutes
    python bench/exposure.py --quick
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile

from warm import BUCKET, PREFIX, Mix, publish, sample_for, seed, timed

from crds_job import environments, launch
from crds_job.sample import context, datasets, server
from crds_job.sample.throttle import ThrottlingProxy

GET_REFERENCES = f"""
import crds, json
header = {context.ROMAN_DATASET_HEADER!r}
refs = crds.getreferences(header, observatory="roman")
assert len(refs) > 0
print(json.dumps(refs))
"""


def base_env(s3: server.LocalS3, endpoint: str, cache: str, workdir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRDS", "AWS_"))}
    env.update(s3.client_env(), AWS_ENDPOINT_URL_S3=endpoint, AWS_ENDPOINT_URL=endpoint, CRDS_PATH=cache,
               CRDS_S3_BUCKET=BUCKET, CRDS_S3_PREFIX=PREFIX,
               PYTHONPYCACHEPREFIX=os.path.join(workdir, "pycache"))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def references_on_disk(cache: str) -> tuple[int, int]:
    """(files, bytes) under the cache's references/."""
    found = [os.path.join(d, f) for d, _, names in os.walk(os.path.join(cache, "references")) for f in names]
    return len(found), sum(os.path.getsize(f) for f in found)


def crds_job(env: dict[str, str], dataset: str) -> float:
    return timed([sys.executable, "-m", "crds_job", "roman", "ops", "--", sys.executable, "-c", GET_REFERENCES,
                  dataset], env)[0]


def users_way(env: dict[str, str], cache: str, pmap: str) -> float:
    os.makedirs(os.path.join(cache, "config", "roman"))
    with open(os.path.join(cache, "config", "roman", "ref_cache_subdir_mode"), "w") as handle:
        handle.write("flat")  # crds_s3_set's layout, and crds-job's: the same files on disk
    where = environments.locate("roman", "ops", bucket=BUCKET, prefix=PREFIX)
    env = launch.apply(env, launch.crds_environment(where, cache, pmap, "flat", allow_fetch=True))
    env.pop("CRDS_CONTEXT")  # crds_s3_set sets none: the bucket's latest, which crds-job warms too
    return timed([sys.executable, "-c", GET_REFERENCES], env)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.03, help="first-byte delay of every GET, seconds")
    parser.add_argument("--bandwidth", type=float, default=90e6, help="bytes/s per connection")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()
    mix = Mix("small-file mix (10 kB-2 MB)", 30 if args.quick else 120, 10_000, 2_000_000)
    runs = 1 if args.quick else args.runs
    sample = sample_for(mix)
    pmap = sample.contexts[-1]
    workdir = tempfile.mkdtemp(prefix="crds-job-exposure-")
    dataset = datasets.write_asdf(os.path.join(workdir, "l1_img.asdf"), context.ROMAN_DATASET_HEADER)
    times: dict[str, list[float]] = {"crds-job (warm + exec, offline)": [], "crds_s3_set + getreferences": []}
    cost: dict[str, tuple[int, int]] = {}
    try:
        with server.LocalS3("seaweedfs") as s3:
            seed(s3, sample)
            with ThrottlingProxy(s3.endpoint, delay=args.delay, bandwidth=args.bandwidth) as proxy:
                # Compiled once, before any timing, as in an installed image.
                timed([sys.executable, "-c", "import crds_job.cli, crds, roman_datamodels, asdf"],
                      base_env(s3, proxy.endpoint, workdir, workdir))
                for run in range(runs):
                    for name in (list(times) if run % 2 == 0 else list(reversed(times))):
                        cache = tempfile.mkdtemp(prefix="cache-", dir=workdir)
                        env = base_env(s3, proxy.endpoint, cache, workdir)
                        proxy.reset_counts()
                        if name.startswith("crds-job"):
                            seconds = crds_job(env, dataset)
                            files, size = references_on_disk(cache)
                            cost["cold"] = (proxy.gets, size + sum(len(m) for m in sample.mappings.values()))
                            proxy.reset_counts()
                            crds_job(env, dataset)  # again, on the cache it warmed
                            cost["warm"] = (proxy.gets, 0)
                        else:
                            seconds = users_way(env, cache, pmap)
                            files, size = references_on_disk(cache)
                        times[name].append(seconds)
                        print(f"  {name}: {seconds:.2f} s, {files} references, {size / 1e6:.1f} MB", file=sys.stderr)
                        shutil.rmtree(cache)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ours, theirs = times["crds-job (warm + exec, offline)"], times["crds_s3_set + getreferences"]
    ratios = sorted(b / a for a, b in zip(ours, theirs, strict=True))
    lines = [f"{datetime.date.today()} on {platform.machine()}, {os.cpu_count()} CPUs; Python "
             f"{platform.python_version()}; S3: seaweedfs on loopback behind a {args.delay * 1000:g} ms first-byte "
             f"delay and {args.bandwidth / 1e6:g} MB/s per connection.", "",
             f"## One exposure's references, the user's way and crds-job's ({mix.name}, {files} references, "
             f"{size / 1e6:.1f} MB)", "",
             "| contestant | runs | median s | min s | max s |", "| --- | --- | --- | --- | --- |"]
    for name, values in times.items():
        lines.append(f"| {name} | {len(values)} | {statistics.median(values):.2f} | {min(values):.2f} | "
                     f"{max(values):.2f} |")
    lines += ["", f"the user's way / crds-job = **{statistics.median(ratios):.1f}×** (median of {len(ratios)} paired "
              f"runs, all {ratios[0]:.1f}-{ratios[-1]:.1f}×)", "",
              "Cost per exposure, read from S3 by crds-job: "
              f"cold cache {cost['cold'][0]} GETs, {cost['cold'][1] / 1e6:.1f} MB (the context's mappings and the "
              f"exposure's references); a cache already warm for the context {cost['warm'][0]} GETs (its config)."]
    text = "\n".join(lines) + "\n"
    publish(text, args.out)


if __name__ == "__main__":
    main()
