"""Benchmark: crds-job's own time before the command starts, for one dataset (issue #24).

``python -m crds_job roman ops -- CMD exposure.asdf``: a selective warm of the one dataset named in the
command, then exec of CMD. The time measured is from just before the harness spawns crds-job to the
moment CMD starts, as CMD itself writes it: CMD is ``sh -c 'date +%s.%N > MARK; : "$1"' sh
exposure.asdf`` (a shell and a ``date``, a few ms; crds-job reads the script's words and finds the
dataset in ``$1``). On a cold cache (empty: the context's mappings and the exposure's references
fetched), on a warm one for the same dataset (the same cache again: nothing to fetch, and crds's answer
kept there) and on that warm cache for a dataset it has not seen (crds asked), with a tiny dataset and a
realistic one (a 4096x4096 ramp of 6 resultants of uint16, about 200 MB: crds reads only its header).

Also, from crds-job's JSON log lines (each stamped to the microsecond), when each step was reached,
and the floors: an interpreter that does nothing, and the command alone.

The S3 server (SeaweedFS by default, ``--server moto`` for the Python one) runs on half the CPUs and
crds-job on the other half, as in bench/warm.py; the context is bench/warm.py's small-file mix.

    python bench/overhead.py             # a minute or two
    python bench/overhead.py --quick     # seconds: a smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from warm import BUCKET, PREFIX, Mix, cpu_halves, cpus_text, machine, positive, publish, s3_server, sample_for, seed

from crds_job.sample import context, datasets

#: A realistic Roman exposure: a 4096x4096 detector, 6 resultants, 2 bytes a pixel.
REALISTIC_BYTES = 4096 * 4096 * 6 * 2
#: The command crds-job execs: it writes the moment it started (``$1`` is the dataset crds-job finds).
MARKER = 'date +%s.%N > "$MARK"; : "$1"'
#: The cache each run meets: empty; warm, for the same dataset again (crds's answer kept there); and warm,
#: for a dataset it has not seen (crds asked, nothing fetched).
STATES = ("cold", "warm", "warm, another dataset")
#: crds-job's log events, in the order a selective warm reaches them: (event, label in the table).
MILESTONES = (
    ("starting", "settings parsed (interpreter, imports)"),
    ("context resolved", "bucket config read, context resolved"),
    ("warming the references of datasets", "mappings loaded and checked"),
    ("best references", "crds answered (or its kept answer read)"),
    ("plan", "cache surveyed, plan"),
    ("warmed", "references fetched"),
    ("exec", "about to exec"),
)


def base_env(s3: object, cache: str, workdir: str, mark: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRDS", "AWS_"))}
    env.update(s3.client_env(), CRDS_PATH=cache, CRDS_S3_BUCKET=BUCKET, CRDS_S3_PREFIX=PREFIX, MARK=mark,  # type: ignore[attr-defined]
               PYTHONPYCACHEPREFIX=os.path.join(workdir, "pycache"))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # compiled once, as in an installed image
    return env


def _stamp(line: str) -> tuple[str, float] | None:
    """(event, seconds since the epoch) of one JSON log line, or None for any other line."""
    try:
        record = json.loads(line)
        when = datetime.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
        return str(record["event"]), when.timestamp()
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def run(command: list[str], env: dict[str, str], mark: str) -> tuple[float, float, dict[str, float]]:
    """Run ``command`` (crds-job, exec'ing the marker); (seconds to the exec, seconds to the exit,
    {event: seconds since the start} of its first log line of each event)."""
    if os.path.exists(mark):
        os.unlink(mark)
    start = time.time()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"{command[:5]} failed with {done.returncode}: {done.stderr[-2000:]}")
    with open(mark) as handle:
        started = float(handle.read().strip())
    events: dict[str, float] = {}
    for line in done.stderr.splitlines():
        found = _stamp(line)
        if found and found[0] not in events:
            events[found[0]] = found[1] - start
    return started - start, ended - start, events


def floor(command: list[str], env: dict[str, str], runs: int) -> list[float]:
    """Seconds of ``command`` alone, ``runs`` times."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        seconds.append(time.perf_counter() - start)
    return seconds


