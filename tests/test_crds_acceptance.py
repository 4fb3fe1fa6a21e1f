"""The real crds library (PyPI) accepts the warmed cache: offline, with no socket opened.

The calibration command's crds runs in a subprocess with the environment
crds-job gives it, and an audit hook that turns any network attempt into a
failure; it must resolve best references and find every file locally.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from crds_job.sample.context import ROMAN_DATASET_HEADER

pytest.importorskip("crds", reason="the crds client is in the test extra")

NO_NETWORK = """
import sys
def _no_network(event, args):
    if event.startswith(("socket.", "urllib.Request", "http.client")):
        raise RuntimeError(f"crds tried the network: {event} {args!r:.120}")
sys.addaudithook(_no_network)
"""

GET_REFERENCES = NO_NETWORK + f"""
import json, os, crds
header = {ROMAN_DATASET_HEADER!r}
refs = crds.getreferences(header, observatory="roman")
recommended = crds.getrecommendations(header, observatory="roman")
for path in refs.values():
    assert os.path.isfile(path), path
print(json.dumps({{"refs": refs, "recommended": recommended, "context": crds.get_context_name("roman")}}))
"""


def check(run_stdout: str, bucket, context: str, cache: str) -> None:
    result = json.loads(run_stdout)
    expected = bucket.sample.expected[context]["wfi"]
    assert result["context"] == context
    assert {kind: os.path.basename(path) for kind, path in result["refs"].items()} == expected
    assert result["recommended"] == expected
    assert all(path.startswith(cache + os.sep) for path in result["refs"].values())


def test_exec_runs_crds_offline_on_the_warmed_cache(roman_bucket):
    run = roman_bucket.run("roman", "ops", "--", sys.executable, "-c", GET_REFERENCES)
    assert run.returncode == 0, run.stderr
    check(run.stdout, roman_bucket, "roman_0051.pmap", roman_bucket.cache)


def test_a_pinned_context_and_the_instrument_layout(roman_bucket):
    run = roman_bucket.run("roman", "ops", "--ref-subdir-mode", "instrument", "--context", "roman_0050.pmap",
                           "--", sys.executable, "-c", GET_REFERENCES)
    assert run.returncode == 0, run.stderr
    check(run.stdout, roman_bucket, "roman_0050.pmap", roman_bucket.cache)
    assert "/references/roman/wfi/" in run.stdout


def test_env_file_handoff_works_with_the_s3_server_gone(roman_bucket, tmp_path):
    """The init-container pattern: warm, then another process sources the env file, no S3 at all."""
    env_file = tmp_path / "crds.env"
    assert roman_bucket.run("roman", "ops", "--env-file", str(env_file)).returncode == 0
    env = roman_bucket.env(AWS_ENDPOINT_URL_S3="http://127.0.0.1:9")  # nothing listens there
    script = tmp_path / "calibrate.py"
    script.write_text(GET_REFERENCES)
    done = subprocess.run(["sh", "-c", f'. "{env_file}" && exec "{sys.executable}" "{script}"'],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    check(done.stdout, roman_bucket, "roman_0051.pmap", roman_bucket.cache)


def test_the_network_guard_would_catch_a_client_that_goes_online(roman_bucket):
    """The guard is real: with S3 mode exported, crds reaches for the network and fails."""
    run = roman_bucket.run("roman", "ops", "--allow-fetch", "--", sys.executable, "-c", GET_REFERENCES)
    assert run.returncode != 0
    assert "crds tried the network" in run.stderr
