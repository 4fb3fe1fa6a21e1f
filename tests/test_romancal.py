"""The real consumer: romancal's ExposurePipeline, run by crds-job on a cache warmed from a local S3.

Issue #24. ``strun romancal.pipeline.ExposurePipeline l1.asdf`` (romancal 1.1.0, in its own venv
``.venv-romancal``, which ./scripts/test makes through ./scripts/setup-romancal from
requirements/romancal.lock) calibrates a level-1 WFI exposure under ``crds-job roman ops --``,
against a bucket whose context is modeled on crds's own Roman specs (tests/romancal_context.py) and
whose references roman_datamodels made
(tests/romancal_make.py). The warm is selective (the exposure is named in the command), so only the
exposure's references may be fetched, and the calibration must find every one of them offline.

Why the exposure is the full 4096 x 4096 detector with 4 resultants: romancal 1.1.0's DarkDecayStep
subtracts a read-time array that is always 4096 x 4096 (``romancal.lib.basic_utils.frame_read_times``),
RefPixStep splits the columns into 32 channels of 128, and stcal's likelihood ramp fit (the default)
refuses fewer than 4 resultants. The references are full-size too but constant and zlib-compressed:
a few kB to 430 kB each, so the bucket is small (4 MB); only the local exposure (80 MB) holds noise and stars.

Skipped step: tweakreg, whose absolute astrometry reads the GAIA catalog from the network
(``--steps.tweakreg.skip=True``); its ``pars-tweakregstep`` is still asked of crds and warmed.

Isolation: the command runs in a network namespace of its own (``unshare -rn``), so the calibration
cannot reach anything, not even the local S3 that crds-job warmed from. Where no such namespace can be
made the suite fails in CI and is skipped elsewhere, with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import romancal_context
from conftest import Bucket, Run, cache_files, new_bucket

pytestmark = [pytest.mark.romancal, pytest.mark.timeout(1200)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv-romancal")
MAKE = os.path.join(ROOT, "tests", "romancal_make.py")

#: Whether this machine lets the command run in a network namespace of its own (no interface but a down lo).
NETWORK_NAMESPACES = bool(shutil.which("unshare")) and subprocess.run(
    ["unshare", "-rn", "true"], capture_output=True).returncode == 0


def _cannot(reason: str) -> None:
    """Fail in CI (this suite is part of what CI runs), skip elsewhere, saying why."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


def romancal_python() -> str:
    """The venv's python, which ./scripts/test makes (./scripts/setup-romancal)."""
    python = os.path.join(VENV, "bin", "python")
    if not os.access(python, os.X_OK):
        _cannot(".venv-romancal is missing: ./scripts/setup-romancal makes it (requirements/romancal.lock)")
    if not NETWORK_NAMESPACES:
        _cannot("this machine lets no process make a network namespace of its own (unshare -rn): the "
                "calibration could not be kept off the network")
    return python


@dataclass
class Calibrated:
    """One crds-job run of the pipeline: the run, its bucket, the exposure, and the outputs read back."""

    run: Run
    bucket: Bucket
    sample: romancal_context.RomancalBucket
    exposure: str
    output: dict[str, Any]
    log: str  # the command's own output, stdout and stderr

    @property
    def fetched(self) -> set[str]:
        return {os.path.basename(path) for path in cache_files(self.bucket.cache)
                if path.startswith(os.path.join("references", "roman"))}


@pytest.fixture(scope="module")
def calibrated(s3, tmp_path_factory) -> Iterator[Calibrated]:
    """Make the files (romancal's venv), publish them, and run crds-job with the pipeline as its command.

    The exposure and the images the pipeline wrote (300 MB) are removed afterwards; the rest is kept."""
    python = romancal_python()
    folder = tmp_path_factory.mktemp("romancal")
    references, outputs = folder / "references", folder / "out"
    references.mkdir()
    outputs.mkdir()
    exposure = str(folder / "l1_wfi01_uncal.asdf")
    order = folder / "order.json"
    order.write_text(json.dumps(romancal_context.make_order(str(references), exposure)))
    made = subprocess.run([python, MAKE, str(order)], capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]

    sample = romancal_context.build(str(references))
    bucket = new_bucket(s3, sample, str(folder / "cache"))
    command = ["unshare", "-rn", os.path.join(VENV, "bin", "strun"), "romancal.pipeline.ExposurePipeline", exposure,
               f"--output_dir={outputs}", "--steps.tweakreg.skip=True"]
    run = bucket.run("roman", "ops", "--", *command, timeout=1100)
    log = run.stdout + "\n".join(run.foreign)
    output: dict[str, Any] = {}
    if run.returncode == 0:
        summary = subprocess.run([python, MAKE, "--summary", str(outputs / "l1_wfi01_cal.asdf"),
                                  str(outputs / "l1_wfi01_cat.parquet")], capture_output=True, text=True, timeout=300)
        assert summary.returncode == 0, summary.stderr[-3000:]
        output = json.loads(summary.stdout)
    yield Calibrated(run, bucket, sample, exposure, output, log)
    for large in [exposure, *(str(path) for path in outputs.glob("*.asdf"))]:
        os.unlink(large)


