"""Lower layers (``--lower``): read-only caches under the writable one, seen as one cache by the real crds.

A shared cache (here warmed by crds-job from the bucket, as a shared volume
would be) lies under a per-job cache; what it holds is linked, not fetched, and
the real crds, offline with no socket, reads the references through the links.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
from conftest import assert_cache_verified, largest_wfi_reference, snapshot
from test_crds_acceptance import GET_REFERENCES, check

from crds_job.errors import ExitCode

CONTEXT = "roman_0051.pmap"


@pytest.fixture
def lower(roman_bucket, tmp_path) -> str:
    """A complete cache of the bucket's latest context: the shared layer."""
    folder = str(tmp_path / "shared")
    run = roman_bucket.run("roman", "ops", CRDS_PATH=folder)
    assert run.returncode == 0, run.stderr
    return folder


def references_folder(cache: str) -> str:
    return os.path.join(cache, "references", "roman")


def test_what_a_lower_layer_holds_is_linked_not_fetched_and_crds_reads_it_offline(roman_bucket, lower):
    before = snapshot(lower)
    run = roman_bucket.run("roman", "ops", "--lower", lower, "--", sys.executable, "-c", GET_REFERENCES)
    assert run.returncode == 0, run.stderr
    plan, warmed = run.event("plan"), run.event("warmed")
    references = len(roman_bucket.sample.references_of[CONTEXT])
    assert (plan["lower_files"], plan["fetch_files"]) == (references, 0), "no reference comes from S3"
    assert warmed["files_linked"] == references and warmed["files_fetched"] == plan["mappings"]
    for name in os.listdir(references_folder(roman_bucket.cache)):
        link = os.path.join(references_folder(roman_bucket.cache), name)
        assert os.readlink(link) == os.path.join(references_folder(os.path.realpath(lower)), name)
    check(run.stdout, roman_bucket, CONTEXT, roman_bucket.cache)  # the real crds, offline, through the links
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
    assert snapshot(lower) == before, "a lower layer is only read"
    again = roman_bucket.run("roman", "ops", "--lower", lower)
    assert again.returncode == 0, again.stderr
    assert again.event("plan")["fetch_files"] == again.event("plan")["lower_files"] == 0
    assert again.event("warmed")["files_present"] == plan["mappings"] + references, "the links are trusted"


def test_a_selective_warm_links_only_the_exposures_references(roman_bucket, lower, tmp_path):
    from crds_job.sample import context, datasets

    exposure = datasets.write_asdf(str(tmp_path / "l1_img.asdf"), context.ROMAN_DATASET_HEADER)
    run = roman_bucket.run("roman", "ops", "--lower", lower, "--", "true", exposure)
    assert run.returncode == 0, run.stderr
    chosen = run.event("best references")["references"]
    assert sorted(os.listdir(references_folder(roman_bucket.cache))) == sorted(chosen.values())
    assert run.event("warmed")["files_linked"] == len(chosen)


def test_a_link_into_no_named_layer_is_refused_and_one_named_is_trusted(roman_bucket, lower):
    run = roman_bucket.run("roman", "ops", "--lower", lower)
    assert run.returncode == 0, run.stderr
    without = roman_bucket.run("roman", "ops")
    assert without.returncode == ExitCode.CACHE, without.stderr
    (error,) = without.errors
    assert "is a symbolic link" in error["event"] and "crds-job never follows links" in error["event"]
    elsewhere = os.path.join(os.path.dirname(lower), "elsewhere")
    shutil.copytree(lower, elsewhere)
    stray = os.path.join(references_folder(roman_bucket.cache), largest_wfi_reference(roman_bucket))
    os.unlink(stray)
    os.symlink(os.path.join(references_folder(elsewhere), os.path.basename(stray)), stray)
    refused = roman_bucket.run("roman", "ops", "--lower", lower)
    assert refused.returncode == ExitCode.CACHE, refused.stderr
    (error,) = refused.errors
    assert f"is a symbolic link to {elsewhere}" in error["event"] and "in no lower layer of this job" in error["event"]


