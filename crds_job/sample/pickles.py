"""Pickled contexts, as STScI's HST buckets hold them, made by the real crds library as it makes its own.

crds pickles a context it has loaded from its mappings (``crds sync
--save-pickles``: ``get_pickled_mapping(..., save_pickles=True)``, which
loads every mapping first). Here the same call runs in a child process on a
scratch CRDS_PATH holding the sample's mappings, offline: the pickles hold the
classes of the crds installed here, as a bucket's hold those of the crds that
made them. Needs the ``crds`` extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable

from .. import environments, launch
from .context import SampleBucket

_PICKLE = """
import sys, crds
for context in sys.argv[1:]:
    crds.get_pickled_mapping.uncached(context, use_pickles=True, save_pickles=True)
"""


def make(sample: SampleBucket, contexts: Iterable[str] | None = None) -> dict[str, bytes]:
    """The pickle of each of ``contexts`` (default: all the sample's), by its name in ``pickles/<obs>/``."""
    contexts = list(sample.contexts if contexts is None else contexts)
    obs = sample.observatory
    with tempfile.TemporaryDirectory(prefix="crds-job-pickles-") as root:
        for area in ("mappings", "config", "pickles"):
            os.makedirs(os.path.join(root, area, obs))
        for name, data in sample.mappings.items():
            with open(os.path.join(root, "mappings", obs, name), "wb") as handle:
                handle.write(data)
        with open(os.path.join(root, "config", obs, "server_config"), "wb") as handle:
            handle.write(sample.server_config())
        with open(os.path.join(root, "config", obs, "ref_cache_subdir_mode"), "w") as handle:
            handle.write("flat")
        location = environments.Location(obs, "ops", "sample", "")
        changes = launch.crds_environment(location, root, contexts[-1], "flat", allow_fetch=False)
        changes["CRDS_READONLY_CACHE"] = None  # it writes the pickles
        env = launch.apply({k: v for k, v in os.environ.items() if not k.startswith("CRDS_")}, changes)
        done = subprocess.run([sys.executable, "-c", _PICKLE, *contexts], env=env, capture_output=True, text=True,
                              timeout=300)
        folder = os.path.join(root, "pickles", obs)
        made = sorted(os.listdir(folder))
        if done.returncode != 0 or len(made) != len(contexts):
            raise RuntimeError(f"crds made {made} of {contexts}: {done.stderr[-2000:]}")
        pickles = {}
        for name in made:
            with open(os.path.join(folder, name), "rb") as handle:
                pickles[name] = handle.read()
        return pickles


def pickled(sample: SampleBucket, mappings: bool = False, listed: bool = False) -> SampleBucket:
    """``sample`` as an HST bucket is laid out: its contexts pickled, and (by default) no mappings.

    ``listed``: download_metadata lists the pickles with their sha1.
    """
    sample.pickles = make(sample)
    sample.with_mappings = mappings
    sample.pickles_listed = listed
    return sample
