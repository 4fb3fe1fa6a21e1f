"""Benchmark: a cache that outlives one job — what it saves in S3 traffic, and what pruning it costs.

Three measurements, each through whole ``python -m crds_job`` processes as a job runs them:

1. Consecutive contexts into one cache: warm roman_0050.pmap (the whole context) into an empty
   cache, then roman_0051.pmap (which replaces one rmap, and so one reference type, of it) into the
   same cache: what the second warm fetches against its whole plan, and each warm's time; beside
   them, roman_0051.pmap warmed into an empty cache.
2. ``crds-job --prune --keep-contexts 1``, and its ``--dry-run``, on a cache built on disk (no S3):
   ``--files`` references of 1 KiB in the flat layout, two contexts' records each naming 60 % of
   them (the older's first 60 %, the newer's last 60 %), every file used a day ago (past
   ``retention.GRACE``). The cache is rebuilt before each run; the prune removes the older
   context's files the newer does not name. Beside them, the floor: the same files removed by
   ``os.unlink`` in a bare loop (no walk, no process start), and crds-job's start alone.
3. A shared node cache against a cache per job: ``--exposures`` selective warms (``--datasets``),
   one after another, of exposures of ``--detectors`` detectors (each detector's selecting other
   references), all into one cache, then each into a fresh cache of its own: the files, bytes and
   GETs read from S3, summed.

S3 is a local server (moto by default) reached through ``ThrottlingProxy`` (a first-byte delay,
default 30 ms, and a per-connection bandwidth cap, default 90 MB/s), which counts the GETs.

    python bench/retention.py             # a few minutes
    python bench/retention.py --quick     # a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from warm import BUCKET, PREFIX, Mix, publish, seed

from crds_job import retention
from crds_job.sample import context, datasets, server
from crds_job.sample.throttle import ThrottlingProxy

MB = 1e6
DAY = 86400.0
#: The two contexts of the synthetic cache pruned, oldest first.
OLD, NEW = "roman_0050.pmap", "roman_0051.pmap"
#: Bytes of each reference of the synthetic cache.
SMALL = 1024

Events = dict[str, dict[str, Any]]


def environment(workdir: str, cache: str, s3: server.LocalS3 | None = None, endpoint: str = "") -> dict[str, str]:
    """crds-job's environment: only this cache, and the local S3 through ``endpoint`` when given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRDS", "AWS_"))}
    env.update(CRDS_PATH=cache, PYTHONPYCACHEPREFIX=os.path.join(workdir, "pycache"))
    if s3 is not None:
        env.update(s3.client_env(), AWS_ENDPOINT_URL_S3=endpoint, AWS_ENDPOINT_URL=endpoint,
                   CRDS_S3_BUCKET=BUCKET, CRDS_S3_PREFIX=PREFIX)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # byte-compiled once, as in an installed image
    return env


def crds_job(args: list[str], env: dict[str, str]) -> tuple[float, Events]:
    """Run ``python -m crds_job ARGS``: its wall seconds, and the last log line of each event ("plan", ...)."""
    os.sync()  # the dirty pages of what came before are not charged to this run
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "crds_job", *args], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"crds-job {' '.join(args)} failed with {done.returncode}: {done.stderr[-2000:]}")
    events: Events = {}
    for line in done.stderr.splitlines():
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict) and "event" in found:
            events[found["event"]] = found
    return seconds, events


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f}"


# ----- 1. consecutive contexts into one cache -------------------------------------------------------


