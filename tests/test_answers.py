"""crds's answers kept in the cache: the same question is not asked twice, and nothing else is taken for it.

End to end against the S3 server on loopback, with Roman ASDF datasets; the key's parts are checked one by
one (the dataset's tree, not its data blocks; its name; the job's CRDS_* variables; the selection), and the
answers of a pruned context go with it.
"""

from __future__ import annotations

import json
import os

import numpy
import pytest
from conftest import cache_files, new_bucket

from crds_job import answers, datasets, plan
from crds_job import cache as cache_module
from crds_job.sample import context
from crds_job.sample import datasets as sample_datasets

pytest.importorskip("crds", reason="choosing best references needs the crds client (the crds extra)")
asdf = pytest.importorskip("asdf", reason="ASDF datasets are written with asdf (in the test extra)")

RECALLED = "crds's choice for these datasets, as it made it here before: crds is not asked again"
DETECTOR = "ROMAN.META.INSTRUMENT.DETECTOR"


@pytest.fixture
def bucket(s3, tmp_path):
    return new_bucket(s3, context.roman(detectors=2), str(tmp_path / "cache"))


def exposure(path, detector: str = "WFI01", fill: float = 0.0) -> str:
    """A Roman exposure whose tree names ``detector``, with a data block of ``fill``."""
    header = dict(context.ROMAN_DATASET_HEADER, **{DETECTOR: detector})
    tree = sample_datasets._tree(header)
    tree["roman"]["data"] = numpy.full(1000, fill, dtype="float32")
    asdf.AsdfFile(tree).write_to(str(path))
    return str(path)


def kept(cache: str) -> list[str]:
    return [path for path in cache_files(cache) if path.startswith(answers.FOLDER)]


def test_the_key_follows_the_tree_the_name_the_environment_and_the_selection(tmp_path):
    def key(*names: str, environ: dict | None = None, **selection) -> str | None:
        chosen = datasets.select(names, [], False, header=selection.get("header", ()),
                                 reftypes=selection.get("reftypes", ()))
        return answers.key("roman_0051.pmap", rules, chosen, environ or {})

    rules = [plan.Entry("roman_0051.pmap", "pmap", 500, "a" * 40), plan.Entry("roman_wfi_0051.imap", "imap", 90, "")]

    first = key(exposure(tmp_path / "a.asdf"))
    assert first and first == key(exposure(tmp_path / "a.asdf", fill=7.0))  # the data block is not read by crds
    assert first != key(exposure(tmp_path / "a.asdf", detector="WFI02"))  # the tree is
    exposure(tmp_path / "a.asdf")
    assert first == key(str(tmp_path / "a.asdf"))
    assert first != key(exposure(tmp_path / "b.asdf"))  # the name is part of the answer
    assert first != key(str(tmp_path / "a.asdf"), environ={"CRDS_ALLOW_BAD_RULES": "1"})
    assert first == key(str(tmp_path / "a.asdf"), environ={"CRDS_PATH": "/elsewhere", "HOME": "/x",
                                                           "CRDS_JOB_CONCURRENCY": "8"})  # crds-job's own
    assert first != key(str(tmp_path / "a.asdf"), reftypes=("dark",))
    rules[1] = plan.Entry("roman_wfi_0051.imap", "imap", 90, "b" * 40)  # a mapping published again, changed
    assert first != key(str(tmp_path / "a.asdf"))
    rules[1] = plan.Entry("roman_wfi_0051.imap", "imap", 90, "")
    fits = sample_datasets.write_fits(str(tmp_path / "x_raw.fits"), context.HST_DATASET_HEADERS["ACS"])
    assert key(fits) and key(fits) != key(sample_datasets.write_fits(
        str(tmp_path / "x_raw.fits"), dict(context.HST_DATASET_HEADERS["ACS"], FILTER1="F555W")))
    # Not kept: a URL's bytes, an association's members, a file that is not there.
    assert key("s3://bucket/x.asdf") is None
    assert key(str(tmp_path / "r0001_asn.json")) is None
    assert key(str(tmp_path / "absent.asdf")) is None
    assert key(header=((DETECTOR, "WFI01"),)) is None  # no file: asking crds is all there is


