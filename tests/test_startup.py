"""Importing crds_job: no collection walks the SDK while it loads, and the collector is left as found."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import gc, json, sys
if sys.argv[1] == "off":
    gc.disable()
import crds_job
print(json.dumps({"enabled": gc.isenabled(), "full_collections": gc.get_stats()[2]["collections"],
                  "young": len(gc.get_objects(generation=0))}))
"""


def _import_crds_job(collector: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, collector], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("collector", ["on", "off"])
def test_the_collector_is_left_as_it_was_found(collector):
    assert _import_crds_job(collector)["enabled"] is (collector == "on")


def test_no_full_collection_walks_the_sdk_while_it_is_imported():
    # Without the pause, importing botocore and s3fs set off at least one.
    assert _import_crds_job("on")["full_collections"] == 0


def test_what_the_import_built_is_not_left_for_one_young_collection_to_walk():
    # Left young, the first collection after the import would walk them all (~90,000 objects).
    assert _import_crds_job("on")["young"] < 1000
