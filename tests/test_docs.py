"""The README is the front door: its two commands exist, and the docs it links hold the code's tables."""

from __future__ import annotations

import os

from crds_job import errors, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme(page: str = "README.md") -> str:
    with open(os.path.join(ROOT, page)) as handle:
        return handle.read()


def test_the_option_table_is_generated_from_settings():
    assert settings.markdown_table() in readme("docs/usage.md")


def test_the_exit_code_table_is_generated_from_errors():
    assert errors.markdown_table() in readme("docs/exit-codes.md")
    assert set(errors.MEANING) == set(errors.ExitCode)


def test_every_docs_page_is_linked_and_every_link_is_there():
    """The README stays short: exact behaviour lives in docs/, one page a topic, each linked from it."""
    import re

    pages = sorted(name for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md"))
    linked = re.findall(r"\]\((docs/[^)#]+)", readme())
    assert sorted({os.path.basename(link) for link in linked}) == pages
    for page in ["README.md", *(f"docs/{name}" for name in pages)]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme(page)):
            assert os.path.exists(os.path.join(ROOT, os.path.dirname(page), target)), (page, target)
    assert len(readme().splitlines()) < 120, "a newcomer's README: move exact behaviour into docs/"


def test_the_two_commands_and_ci():
    text = readme()
    for script in ("scripts/demo", "scripts/test"):
        assert f"./{script}" in text
        assert os.access(os.path.join(ROOT, script), os.X_OK)
    with open(os.path.join(ROOT, ".ci/run")) as handle:
        assert "exec ./scripts/test" in handle.read()


def test_the_demo_warms_one_exposures_references_and_crds_finds_them_offline(tmp_path):
    """What ./scripts/demo runs once its venv is set up (the test suite runs in that venv)."""
    import json
    import subprocess
    import sys

    from crds_job.sample import context

    # What a user's shell may hold after ``source crds_s3_set``: none of it reaches the demo's job.
    real_cache = tmp_path / "real-crds-cache"
    real_cache.mkdir()
    env = dict(os.environ, CRDS_PATH=str(real_cache), CRDS_JOB_CONTEXT="roman_9999.pmap",
               CRDS_S3_BUCKET="not-the-demo-bucket", AWS_PROFILE="no-such-profile", CRDS_JOB_LOG_FORMAT="json")
    done = subprocess.run([sys.executable, "-m", "crds_job.sample", "demo", "--cache", str(tmp_path / "cache")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not os.listdir(real_cache), "the user's own cache is left alone"
    assert '"event": "warmed"' in done.stderr, "the log format asked for is kept"
    refs = json.loads(done.stdout)["references"]
    expected = context.roman().expected[context.roman().contexts[-1]]["wfi"]
    assert {kind: os.path.basename(path) for kind, path in refs.items()} == expected
    assert all(path.startswith(str(tmp_path / "cache")) and os.path.isfile(path) for path in refs.values())
    fetched = os.listdir(tmp_path / "cache" / "references" / "roman")
    assert sorted(fetched) == sorted(expected.values())  # only the exposure's references


def test_serve_keeps_the_local_s3_up_until_ctrl_c_and_crds_job_runs_against_it(tmp_path):
    """The README's ``python -m crds_job.sample serve``, with no terminal on stdin (as under a runner)."""
    import json
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CRDS", "AWS_"))}
    server = subprocess.Popen([sys.executable, "-m", "crds_job.sample", "serve"], env=env, text=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        exports = {}
        for line in server.stdout:
            if line.startswith("export "):
                name, _, value = line[len("export "):].strip().partition("=")
                exports[name] = value
            if line.startswith("crds-job --dry-run roman"):
                break
        assert "AWS_ENDPOINT_URL_S3" in exports, server.stderr.read() if server.poll() is not None else exports
        dry = subprocess.run([sys.executable, "-m", "crds_job", "--dry-run", "roman", "ops"],
                             env=dict(env, **exports, CRDS_PATH=str(tmp_path / "cache")),
                             capture_output=True, text=True, timeout=120)
        assert dry.returncode == 0, dry.stderr[-2000:]
        assert json.loads(dry.stdout)["context"].startswith("roman_"), "the plan of the sample context"
        hst = subprocess.run([sys.executable, "-m", "crds_job", "--dry-run", "hst", "ops"],
                             env=dict(env, **exports, CRDS_PATH=str(tmp_path / "hst-cache")),
                             capture_output=True, text=True, timeout=120)
        assert hst.returncode == 0, hst.stderr[-2000:]
        assert json.loads(hst.stdout)["rules"] == "pickle", "STScI's HST layout: pickles, no mappings"
        assert server.poll() is None, "still serving"
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
