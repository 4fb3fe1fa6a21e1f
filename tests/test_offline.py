"""Through an S3 outage: a cache already complete for the job stands in for the bucket.

The S3 server is really stopped (or the endpoint is a port nothing listens
on); the command then runs offline on the cache, checked by the real crds
with every socket refused, or the job ends with S3's own error (69).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import sys
import threading

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


def tree(root: str) -> dict[str, tuple[str, int, int]]:
    """Everything under ``root``, folders and hidden files (journals) included, with sizes and mtimes."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            found[os.path.relpath(path, root)] = ("dir" if name in dirs else "file", info.st_size, info.st_mtime_ns)
    return found


@contextlib.contextmanager
def answering(status: int, code: str):
    """An S3 endpoint on loopback that answers every request with one S3 error (``code``, HTTP ``status``)."""
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code} from the test'
            "</Message><RequestId>1</RequestId></Error>").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = answer

        def log_message(self, *args) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as endpoint:
        threading.Thread(target=endpoint.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{endpoint.server_address[1]}"
        finally:
            endpoint.shutdown()


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
    before = tree(roman_bucket.cache)
    for dry_run in ((), ("--dry-run",)):  # a dry run is no promise that the command could run offline
        run = roman_bucket.run("roman", "ops", "--retries", "1", *dry_run, "--", "true", AWS_ENDPOINT_URL_S3=DOWN)
        assert run.returncode == ExitCode.S3_ACCESS, run.stderr
        assert "S3 kept failing" in only_error(run) and "config/roman/server_config" in only_error(run)
        reason = run.event("the cache cannot stand in for the source")
        assert reason["level"] == "warning" and os.path.basename(gone) in reason["reason"]
        assert tree(roman_bucket.cache) == before, "nothing written, nothing removed, not even a journal or folder"


def test_a_dry_run_through_an_outage_says_the_command_would_run_offline(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    run = roman_bucket.run("roman", "ops", "--retries", "1", "--dry-run", AWS_ENDPOINT_URL_S3=DOWN)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["totals"]["fetch_files"] == 0
    assert run.event("source unreachable; the cache is complete for roman_0051.pmap: the command would run offline")
    assert not run.events(COMPLETE.format("roman_0051.pmap"))


def test_an_offline_warm_writes_nothing_not_even_on_an_empty_cache(roman_bucket):
    os.makedirs(roman_bucket.cache)
    run = roman_bucket.run("roman", "ops", "--retries", "1", AWS_ENDPOINT_URL_S3=DOWN)
    assert run.returncode == ExitCode.S3_ACCESS, run.stderr
    assert "server_config" in run.event("the cache cannot stand in for the source")["reason"]
    assert tree(roman_bucket.cache) == {}


def test_a_corrupt_cached_mapping_is_not_stood_in_for(roman_bucket):
    assert roman_bucket.run("roman", "ops").returncode == 0
    rmap = next(p for p in cache_files(roman_bucket.cache) if p.endswith(".rmap"))
    path = os.path.join(roman_bucket.cache, rmap)
    with open(path, "r+b") as handle:
        handle.seek(-2, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-2, os.SEEK_END)
        handle.write(b"X" if last != b"X" else b"Y")
    before = tree(roman_bucket.cache)
    run = roman_bucket.run("roman", "ops", "--retries", "1", "--", "true", AWS_ENDPOINT_URL_S3=DOWN)
    assert run.returncode == ExitCode.S3_ACCESS, run.stderr
    assert run.event("cached file is corrupt")["file"] == os.path.basename(rmap)
    assert not run.events("cached file is corrupt, fetching it again")
    assert os.path.basename(rmap) in run.event("the cache cannot stand in for the source")["reason"]
    assert tree(roman_bucket.cache) == before, "the corrupt copy is left for the next warm from S3 to replace"


@pytest.mark.parametrize(("status", "code"), [
    (403, "AccessDenied"),
    (400, "AuthorizationHeaderMalformed"),
    (400, "ExpiredToken"),
    (400, "AnErrorNoOneHasSeenYet"),
])
def test_s3_answering_with_a_refusal_is_no_outage(roman_bucket, status, code):
    """S3 is there and says no, or says something unknown: the job's own setup may be wrong, and a
    calibration must not run on, unnoticed, without ever reaching S3 again."""
    assert roman_bucket.run("roman", "ops").returncode == 0
    with answering(status, code) as endpoint:
        run = roman_bucket.run("roman", "ops", "--retries", "1", "--", "true", AWS_ENDPOINT_URL_S3=endpoint)
    assert run.returncode == ExitCode.S3_ACCESS, run.stderr
    assert code in only_error(run) or "access denied" in only_error(run)
    assert not run.events("source unreachable: checking whether the cache is complete without it")


def test_s3_answering_unavailable_is_an_outage(roman_bucket):
    """The contrast of the refusals above, through the very same stand-in endpoint."""
    assert roman_bucket.run("roman", "ops").returncode == 0
    with answering(503, "ServiceUnavailable") as endpoint:
        run = roman_bucket.run("roman", "ops", "--retries", "1", "--", "true", AWS_ENDPOINT_URL_S3=endpoint)
    assert run.returncode == 0, run.stderr
    assert run.events(COMPLETE.format("roman_0051.pmap"))


def test_a_certificate_refused_is_no_outage(roman_bucket):
    """An endpoint that does not speak TLS where the job expects it: a setup to fix, not S3 down."""
    assert roman_bucket.run("roman", "ops").returncode == 0
    with answering(503, "ServiceUnavailable") as endpoint:
        run = roman_bucket.run("roman", "ops", "--retries", "1", "--", "true",
                               AWS_ENDPOINT_URL_S3=endpoint.replace("http://", "https://"))
    assert run.returncode == ExitCode.S3_ACCESS, run.stderr
    assert not run.events("source unreachable: checking whether the cache is complete without it")


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
    reason = run.event("the cache cannot stand in for the source")["reason"]
    chosen = run.event("best references")["references"]  # crds chose them offline, from the cached mappings
    assert any(name in reason for name in chosen.values()), reason
    assert not set(chosen.values()) & set(roman_bucket.sample.expected["roman_0051.pmap"]["wfi"].values())


def test_a_pickled_hst_cache_runs_offline_too(s3, tmp_path):
    bucket = new_bucket(s3, pickles.pickled(context.hst(), listed=True), str(tmp_path / "cache"), prefix="")
    assert bucket.run("hst", "ops").returncode == 0
    script = ("import crds, json\n"
              f"header = {context.HST_DATASET_HEADERS['ACS']!r}\n"
              "print(json.dumps(crds.getrecommendations(header, observatory='hst')))\n")
    run = bucket.run("hst", "ops", "--retries", "1", "--", sys.executable, "-c", script, AWS_ENDPOINT_URL_S3=DOWN)
    assert run.returncode == 0, run.stderr
    assert run.event("plan")["rules"] == "pickle" and run.events(COMPLETE.format(bucket.sample.contexts[-1]))
    assert json.loads(run.stdout.splitlines()[-1]) == bucket.sample.expected[bucket.sample.contexts[-1]]["acs"]


def test_a_pickle_the_bucket_publishes_no_sha1_for_is_not_loaded_offline(s3, tmp_path):
    """Fetched, it was checked by its size and S3's checksum; offline, its size is its own: nothing checks it."""
    bucket = new_bucket(s3, pickles.pickled(context.hst()), str(tmp_path / "cache"), prefix="")
    assert bucket.run("hst", "ops").returncode == 0
    before = tree(bucket.cache)
    run = bucket.run("hst", "ops", "--retries", "1", "--", "true", AWS_ENDPOINT_URL_S3=DOWN)
    assert run.returncode == ExitCode.S3_ACCESS, run.stderr
    assert "publishes no sha1" in run.event("the cache cannot stand in for the source")["reason"]
    assert tree(bucket.cache) == before
