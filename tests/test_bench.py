"""The benchmark harness runs (at a tiny scale, so it cannot rot); its figures are not asserted."""

from __future__ import annotations

import os
import subprocess
import sys

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
