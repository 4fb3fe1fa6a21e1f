"""The benchmark harness runs (at a tiny scale, so it cannot rot); its figures are not asserted."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_harness_runs_and_prints_its_tables(tmp_path):
    out = tmp_path / "results.md"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench/warm.py"), "--quick", "--server", "moto",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    for row in ("| crds-job |", "| crds sync (baseline) |", "| raw aiobotocore", "| aws s3 cp --recursive |",
                "warm cache rerun", "--verify-existing rerun", "baseline / crds-job", "crds-job / limit",
                "| one dataset (--datasets l1_img.asdf) |", "| whole context |",
                "cost against file count"):
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
