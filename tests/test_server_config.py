"""The bucket's server_config: parsed as a literal, bounded, and its contexts resolved as crds does."""

from __future__ import annotations

import base64
import gzip

import pytest

from crds_job import server_config
from crds_job.errors import BucketContentError, UsageError
from crds_job.sample.context import crds_encode, roman


def config_bytes(**fields) -> bytes:
    info = {"observatory": "roman", "latest_context": "roman_0051.pmap", "operational_context": "roman_0050.pmap",
            "download_metadata": crds_encode({"a.asdf": {"size": "3", "sha1sum": "a" * 40}})}
    info.update(fields)
    return repr({k: v for k, v in info.items() if v is not None}).encode()


def test_sample_config_round_trips():
    sample = roman()
    parsed = server_config.parse(sample.server_config(), "roman")
    assert parsed.default_context == "roman_0051.pmap"
    assert set(parsed.metadata) == set(sample.mappings) | set(sample.reference_sizes)
    some = "roman_wfi_dark_0001.asdf"
    assert parsed.metadata[some].size == sample.reference_sizes[some]


def test_plain_metadata_is_accepted_too_and_none_sha1_means_size_only():
    parsed = server_config.parse(config_bytes(download_metadata={"a.asdf": {"size": 3, "sha1sum": "none"}}), "roman")
    assert parsed.metadata["a.asdf"] == server_config.FileInfo(size=3, sha1="")


@pytest.mark.parametrize("data, message", [
    (b"__import__('os').system('touch /tmp/pwned')", "not a Python literal dict"),
    (b"[1, 2, 3]", "is a list, not a dict"),
    (b"{'observatory': 'roman'", "not a Python literal dict"),
    (b"\xff\xfe", "not a Python literal dict"),
    (b"[" * 100_000 + b"]" * 100_000, "not a Python literal dict"),
    (config_bytes(observatory="hst"), "for observatory 'hst'"),
    (config_bytes(download_metadata=None), "no download_metadata"),
    (config_bytes(download_metadata={"crds_encoded": "1.0", "crds_payload": "%%%"}), "does not decode"),
    (config_bytes(download_metadata={"crds_encoded": "1.0",
                                     "crds_payload": base64.b64encode(b"not gzip").decode()}), "does not decode"),
    (config_bytes(download_metadata={"a": {"sha1sum": "x"}}), "no integer size"),
    (config_bytes(download_metadata={"a": {"size": "-1"}}), "negative size"),
    (config_bytes(download_metadata={"a": {"size": "1", "sha1sum": "zz"}}), "malformed sha1sum"),
    (config_bytes(download_metadata=[1]), "not a dict of files"),
    (config_bytes(download_metadata=crds_encode({"a": {"size": float("inf")}})), "no integer size"),  # Infinity
    (config_bytes(bad_files_list=5), "bad_files_list is not a list of file names"),
    (config_bytes(bad_files_list=["a.asdf", 3]), "bad_files_list is not a list of file names"),
])
def test_unusable_configs_are_refused(data, message):
    with pytest.raises(BucketContentError, match=message) as caught:
        server_config.parse(data, "roman")
    assert caught.value.exit_code == 65


def test_a_payload_in_lines_decodes_as_the_client_decodes_it():
    """base64.encodebytes breaks lines every 76 characters; the client's decoder skips them."""
    proxy = pytest.importorskip("crds.client.proxy", reason="the crds client is in the test extra")
    files = {f"roman_wfi_dark_{n:04d}.asdf": {"size": str(n), "sha1sum": "a" * 40} for n in range(40)}
    payload = base64.encodebytes(gzip.compress(repr(files).replace("'", '"').encode())).decode("ascii")
    assert "\n" in payload.strip()
    encoded = {"crds_encoded": "1.0", "crds_payload": payload}
    parsed = server_config.parse(config_bytes(download_metadata=encoded), "roman")
    assert {name: info.size for name, info in parsed.metadata.items()} == {
        name: int(info["size"]) for name, info in proxy.crds_decode(encoded).items()}


def test_a_gzip_bomb_stops_at_the_bound(monkeypatch):
    monkeypatch.setattr(server_config, "MAX_METADATA_BYTES", 1000)
    payload = base64.b64encode(gzip.compress(b" " * 10_000)).decode()
    with pytest.raises(BucketContentError, match="inflates past 1000 bytes"):
        server_config.parse(config_bytes(download_metadata={"crds_encoded": "1.0", "crds_payload": payload}), "roman")


def test_oversized_config_is_refused_before_parsing(monkeypatch):
    monkeypatch.setattr(server_config, "MAX_CONFIG_BYTES", 10)
    with pytest.raises(BucketContentError, match="over the 10"):
        server_config.parse(config_bytes(), "roman")


@pytest.mark.parametrize("requested, expected", [
    (None, "roman_0051.pmap"), ("latest", "roman_0051.pmap"), ("roman-operational", "roman_0051.pmap"),
    ("roman-latest", "roman_0051.pmap"), ("roman-edit", "roman_0049.pmap"), ("roman_0042.pmap", "roman_0042.pmap"),
    ("roman-versions", "roman_0048.pmap"),
])
def test_context_resolution_follows_the_client(requested, expected):
    parsed = server_config.parse(config_bytes(edit_context="roman_0049.pmap", versions_context="roman_0048.pmap"),
                                 "roman")
    assert server_config.resolve_context(requested, parsed) == expected


def test_operational_is_the_fallback_of_latest():
    parsed = server_config.parse(config_bytes(latest_context=None), "roman")
    assert server_config.resolve_context(None, parsed) == "roman_0050.pmap"


@pytest.mark.parametrize("requested, message", [
    ("roman-2024-01-01T00:00:00", "date-based"), ("build", "needs a CRDS server"),
    ("hst_0001.pmap", "not a roman .pmap"), ("../roman_0001.pmap", "not a roman .pmap"),
    ("roman_wfi_0001.imap", "not a roman .pmap"),
])
def test_unresolvable_contexts_are_usage_errors(requested, message):
    parsed = server_config.parse(config_bytes(), "roman")
    with pytest.raises(UsageError, match=message):
        server_config.resolve_context(requested, parsed)


def test_a_bucket_naming_an_unsafe_latest_context_is_refused():
    parsed = server_config.parse(config_bytes(latest_context="../../etc/x.pmap"), "roman")
    with pytest.raises(BucketContentError, match="not a roman .pmap"):
        server_config.resolve_context(None, parsed)


def test_the_cached_copy_is_marked_offline_and_compares_equal():
    parsed = server_config.parse(config_bytes(), "roman")
    text = server_config.for_cache(parsed, "2026-01-01 00:00:00")
    assert "'connected': False" in text and "'last_synced': '2026-01-01 00:00:00'" in text
    assert server_config.same_as_cached(parsed, text)
    other = server_config.parse(config_bytes(latest_context="roman_0052.pmap"), "roman")
    assert not server_config.same_as_cached(other, text)
