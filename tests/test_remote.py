"""What a failed S3 read becomes: a clear, retryable S3 error, or a bug of ours (exit 70), never mixed up."""

from __future__ import annotations

import asyncio

import pytest

from crds_job import remote
from crds_job.environments import locate


@pytest.fixture
def location(roman_bucket, monkeypatch):
    for key, value in roman_bucket.env().items():
        monkeypatch.setenv(key, value)
    return locate("roman", "ops", roman_bucket.name, roman_bucket.prefix)


def read(location, name: str, failure: BaseException | None = None) -> list[bytes]:
    """Read ``name`` from the real server; with ``failure``, the library beneath us raises it instead."""

    async def scenario() -> list[bytes]:
        async with remote.Bucket(location, concurrency=2, retries=1) as bucket:
            if failure is not None:
                async def broken(*args, **kwargs):
                    raise failure

                bucket.fs._call_s3 = broken  # s3fs's request method, on this one filesystem
            return await bucket.read_chunks("mappings", name)

    return asyncio.run(scenario())


def test_a_read_returns_the_objects_bytes(location, roman_bucket):
    assert b"".join(read(location, "roman_0051.pmap")) == roman_bucket.sample.mappings["roman_0051.pmap"]


def test_a_missing_object_is_an_s3_error(location):
    with pytest.raises(remote.Missing, match="roman_0999.pmap is missing from the bucket"):
        read(location, "roman_0999.pmap")


@pytest.mark.parametrize("failure", [
    OSError(5, "Input/output error"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError(),
])
def test_a_failure_of_s3_or_the_network_is_a_retryable_s3_error(location, failure):
    with pytest.raises(remote.Transient):
        read(location, "roman_0051.pmap", failure)


@pytest.mark.parametrize("failure", [
    TypeError("unsupported operand type(s)"),
    KeyError("Body"),
    AttributeError("'NoneType' object has no attribute 'close'"),
])
def test_a_bug_stays_a_bug(location, failure):
    """Not an S3 error: that would be exit 69, which job runners retry, for a failure no retry can fix."""
    with pytest.raises(type(failure)):
        read(location, "roman_0051.pmap", failure)


def test_a_request_the_sdk_refuses_to_send_is_a_bug(location):
    """Parameter validation failing means crds-job built a bad request (a bad --bucket is refused earlier)."""
    import botocore.exceptions

    with pytest.raises(botocore.exceptions.ParamValidationError):
        read(location, "roman_0051.pmap", botocore.exceptions.ParamValidationError(report="bad Key"))
