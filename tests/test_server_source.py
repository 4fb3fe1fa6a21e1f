"""The CRDS server as a source: crds-job against a stand-in server on loopback.

The stand-in (``crds_job.sample.crds_server``) is first validated with the
real crds client in its server mode (test_crds_server_standin); here crds-job
warms from it (JWST, which has no bucket; Roman, by ``--source server`` or by
falling back from a bucket that no longer holds a pinned context), and the
real crds then runs offline on what it warmed.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import pytest
from conftest import Run, cache_files, file_sha1, new_bucket, run_job
from test_crds_acceptance import GET_REFERENCES, NO_NETWORK, check

from crds_job.errors import ExitCode
from crds_job.sample import context
from crds_job.sample.crds_server import LocalCrdsServer

pytest.importorskip("crds", reason="the crds client is in the test extra: it validates what was warmed")

#: An address nothing listens on: the server out of reach at once.
DOWN = "http://127.0.0.1:9"
#: What the command is given to print: the CRDS variables crds-job set for it.
SHOW_ENV = "import json, os; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('CRDS')}))"


@dataclass
class ServerJob:
    """A stand-in CRDS server serving ``sample``, and how to run crds-job against it (no S3 at all)."""

    server: LocalCrdsServer
    sample: context.SampleBucket
    cache: str

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CRDS", "AWS_"))}
        base.update({"CRDS_PATH": self.cache, "CRDS_SERVER_URL": self.server.url,
                     "AWS_ENDPOINT_URL_S3": DOWN,  # any S3 request would fail: none may be made
                     "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
        base.update(extra)
        return base

    def run(self, *args: str, **extra: str) -> Run:
        return run_job(list(args), self.env(**extra))


def only_error(run: Run) -> str:
    assert len(run.errors) == 1, run.stderr
    return run.errors[0]["event"]


def assert_verified(cache: str, sample: context.SampleBucket, names: set[str]) -> None:
    """Every file of ``names`` is in the cache with the sha1 the server publishes; nothing else is."""
    metadata = sample.metadata()
    found = {os.path.basename(p): p for p in cache_files(cache) if p.startswith(("mappings", "references"))}
    assert set(found) == names
    for name, path in found.items():
        assert file_sha1(os.path.join(cache, path)) == metadata[name]["sha1sum"], name


@pytest.fixture(scope="module")
def roman_sample() -> context.SampleBucket:
    return context.roman()


@pytest.fixture
def roman_server(roman_sample, tmp_path):
    with LocalCrdsServer(roman_sample) as server:
        yield ServerJob(server, roman_sample, str(tmp_path / "cache"))


def closure(sample: context.SampleBucket, pmap: str) -> set[str]:
    """The mappings of context ``pmap`` (its pmap, imaps, rmaps), from the sample's own text."""
    names, todo = set(), [pmap]
    while todo:
        name = todo.pop()
        names.add(name)
        text = sample.mappings[name].decode()
        todo += [child for child in sample.mappings if child not in names and f"'{child}'" in text]
    return names


def test_roman_from_the_server_and_crds_runs_offline_on_it(roman_server):
    job = roman_server
    run = job.run("--source", "server", "roman", "ops", "--", sys.executable, "-c", GET_REFERENCES)
    assert run.returncode == 0, run.stderr
    check(run.stdout, job, "roman_0051.pmap", job.cache)
    latest = "roman_0051.pmap"
    assert_verified(job.cache, job.sample, closure(job.sample, latest) | job.sample.references_of[latest])
    assert run.event("context resolved")["source"] == job.server.url
    assert run.event("context resolved")["credentials"] == "none: a CRDS server is public"
    methods = {path for method, path in job.server.requests if method == "POST"}
    assert methods == {"get_server_info"}, "one JSON-RPC call: the server's info says everything else"
    again = job.run("--source", "server", "roman", "ops")
    assert again.returncode == 0 and again.event("plan")["fetch_files"] == 0