def test_a_lower_copy_of_the_wrong_size_is_fetched_and_a_wrong_sha1_is_when_verifying(roman_bucket, lower):
    name = largest_wfi_reference(roman_bucket)
    shared = os.path.join(references_folder(lower), name)
    with open(shared, "r+b") as handle:  # same size, other bytes
        handle.write(b"\0" * 64)
    others = sorted(n for n in os.listdir(references_folder(lower)) if n != name)
    with open(os.path.join(references_folder(lower), others[0]), "ab") as handle:  # one byte too many
        handle.write(b"x")
    run = roman_bucket.run("roman", "ops", "--lower", lower, "--verify-existing")
    assert run.returncode == 0, run.stderr
    warning = run.event("a lower layer's copy does not have the bucket's sha1: fetched instead")
    assert warning["file"] == name
    for fetched in (name, others[0]):
        assert not os.path.islink(os.path.join(references_folder(roman_bucket.cache), fetched))
    assert os.path.islink(os.path.join(references_folder(roman_bucket.cache), others[1]))
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


def test_a_link_inside_a_lower_layer_is_not_followed(roman_bucket, lower, tmp_path):
    name = largest_wfi_reference(roman_bucket)
    shared = os.path.join(references_folder(lower), name)
    outside = str(tmp_path / name)
    shutil.move(shared, outside)
    os.symlink(outside, shared)
    run = roman_bucket.run("roman", "ops", "--lower", lower)
    assert run.returncode == 0, run.stderr
    cached = os.path.join(references_folder(roman_bucket.cache), name)
    assert os.path.isfile(cached) and not os.path.islink(cached), "fetched, never linked through the layer's link"


def test_dry_run_shows_what_a_lower_layer_gives_and_links_nothing(roman_bucket, lower):
    run = roman_bucket.run("roman", "ops", "--lower", lower, "--dry-run")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    linked = [f for f in report["files"] if "lower" in f]
    assert len(linked) == report["totals"]["lower_files"] == len(roman_bucket.sample.references_of[CONTEXT])
    assert report["totals"]["lower_bytes"] == sum(f["size"] for f in linked)
    assert all(not f["cached"] and f["lower"].startswith(os.path.realpath(lower)) for f in linked)
    assert not os.path.exists(roman_bucket.cache)


@pytest.mark.parametrize("where, message", [
    ("missing", "is not a folder"), ("cache", "overlap"), ("inside", "overlap"),
])
def test_a_lower_layer_that_is_no_other_cache_is_refused(roman_bucket, tmp_path, where, message):
    os.makedirs(roman_bucket.cache)
    path = {"missing": str(tmp_path / "nowhere"), "cache": roman_bucket.cache,
            "inside": os.path.join(roman_bucket.cache, "references")}[where]
    os.makedirs(os.path.join(roman_bucket.cache, "references"))
    run = roman_bucket.run("roman", "ops", "--lower", path)
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert message in run.errors[0]["event"]


def test_a_wrong_copy_or_a_dangling_link_in_the_cache_gives_way_to_a_layers_file(roman_bucket, lower, tmp_path):
    first = roman_bucket.run("roman", "ops", "--lower", lower)
    assert first.returncode == 0, first.stderr
    folder = references_folder(roman_bucket.cache)
    wrong, dangling = sorted(os.listdir(folder))[:2]
    os.unlink(os.path.join(folder, wrong))
    with open(os.path.join(folder, wrong), "wb") as handle:  # a copy of another size, not a link
        handle.write(b"short")
    baked = str(tmp_path / "baked")  # a second layer that holds the file the first one lost
    shutil.copytree(lower, baked)
    os.unlink(os.path.join(references_folder(lower), dangling))
    run = roman_bucket.run("roman", "ops", "--lower", f"{lower}:{baked}")
    assert run.returncode == 0, run.stderr
    assert run.event("warmed")["files_linked"] == 2 and run.event("warmed")["files_fetched"] == 0
    assert os.readlink(os.path.join(folder, wrong)).startswith(os.path.realpath(lower))
    assert os.readlink(os.path.join(folder, dangling)).startswith(os.path.realpath(baked))
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)
