"""Importing crds_job: no collection runs while the SDK loads, and the caller's collector is left as found."""

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
gc.callbacks.append(lambda phase, info: phase == "start" and runs.append(info["generation"]))
import crds_job
during = len(runs)  # read before anything else allocates, which may set off a (cheap) collection
print(json.dumps({"enabled": gc.isenabled(), "collections_during_import": during,
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
    # still within the import. One may run before the pause starts: while the package's own
    # __init__ is compiled, if its bytecode is not cached.
    assert _import_crds_job("on")["collections_during_import"] <= 1


def test_objects_the_caller_froze_stay_frozen():
    found = _import_crds_job("frozen")
    # A few of them are freed by the import machinery itself; unfrozen, none would be left.
    assert found["frozen_before"] > 0
    assert found["frozen"] >= 0.9 * found["frozen_before"]


SIGINT_PROBE = """
import signal, sys
handler = signal.SIG_IGN if sys.argv[1] == "ignored" else signal.default_int_handler
signal.signal(signal.SIGINT, handler)
import crds_job
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