def consecutive(env_for: Any, proxy: ThrottlingProxy, sample: context.SampleBucket, runs: int, workdir: str,
                log: Any) -> list[str]:
    first, second = sample.contexts[0], sample.contexts[1]
    labels = {"first": f"{first} (whole context), empty cache", "second": f"then {second}, same cache",
              "cold": f"{second} alone, empty cache (for comparison)"}
    seconds: dict[str, list[float]] = {key: [] for key in labels}
    seen: dict[str, tuple[Events, int]] = {}
    for _ in range(runs):
        for key, ctx, fresh in (("first", first, True), ("second", second, False), ("cold", second, True)):
            if fresh:
                cache = tempfile.mkdtemp(prefix="cache-", dir=workdir)
            proxy.reset_counts()
            took, events = crds_job(["roman", "ops", "--context", ctx], env_for(cache))
            seconds[key].append(took)
            seen[key] = (events, proxy.gets)
            log(f"  {labels[key]}: {took:.2f} s, {events['warmed']['files_fetched']} files fetched")
            if key != "first":
                shutil.rmtree(cache)
    rows = ["| warm | plan files | plan MB | fetched files | fetched MB | GETs | runs | median s | min s | max s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    totals = {}
    for key, label in labels.items():
        events, gets = seen[key]
        plan, warmed = events["plan"], events["warmed"]
        files = plan["mappings"] + plan["pickles"] + plan["references"]
        totals[key] = (files, plan["bytes"], warmed["files_fetched"], warmed["bytes_fetched"])
        rows.append(f"| {label} | {files} | {plan['bytes'] / MB:.2f} | {warmed['files_fetched']} | "
                    f"{warmed['bytes_fetched'] / MB:.2f} | {gets} | {len(seconds[key])} | {spread(seconds[key])} |")
    files, size, fetched, fetched_bytes = totals["second"]
    cold = statistics.median(seconds["cold"])
    rows += ["", f"The second warm fetched {fetched} of its plan's {files} files ({fetched / files:.0%}) and "
             f"{fetched_bytes / MB:.2f} of its {size / MB:.2f} MB ({fetched_bytes / size:.1%}): the context's "
             f"difference; it took {statistics.median(seconds['second']) / cold:.2f}× the time of the same "
             f"context warmed into an empty cache (medians)."]
    return rows


# ----- 2. pruning a large cache -----------------------------------------------------------------------


def build_cache(root: str, files: int) -> int:
    """A flat Roman cache of ``files`` references of ``SMALL`` bytes plus two contexts' mappings, and the
    records of those two contexts' warms; every file used a day ago. Returns the files it holds."""
    shutil.rmtree(root, ignore_errors=True)
    references = os.path.join(root, "references", "roman")
    mappings = os.path.join(root, "mappings", "roman")
    for folder in (references, mappings, os.path.join(root, "config", "roman")):
        os.makedirs(folder)
    with open(os.path.join(root, "config", "roman", "ref_cache_subdir_mode"), "w") as handle:
        handle.write("flat")
    body = bytes(SMALL)
    names = [f"roman_wfi_{('dark', 'flat', 'gain', 'mask', 'photom')[n % 5]}_{n:05d}.asdf" for n in range(files)]
    paths = []
    for name in names:
        paths.append(os.path.join(references, name))
        with open(paths[-1], "wb") as handle:
            handle.write(body)
    share = files * 6 // 10  # each context names 60 %: the middle 20 % are both's
    named = {OLD: names[:share], NEW: names[files - share:]}
    now = time.time()
    records = os.path.join(root, retention.FOLDER, "contexts", "roman")
    os.makedirs(records)
    for age, (pmap, refs) in enumerate(reversed(named.items()), start=1):
        own = [pmap, pmap.replace("roman_", "roman_wfi_").replace(".pmap", ".imap")]
        for name in own:
            paths.append(os.path.join(mappings, name))
            with open(paths[-1], "w") as handle:
                handle.write(f"header = {{'name': {name!r}}}\n")
        with open(os.path.join(records, f"{pmap}.json"), "w") as handle:
            json.dump({"context": pmap, "warmed": now - age * DAY,
                       "files": [f"mappings/roman/{n}" for n in own] + [f"references/roman/{n}" for n in refs]},
                      handle)
    for path in paths:
        os.utime(path, (now - DAY, now - DAY))
    return len(paths)


def on_disk(root: str) -> int:
    return sum(len(names) for area in ("references", "mappings") for _, _, names in os.walk(os.path.join(root, area)))


def unlink_floor(root: str) -> tuple[float, int, int]:
    """The floor of a prune: ``os.unlink`` in a bare loop of the files a ``--keep-contexts 1`` prune removes
    (those the newer record does not name), found beforehand, in this process: (seconds, files, bytes)."""
    with open(os.path.join(root, retention.FOLDER, "contexts", "roman", f"{NEW}.json")) as handle:
        kept = set(json.load(handle)["files"])
    going = [os.path.join(folder, name) for area in ("references", "mappings")
             for folder, _, names in os.walk(os.path.join(root, area)) for name in names
             if os.path.relpath(os.path.join(folder, name), root) not in kept]
    size = sum(os.path.getsize(path) for path in going)
    os.sync()
    start = time.perf_counter()
    for path in going:
        os.unlink(path)
    return time.perf_counter() - start, len(going), size


def pruning(files: int, runs: int, workdir: str, log: Any) -> list[str]:
    """Each round: a prune, its dry run and the floor, each on a cache built afresh; then the process's start."""
    cache = os.path.join(workdir, "pruned-cache")
    env = environment(workdir, cache)
    prune = ["--prune", "--keep-contexts", "1"]
    contestants = {"crds-job --prune --keep-contexts 1": prune,
                   "crds-job --prune --keep-contexts 1 --dry-run": [*prune, "--dry-run"],
                   "the floor: os.unlink of the same files in a bare loop, no walk, no process": []}
    seconds: dict[str, list[float]] = {label: [] for label in contestants}
    removed: dict[str, tuple[int, int]] = {}
    held = 0
    for _ in range(runs):
        for label, args in contestants.items():
            held = build_cache(cache, files)
            if not args:
                took, count, size = unlink_floor(cache)
                removed[label] = (count, size)
            else:
                took, events = crds_job([*args, "roman", "ops"], env)
                report = events["would prune" if "--dry-run" in args else "pruned"]
                removed[label] = (report["removed_files"], report["removed_bytes"])
                expected = held if "--dry-run" in args else held - report["removed_files"]
                if on_disk(cache) != expected:
                    raise RuntimeError(f"{label}: {on_disk(cache)} files left, not {expected}")
            seconds[label].append(took)
            log(f"  {label}: {took:.2f} s, {removed[label][0]} files")
    rows = ["| run | cache files | removed files | removed MB | runs | median s | min s | max s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, values in seconds.items():
        count, size = removed[label]
        rows.append(f"| {label} | {held:,} | {count:,} | {size / MB:.1f} | {runs} | {spread(values)} |")
    start = [crds_job(["--version"], env)[0] for _ in range(runs)]
    rows.append(f"| crds-job --version (the process's start alone, for scale) | — | — | — | {runs} | {spread(start)} |")
    shutil.rmtree(cache, ignore_errors=True)
    return rows


# ----- 3. a shared node cache against a cache per job -------------------------------------------------


def exposures(count: int, detectors: int, workdir: str) -> list[str]:
    """``count`` exposures, taking the detectors in turn; each detector's match other references."""
    paths = []
    for n in range(count):
        header = dict(context.ROMAN_DATASET_HEADER)
        header["ROMAN.META.INSTRUMENT.DETECTOR"] = f"WFI{n % detectors + 1:02d}"
        header["ROMAN.META.EXPOSURE.START_TIME"] = f"2025-02-{n % 28 + 1:02d} {n // 28:02d}:00:00"
        paths.append(datasets.write_asdf(os.path.join(workdir, f"exposure_{n:02d}.asdf"), header))
    return paths


def sharing(env_for: Any, proxy: ThrottlingProxy, count: int, detectors: int, workdir: str, log: Any) -> list[str]:
    paths = exposures(count, detectors, workdir)
    totals: dict[str, list[float]] = {}
    shared = tempfile.mkdtemp(prefix="shared-", dir=workdir)
    for label in ("one shared node cache", "a fresh cache each"):
        files = size = gets = seconds = 0.0
        for path in paths:
            cache = shared if label.startswith("one") else tempfile.mkdtemp(prefix="cache-", dir=workdir)
            proxy.reset_counts()
            took, events = crds_job(["roman", "ops", "--datasets", path], env_for(cache))
            warmed = events["warmed"]
            files, size, gets, seconds = (files + warmed["files_fetched"], size + warmed["bytes_fetched"],
                                          gets + proxy.gets, seconds + took)
            log(f"  {label}, {os.path.basename(path)}: {warmed['files_fetched']} files, {proxy.gets} GETs")
            if cache != shared:
                shutil.rmtree(cache)
        totals[label] = [files, size, gets, seconds]
    shutil.rmtree(shared)
    rows = ["| caches | warms | files fetched | MB fetched | GETs | total s |", "| --- | --- | --- | --- | --- | --- |"]
    for label, (files, size, gets, seconds) in totals.items():
        rows.append(f"| {label} | {count} | {files:.0f} | {size / MB:.2f} | {gets:.0f} | {seconds:.1f} |")
    ours, theirs = totals["one shared node cache"], totals["a fresh cache each"]
    rows += ["", f"A cache per job / the shared cache: **{theirs[1] / ours[1]:.1f}×** the bytes, "
             f"{theirs[2] / ours[2]:.1f}× the GETs; the shared cache saved {(theirs[1] - ours[1]) / MB:.2f} MB "
             f"({1 - ours[1] / theirs[1]:.0%}) of S3 reads over {count} exposures."]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each warm pair and of each prune")
    parser.add_argument("--files", type=int, default=10_000, help="references of the pruned cache")
    parser.add_argument("--exposures", type=int, default=20)
    parser.add_argument("--detectors", type=int, default=4, help="detectors the exposures take in turn")
    parser.add_argument("--delay", type=float, default=0.03, help="first-byte delay of every GET, seconds")
    parser.add_argument("--bandwidth", type=float, default=90e6, help="bytes/s per connection")
    parser.add_argument("--server", default="moto", choices=("moto", "seaweedfs"))
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.files, args.exposures, args.detectors = 1, 500, 4, 2
        mix, rows_of, dates = Mix("small files (1-20 kB)", 20, 1_000, 20_000), 2, 1
    else:
        mix, rows_of, dates = Mix("small-file mix (10 kB-2 MB)", 360, 10_000, 2_000_000), 18, 2
    sample = context.roman(contexts=2, detectors=rows_of, dates=dates, size=mix.size, seed=1)
    references = len(sample.references_of[sample.contexts[-1]])

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    workdir = tempfile.mkdtemp(prefix="crds-job-retention-")
    try:
        with server.LocalS3(args.server) as s3:
            seed(s3, sample)
            with ThrottlingProxy(s3.endpoint, delay=args.delay, bandwidth=args.bandwidth) as proxy:
                def env_for(cache: str) -> dict[str, str]:
                    return environment(workdir, cache, s3, proxy.endpoint)

                # Compiled once, before any timing, as in an installed image.
                subprocess.run([sys.executable, "-c", "import crds_job.cli, crds, roman_datamodels, asdf"],
                               env=env_for(workdir), check=True, capture_output=True)
                log("consecutive contexts")
                first = consecutive(env_for, proxy, sample, args.runs, workdir, log)
                log("shared node cache")
                third = sharing(env_for, proxy, args.exposures, args.detectors, workdir, log)
        log("prune")
        second = pruning(args.files, args.runs, workdir, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = [f"{datetime.date.today()} on {platform.machine()}, {os.cpu_count()} CPUs; Python "
             f"{platform.python_version()}; {platform.system()} {platform.release()}; S3: {args.server} on loopback "
             f"behind a {args.delay * 1000:g} ms first-byte delay and {args.bandwidth / 1e6:g} MB/s per connection.",
             "", f"## Consecutive contexts into one cache ({mix.name}, {references} references a context, "
             f"{rows_of} detectors)", "", *first, "",
             f"## Pruning a cache of {args.files:,} references of {SMALL} bytes (two contexts recorded, "
             "--keep-contexts 1; whole process, the cache rebuilt before each run)", "", *second, "",
             f"## A shared node cache against a cache per job: {args.exposures} exposures of {args.detectors} "
             "detectors, one after another (--datasets)", "", *third]
    publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
