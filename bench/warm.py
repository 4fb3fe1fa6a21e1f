"""Benchmark: crds-job against `crds sync` (the baseline) and a bare concurrent download (the limit).

One run, one machine, one local S3 server (SeaweedFS by default: a real, fast S3 in Go; moto, in
Python, is the bottleneck above a few tens of MB/s), on half the CPUs, the contestants on the
other half (``--shared-cpus``: all on the same ones). A synthetic Roman context shaped like the
real one (a pmap, the WFI imap, one rmap per real WFI reference type, references of the chosen
size mix) is seeded, then, in alternation and on a cold cache each time:

1. crds-job warming the whole context;
2. the baseline: the real crds client in its S3 plugin mode (``crds sync --contexts CTX
   --fetch-references`` with the crds_s3_set environment, crds_s3_get and awscli);
3. the limit: the plainest concurrent download of the same objects with no checks, the fastest
   of raw aiobotocore GETs (8, 32 and 64 at once) and ``aws s3 cp --recursive``, chosen in runs
   of its own first, then run back to back with crds-job in every round; with them, both made
   to wait for the disk (crds-job --fsync-each, and the limit followed by a sync), compared back
   to back. By default crds-job's clock, like the limit's, stops while the files' bytes may still
   be in memory: it waits only for its journal (see crds_job/durability.py);
4. the floor of a checked download: the limit's own download (raw aiobotocore) plus a sha1 of
   each file as its bytes stream, and nothing else. On one core the sha1 cannot hide behind the
   transfer, so crds-job / limit includes the check's own cost; crds-job / floor is the rest.

Also: a warm-cache rerun, a --verify-existing rerun, crds-job's peak RSS, crds-job at 1x,
4x and 16x the references (each rmap naming that many times more; the mappings stay), and a
selective warm (one dataset's references) against the whole context. Prints a markdown table;
--out writes it to a file.

    python bench/warm.py                       # both mixes, defaults sized for a few minutes
    python bench/warm.py --quick               # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from crds_job import environments, launch, settings
from crds_job.sample import context, datasets, server
from crds_job.sample.throttle import ThrottlingProxy

#: Roman WFI reference types (crds/roman/specs, step parameters left out): the rmaps of a context.
WFI_TYPES = (
    "absflux", "abvegaoffset", "apcorr", "area", "bam", "dark", "darkdecaysignal", "detectorstatus",
    "distortion", "dustmap", "epsf", "etc", "flat", "gain", "integralnonlinearity", "inverselinearity",
    "ipc", "linearity", "mask", "matable", "optmodel", "photom", "readnoise", "refpix", "relflux",
    "saturation", "sflat", "skycells", "specpsf",
)
HERE = os.path.dirname(os.path.abspath(__file__))
BUCKET = "crds-bench"
PREFIX = "/roman/crds"
MB = 1e6
PART_SIZE = settings.OPTION_BY_NAME["part_size"].default
FSYNC_EACH = "crds-job --fsync-each"
LIMIT_CONCURRENCY = (8, 32, 64)
DETECTORS = 18  # WFI01-WFI18: the rows an rmap can have


@dataclass
class Mix:
    name: str
    files: int  # references, about (rounded up to whole rmaps)
    low: int  # bytes
    high: int
    types: int = 0  # rmaps; 0: one per WFI type, fewer when there are fewer files

    def __post_init__(self) -> None:
        self.types = self.types or min(len(WFI_TYPES), self.files)

    @property
    def per_rmap(self) -> int:
        """References each rmap names (``files`` rounded up to whole rmaps)."""
        return max(1, math.ceil(self.files / self.types))

    def scaled(self, factor: int) -> Mix:
        """This mix with ``factor`` times the references of each rmap, and the same mappings."""
        return Mix(f"{self.name} x{factor}", self.per_rmap * factor * self.types, self.low, self.high, self.types)

    def size(self, rng: random.Random, _name: str) -> int:
        """Log-uniform between low and high, as reference sizes spread over decades."""
        return int(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


def grid(references: int) -> tuple[int, int]:
    """The rows (detectors) and use-after dates of an rmap naming ``references``.

    Exactly that many wherever some grid holds them, so that a mix scaled 4 or 16 times has
    4 or 16 times the references; else the fewest above, up to the largest grid there is.
    """
    shapes = [(rows, dates) for rows in range(1, DETECTORS + 1) for dates in range(1, len(context.DATES) + 1)]
    fitting = [shape for shape in shapes if shape[0] * shape[1] >= references]
    return min(fitting, key=lambda shape: (shape[0] * shape[1], shape[1])) if fitting else shapes[-1]


def sample_for(mix: Mix, seed: int = 1) -> context.SampleBucket:
    types = WFI_TYPES[: mix.types]
    rows, dates = grid(mix.per_rmap)
    rules = tuple(context.Rule(kind, ("ROMAN.META.INSTRUMENT.DETECTOR",),
                               tuple((f"WFI{n:02d}",) for n in range(1, DETECTORS + 1)), suffix=kind,
                               extension=".asdf")
                  for kind in types)
    spec = context.Observatory(name="roman", instrument_key=context.ROMAN.instrument_key,
                               date_keys=context.ROMAN.date_keys, file_ext=".asdf", rules={"WFI": rules},
                               reference_name=context.ROMAN.reference_name)
    return context.generate(spec, contexts=1, rows=rows, dates=dates, size=mix.size, seed=seed)


@dataclass
class Shaped:
    """The local S3 as the contestants reach it (``--shape``): through the proxy's first-byte delay and
    per-connection bandwidth cap, as S3 across a network answers; seeded directly."""

    s3: server.LocalS3
    endpoint: str

    def client_env(self) -> dict[str, str]:
        return {**self.s3.client_env(), "AWS_ENDPOINT_URL_S3": self.endpoint}

    def client(self) -> object:
        return self.s3.client()


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)

    def add(self, seconds: float, rss_mb: float) -> None:
        self.seconds.append(seconds)
        self.rss_mb.append(rss_mb)


#: Runs one contestant on a fresh cache: (wall seconds, its peak RSS in MB or 0 when not followed).
Contestant = Callable[[str], tuple[float, float]]
#: Where progress lines go (stderr).
Log = Callable[[str], None]


def _peak_rss(pid: int, command: list[str], done: threading.Event, found: list[float]) -> None:
    """Follow the process's VmHWM (its own high-water mark, reset by exec) until it exits.

    Not ``wait4``'s ru_maxrss: on Linux a child forked from this harness, which holds the
    sample's bytes, would inherit the harness's resident size as its own maximum.
    """
    ours = "\0".join(command).encode()
    while not done.wait(0.02):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if not handle.read().startswith(ours):
                    continue  # not exec'd yet: still the harness's memory
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        found.append(int(line.split()[1]) / 1024)
        except OSError:
            return


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``command``; return (wall seconds, peak RSS in MB of that process itself)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done, found = threading.Event(), [0.0]
    watcher = threading.Thread(target=_peak_rss, args=(process.pid, command, done, found), daemon=True)
    watcher.start()
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    done.set()
    process.wait()
    seconds = time.perf_counter() - start
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed with {process.returncode}: {stderr[-2000:]}")
    return seconds, max(found)


class Bench:
    def __init__(self, s3: server.LocalS3, sample: context.SampleBucket, workdir: str) -> None:
        self.s3 = s3
        self.sample = sample
        self.workdir = workdir
        self.context = sample.contexts[-1]
        self.meta = sample.metadata()
        self.objects = sorted(sample.mappings) + sorted(sample.references_of[self.context])
        self.bytes = sum(int(self.meta[name]["size"]) for name in self.objects)
        self.location = environments.locate("roman", "ops", bucket=BUCKET)

    def fresh_cache(self) -> str:
        """An empty cache directory for the next run.

        Flushes the disk first: the dirty pages a previous run (or its removal) left to
        the kernel would otherwise be written during this run, and charged to it.
        """
        os.sync()
        return tempfile.mkdtemp(prefix="cache-", dir=self.workdir)

    def base_env(self, cache: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CRDS", "AWS_"))}
        env.update(self.s3.client_env())
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        env["CRDS_PATH"] = cache
        # Byte-compiled once, as in an installed image (pip compiles what it installs; a
        # source checkout under PYTHONDONTWRITEBYTECODE would recompile at every start).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(self.workdir, "pycache")
        return env

    def warm_up(self) -> None:
        """Start each contestant's interpreter once, so no timed run pays for compiling."""
        env = self.base_env(self.workdir)
        for module in ("crds_job.cli", "crds.sync", "aiobotocore.session", "awscli.clidriver"):
            subprocess.run([sys.executable, "-c", f"import {module}"], env=env, check=True)

    def check(self, cache: str, flat: bool = True) -> None:
        """Every planned file arrived whole (the contestants are compared on complete work)."""
        for name in self.objects:
            folder = "mappings" if name.endswith("map") else "references"
            path = os.path.join(cache, folder, "roman", name)
            if not flat and folder == "references" and not os.path.exists(path):
                path = os.path.join(cache, folder, "roman", "wfi", name)
            if os.path.getsize(path) != int(self.meta[name]["size"]):
                raise RuntimeError(f"{name} arrived with the wrong size in {cache}")

    # ----- the contestants --------------------------------------------------------------------

    def crds_job(self, cache: str, *args: str, whole_context: bool = True) -> tuple[float, float]:
        env = self.base_env(cache)
        env.update(CRDS_S3_BUCKET=BUCKET, CRDS_S3_PREFIX=PREFIX)
        result = timed([sys.executable, "-m", "crds_job", "roman", "ops", *args], env)
        if whole_context:
            self.check(cache)
        return result

    def baseline(self, cache: str) -> tuple[float, float]:
        os.makedirs(os.path.join(cache, "config/roman"))
        with open(os.path.join(cache, "config/roman/ref_cache_subdir_mode"), "w") as handle:
            handle.write("flat")  # what crds-job writes; else the client guesses "instrument"
        env = launch.apply(self.base_env(cache),
                           launch.crds_environment(self.location, cache, self.context, "flat", allow_fetch=True))
        env.pop("CRDS_CONTEXT")
        result = timed([sys.executable, "-m", "crds.sync", "--contexts", self.context, "--fetch-references"], env)
        self.check(cache)
        return result

    def limit_aiobotocore(self, cache: str, concurrency: int, sha1: bool = False) -> tuple[float, float]:
        env = self.base_env(cache)
        command = [sys.executable, os.path.join(HERE, "raw_get.py"), self.s3.endpoint, BUCKET, PREFIX.strip("/"),
                   cache, str(concurrency)] + (["sha1"] if sha1 else [])
        start = time.perf_counter()
        done = subprocess.run(command, env=env, input="\n".join(self.objects), text=True, check=True,
                              stdout=subprocess.PIPE)
        seconds = time.perf_counter() - start
        self.check(cache)
        if sha1:  # the floor is timed on complete work too: every sha1 computed, and right
            wrong = wrong_sha1s(done.stdout, {name: self.meta[name]["sha1sum"] for name in self.objects})
            if wrong:
                raise RuntimeError(f"raw_get.py printed a wrong or no sha1 for {', '.join(wrong[:3])}")
        return seconds, 0.0

    def limit_awscli(self, cache: str) -> tuple[float, float]:
        env = self.base_env(cache) | {"AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}  # no check (raw_get.py)
        prefix = PREFIX.strip("/")
        total = 0.0
        for area, include in (("mappings", "*map"), ("references", "*")):
            seconds, _ = timed(["aws", "s3", "cp", "--recursive", "--quiet", "--exclude", "*", "--include", include,
                                f"s3://{BUCKET}/{prefix}/{area}/roman/", os.path.join(cache, area, "roman")], env)
            total += seconds
        return total, 0.0


def publish(text: str, out: str | None) -> None:
    """The report on stdout, and in ``out`` too when given (the other benchmarks' way as well)."""
    sys.stdout.write(text)
    if out:
        with open(out, "w") as handle:
            handle.write(text)


def wrong_sha1s(printed: str, expected: dict[str, str]) -> list[str]:
    """The names whose sha1 in ``printed`` ("name sha1" lines) is missing or not ``expected``'s."""
    found = dict(line.split() for line in printed.splitlines() if line.strip())
    return sorted(name for name, sha1 in expected.items() if found.get(name) != sha1)


def seed(s3: server.LocalS3, sample: context.SampleBucket) -> None:
    client = s3.client()
    existing = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
    if BUCKET in existing:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=BUCKET):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=BUCKET, Key=item["Key"])
    server.seed(client, BUCKET, PREFIX, sample, create=BUCKET not in existing)