def test_the_commands_environment_is_offline_unless_fetching_is_allowed(roman_server):
    job = roman_server
    run = job.run("--source", "server", "roman", "ops", "--", sys.executable, "-c", SHOW_ENV)
    assert run.returncode == 0, run.stderr
    env = json.loads(run.stdout)
    assert env["CRDS_SERVER_URL"] == "https://roman-crds-serverless.stsci.edu" and env["CRDS_READONLY_CACHE"] == "1"
    assert not [name for name in env if name.startswith("CRDS_S3") or name == "CRDS_MODE"]
    fetching = job.run("--source", "server", "--allow-fetch", "roman", "ops", "--", sys.executable, "-c", SHOW_ENV)
    assert fetching.returncode == 0, fetching.stderr
    env = json.loads(fetching.stdout)
    assert env["CRDS_SERVER_URL"] == job.server.url and "CRDS_READONLY_CACHE" not in env
    assert not [name for name in env if name.startswith("CRDS_S3") or name == "CRDS_MODE"]


def test_a_dry_run_names_the_server(roman_server):
    job = roman_server
    run = job.run("--source", "server", "--dry-run", "roman", "ops")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["source"].startswith(job.server.url) and report["bucket"] is None
    assert report["totals"]["fetch_files"] == report["totals"]["files"] > 0
    assert not os.path.exists(job.cache) or not cache_files(job.cache)


def test_a_pinned_context_and_one_the_server_does_not_hold(roman_server):
    job = roman_server
    run = job.run("--source", "server", "--context", "roman_0050.pmap", "roman", "ops")
    assert run.returncode == 0, run.stderr
    assert job.sample.references_of["roman_0050.pmap"] <= {os.path.basename(p) for p in cache_files(job.cache)}
    absent = job.run("--source", "server", "--context", "roman_0999.pmap", "roman", "ops")
    assert absent.returncode == ExitCode.USAGE, absent.stderr
    assert "roman_0999.pmap is not in" in only_error(absent) and "roman_0050.pmap" in only_error(absent)


def test_a_selective_warm_from_the_server(roman_server, tmp_path):
    from crds_job.sample import datasets as sample_datasets

    job = roman_server
    exposure = sample_datasets.write_asdf(str(tmp_path / "l1_img.asdf"), context.ROMAN_DATASET_HEADER)
    run = job.run("--source", "server", "roman", "ops", "--", sys.executable, "-c", GET_REFERENCES, exposure)
    assert run.returncode == 0, run.stderr
    check(run.stdout, job, "roman_0051.pmap", job.cache)
    wanted = set(job.sample.expected["roman_0051.pmap"]["wfi"].values())
    assert {os.path.basename(p) for p in cache_files(job.cache) if p.startswith("references")} == wanted


