"""Benchmark: crds-job reading a CRDS server against the crds client's own server mode.

The same stand-in CRDS server (``crds_job.sample.crds_server``, validated
with the real client in tests/test_crds_server_standin.py) serves a synthetic
Roman context of the small-file mix (bench/warm.py's), once as it answers on
loopback and with a delay before each file's first byte, as a server
across a network answers (``--delays``, default 50 and 200 ms: 50 ms, a round trip to a
remote data centre and the server's own time; 200 ms: a TLS handshake on
every request, as the client's urllib makes one per file, across an ocean).
In alternation, on a cold cache each time:

1. crds-job, ``--source server``, the whole context;
2. the baseline: ``crds sync --contexts CTX --fetch-references`` in the
   client's server mode (``CRDS_SERVER_URL`` set, no S3 variable): what a
   JWST user runs today, or what ``crds`` does file by file at calibration.

Prints a markdown table; --out writes it to a file.

    python bench/crds_server.py            # a few minutes
    python bench/crds_server.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

from warm import Mix, publish, sample_for, timed

from crds_job.sample import context
from crds_job.sample.crds_server import LocalCrdsServer

MIX = Mix("small-file mix (10 kB-2 MB)", 176, 10_000, 2_000_000)
QUICK = Mix("quick mix", 30, 1_000, 50_000)


def env_for(url: str, cache: str, workdir: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRDS", "AWS_"))}
    env.update(CRDS_PATH=cache, CRDS_SERVER_URL=url, CRDS_OBSERVATORY="roman",
               PYTHONPYCACHEPREFIX=os.path.join(workdir, "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def check(cache: str, sample: context.SampleBucket) -> None:
    """Every file of the context arrived whole (the contestants are compared on complete work)."""
    meta = sample.metadata()
    for name in list(sample.mappings) + sorted(sample.references_of[sample.contexts[-1]]):
        folder = "mappings" if name.endswith("map") else "references"
        found = [os.path.join(root, name) for root, _, files in os.walk(os.path.join(cache, folder)) if name in files]
        if not found or os.path.getsize(found[0]) != int(meta[name]["size"]):
            raise RuntimeError(f"{name} did not arrive whole in {cache}")


def crds_job(url: str, cache: str, workdir: str) -> float:
    return timed([sys.executable, "-m", "crds_job", "--source", "server", "roman", "ops"],
                 env_for(url, cache, workdir))[0]


def crds_sync(url: str, cache: str, workdir: str, context_name: str) -> float:
    os.makedirs(os.path.join(cache, "config", "roman"))
    with open(os.path.join(cache, "config", "roman", "ref_cache_subdir_mode"), "w") as handle:
        handle.write("flat")  # what crds-job writes: the same layout for both
    return timed([sys.executable, "-m", "crds.sync", "--contexts", context_name, "--fetch-references"],
                 env_for(url, cache, workdir))[0]


def measure(sample: context.SampleBucket, delay: float, runs: int, workdir: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"crds-job --source server": [], "crds sync (server mode)": []}
    with LocalCrdsServer(sample, delay=delay) as server:
        for run in range(runs):
            order = list(times) if run % 2 == 0 else list(reversed(times))
            for name in order:
                cache = tempfile.mkdtemp(prefix="cache-", dir=workdir)
                if name.startswith("crds-job"):
                    seconds = crds_job(server.url, cache, workdir)
                else:
                    seconds = crds_sync(server.url, cache, workdir, sample.contexts[-1])
                check(cache, sample)
                shutil.rmtree(cache)
                times[name].append(seconds)
                print(f"  delay {delay * 1000:.0f} ms, {name}: {seconds:.2f} s", file=sys.stderr)
    return times


def report(mix: Mix, sample: context.SampleBucket, results: dict[float, dict[str, list[float]]]) -> list[str]:
    meta = sample.metadata()
    names = list(sample.mappings) + sorted(sample.references_of[sample.contexts[-1]])
    size = sum(int(meta[name]["size"]) for name in names)
    lines = [f"## CRDS server source: {mix.name}, {len(names)} files, {size / 1e6:.1f} MB", "",
             "| first-byte delay | contestant | runs | median s | min s | max s | MB/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for delay, times in results.items():
        for name, values in times.items():
            median = statistics.median(values)
            lines.append(f"| {delay * 1000:.0f} ms | {name} | {len(values)} | {median:.2f} | {min(values):.2f} | "
                         f"{max(values):.2f} | {size / 1e6 / median:.1f} |")
    lines.append("")
    for delay, times in results.items():
        ours, theirs = times["crds-job --source server"], times["crds sync (server mode)"]
        ratios = sorted(b / a for a, b in zip(ours, theirs, strict=True))
        lines.append(f"- {delay * 1000:.0f} ms: crds sync / crds-job = **{statistics.median(ratios):.1f}×** "
                     f"(median of {len(ratios)} paired runs, all {ratios[0]:.1f}-{ratios[-1]:.1f}×)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="paired runs per delay")
    parser.add_argument("--delays", default="0.05,0.2",
                        help="seconds before each file's first byte, comma separated (0 is always run too)")
    parser.add_argument("--quick", action="store_true", help="a smoke run in seconds")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    mix = QUICK if args.quick else MIX
    runs = 1 if args.quick else args.runs
    sample = sample_for(mix)
    workdir = tempfile.mkdtemp(prefix="crds-job-bench-server-")
    try:
        subprocess.run([sys.executable, "-c", "import crds_job.cli, crds.sync"], check=True,
                       env=env_for("http://127.0.0.1:9", workdir, workdir))  # compiled once, before any timing
        delays = [0.0] + [float(text) for text in args.delays.split(",") if float(text) > 0]
        results = {delay: measure(sample, delay, runs, workdir) for delay in delays}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    header = [f"{datetime.date.today()} on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
              f"Python {platform.python_version()}; the stand-in CRDS server on loopback, in its own thread.", ""]
    text = "\n".join(header + report(mix, sample, results)) + "\n"
    publish(text, args.out)


if __name__ == "__main__":
    main()