def summarize(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def rotated(names: list[str], run: int) -> list[str]:
    """``names`` in the order of round ``run``: each goes first in turn."""
    shift = run % len(names) if names else 0
    return names[shift:] + names[:shift]


def run_once(bench: Bench, name: str, contestant: Contestant, timing: Timing, log: Log, label: str = "") -> None:
    """One run of ``contestant`` on a fresh cache, removed afterwards; its figures go to ``timing``."""
    cache = bench.fresh_cache()
    seconds, rss = contestant(cache)
    shutil.rmtree(cache)
    timing.add(seconds, rss)
    log(f"  {label}{name}: {seconds:.2f} s")


def alternated(names: list[str], run: int) -> list[str]:
    """``names`` in the order of round ``run``: forwards in even rounds, backwards in odd ones.

    Neighbours then always run back to back, each first in every other round. (A rotation
    would put one of each pair of neighbours first in all but one of every ``len(names)`` rounds.)
    """
    return names[::-1] if run % 2 else names


def aiobotocore_name(concurrency: int) -> str:
    return f"raw aiobotocore, {concurrency} at once"


def limit_candidates(bench: Bench) -> dict[str, Contestant]:
    """The plainest downloads with no checks, not even the SDK's CRC32 (see raw_get.py); the fastest is the limit."""
    return {**{aiobotocore_name(n): functools.partial(bench.limit_aiobotocore, concurrency=n)
               for n in LIMIT_CONCURRENCY},
            "aws s3 cp --recursive": bench.limit_awscli}


def sha1_floor(bench: Bench, chosen: str) -> tuple[str, Contestant]:
    """The floor of a checked download: the limit's download plus a sha1 as the bytes stream.

    At the limit's own concurrency where the limit is raw aiobotocore; after ``aws s3 cp``,
    which cannot hash, at the middle one.
    """
    concurrency = next((n for n in LIMIT_CONCURRENCY if chosen == aiobotocore_name(n)),
                       LIMIT_CONCURRENCY[len(LIMIT_CONCURRENCY) // 2])
    return (f"{aiobotocore_name(concurrency)}, with a sha1 as the bytes stream",
            functools.partial(bench.limit_aiobotocore, concurrency=concurrency, sha1=True))


def durable(contestant: Contestant) -> Contestant:
    """``contestant``, then a flush to disk of the bytes it left in memory, timed with it.

    With ``--fsync-each`` crds-job fsyncs each file before its rename, so its clock runs until
    its bytes are on the disk; a plain download's clock stops while they are still in the page
    cache, for the kernel to write later. This makes the limit wait for the disk too, by the
    cheapest route: one ``sync`` for all of its files, not one fsync per file.
    """

    def run(cache: str) -> tuple[float, float]:
        seconds, rss = contestant(cache)
        start = time.perf_counter()
        os.sync()
        return seconds + time.perf_counter() - start, rss

    return run


def durable_name(name: str) -> str:
    """The name of contestant ``name`` made to wait for the disk (see ``durable``)."""
    return f"{name}, then sync"


def choose_limit(candidates: dict[str, Contestant], runs: int, bench: Bench, log: Log) -> tuple[str, dict[str, Timing]]:
    """The fastest candidate (lowest median), from runs of their own.

    Not from the runs it is then compared in: the least of several medians, each a noisy
    estimate, is biased low by being chosen (the winner's curse), and crds-job / limit
    biased high with it, by about as much as separates the candidates here.
    """
    timings = {name: Timing() for name in candidates}
    for run in range(runs):
        for name in rotated(list(candidates), run):
            run_once(bench, name, candidates[name], timings[name], log, "choosing the limit: ")
    return min(timings, key=lambda name: statistics.median(timings[name].seconds)), timings


@dataclass
class MixResult:
    """One mix's figures: every contestant's runs, and which of them are the limit and its rivals."""

    mix: Mix
    files: int
    bytes: int
    largest: int
    timings: dict[str, Timing]
    limit: str  # the key in ``timings`` of the limit chosen beforehand
    floor: str  # the key in ``timings`` of the limit's download plus a sha1 (``sha1_floor``)
    rivals: list[str]  # the keys in ``timings`` of the other candidates, run in the same rounds
    limit_choice: dict[str, Timing]


def measure_mix(s3: server.LocalS3, mix: Mix, runs: int, baseline_runs: int, limit_runs: int, workdir: str,
                log: Log) -> MixResult:
    sample = sample_for(mix)
    seed(s3, sample)
    bench = Bench(s3, sample, workdir)
    log(f"{mix.name}: {len(bench.objects)} files, {bench.bytes / MB:.1f} MB")
    bench.warm_up()
    candidates = limit_candidates(bench)
    chosen, limit_choice = choose_limit(candidates, limit_runs, bench, log)
    limit = f"the limit: {chosen}"
    log(f"  {limit}")
    # The runs compared run back to back, each first in every other round: the host's speed
    # drifts over seconds here, and each round's ratio is taken before that drift. crds-job is
    # compared with the limit, neither waiting for the disk, and both made to wait for it
    # (crds-job --fsync-each against the limit, then sync).
    compared: dict[str, Contestant] = {FSYNC_EACH: lambda cache: bench.crds_job(cache, "--fsync-each"),
                                       limit: candidates[chosen],
                                       "crds-job": lambda cache: bench.crds_job(cache),
                                       durable_name(limit): durable(candidates[chosen])}
    floor, floor_run = sha1_floor(bench, chosen)
    others: dict[str, Contestant] = {floor: floor_run}
    if mix.high > PART_SIZE:  # does splitting large files into concurrent ranged GETs pay?
        others["crds-job, one GET per file (--part-size 1GiB --memory-budget 1GiB)"] = \
            lambda cache: bench.crds_job(cache, "--part-size", "1GiB", "--memory-budget", "1GiB")
    # The other candidates too: crds-job against each, a check on the choice (see ``table``).
    rivals = {name: candidates[name] for name in candidates if name != chosen}
    others |= rivals
    others["crds sync (baseline)"] = bench.baseline
    contestants = compared | others
    timings = {name: Timing() for name in contestants}
    for run in range(runs):
        for name in alternated(list(compared), run) + rotated(list(others), run):
            if not (name.startswith("crds sync") and run >= baseline_runs):
                run_once(bench, name, contestants[name], timings[name], log)
    warm_cache = bench.fresh_cache()
    bench.crds_job(warm_cache)
    reruns = {"crds-job, warm cache rerun": (), "crds-job --verify-existing rerun": ("--verify-existing",)}
    for name, args in reruns.items():
        timings[name] = Timing()
        for _ in range(runs):
            timings[name].add(*bench.crds_job(warm_cache, *args))
    shutil.rmtree(warm_cache)
    return MixResult(mix=mix, files=len(bench.objects), bytes=bench.bytes, timings=timings, limit=limit, floor=floor,
                     rivals=list(rivals), limit_choice=limit_choice,
                     largest=max(int(bench.meta[n]["size"]) for n in bench.objects))


def paired_ratios(ours: list[float], theirs: list[float]) -> list[float]:
    """Each round's crds-job time over the other's in the same round, sorted."""
    return sorted(a / b for a, b in zip(ours, theirs, strict=True))


def spread(ratios: list[float]) -> str:
    """How far the rounds' ratios spread: quartiles once there are enough rounds for them to mean anything."""
    if len(ratios) < 4:
        return f"{len(ratios)} round(s), {ratios[0]:.2f}-{ratios[-1]:.2f}"
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
    return f"{len(ratios)} rounds, quartiles {low:.2f}-{high:.2f}, all {ratios[0]:.2f}-{ratios[-1]:.2f}"


def ratio_text(ours: list[float], theirs: list[float]) -> str:
    """ours / theirs, as the median of the rounds' ratios, with their spread and the ratio of the medians."""
    ratios = paired_ratios(ours, theirs)
    return (f"**{statistics.median(ratios):.2f}×** (median of the rounds' ratios: {spread(ratios)}; "
            f"ratio of the medians {statistics.median(ours) / statistics.median(theirs):.2f}×)")


def timing_rows(timings: dict[str, Timing], files: int, size: int) -> list[str]:
    """A markdown table: each contestant's seconds (median, min, max), rates and peak RSS."""
    rows = ["| contestant | runs | median s | min s | max s | MB/s | files/s | peak RSS MB (own process) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, timing in timings.items():
        if not timing.seconds:
            continue
        median, low, high = summarize(timing.seconds)
        moved = size if "rerun" not in name else 0
        rss = f"{max(timing.rss_mb):.0f}" if timing.rss_mb and max(timing.rss_mb) else "—"
        rate = f"{moved / median / MB:.1f}" if moved else "—"
        rows.append(f"| {name} | {len(timing.seconds)} | {median:.2f} | {low:.2f} | {high:.2f} | {rate} | "
                    f"{files / median:.1f} | {rss} |")
    return rows


def table(result: MixResult) -> list[str]:
    timings = result.timings
    ours = timings["crds-job"].seconds
    limit = timings[result.limit].seconds
    baseline = timings["crds sync (baseline)"].seconds
    durable_limit = durable_name(result.limit)
    # Against the candidate that happens to be fastest in these same rounds, the ratio is biased
    # high (the winner's curse again, the other way): the truth lies between the two figures.
    against = {name: statistics.median(paired_ratios(ours, timings[name].seconds)) for name in result.rivals}
    rows = timing_rows(timings, result.files, result.bytes)
    rows.append("")
    rows.append(f"baseline / crds-job = **{statistics.median(baseline) / statistics.median(ours):.1f}×**; "
                f"crds-job / limit = {ratio_text(ours, limit)}; "
                f"crds-job peak RSS {max(timings['crds-job'].rss_mb):.0f} MB with a largest file of "
                f"{result.largest / MB:.0f} MB.")
    rows.append("")
    rows.append("Both waiting for the disk (crds-job, like the limit, does not by default: it keeps a journal "
                f"for crash recovery instead): {FSYNC_EACH} / ({durable_limit}) = "
                f"{ratio_text(timings[FSYNC_EACH].seconds, timings[durable_limit].seconds)}.")
    rows.append("")
    rows.append("The floor of a download checked by sha1 on the same core (the limit's download, hashing each "
                f"file as it streams, and nothing else): crds-job / ({result.floor}) = "
                f"{ratio_text(ours, timings[result.floor].seconds)}; that floor / limit = "
                f"{ratio_text(timings[result.floor].seconds, limit)}.")
    rows.append("")
    rows.append("crds-job against each other candidate in the same rounds (median of the rounds' ratios; the "
                "largest is biased high, being against whichever was fastest here): "
                + "; ".join(f"{name} {ratio:.2f}×" for name, ratio in against.items()) + ".")
    rows += ["", "Choosing the limit, in runs of its own:", ""]
    rows += timing_rows(result.limit_choice, result.files, result.bytes)
    return rows


def linearity(s3: server.LocalS3, mix: Mix, factors: list[int], workdir: str, log: Log) -> list[str]:
    """crds-job's time for ``factors`` times the references of ``mix`` (the mappings stay the same)."""
    rows = ["| scale | references | files (with the mappings) | MB | crds-job s (median of 3) | s per 1000 files "
            "| s per GB |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for factor in factors:
        sample = sample_for(mix.scaled(factor))
        seed(s3, sample)
        bench = Bench(s3, sample, workdir)
        timing = Timing()
        for _ in range(3):
            run_once(bench, f"x{factor} crds-job", bench.crds_job, timing, log)
        median = statistics.median(timing.seconds)
        files = len(bench.objects)
        log(f"  x{factor}: {files} files {median:.2f} s")
        rows.append(f"| {factor}× | {len(sample.references_of[bench.context])} | {files} | {bench.bytes / MB:.0f} | "
                    f"{median:.2f} | {median / files * 1000:.2f} | {median / (bench.bytes / 1e9):.2f} |")
    return rows


def selective(s3: server.LocalS3, mix: Mix, workdir: str, runs: int, log: Log) -> list[str]:
    """One exposure's references (``--datasets``) against the whole context, same bucket, cold caches."""
    sample = sample_for(mix)
    seed(s3, sample)
    bench = Bench(s3, sample, workdir)
    dataset = datasets.write_asdf(os.path.join(workdir, "l1_img.asdf"), context.ROMAN_DATASET_HEADER)
    rows = ["| warm | files | MB | median s | min s | max s |", "| --- | --- | --- | --- | --- | --- |"]
    for label, args in (("whole context", ()), ("one dataset (--datasets l1_img.asdf)", ("--datasets", dataset))):
        seconds = []
        for _ in range(runs):
            cache = bench.fresh_cache()
            seconds.append(bench.crds_job(cache, *args, whole_context=not args)[0])
            files = [os.path.join(d, f) for d, _, names in os.walk(cache) for f in names
                     if os.sep + "config" + os.sep not in d + os.sep]
            size = sum(os.path.getsize(f) for f in files)
            shutil.rmtree(cache)
        median, low, high = summarize(seconds)
        log(f"  {label}: {len(files)} files {median:.2f} s")
        rows.append(f"| {label} | {len(files)} | {size / MB:.1f} | {median:.2f} | {low:.2f} | {high:.2f} |")
    return rows


def cpu_halves() -> tuple[set[int], set[int]] | None:
    """The S3 server's CPUs and the contestants' (halves of ours), or None when we have only one."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


@contextlib.contextmanager
def s3_server(kind: str, split: tuple[set[int], set[int]] | None) -> Iterator[server.LocalS3]:
    """The local S3 server; with ``split``, it and the contestants each on CPUs of their own.

    In the cloud S3 is another machine: a contestant never waits for the server to get a
    core, and the server's work is not charged to the contestant that ran beside it. On
    shared cores the runs here spread by 30-60 %. Affinity is inherited at a process's
    start, so this thread's is set before the server starts, then before any contestant.
    """
    ours = os.sched_getaffinity(0)
    try:
        if split:
            os.sched_setaffinity(0, split[0])
        with server.LocalS3(kind) as s3:
            if split:
                os.sched_setaffinity(0, split[1])
            yield s3
    finally:
        os.sched_setaffinity(0, ours)


def cpus_text(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM; Python {platform.python_version()}; "
            f"{platform.system()} {platform.release()}")


def positive(text: str) -> int:
    """An argparse type: a count of at least one."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a count of at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=("seaweedfs", "moto"), default="seaweedfs")
    parser.add_argument("--mix", choices=("small", "large", "both"), default="both")
    parser.add_argument("--files", type=int, default=120, help="references of the small-file mix")
    parser.add_argument("--large-files", type=int, default=6, help="references of the large-file mix")
    parser.add_argument("--size-scale", type=float, default=0.5, help="multiplies the large mix's 50-500 MB")
    parser.add_argument("--runs", type=positive, default=4, help="rounds (even: of each pair of runs compared, each "
                        "goes first equally often)")
    parser.add_argument("--baseline-runs", type=positive, default=3, help="runs of crds sync (slow) among --runs")
    parser.add_argument("--limit-runs", type=positive, default=3,
                        help="runs of each limit candidate, before the others, to choose the fastest")
    parser.add_argument("--linear", default="1,4,16", help="file-count factors for the linearity table ('' to skip)")
    parser.add_argument("--no-selective", dest="selective", action="store_false",
                        help="skip the one-dataset against whole-context comparison")
    parser.add_argument("--shared-cpus", dest="split", action="store_false",
                        help="run the S3 server on the contestants' CPUs (by default each gets half)")
    parser.add_argument("--shape", metavar="MS,MB_PER_S", help="reach S3 through a first-byte delay and a "
                        "per-connection bandwidth cap, e.g. 30,90 (crds_job/sample/throttle.py, no rate limit)")
    parser.add_argument("--quick", action="store_true", help="a smoke run in seconds")
    parser.add_argument("--out", help="write the markdown report here too")
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.large_files, args.size_scale, args.runs, args.baseline_runs = 4, 1, 0.02, 1, 1
        args.limit_runs = 1
        args.linear = "1,4"
    mixes = []
    if args.mix in ("small", "both"):
        mixes.append(Mix("small-file mix (10 kB-2 MB)", args.files, 10_000, 2_000_000))
    if args.mix in ("large", "both"):
        low, high = int(50e6 * args.size_scale), int(500e6 * args.size_scale)
        mixes.append(Mix(f"large-file mix ({low / MB:.0f}-{high / MB:.0f} MB)", args.large_files, low, high,
                         types=args.large_files))

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    split = cpu_halves() if args.split else None
    cpus = (f"the server on CPU {cpus_text(split[0])}, the contestants on CPU {cpus_text(split[1])}" if split
            else "the server and the contestants on the same CPUs")
    shape = [float(value) for value in args.shape.split(",")] if args.shape else None
    path = (f", reached through a {shape[0]:g} ms first-byte delay and {shape[1]:g} MB/s per connection" if shape
            else "")
    report = ["# crds-job benchmark", "",
              f"{datetime.date.today().isoformat()} on {machine()}; S3 server: {args.server} on loopback{path}; "
              f"{cpus}.", ""]
    with tempfile.TemporaryDirectory(prefix="crds-job-bench-") as workdir, s3_server(args.server, split) as direct, \
            contextlib.ExitStack() as stack:
        s3 = direct
        if shape:
            proxy = stack.enter_context(ThrottlingProxy(direct.endpoint, delay=shape[0] / 1000,
                                                        bandwidth=shape[1] * 1e6))
            s3 = Shaped(direct, proxy.endpoint)  # type: ignore[assignment]
        for mix in mixes:
            result = measure_mix(s3, mix, args.runs, args.baseline_runs, args.limit_runs, workdir, log)
            report += [f"## {mix.name}: {result.files} files, {result.bytes / MB:.1f} MB", ""]
            report += table(result) + [""]
        if args.selective and mixes:
            report += [f"## Selective warm for one dataset against the whole context ({mixes[0].name})", ""]
            report += selective(s3, mixes[0], workdir, args.runs, log) + [""]
        if args.linear and mixes:
            factors = [int(f) for f in args.linear.split(",")]
            report += [f"## crds-job cost against file count ({mixes[0].name})", ""]
            report += linearity(s3, mixes[0], factors, workdir, log) + [""]
    text = "\n".join(report)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