def ms(values: list[float]) -> str:
    return (f"{statistics.median(values) * 1000:.0f} | {min(values) * 1000:.0f} | {max(values) * 1000:.0f}"
            if values else "— | — | —")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=("seaweedfs", "moto"), default="seaweedfs")
    parser.add_argument("--moto", dest="server", action="store_const", const="moto", help="same as --server moto")
    parser.add_argument("--runs", type=positive, default=7, help="repetitions, cold and warm, of each dataset")
    parser.add_argument("--files", type=positive, default=120, help="references of the context (small-file mix)")
    parser.add_argument("--shared-cpus", dest="split", action="store_false",
                        help="run the S3 server on crds-job's CPUs (by default each gets half)")
    parser.add_argument("--quick", action="store_true", help="a smoke run in seconds")
    parser.add_argument("--out", help="write the markdown report here too")
    args = parser.parse_args(argv)
    realistic = REALISTIC_BYTES
    if args.quick:
        args.runs, args.files, realistic = 2, 30, 2**20
    mix = Mix("small-file mix (10 kB-2 MB)", args.files, 10_000, 2_000_000)
    sample = sample_for(mix)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    split = cpu_halves() if args.split else None
    cpus = (f"the server on CPU {cpus_text(split[0])}, crds-job on CPU {cpus_text(split[1])}" if split
            else "the server and crds-job on the same CPUs")
    rows: dict[str, dict[str, list[float]]] = {}
    events: dict[str, dict[str, list[float]]] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="crds-job-overhead-") as workdir, s3_server(args.server, split) as s3:
        seed(s3, sample)
        mark = os.path.join(workdir, "exec-time.txt")
        env0 = base_env(s3, workdir, workdir, mark)
        # Compiled once, before any timing, as in an installed image.
        subprocess.run([sys.executable, "-c", "import crds_job.cli, crds_job.bestrefs, crds, roman_datamodels, asdf"],
                       env=env0, check=True)
        found = {}
        for label, data_bytes in (("tiny", 0), ("realistic", realistic)):
            os.makedirs(os.path.join(workdir, label))
            found[label] = datasets.write_asdf(os.path.join(workdir, label, "exposure.asdf"),
                                               context.ROMAN_DATASET_HEADER, data_bytes)
        for label, path in found.items():
            sizes[label] = os.path.getsize(path)
            another = os.path.join(os.path.dirname(path), "another-exposure.asdf")  # not seen by this cache
            shutil.copyfile(path, another)
            commands = {state: [sys.executable, "-m", "crds_job", "roman", "ops", "--", "sh", "-c", MARKER, "sh",
                                another if state == STATES[2] else path] for state in STATES}
            for state in STATES:
                rows[f"{label}, {state}"] = {"exec": [], "exit": []}
                events[f"{label}, {state}"] = {event: [] for event, _ in MILESTONES}
            for repetition in range(args.runs):
                cache = tempfile.mkdtemp(prefix="cache-", dir=workdir)
                env = base_env(s3, cache, workdir, mark)
                for state in STATES:
                    to_exec, to_exit, stamps = run(commands[state], env, mark)
                    key = f"{label}, {state}"
                    rows[key]["exec"].append(to_exec)
                    rows[key]["exit"].append(to_exit)
                    for event in events[key]:
                        if event in stamps:
                            events[key][event].append(stamps[event])
                    log(f"  {key} #{repetition + 1}: exec after {to_exec * 1000:.0f} ms")
                shutil.rmtree(cache)
        marker_alone = ["sh", "-c", MARKER, "sh", found["tiny"]]
        floors = {"python -c pass (an interpreter, site imports)": floor([sys.executable, "-c", "pass"], env0,
                                                                         args.runs),
                  "python -c 'import crds' (the child's import)": floor([sys.executable, "-c", "import crds"], env0,
                                                                        args.runs),
                  "the command alone (sh + date)": floor(marker_alone, env0, args.runs)}
    references = len(sample.references_of[sample.contexts[-1]])
    lines = [f"## crds-job's own time before exec, one dataset ({mix.name}, {references} references in the context)",
             "",
             f"{datetime.date.today().isoformat()} on {machine()}; S3 server: {args.server} on loopback; {cpus}. "
             f"Datasets: tiny {sizes['tiny'] / 1e3:.1f} kB, realistic {sizes['realistic'] / 1e6:.1f} MB (ASDF). "
             f"Command: `python -m crds_job roman ops -- sh -c '{MARKER}' sh exposure.asdf`, selective warm "
             "(the dataset found in the command). Cold: an empty cache; warm: the same cache again, for the same "
             "dataset (crds's answer kept in the cache: crds not asked); warm, another dataset: the same cache "
             "for a copy of the dataset under another name (crds asked; nothing to fetch).", "",
             "| dataset, cache | runs | to exec: median ms | min ms | max ms | to exit: median ms | min ms | max ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, values in rows.items():
        lines.append(f"| {key} | {len(values['exec'])} | {ms(values['exec'])} | {ms(values['exit'])} |")
    lines += ["", "When crds-job reached each step (its log lines' stamps, ms since the harness spawned it; "
              "median):", "",
              "| step (log event) | " + " | ".join(events) + " |", "| --- |" + " --- |" * len(events)]
    for event, label in MILESTONES:
        cells = [f"{statistics.median(events[key][event]) * 1000:.0f}" if events[key][event] else "—"
                 for key in events]
        lines.append(f"| {label} (`{event}`) | " + " | ".join(cells) + " |")
    lines += ["", "Floors, in the same environment:", "", "| process | runs | median ms | min ms | max ms |",
              "| --- | --- | --- | --- | --- |"]
    for name, values in floors.items():
        lines.append(f"| {name} | {len(values)} | {ms(values)} |")
    publish("\n".join(lines) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
