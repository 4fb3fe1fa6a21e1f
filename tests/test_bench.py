"""The benchmark harness runs (at a tiny scale, so it cannot rot); its figures are not asserted."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quick_run(script: str, out, *args: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """``bench/<script> --quick ... --out out``: the finished process, and the report it wrote."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), "--quick", *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, out.read_text()


def test_the_harness_runs_and_prints_its_tables(tmp_path):
    out = tmp_path / "results.md"
    done, report = quick_run("warm.py", out, "--server", "moto")
    for row in ("| crds-job |", "| crds sync (baseline) |", "| raw aiobotocore", "| aws s3 cp --recursive |",
                "| the limit: ", "Choosing the limit, in runs of its own", "1 round(s)",
                "crds-job against each other candidate in the same rounds",
                "Both waiting for the disk", "crds-job --fsync-each / (the limit: ", ", then sync |",
                "warm cache rerun", "--verify-existing rerun", "baseline / crds-job", "crds-job / limit",
                "| one dataset (--datasets l1_img.asdf) |", "| whole context |",
                "cost against file count", "| 4× |", ", with a sha1 as the bytes stream |",
                "The floor of a download checked by sha1", "that floor / limit = "):
        assert row in report, row
    assert report.strip() == done.stdout.strip()  # --out holds what was printed


def test_two_seaweedfs_servers_run_side_by_side_and_leave_no_sockets():
    """The benchmark's default server: its fixed-port listeners must not stop a second one starting."""
    import glob

    from crds_job.sample import server

    with server.LocalS3("seaweedfs") as first, server.LocalS3("seaweedfs") as second:
        for s3 in (first, second):
            s3.client().create_bucket(Bucket="side-by-side")
            assert [b["Name"] for b in s3.client().list_buckets()["Buckets"]] == ["side-by-side"]
        ports = first._ports + second._ports
    assert len(set(ports)) == len(ports) == 16
    assert not [path for port in ports for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock")]


def load_harness():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_warm", os.path.join(ROOT, "bench", "warm.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="splitting CPUs needs at least two")
def test_the_server_and_the_contestants_get_cpus_of_their_own():
    harness = load_harness()
    ours = os.sched_getaffinity(0)
    server_cpus, contestant_cpus = harness.cpu_halves()
    assert server_cpus and contestant_cpus and not server_cpus & contestant_cpus
    assert server_cpus | contestant_cpus == ours
    with harness.s3_server("moto", (server_cpus, contestant_cpus)) as s3:
        assert os.sched_getaffinity(s3._process.pid) == server_cpus
        contestant = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                                    capture_output=True, text=True, check=True)
        assert contestant.stdout.strip() == str(sorted(contestant_cpus))
    assert os.sched_getaffinity(0) == ours, "the harness gets its CPUs back"
    with harness.s3_server("moto", None) as s3:
        assert os.sched_getaffinity(s3._process.pid) == ours


def test_the_limit_is_the_candidate_with_the_lowest_median_in_runs_of_its_own(tmp_path):
    harness = load_harness()
    times = {"steady": iter([1.0, 1.0, 1.0]), "lucky once": iter([0.5, 2.0, 2.0])}
    caches = []

    class FakeBench:
        def fresh_cache(self):
            caches.append(tmp_path / f"cache-{len(caches)}")
            caches[-1].mkdir()
            return str(caches[-1])

    candidates = {name: (lambda cache, name=name: (next(times[name]), 0.0)) for name in times}
    limit, timings = harness.choose_limit(candidates, 3, FakeBench(), lambda text: None)
    assert limit == "steady", "the lowest median wins, not the lowest single run"
    assert timings["lucky once"].seconds == [0.5, 2.0, 2.0]
    assert len(caches) == 6 and not any(cache.exists() for cache in caches), "each run on a fresh cache, removed"


