"""What a failed S3 read becomes: a clear, retryable S3 error, or a bug of ours (exit 70), never mixed up."""

from __future__ import annotations

import asyncio
import errno

import botocore.exceptions
import pytest

from crds_job import remote
from crds_job.environments import locate
from crds_job.errors import ExitCode, TooManyOpenFiles


@pytest.fixture
def location(roman_bucket, monkeypatch):
    for key, value in roman_bucket.env().items():
        monkeypatch.setenv(key, value)
    return locate("roman", "ops", roman_bucket.name, roman_bucket.prefix)


def read(location, name: str, failure: BaseException | None = None, most: int | None = None) -> bytes:
    """Read ``name`` from the real server; with ``failure``, the library beneath us raises it instead."""

    async def scenario() -> bytes:
        async with remote.Bucket(location, concurrency=2, retries=1) as bucket:
            if failure is not None:
                async def broken(*args, **kwargs):
                    raise failure

                bucket.fs._call_s3 = broken  # s3fs's request method, on this one filesystem
            return await bucket.read("mappings", name, most=most)

    return asyncio.run(scenario())


def test_a_read_returns_the_objects_bytes(location, roman_bucket):
    assert read(location, "roman_0051.pmap") == roman_bucket.sample.mappings["roman_0051.pmap"]


def test_a_missing_object_is_an_s3_error(location):
    with pytest.raises(remote.Missing, match="roman_0999.pmap is missing from the bucket"):
        read(location, "roman_0999.pmap")


@pytest.mark.parametrize("failure", [
    OSError(5, "Input/output error"),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError(),
])
def test_a_failure_of_s3_or_the_network_is_a_retryable_s3_error(location, failure):
    """Exit 69, which job runners retry; not Transient, which fetch would retry: a request's failure
    comes after the SDK's own --retries tries (a body's, which it never sees, test_faults covers)."""
    with pytest.raises(remote.S3AccessError) as raised:
        read(location, "roman_0051.pmap", failure)
    assert raised.value.exit_code == ExitCode.S3_ACCESS and not isinstance(raised.value, remote.Transient)


@pytest.mark.parametrize("failure", [
    TypeError("unsupported operand type(s)"),
    KeyError("Body"),
    AttributeError("'NoneType' object has no attribute 'close'"),
])
def test_a_bug_stays_a_bug(location, failure):
    """Not an S3 error: that would be exit 69, which job runners retry, for a failure no retry can fix."""
    with pytest.raises(type(failure)):
        read(location, "roman_0051.pmap", failure)


def test_a_socket_not_opened_for_want_of_descriptors_is_a_setting_to_change_not_a_retry(location):
    """EMFILE: every retry would fail the same way, at the job runner's cost too (64 is final, 69 retried)."""
    import errno

    import aiohttp

    refused = OSError(errno.EMFILE, "Too many open files")
    failure = aiohttp.ClientConnectorError(connection_key=None, os_error=refused)  # type: ignore[arg-type]
    with pytest.raises(TooManyOpenFiles, match="too many open files reading s3://.*lower --concurrency") as caught:
        read(location, "roman_0051.pmap", failure)
    assert caught.value.exit_code == ExitCode.USAGE


def test_a_request_the_sdk_refuses_to_send_is_a_bug(location):
    """Parameter validation failing means crds-job built a bad request (a bad --bucket is refused earlier)."""
    import botocore.exceptions

    with pytest.raises(botocore.exceptions.ParamValidationError):
        read(location, "roman_0051.pmap", botocore.exceptions.ParamValidationError(report="bad Key"))


def test_a_body_over_the_most_expected_is_refused_unread(location, roman_bucket):
    size = len(roman_bucket.sample.mappings["roman_0051.pmap"])
    assert read(location, "roman_0051.pmap", most=size) == roman_bucket.sample.mappings["roman_0051.pmap"]
    with pytest.raises(remote.Oversized, match=f"roman_0051.pmap is {size} bytes, over the {size - 1} ") as caught:
        read(location, "roman_0051.pmap", most=size - 1)
    assert caught.value.exit_code == 65