def test_bytes_other_than_the_published_ones_never_reach_the_cache(roman_server):
    job = roman_server
    name = max(job.sample.expected["roman_0051.pmap"]["wfi"].values(), key=job.sample.reference_sizes.get)
    data = job.sample.reference_bytes(name)
    job.server.replace(name, data[:10] + bytes([data[10] ^ 1]) + data[11:])
    run = job.run("--source", "server", "--retries", "2", "roman", "ops")
    assert run.returncode == ExitCode.BUCKET_CONTENT, run.stderr
    assert name in only_error(run) and "arrived with sha1" in only_error(run)
    assert name not in {os.path.basename(p) for p in cache_files(job.cache)}
    job.server.replace(name, data[: len(data) // 2])  # cut short: another size than published
    cut = job.run("--source", "server", "--retries", "2", "roman", "ops")
    assert cut.returncode in (ExitCode.BUCKET_CONTENT, ExitCode.INTEGRITY), cut.stderr
    assert name not in {os.path.basename(p) for p in cache_files(job.cache)}


@pytest.mark.parametrize(("status", "code", "words"), [
    (503, ExitCode.S3_ACCESS, "the CRDS server kept failing: 503"),
    (401, ExitCode.S3_ACCESS, "it asks for a login"),
    (403, ExitCode.S3_ACCESS, "it asks for a login"),
])
def test_a_failing_or_refusing_server_is_one_line(roman_server, status, code, words):
    job = roman_server
    job.server.fail_with(status)
    run = job.run("--source", "server", "--retries", "2", "roman", "ops")
    assert run.returncode == code, run.stderr
    assert words in only_error(run)
    assert not os.path.exists(job.cache) or not [p for p in cache_files(job.cache) if not p.startswith("config")]


def test_a_server_out_of_reach_is_69_and_a_complete_cache_runs_offline(roman_server):
    job = roman_server
    down = job.run("--source", "server", "--retries", "2", "roman", "ops", CRDS_SERVER_URL=DOWN)
    assert down.returncode == ExitCode.S3_ACCESS, down.stderr
    assert "the CRDS server could not be reached" in only_error(down)
    assert job.run("--source", "server", "roman", "ops").returncode == 0
    job.server.stop()
    run = job.run("--source", "server", "--retries", "2", "roman", "ops", "--", sys.executable, "-c",
                  GET_REFERENCES)
    assert run.returncode == 0, run.stderr
    check(run.stdout, job, "roman_0051.pmap", job.cache)
    assert run.events("source unreachable; the cache is complete for roman_0051.pmap: running offline")


def test_downloads_overlap(roman_sample, tmp_path):
    """Many files in flight at once, where the crds client fetches one after another."""
    with LocalCrdsServer(roman_sample, delay=0.2) as server:
        job = ServerJob(server, roman_sample, str(tmp_path / "cache"))
        run = job.run("--source", "server", "--concurrency", "16", "roman", "ops")
        assert run.returncode == 0, run.stderr
        assert server.max_in_flight >= 8, server.max_in_flight


def test_roman_auto_falls_back_to_the_server_for_a_context_gone_from_the_bucket(s3, roman_sample, tmp_path):
    """Roman buckets keep the last five contexts; the server keeps them all."""
    bucket = new_bucket(s3, roman_sample, str(tmp_path / "cache"))
    bucket.delete("mappings/roman/roman_0050.pmap")  # as the bucket's rotation drops it
    with LocalCrdsServer(roman_sample) as server:
        env = bucket.env(CRDS_SERVER_URL=server.url)
        run = run_job(["--context", "roman_0050.pmap", "roman", "ops", "--", sys.executable, "-c",
                       GET_REFERENCES], env)
        assert run.returncode == 0, run.stderr
        check(run.stdout, bucket, "roman_0050.pmap", bucket.cache)
        assert run.event("the bucket does not hold the context asked for: warming it from the CRDS server")[
            "server"] == server.url
        assert any(method == "GET" for method, _ in server.requests)
        strict = run_job(["--source", "s3", "--context", "roman_0050.pmap", "roman", "ops"],
                         dict(env, CRDS_PATH=str(tmp_path / "another")))
        assert strict.returncode == ExitCode.USAGE, strict.stderr
        latest = run_job(["roman", "ops"], env)  # the bucket holds the latest: the server is not asked again
        asked = len(server.requests)
        assert latest.returncode == 0 and len(server.requests) == asked


def test_jwst_ops_needs_no_flag(tmp_path):
    pytest.importorskip("stdatamodels", reason="crds loads JWST rules only with stdatamodels (test extra)")
    sample = context.jwst()
    with LocalCrdsServer(sample) as server:
        job = ServerJob(server, sample, str(tmp_path / "cache"))
        instrument, header = next(iter(context.JWST_DATASET_HEADERS.items()))
        expected = sample.expected[sample.contexts[-1]][instrument.lower()]
        script = NO_NETWORK + (
            "import crds, json\n"
            f"refs = crds.getreferences({header!r}, reftypes={sorted(expected)!r}, observatory='jwst')\n"
            "print(json.dumps({k: __import__('os').path.basename(v) for k, v in refs.items()}))\n")
        run = job.run("jwst", "ops", "--", sys.executable, "-c", script)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout.splitlines()[-1]) == expected
        latest = sample.contexts[-1]
        assert_verified(job.cache, sample, closure(sample, latest) | sample.references_of[latest])


def test_a_date_based_context_is_the_servers_to_resolve(roman_server):
    """crds refuses dates in S3 mode; a server answers them (get_context_by_date), and so crds-job asks."""
    job = roman_server
    run = job.run("--source", "server", "--context", "roman-2025-01-01T12:00:00", "roman", "ops")
    assert run.returncode == 0, run.stderr
    assert run.event("context resolved")["context"] == "roman_0050.pmap"
    assert ("POST", "get_context_by_date") in job.server.requests
    before = job.run("--source", "server", "--context", "roman-1990-01-01T00:00:00", "roman", "ops")
    assert before.returncode == ExitCode.USAGE, before.stderr
    assert "the CRDS server cannot resolve context 'roman-1990-01-01T00:00:00'" in only_error(before)


@pytest.mark.parametrize(("version", "asked"), [(None, False), ("1.2.3.post1", True), ("1.3.0.dev5", False)])
def test_build_is_the_installed_calibration_packages_context(roman_server, tmp_path, version, asked):
    """As the client's get_build_context: the server's answer for romancal's version; a development
    version's is the edit context; with no romancal installed, the latest."""
    job = roman_server
    extra = {}
    if version is not None:  # an installed distribution, as importlib.metadata finds one
        info = tmp_path / "site" / f"romancal-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: romancal\nVersion: {version}\n")
        extra["PYTHONPATH"] = str(tmp_path / "site")
    run = job.run("--source", "server", "--context", "build", "roman", "ops", **extra)
    assert run.returncode == 0, run.stderr
    assert run.event("context resolved")["context"] == "roman_0051.pmap"
    assert (("POST", "get_build_context") in job.server.requests) == asked