def test_the_pipeline_calibrates_offline_with_the_buckets_choices(calibrated: Calibrated):
    run = calibrated.run
    assert run.returncode == 0, run.stderr[-5000:]
    assert run.event("warming the references of datasets")["datasets"] == [calibrated.exposure]
    assert calibrated.output["context"] == romancal_context.CONTEXT
    # Every reference the steps recorded is the one the bucket's rules give this exposure.
    recorded = {kind: value.removeprefix("crds://") for kind, value in calibrated.output["ref_file"].items()
                if value.startswith("crds://")}
    chosen = calibrated.sample.chosen
    assert recorded == {kind: min(chosen[kind]) for kind in recorded}
    assert set(recorded) == set(romancal_context.STEP_REFERENCES)  # each step found its reference
    steps = calibrated.output["cal_step"]
    assert {step for step, state in steps.items() if state == "COMPLETE"} >= {
        "dq_init", "saturation", "refpix", "dark_decay", "linearity", "ramp_fit", "dark", "assign_wcs", "photom",
        "flat_field", "source_catalog"}
    assert steps["tweakreg"] == "SKIPPED"
    assert calibrated.output["sources"] > 100  # the catalog step ran on real detections
    # Every step's parameters came from the cache, none was missing.
    for kind in romancal_context.PARS:
        name = min(chosen[kind])
        assert f"{kind.upper()} parameters found: " in calibrated.log and name in calibrated.log, kind


def test_only_the_exposures_references_were_fetched(calibrated: Calibrated):
    """Not another detector's (WFI02), nor another exposure type's step parameters (WFI_GRISM)."""
    assert calibrated.run.returncode == 0, calibrated.run.stderr[-5000:]
    fetched = calibrated.fetched
    assert not fetched & calibrated.sample.others
    wanted = {name for kind, names in calibrated.sample.chosen.items() if kind != "dustmap" for name in names}
    assert fetched - {name for name in fetched if "_dustmap_" in name} == wanted
    assert calibrated.run.event("plan")["references"] == len(fetched)
    assert calibrated.run.event("warmed")


def test_the_warms_crds_reads_the_level1_header(calibrated: Calibrated):
    """The warm's crds child (crds-job's own venv: crds 14.0.3, asdf, no romancal) reads the L1 asdf
    written by roman_datamodels 1.1.0: instrument, detector and start time, so it chooses as romancal's crds."""
    (choice,) = calibrated.run.events("best references")
    assert choice["dataset"] == calibrated.exposure
    assert choice["instrument"].lower() == "wfi"
    expected = {kind: min(names) for kind, names in calibrated.sample.chosen.items() if kind != "dustmap"}
    assert {kind: name for kind, name in choice["references"].items() if kind != "dustmap"} == expected


def test_the_calibration_asked_crds_for_nothing_it_did_not_have(calibrated: Calibrated):
    """No cache miss: crds never tried to sync, download or reach a server; nothing failed for want of a file."""
    assert calibrated.run.returncode == 0, calibrated.run.stderr[-5000:]
    for sign in ("Syncing", "Fetching", "Downloading", "serverless", "Failed to get", "CRDS - ERROR",
                 "Connection", "Traceback"):
        assert sign not in calibrated.log, [line for line in calibrated.log.splitlines() if sign in line]


def test_the_dust_maps_are_warmed_and_the_catalog_reads_them(calibrated: Calibrated):
    """romancal asks crds for ``dustmap`` with a header of its own (``ROMAN.FIELD``: north, south), a key
    the exposure lacks: both maps must be warmed, and every source's E(B-V) read from the north one."""
    assert calibrated.run.returncode == 0, calibrated.run.stderr[-5000:]
    assert calibrated.sample.chosen["dustmap"] <= calibrated.fetched, "the dust maps were not warmed"
    assert "Failed to compute dust_ebv" not in calibrated.log
    ebv = calibrated.output["dust_ebv"]
    assert ebv and all(value == pytest.approx(romancal_context.DUST["north"]) for value in ebv), ebv[:5]