class UnannouncedBody:
    """A body whose length no header gave (or gave wrong): only the bytes themselves can be counted."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.taken = 0

    async def iter_chunks(self, size: int):
        for chunk in self.chunks:
            self.taken += 1
            yield chunk


def too_long(size: str) -> remote.Oversized:
    return remote.Oversized(f"s3://b/k is {size} bytes")


def test_a_body_without_its_length_is_refused_once_it_passes_the_most():
    body = UnannouncedBody([b"x" * 10] * 100)
    with pytest.raises(remote.Oversized, match="s3://b/k is more than 25 bytes"):
        asyncio.run(remote.at_most(body.iter_chunks(remote.READ_CHUNK), 25, None, too_long))
    assert body.taken == 3, "no chunk read past the one that crossed the bound"
    two = UnannouncedBody([b"x" * 10] * 2).iter_chunks(remote.READ_CHUNK)
    assert asyncio.run(remote.at_most(two, 25, None, too_long)) == [b"x" * 10] * 2


def test_a_get_slower_than_the_least_rate_is_given_up_as_transient(location, roman_bucket, monkeypatch):
    """The SDK's read timeout needs 60 s of silence: a server trickling bytes would hold the job for ever."""
    from faults import FaultProxy, Rule

    name = "roman_0051.pmap"
    size = len(roman_bucket.sample.mappings[name])
    monkeypatch.setattr(remote, "GET_GRACE", 0.5)  # seconds, beyond the body's bytes at MIN_RATE
    monkeypatch.setattr(remote, "MIN_RATE", 1 << 30)
    with FaultProxy(roman_bucket.s3.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)

        async def scenario(delay: float) -> bytes:
            proxy.rules = [Rule("slow", path=name, delay=delay)]
            async with remote.Bucket(location, concurrency=2, retries=1) as bucket:
                return b"".join((await bucket.read_part("mappings", name, size)).chunks)

        assert asyncio.run(scenario(0)) == roman_bucket.sample.mappings[name]
        with pytest.raises(remote.Transient, match=f"reading .*{name} stalled"):
            asyncio.run(scenario(5))


def _s3_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": f"{code} from the test"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject")


def _as_s3fs_raises(error: botocore.exceptions.ClientError) -> OSError:
    """What s3fs makes of a ClientError it has no name for: OSError(EIO), the ClientError its cause."""
    translated = OSError(errno.EIO, str(error))
    translated.__cause__ = error
    return translated


@pytest.mark.parametrize(("failure", "outage"), [
    (_s3_error("SlowDown", 503), True),
    (_s3_error("InternalError", 500), True),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), True),
    (OSError(errno.ECONNRESET, "Connection reset by peer"), True),
    (_as_s3fs_raises(_s3_error("InvalidIdentityToken", 400)), False),
    (_as_s3fs_raises(_s3_error("AuthorizationHeaderMalformed", 400)), False),
    (_as_s3fs_raises(_s3_error("PermanentRedirect", 301)), False),
    (botocore.exceptions.CredentialRetrievalError(provider="sso", error_msg="the SSO token expired"), False),
    (botocore.exceptions.SSLError(endpoint_url="https://127.0.0.1:9", error="certificate verify failed"), False),
])
def test_only_s3_or_the_network_failing_is_an_outage(failure, outage):
    """An outage (``Unreachable``) lets a complete cache run the command offline: a failure that may be
    the job's own setup (credentials, a region, TLS) must stay an error that stops it."""
    error = remote.translate(failure, "s3://bucket/key", locate("roman", "ops", None, None), "env")
    assert isinstance(error, remote.Transient), error
    final = error.final()
    assert isinstance(final, remote.Unreachable) == outage, final
    assert final.exit_code == ExitCode.S3_ACCESS