def test_the_same_exposure_again_is_not_asked_of_crds(bucket, tmp_path):
    path = exposure(tmp_path / "l1_uncal.asdf")
    first = bucket.run("roman", "ops", "--", "true", path)
    assert first.returncode == 0, first.stderr
    assert not first.events(RECALLED) and len(kept(bucket.cache)) == 1
    again = bucket.run("roman", "ops", "--", "true", path)
    assert again.returncode == 0, again.stderr
    assert again.event(RECALLED)["cache"] == bucket.cache
    assert again.event("best references")["references"] == first.event("best references")["references"]
    assert again.event("plan")["fetch_files"] == 0
    # Another exposure on the same cache is asked for: its answer is its own.
    other = bucket.run("roman", "ops", "--", "true", exposure(tmp_path / "l1_uncal.asdf", detector="WFI02"))
    assert other.returncode == 0, other.stderr
    assert not other.events(RECALLED)
    assert other.event("best references")["references"] != first.event("best references")["references"]


def test_an_unreadable_kept_answer_is_asked_again(bucket, tmp_path):
    path = exposure(tmp_path / "l1_uncal.asdf")
    assert bucket.run("roman", "ops", "--datasets", path).returncode == 0
    (answer,) = kept(bucket.cache)
    with open(os.path.join(bucket.cache, answer), "w") as handle:
        handle.write('{"choices": [{"dataset": 1}]')
    run = bucket.run("roman", "ops", "--datasets", path)
    assert run.returncode == 0, run.stderr
    assert not run.events(RECALLED) and run.event("best references")["dataset"] == path


def test_a_dry_run_and_an_association_keep_nothing(bucket, tmp_path):
    path = exposure(tmp_path / "l1_uncal.asdf")
    assert bucket.run("roman", "ops", "--dry-run", "--datasets", path).returncode == 0
    asn = tmp_path / "r0001_image_asn.json"
    asn.write_text(json.dumps({"products": [{"name": "p", "members": [{"expname": "l1_uncal.asdf",
                                                                       "exptype": "science"}]}]}))
    for _ in range(2):
        run = bucket.run("roman", "ops", "--datasets", str(asn))
        assert run.returncode == 0, run.stderr
        assert not run.events(RECALLED)
    assert not kept(bucket.cache)


def test_a_prune_removes_the_answers_of_the_contexts_it_removes(bucket, tmp_path):
    path = exposure(tmp_path / "l1_uncal.asdf")
    old, new = bucket.sample.contexts
    assert bucket.run("roman", "ops", "--context", old, "--datasets", path).returncode == 0
    assert bucket.run("roman", "ops", "--datasets", path).returncode == 0
    assert {answer.split(os.sep)[2] for answer in kept(bucket.cache)} == {old, new}
    pruned = bucket.run("roman", "ops", "--prune", "--keep-contexts", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert {answer.split(os.sep)[2] for answer in kept(bucket.cache)} == {new}


def test_a_kept_answer_a_killed_job_left_half_written_is_swept(bucket, tmp_path):
    path = exposure(tmp_path / "l1_uncal.asdf")
    assert bucket.run("roman", "ops", "--datasets", path).returncode == 0
    (answer,) = kept(bucket.cache)
    folder, name = os.path.split(os.path.join(bucket.cache, answer))
    left = os.path.join(folder, f".other.json{cache_module.TEMP_SUFFIX}")  # its writer is gone: no lock on it
    with open(left, "w") as handle:
        handle.write('{"choi')
    run = bucket.run("roman", "ops", "--datasets", path)
    assert run.returncode == 0, run.stderr
    assert run.event("removed temporary files left by an interrupted job")["count"] == 1
    assert not os.path.exists(left) and os.path.exists(os.path.join(folder, name))
