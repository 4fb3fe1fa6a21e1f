"""The stand-in CRDS server (``crds_job.sample.crds_server``) against the real ``crds`` client.

Tests of a JWST warm are only as good as the server they run against: this
checks that the real client (crds 14, server mode: ``CRDS_SERVER_URL``, no S3)
syncs a whole context from the stand-in, byte for byte, chooses the sample's
expected references from it, and fails when the server is gone or lies, so
that the stand-in is known to speak the protocol rather than merely answer.

Every client runs in its own process: crds caches the server's answers and its
configuration at module level.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import stdatamodels  # noqa: F401  (crds.jwst.locate imports it: without it, fail here, not with a crds traceback)

from crds_job.sample.context import JWST_DATASET_HEADERS, SampleBucket, jwst
from crds_job.sample.crds_server import LocalCrdsServer, server_info


@pytest.fixture(scope="module")
def sample() -> SampleBucket:
    return jwst()


@pytest.fixture(scope="module")
def server(sample: SampleBucket) -> Iterator[LocalCrdsServer]:
    with LocalCrdsServer(sample) as running:
        yield running


def client_env(url: str, cache: Path) -> dict[str, str]:
    """The environment of a client in server mode: the user's own CRDS and AWS settings (a
    ``crds_s3_set``, a CRDS_MODE, a CRDS_CONTEXT) would send it elsewhere or pin another context."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CRDS_", "AWS_"))}
    return dict(env, CRDS_SERVER_URL=url, CRDS_PATH=str(cache), CRDS_OBSERVATORY="jwst")


