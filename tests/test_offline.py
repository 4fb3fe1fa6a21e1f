"""Through an S3 outage: a cache already complete for the job stands in for the bucket.

The S3 server is really stopped (or the endpoint is a port nothing listens
on); the command then runs offline on the cache, checked by the real crds
with every socket refused, or the job ends with S3's own error (69).
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import cache_files, new_bucket
from test_crds_acceptance import GET_REFERENCES, check

from crds_job.errors import ExitCode
from crds_job.sample import context, pickles, server

pytest.importorskip("crds", reason="the crds client is in the test extra: it is the command that runs offline")

#: An endpoint nothing listens on: S3 out of reach at once (the connection is refused).
DOWN = "http://127.0.0.1:9"
COMPLETE = "source unreachable; the cache is complete for {}: running offline"


def only_error(run) -> str:
    assert len(run.errors) == 1, run.stderr
    return run.errors[0]["event"]


def test_a_stopped_s3_with_a_complete_cache_runs_the_command_offline(tmp_path):
    with server.LocalS3("moto") as s3:
        bucket = new_bucket(s3, context.roman(), str(tmp_path / "cache"))
        assert bucket.run("roman", "ops").returncode == 0
        env = bucket.env()
    # The server is gone: the same job, the same environment.
    run = bucket.run("roman", "ops", "--retries", "2", "--", sys.executable, "-c", GET_REFERENCES, env=env)
    assert run.returncode == 0, run.stderr
    check(run.stdout, bucket, "roman_0051.pmap", bucket.cache)  # the real crds, offline, found every file
    assert run.event(COMPLETE.format("roman_0051.pmap"))["level"] == "warning"
    assert "S3 kept failing" in run.event("source unreachable: checking whether the cache is complete without "
                                          "it")["error"]
    assert run.event("context resolved")["credentials"] == "none: the cache alone"
    assert run.event("plan")["fetch_files"] == 0


def test_an_incomplete_cache_ends_with_s3s_own_error(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    gone = sorted(p for p in cache_files(roman_bucket.cache) if p.startswith("references"))[0]
    os.remove(os.path.join(roman_bucket.cache, gone))
    before = cache_files(roman_bucket.cache)
    run = roman_bucket.run("roman", "ops", "--retries", "1", "--", "true", AWS_ENDPOINT_URL_S3=DOWN)
    assert run.returncode == ExitCode.S3_ACCESS, run.stderr
    assert "S3 kept failing" in only_error(run) and "config/roman/server_config" in only_error(run)
    assert os.path.basename(gone) in run.event("the cache cannot stand in for the source")["reason"]
    assert cache_files(roman_bucket.cache) == before, "nothing written, nothing removed"


def test_require_source_keeps_an_outage_fatal(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    for run in (roman_bucket.run("roman", "ops", "--retries", "1", "--require-source", AWS_ENDPOINT_URL_S3=DOWN),
                roman_bucket.run("roman", "ops", "--retries", "1", AWS_ENDPOINT_URL_S3=DOWN,
                                 CRDS_JOB_REQUIRE_SOURCE="1")):
        assert run.returncode == ExitCode.S3_ACCESS, run.stderr
        assert not run.events("source unreachable: checking whether the cache is complete without it")


def test_a_pinned_context_the_cache_does_not_hold_is_s3s_error(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0  # roman_0051.pmap only
    run = roman_bucket.run("roman", "ops", "--retries", "1", "--context", "roman_0050.pmap", AWS_ENDPOINT_URL_S3=DOWN)
    assert run.returncode == ExitCode.S3_ACCESS, run.stderr
    assert "roman_0050.pmap" in run.event("the cache cannot stand in for the source")["reason"]
    pinned = roman_bucket.run("roman", "ops", "--retries", "1", "--context", "roman_0051.pmap",
                              AWS_ENDPOINT_URL_S3=DOWN)
    assert pinned.returncode == 0 and pinned.events(COMPLETE.format("roman_0051.pmap")), pinned.stderr


def test_a_selective_warm_offline_chooses_from_the_cached_mappings(roman_bucket, tmp_path):
    from crds_job.sample import datasets as sample_datasets

    exposure = sample_datasets.write_asdf(str(tmp_path / "l1_img.asdf"), context.ROMAN_DATASET_HEADER)
    assert roman_bucket.run("roman", "ops", "--", "true", exposure).returncode == 0
    run = roman_bucket.run("roman", "ops", "--retries", "1", "--", "true", exposure, AWS_ENDPOINT_URL_S3=DOWN)
    assert run.returncode == 0, run.stderr
    assert run.event("best references")["references"] == roman_bucket.sample.expected["roman_0051.pmap"]["wfi"]
    detector_2 = dict(context.ROMAN_DATASET_HEADER, **{"ROMAN.META.INSTRUMENT.DETECTOR": "WFI02"})
    other = sample_datasets.write_asdf(str(tmp_path / "other.asdf"), detector_2)
    run = roman_bucket.run("roman", "ops", "--retries", "1", "--", "true", other, AWS_ENDPOINT_URL_S3=DOWN)
    assert run.returncode == ExitCode.S3_ACCESS, "another detector's references are not in the cache"


def test_a_pickled_hst_cache_runs_offline_too(s3, tmp_path):
    bucket = new_bucket(s3, pickles.pickled(context.hst()), str(tmp_path / "cache"), prefix="")
    assert bucket.run("hst", "ops").returncode == 0
    script = ("import crds, json\n"
              f"header = {context.HST_DATASET_HEADERS['ACS']!r}\n"
              "print(json.dumps(crds.getrecommendations(header, observatory='hst')))\n")
    run = bucket.run("hst", "ops", "--retries", "1", "--", sys.executable, "-c", script, AWS_ENDPOINT_URL_S3=DOWN)
    assert run.returncode == 0, run.stderr
    assert run.event("plan")["rules"] == "pickle" and run.events(COMPLETE.format(bucket.sample.contexts[-1]))
    assert json.loads(run.stdout.splitlines()[-1]) == bucket.sample.expected[bucket.sample.contexts[-1]]["acs"]