def test_a_jwst_exposure_warms_only_its_references(tmp_path):
    """crds reads the FITS exposure's keywords through stdatamodels, as the jwst pipeline's crds does."""
    pytest.importorskip("stdatamodels", reason="crds loads JWST rules only with stdatamodels (test extra)")
    from crds_job.sample import datasets as sample_datasets

    sample = context.jwst()
    header = context.JWST_DATASET_HEADERS["NIRCAM"]
    keywords = {"TELESCOP": "JWST", "INSTRUME": "NIRCAM", "DETECTOR": "NRCA1", "FILTER": "F200W", "PUPIL": "CLEAR",
                "EXP_TYPE": "NRC_IMAGE", "SUBARRAY": "FULL", "READPATT": "RAPID", "DATE-OBS": "2023-06-01",
                "TIME-OBS": "00:00:00"}
    exposure = sample_datasets.write_fits(str(tmp_path / "jw01234001001_01101_00001_nrca1_uncal.fits"), keywords)
    expected = sample.expected[sample.contexts[-1]]["nircam"]
    script = NO_NETWORK + (
        "import crds, json, os, sys\n"
        f"refs = crds.getreferences({header!r}, reftypes={sorted(expected)!r}, observatory='jwst')\n"
        "print(json.dumps({k: os.path.basename(v) for k, v in refs.items()}))\n")
    with LocalCrdsServer(sample) as server:
        job = ServerJob(server, sample, str(tmp_path / "cache"))
        run = job.run("jwst", "ops", "--", sys.executable, "-c", script, exposure)
    assert run.returncode == 0, run.stderr
    assert run.event("best references")["references"] == expected
    assert json.loads(run.stdout.splitlines()[-1]) == expected
    assert {os.path.basename(p) for p in cache_files(job.cache) if p.startswith("references")} == set(expected.values())


def test_a_partial_cache_resumes_from_the_server(roman_server):
    job = roman_server
    assert job.run("--source", "server", "roman", "ops").returncode == 0
    references = sorted(p for p in cache_files(job.cache) if p.startswith("references"))
    for gone in references[:3]:
        os.remove(os.path.join(job.cache, gone))
    asked = len(job.server.requests)
    run = job.run("--source", "server", "roman", "ops")
    assert run.returncode == 0, run.stderr
    assert run.event("plan")["fetch_files"] == 3
    fetched = {path.rsplit("/", 1)[-1] for method, path in job.server.requests[asked:] if method == "GET"}
    assert fetched == {os.path.basename(p) for p in references[:3]}
    latest = "roman_0051.pmap"
    assert_verified(job.cache, job.sample, closure(job.sample, latest) | job.sample.references_of[latest])