def run_client(url: str, cache: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python *argv`` as a crds client of ``url`` with cache ``cache``."""
    return subprocess.run([sys.executable, *argv], env=client_env(url, cache), capture_output=True, text=True,
                          timeout=120)


def run_python(url: str, cache: Path, code: str, *args: str) -> object:
    """Run ``code`` in a client process; what it prints last, as JSON."""
    done = run_client(url, cache, "-c", code, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def sync(url: str, cache: Path, context: str) -> subprocess.CompletedProcess[str]:
    return run_client(url, cache, "-m", "crds.sync", "--contexts", context, "--fetch-references")


def closure(sample: SampleBucket, context: str) -> set[str]:
    """The mappings a context names, read from their text (not asked of the server under test)."""
    names: set[str] = set()
    todo = [context]
    while todo:
        name = todo.pop()
        if name not in names:
            names.add(name)
            todo += re.findall(r"'(\w+\.[ir]map)'", sample.mappings[name].decode())
    return names


@pytest.fixture(scope="module")
def synced(server: LocalCrdsServer, sample: SampleBucket, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache that ``crds sync`` filled with the latest context and its references, from the stand-in."""
    cache = tmp_path_factory.mktemp("synced")
    done = sync(server.url, cache, sample.contexts[-1])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return cache


def test_sync_caches_every_file_of_the_context(synced: Path, sample: SampleBucket) -> None:
    latest = sample.contexts[-1]
    mappings = {path.name: path.read_bytes() for path in (synced / "mappings" / "jwst").iterdir()}
    assert set(mappings) == closure(sample, latest)
    assert all(data == sample.mappings[name] for name, data in mappings.items())
    references = {path.name: path for path in (synced / "references" / "jwst").glob("*/*.fits")}
    assert set(references) == sample.references_of[latest]
    for name, path in references.items():
        assert path.parent.name == name.split("_")[1], "a new JWST cache is laid out by instrument"
        assert path.read_bytes() == sample.reference_bytes(name), name
    assert (synced / "config" / "jwst" / "ref_cache_subdir_mode").read_text().strip() == "instrument"


def test_sync_speaks_only_the_known_protocol(synced: Path, server: LocalCrdsServer, sample: SampleBucket) -> None:
    """What the real client asked for: two JSON-RPC calls, then one unchecked GET per file."""
    methods = {what for method, what in server.requests if method == "POST"}
    assert {"get_server_info", "get_mapping_names"} <= methods
    gets = [what for method, what in server.requests if method == "GET"]
    assert gets and all(path.startswith(("/unchecked_get/mappings/jwst/", "/unchecked_get/references/jwst/"))
                        for path in gets)


GETREFERENCES = """
import json, sys
import crds
headers, reftypes, context = json.loads(sys.argv[1])
print(json.dumps({instrument: crds.getreferences(header, reftypes=reftypes[instrument], observatory="jwst",
                                                  context=context)
                  for instrument, header in headers.items()}))
"""


@pytest.mark.parametrize("cache_kind", ["synced", "fresh"])
def test_getreferences_chooses_the_expected_references(cache_kind: str, request: pytest.FixtureRequest,
                                                       server: LocalCrdsServer, sample: SampleBucket,
                                                       tmp_path: Path) -> None:
    """From a synced cache, and from an empty one (the client then fetches what it chose, on demand)."""
    cache = request.getfixturevalue("synced") if cache_kind == "synced" else tmp_path / "cache"
    latest = sample.contexts[-1]
    expected = sample.expected[latest]
    reftypes = {instrument: sorted(expected[instrument.lower()]) for instrument in JWST_DATASET_HEADERS}
    before = len(server.requests)
    chosen = run_python(server.url, cache, GETREFERENCES, json.dumps([JWST_DATASET_HEADERS, reftypes, latest]))
    for instrument, paths in chosen.items():
        assert {kind: os.path.basename(path) for kind, path in paths.items()} == expected[instrument.lower()]
        for path in paths.values():
            assert Path(path).read_bytes() == sample.reference_bytes(os.path.basename(path))
    fetched = {path.rsplit("/", 1)[1] for method, path in server.requests[before:]
               if method == "GET" and "/references/" in path}
    wanted = {name for kinds in expected.values() for name in kinds.values()}
    assert fetched == (set() if cache_kind == "synced" else wanted)


def test_getreferences_without_a_context_uses_the_servers_latest(server: LocalCrdsServer, sample: SampleBucket,
                                                                 tmp_path: Path) -> None:
    """No context, no CRDS_CONTEXT: a JWST client asks the server (for the build context of the jwst
    package, or, without it, the latest) and selects from the latest context."""
    header = JWST_DATASET_HEADERS["NIRCAM"]
    chosen = run_python(server.url, tmp_path, GETREFERENCES, json.dumps([{"NIRCAM": header}, {"NIRCAM": ["dark"]},
                                                                         None]))
    assert os.path.basename(chosen["NIRCAM"]["dark"]) == sample.expected[sample.contexts[-1]]["nircam"]["dark"]


API_CALLS = """
import json
from crds.client import api
from crds.core.exceptions import ServiceError
info = api.get_server_info()
try:
    api.get_mapping_names("jwst_9999.pmap")
    unknown = None
except ServiceError as exc:
    unknown = str(exc)
print(json.dumps({
    "default": api.get_default_context("jwst"),
    "edit": api.get_default_context("jwst", "edit"),
    "by_date": api.get_context_by_date("jwst-2025-01-01T12:00:00", "jwst"),
    "mapping_names": api.get_mapping_names(info["operational_context"]),
    "info": {key: info[key] for key in ("observatory", "operational_context", "mapping_url", "reference_url")},
    "metadata": api.get_download_metadata(),
    "file_info": api.get_file_info_map("jwst", ["jwst_nircam_gain_0001.fits", "nothing.fits"], ["size"]),
    "unknown": unknown,
}))
"""


def test_client_api_calls(server: LocalCrdsServer, sample: SampleBucket, tmp_path: Path) -> None:
    answers = run_python(server.url, tmp_path, API_CALLS)
    first, latest = sample.contexts[0], sample.contexts[-1]
    assert answers["default"] == answers["edit"] == latest
    assert answers["by_date"] == first  # the second context starts on 2025-01-02
    assert latest in answers["mapping_names"] and all(name in sample.mappings for name in answers["mapping_names"])
    info = answers["info"]
    assert info["observatory"] == "jwst" and info["operational_context"] == latest
    # The client keeps the "unchecked" URLs, by observatory, and appends a file name to them.
    assert info["reference_url"] == {"jwst": f"{server.url}/unchecked_get/references/jwst/"}
    assert info["mapping_url"] == {"jwst": f"{server.url}/unchecked_get/mappings/jwst/"}
    assert answers["metadata"] == sample.metadata()
    assert answers["file_info"] == {"jwst_nircam_gain_0001.fits": {"size": str(sample.reference_sizes[
        "jwst_nircam_gain_0001.fits"])}, "nothing.fits": "NOT FOUND"}
    assert "Unknown context 'jwst_9999.pmap'" in answers["unknown"]


def test_server_info_is_what_the_rpc_answers(server: LocalCrdsServer, sample: SampleBucket) -> None:
    body = json.dumps({"jsonrpc": "1.0", "method": "get_server_info", "params": [], "id": "x"}).encode()
    with urllib.request.urlopen(f"{server.url}/json/get_server_info/x/", body, timeout=10) as response:
        answer = json.load(response)
    assert (answer["error"], answer["id"]) == (None, "x")
    served, made = answer["result"], server_info(sample, server.url)
    # gzip stamps the time in download_metadata: compare it decoded
    assert decoded(served.pop("download_metadata")) == decoded(made.pop("download_metadata")) == sample.metadata()
    assert served == made
    assert served["build_context"] == sample.contexts[-1]


def decoded(encoded: dict[str, str]) -> object:
    """A crds-encoded value (``crds_encoded``: base64 of gzip of JSON), decoded."""
    assert encoded["crds_encoded"] == "1.0"
    return json.loads(gzip.decompress(base64.b64decode(encoded["crds_payload"])))


def get(url: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_range_head_and_unknown_files(server: LocalCrdsServer, sample: SampleBucket) -> None:
    name = largest_reference(sample)
    data, url = sample.reference_bytes(name), f"{server.url}/unchecked_get/references/jwst/{name}"
    status, headers, body = get(url, Range="bytes=100-1099")
    assert (status, body, headers["Content-Range"]) == (206, data[100:1100], f"bytes 100-1099/{len(data)}")
    assert get(url, Range="bytes=-10")[2] == data[-10:]
    assert get(url, Range=f"bytes={len(data)}-")[0] == 416
    status, headers, body = get(url, "HEAD")
    assert (status, headers["Content-Length"], body) == (200, str(len(data)), b"")
    assert get(f"{server.url}/unchecked_get/references/jwst/jwst_nircam_dark_9999.fits")[0] == 404
    assert get(f"{server.url}/unchecked_get/mappings/jwst/{name}")[0] == 404  # a reference is not a mapping
    pmap = sample.contexts[-1]
    assert get(f"{server.url}/unchecked_get/mappings/jwst/{pmap}")[2] == sample.mappings[pmap]


#: What crds 14 says when get_server_info fails and the cache has no server_config to fall back on.
SERVER_FAILED = "CRDS server connection and cache load FAILED"


def test_a_stopped_server_fails_the_client(sample: SampleBucket, tmp_path: Path) -> None:
    """The validation can fail: with nothing listening, the real client's sync exits non-zero."""
    stopped = LocalCrdsServer(sample)
    with stopped:
        pass
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{stopped.url}/unchecked_get/mappings/jwst/{sample.contexts[-1]}", timeout=5)
    done = sync(stopped.url, tmp_path, sample.contexts[-1])
    assert done.returncode != 0
    assert SERVER_FAILED in done.stderr, done.stderr[-2000:]  # and not for another reason (an import...)
    assert not list(tmp_path.glob("references/jwst/*/*.fits"))


def test_a_replaced_file_fails_the_clients_checksum(sample: SampleBucket, tmp_path: Path) -> None:
    """``replace`` serves other bytes under the published size and sha1: the real client reports them.

    It does not remove them: crds 14 renames a download into place and checks it after (its removal
    on failure is commented out), so the bad bytes stay in the cache, and a later run takes them as cached.
    """
    name = largest_reference(sample)
    original = sample.reference_bytes(name)
    with LocalCrdsServer(sample) as server:
        server.replace(name, bytes([original[0] ^ 0xFF]) + original[1:])  # same size: only the sha1 tells
        done = sync(server.url, tmp_path, sample.contexts[-1])
    assert done.returncode != 0
    assert re.search(rf"{re.escape(name)}.* sha1sum .* does not match server sha1sum", done.stdout + done.stderr)


def largest_reference(sample: SampleBucket) -> str:
    return max(sample.references_of[sample.contexts[-1]], key=sample.reference_sizes.__getitem__)


def test_fail_with_fails_json_rpc_and_files(sample: SampleBucket, tmp_path: Path) -> None:
    with LocalCrdsServer(sample) as server:
        server.fail_with(503)
        assert get(f"{server.url}/unchecked_get/mappings/jwst/{sample.contexts[-1]}")[0] == 503
        done = sync(server.url, tmp_path, sample.contexts[-1])
        assert done.returncode != 0 and SERVER_FAILED in done.stderr, done.stderr[-2000:]
        server.fail_with(None)
        assert get(f"{server.url}/unchecked_get/mappings/jwst/{sample.contexts[-1]}")[0] == 200
    assert ("POST", "get_server_info") in server.requests


def test_delay_and_max_in_flight(sample: SampleBucket) -> None:
    """Concurrent GETs are served at once (a thread per connection), and counted."""
    delay, clients = 0.5, 8
    with LocalCrdsServer(sample, delay=delay) as server:
        url = f"{server.url}/unchecked_get/mappings/jwst/{sample.contexts[-1]}"
        threads = [threading.Thread(target=get, args=(url,)) for _ in range(clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    assert server.max_in_flight == clients
    assert delay <= elapsed < delay * clients / 2