def test_rounds_pair_runs_in_order_and_take_turns_going_first():
    harness = load_harness()
    assert [harness.rotated(["a", "b", "c"], run) for run in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert harness.rotated([], 3) == []
    assert [harness.alternated(["a", "b", "c"], run) for run in range(2)] == [["a", "b", "c"], ["c", "b", "a"]]
    assert harness.paired_ratios([1.0, 2.0], [2.0, 1.0]) == [0.5, 2.0], "paired by round, not by rank"


def test_the_floors_sha1s_must_all_be_printed_and_right():
    harness = load_harness()
    expected = {"a.pmap": "1" * 40, "b.asdf": "2" * 40, "c.asdf": "3" * 40}
    printed = f"b.asdf {'2' * 40}\na.pmap {'1' * 40}\nc.asdf {'4' * 40}\n"
    assert harness.wrong_sha1s(printed, expected) == ["c.asdf"], "a wrong sha1"
    assert harness.wrong_sha1s(printed.split("\n", 1)[1], expected) == ["b.asdf", "c.asdf"], "a missing one"
    assert harness.wrong_sha1s(f"c.asdf {'3' * 40}\n" + printed, expected) == ["c.asdf"], "the last line wins"
    assert harness.wrong_sha1s(printed.replace("4" * 40, "3" * 40), expected) == []


def test_the_floor_downloads_like_the_limit_it_is_compared_with():
    harness = load_harness()

    class FakeBench:
        def limit_aiobotocore(self, cache, concurrency, sha1=False):
            return concurrency, sha1

    name, run = harness.sha1_floor(FakeBench(), "raw aiobotocore, 8 at once")
    assert name == "raw aiobotocore, 8 at once, with a sha1 as the bytes stream"
    assert run("cache") == (8, True)
    name, run = harness.sha1_floor(FakeBench(), "aws s3 cp --recursive")
    assert run("cache") == (32, True), "the middle concurrency where the limit cannot hash"


def test_the_durable_limit_is_timed_until_its_bytes_are_flushed(monkeypatch):
    harness = load_harness()
    calls = []
    clock = iter([10.0, 10.5])  # perf_counter before and after the sync
    monkeypatch.setattr(harness.os, "sync", lambda: calls.append("sync"))
    monkeypatch.setattr(harness.time, "perf_counter", lambda: next(clock))

    def contestant(cache):
        calls.append(cache)
        return 2.0, 7.0

    assert harness.durable(contestant)("cache-1") == (2.5, 7.0)
    assert calls == ["cache-1", "sync"], "the flush follows the download, once"


def test_a_ratio_is_the_median_of_the_rounds_ratios_with_the_ratio_of_the_medians_beside_it():
    harness = load_harness()
    text = harness.ratio_text([2.0, 3.0, 4.0, 9.0], [1.0, 2.0, 2.0, 3.0])  # rounds' ratios 2, 1.5, 2, 3
    assert text.startswith("**2.00×**"), text
    assert "ratio of the medians 1.75×" in text, text


def test_the_spread_of_the_ratios_gives_quartiles_only_within_the_data():
    harness = load_harness()
    assert harness.spread([1.2]) == "1 round(s), 1.20-1.20"
    assert harness.spread([1.0, 1.1, 1.3]) == "3 round(s), 1.00-1.30"
    assert harness.spread([1.0, 1.1, 1.2, 1.3, 1.4]) == "5 rounds, quartiles 1.10-1.30, all 1.00-1.40"


def test_counts_of_runs_must_be_at_least_one():
    harness = load_harness()
    assert harness.positive("2") == 2
    with pytest.raises(SystemExit):
        harness.main(["--runs", "0"])


def test_an_rmap_names_exactly_the_references_asked_wherever_a_grid_of_them_exists():
    harness = load_harness()
    for references, shape in ((1, (1, 1)), (5, (5, 1)), (20, (10, 2)), (80, (16, 5))):
        assert harness.grid(references) == shape
    assert harness.grid(19) == (10, 2), "no grid of 19: the fewest above"
    assert harness.grid(10_000) == (harness.DETECTORS, 5), "beyond the largest grid: the largest"


def test_the_linearity_mixes_have_4_and_16_times_the_references_and_the_same_mappings():
    harness = load_harness()
    mix = harness.Mix("small", 120, 10_000, 2_000_000)
    samples = {factor: harness.sample_for(mix.scaled(factor)) for factor in (1, 4, 16)}
    references = {factor: len(s.references_of[s.contexts[-1]]) for factor, s in samples.items()}
    assert references == {1: references[1], 4: 4 * references[1], 16: 16 * references[1]}
    assert references[1] >= mix.files
    assert len({frozenset(s.mappings) for s in samples.values()}) == 1


def test_the_server_benchmark_runs_and_prints_its_table(tmp_path):
    pytest.importorskip("crds", reason="the baseline is the real crds client in its server mode")
    out = tmp_path / "results.md"
    done, report = quick_run("crds_server.py", out, "--delays", "0.01")
    for row in ("| 0 ms | crds-job --source server | 1 |", "| 0 ms | crds sync (server mode) | 1 |",
                "| 10 ms | crds-job --source server |", "crds sync / crds-job = "):
        assert row in report, row
    assert report.strip() == done.stdout.strip()


def test_the_fleet_benchmark_runs_and_prints_its_table(tmp_path):
    out = tmp_path / "fleet.md"
    _, report = quick_run("fleet.py", out, "--server", "moto")
    for row in ("| 4 | own caches | 0×4 | 4/4 |", "| 4 | one shared cache | 0×4 | 4/4 |", "GETs per file delivered"):
        assert row in report, row


def test_the_exposure_benchmark_runs_and_prints_its_table(tmp_path):
    pytest.importorskip("crds", reason="the user's way is the real crds client in its S3 plugin mode")
    out = tmp_path / "exposure.md"
    _, report = quick_run("exposure.py", out)
    for row in ("| crds-job (warm + exec, offline) | 1 |", "| crds_s3_set + getreferences | 1 |",
                "the user's way / crds-job = ", "Cost per exposure, read from S3 by crds-job: cold cache"):
        assert row in report, row


def test_the_harness_runs_through_a_shaped_path(tmp_path):
    _, report = quick_run("warm.py", tmp_path / "shaped.md", "--server", "moto", "--shape", "5,500", "--mix", "small",
                          "--linear", "", "--no-selective")
    assert "reached through a 5 ms first-byte delay and 500 MB/s per connection" in report
    assert "| crds sync (baseline) |" in report and "| crds-job |" in report


def test_the_retention_benchmark_runs_and_prints_its_tables(tmp_path):
    pytest.importorskip("crds", reason="a selective warm asks the real crds client for an exposure's references")
    out = tmp_path / "retention.md"
    done, report = quick_run("retention.py", out)
    for row in ("| roman_0050.pmap (whole context), empty cache |", "| then roman_0051.pmap, same cache |",
                "| roman_0051.pmap alone, empty cache (for comparison) |", "The second warm fetched ",
                "## Pruning a cache of 500 references", "| crds-job --prune --keep-contexts 1 |",
                "| crds-job --prune --keep-contexts 1 --dry-run |", "| the floor: os.unlink of the same files",
                "| crds-job --version (",
                "| one shared node cache | 4 |", "| a fresh cache each | 4 |",
                "A cache per job / the shared cache: "):
        assert row in report, row
    assert report.strip() == done.stdout.strip()  # --out holds what was printed


def test_the_overhead_benchmark_runs_and_prints_its_tables(tmp_path):
    """Time to exec, cold, warm and warm for another dataset: the warm run takes crds's kept answer."""
    out = tmp_path / "overhead.md"
    _, report = quick_run("overhead.py", out, "--server", "moto")
    assert "## crds-job's own time before exec, one dataset" in report
    for row in ("| tiny, cold | 2 |", "| tiny, warm | 2 |", "| tiny, warm, another dataset | 2 |",
                "| realistic, warm | 2 |"):
        assert row in report, report
    assert "| crds answered (or its kept answer read) (`best references`) |" in report