def test_large_files_come_in_checked_ranges(roman_server):
    job = roman_server
    run = job.run("--source", "server", "--part-size", "64KiB", "--memory-budget", "1MiB", "roman", "ops")
    assert run.returncode == 0, run.stderr
    ranged = [path for method, path in job.server.requests if method == "GET"]
    assert len(ranged) > len(set(ranged)), "a file over 64 KiB was fetched in several GETs"
    latest = "roman_0051.pmap"
    assert_verified(job.cache, job.sample, closure(job.sample, latest) | job.sample.references_of[latest])


def test_a_server_that_ignores_ranges_is_said_to_and_final(roman_server):
    job = roman_server
    job.server.ignore_ranges = True
    small = job.run("--source", "server", "--mappings-only", "roman", "ops")  # whole files: no range asked
    assert small.returncode == 0, small.stderr
    run = job.run("--source", "server", "--part-size", "64KiB", "--memory-budget", "1MiB", "roman", "ops")
    assert run.returncode == ExitCode.BUCKET_CONTENT, run.stderr
    assert "the server does not serve byte ranges" in only_error(run)
    assert not run.events("retrying"), "no attempt can change how the server answers"


@pytest.mark.parametrize(("status", "code"), [
    (401, ExitCode.S3_ACCESS), (403, ExitCode.S3_ACCESS), (400, ExitCode.S3_ACCESS), (404, ExitCode.USAGE),
])
def test_a_server_that_answers_with_a_refusal_is_no_outage(roman_server, status, code):
    """Even with a complete cache: the job's setup (a login, a URL) is to fix, not to run on without."""
    job = roman_server
    assert job.run("--source", "server", "roman", "ops").returncode == 0
    job.server.fail_with(status)
    run = job.run("--source", "server", "--retries", "2", "roman", "ops", "--", "true")
    assert run.returncode == code, run.stderr
    assert not run.events("source unreachable: checking whether the cache is complete without it")


def test_a_server_answering_503_with_a_complete_cache_runs_offline_and_keeps_the_server(roman_server):
    job = roman_server
    assert job.run("--source", "server", "roman", "ops").returncode == 0
    job.server.fail_with(503)
    run = job.run("--source", "server", "--retries", "2", "--allow-fetch", "roman", "ops", "--", sys.executable,
                  "-c", SHOW_ENV)
    assert run.returncode == 0, run.stderr
    assert run.events("source unreachable; the cache is complete for roman_0051.pmap: running offline")
    env = json.loads(run.stdout)
    assert env["CRDS_SERVER_URL"] == job.server.url, "its misses go to the server the files came from"
    assert not [name for name in env if name.startswith("CRDS_S3") or name == "CRDS_MODE"]


def test_auto_asks_the_server_for_a_date_and_says_both_facts_when_it_is_gone(s3, roman_sample, tmp_path):
    bucket = new_bucket(s3, roman_sample, str(tmp_path / "cache"))
    bucket.delete("mappings/roman/roman_0050.pmap")
    with LocalCrdsServer(roman_sample) as server:
        env = bucket.env(CRDS_SERVER_URL=server.url)
        run = run_job(["--context", "roman-2025-01-01T12:00:00", "roman", "ops"], env)
        assert run.returncode == 0, run.stderr
        assert run.event("context resolved")["context"] == "roman_0050.pmap"
    gone = run_job(["--retries", "1", "--context", "roman_0049.pmap", "roman", "ops"],
                   dict(env, CRDS_PATH=str(tmp_path / "other")))
    assert gone.returncode == ExitCode.S3_ACCESS, gone.stderr
    message = only_error(gone)
    assert "context roman_0049.pmap is not in" in message and "the CRDS server, which may hold it, could not be " \
        "reached" in message and "check the context's name" in message


def test_jwst_dry_run_names_the_server_and_no_bucket(tmp_path):
    pytest.importorskip("stdatamodels", reason="crds loads JWST rules only with stdatamodels (test extra)")
    sample = context.jwst()
    with LocalCrdsServer(sample) as server:
        job = ServerJob(server, sample, str(tmp_path / "cache"))
        run = job.run("--dry-run", "jwst", "ops")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert (report["source"], report["bucket"], report["context"]) == (server.url, None, sample.contexts[-1])
    assert report["totals"]["references"] == len(sample.references_of[sample.contexts[-1]])
