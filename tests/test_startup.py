"""Importing crds_job.cli, which loads the SDK: no collection runs meanwhile, and the caller's collector is
left as found. The package itself imports nothing heavy (its public names come on first use), so that the
crds child starts without the SDK."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import gc, json, sys
if sys.argv[1] == "off":
    gc.disable()
if sys.argv[1] == "frozen":
    gc.freeze()
frozen_before = gc.get_freeze_count()
runs = []
gc.callbacks.append(lambda phase, info: phase == "start" and runs.append((info["generation"],
                                                                         "botocore" in sys.modules)))
import crds_job.cli
during = list(runs)  # read before anything else allocates, which may set off a (cheap) collection
print(json.dumps({"enabled": gc.isenabled(), "collections_during_import": [sdk for _, sdk in during].count(True),
                  "before_the_sdk": [generation for generation, sdk in during if not sdk],
                  "frozen_before": frozen_before, "frozen": gc.get_freeze_count()}))
"""


def _import_crds_job(caller: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, caller], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("caller", ["on", "off"])
def test_the_collector_is_left_on_or_off_as_it_was_found(caller):
    assert _import_crds_job(caller)["enabled"] is (caller == "on")


def test_no_collection_runs_while_the_sdk_is_imported():
    # Without the pause, importing botocore, aiohttp and s3fs set off over a hundred; paused but
    # left young, the import's ~90,000 objects are walked by one as soon as the collector is back,
    # still within the import. A few may run before the pause starts, of the youngest generation
    # only: while the package and cli's own code are loaded (compiled, if their bytecode is not cached).
    found = _import_crds_job("on")
    assert found["collections_during_import"] == 0
    assert len(found["before_the_sdk"]) <= 3 and set(found["before_the_sdk"]) <= {0}, found


def test_objects_the_caller_froze_stay_frozen():
    found = _import_crds_job("frozen")
    # A few of them are freed by the import machinery itself; unfrozen, none would be left.
    assert found["frozen_before"] > 0
    assert found["frozen"] >= 0.9 * found["frozen_before"]


SIGINT_PROBE = """
import signal, sys
handler = signal.SIG_IGN if sys.argv[1] == "ignored" else signal.default_int_handler
signal.signal(signal.SIGINT, handler)
import crds_job.cli
print(signal.getsignal(signal.SIGINT) is handler)
"""


@pytest.mark.parametrize("caller", ["python's", "ignored"])
def test_importing_leaves_the_callers_sigint_handler(caller):
    done = subprocess.run([sys.executable, "-c", SIGINT_PROBE, caller], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.4, 0.8])
def test_sigint_at_any_moment_of_the_start_prints_no_traceback(roman_bucket, delay):
    """Every line on stderr is JSON, whenever SIGINT comes: during the imports it ends the process as
    SIGTERM would; after them, one error line and 130."""
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", "crds_job", "roman", "ops"], env=roman_bucket.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode in (-signal.SIGINT, 128 + signal.SIGINT, 0), stderr  # 0: it finished first
    assert "Traceback" not in stderr and stdout == ""
    for line in stderr.splitlines():
        json.loads(line)


def test_the_package_alone_imports_no_sdk_and_its_public_names_come_on_first_use():
    probe = ("import sys, crds_job\nbefore = sorted(m for m in ('botocore', 's3fs', 'aiohttp', 'crds_job.cli') "
             "if m in sys.modules)\nfrom crds_job import main, warm, ExitCode\nprint(before, callable(main), "
             "callable(warm), ExitCode.USAGE.value)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[]", "True", "True", "64"]


def test_the_public_warm_is_the_function_whatever_was_imported_first():
    probe = "import crds_job.cli\nfrom crds_job import warm\nprint(callable(warm), type(warm).__name__)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "function"]
