"""Reading the bucket: one s3fs filesystem, its credentials, and what its errors mean.

The endpoint, region and credentials follow the AWS SDK's own conventions
(``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, web identity
for IRSA, instance roles...), so the same job runs against AWS and against a
local S3 server. A public bucket is read unsigned when no credentials exist.

Retries are split by layer: the AWS SDK retries each request (adaptive mode:
jittered exponential backoff, and a client-side rate that throttling cuts and
success raises again, shared by every request of the job); s3fs's own retry
loop is off, so that a body cut short surfaces to ``fetch``, which retries the
file. A request still throttled once the SDK gives up (its attempts, or its
retry quota, spent) is not a failure: ``fetch`` tries it again, paced, for as
long as files keep completing (``--patience``).

The SDK's own check of a response body (the CRC32 an S3 server stores with an
object, validated by default on every whole-object GET) is asked for only by
a read that has no better check: ``fetch`` checks every file the bucket
publishes a sha1 for against it, end to end, and a second pass over the same
bytes, at about 0.5 GB/s, would only slow the warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any

import aiobotocore.session
import aiohttp
import botocore.exceptions
import s3fs

from .environments import Location
from .errors import DESCRIPTORS_EXHAUSTED, BucketContentError, CrdsJobError, S3AccessError, TooManyOpenFiles, UsageError

#: Most bytes taken from a response body at once (aiohttp hands over what it received, uncopied).
READ_CHUNK = 8 * 2**20
#: The slowest average rate at which a GET's bytes may arrive before it is given up as stalled and
#: retried. The SDK's read timeout fires only after 60 s of silence: a server trickling a byte now
#: and then would hold the job for ever. Low enough for 64 transfers sharing a slow link.
MIN_RATE = 16 * 2**10
#: What a GET may take on top of its bytes at MIN_RATE: connecting, the server's first byte.
GET_GRACE = 120.0
#: Server answers that mean "try again later".
_TRANSIENT_CODES = {
    "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
}
#: Answers that mean "slow down": S3's SlowDown, and the SDK's throttling codes (botocore's list).
_THROTTLING_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestThrottled",
    "PriorRequestNotComplete", "429",
}
_CREDENTIAL_CODES = {
    "ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "InvalidToken", "TokenRefreshRequired",
}


class Unreachable(S3AccessError):
    """S3 kept failing (no connection, 5xx, stalls) after every attempt: the source is out of reach
    for now, which a cache already complete for the job can stand in for (``offline``)."""


class Transient(S3AccessError):
    """An S3 failure that may pass: worth another attempt of the same file.

    ``outage``: it is S3 or the network failing (no connection, 5xx,
    throttling, a stall), which a complete cache may stand in for; not a
    failure of unknown kind, which may be the job's own (its credentials, its
    configuration) and must never let a job run on without S3 unnoticed.
    """

    def __init__(self, what: str, todo: str = "", outage: bool = True, throttled: bool = False) -> None:
        super().__init__(what, todo)
        self.outage = outage
        self.throttled = throttled  # S3 asks for fewer requests: slow down, never give up for that alone

    def final(self) -> S3AccessError:
        """The same failure once no attempt is left: no caller's retry loop may take it for another try."""
        return (Unreachable if self.outage else S3AccessError)(self.what, self.todo)


class Missing(S3AccessError):
    """The object is not in the bucket."""


class Denied(S3AccessError):
    """S3 refused to serve the object: no permission, which is also how S3 answers for a missing
    object where the job may not list."""


class Oversized(BucketContentError):
    """The object is larger than anything the job expects under its name: not read at all."""


class BodyCorrupt(S3AccessError):
    """A response that is not the bytes asked for: damaged on the way (the SDK's own checksum
    failed), or another range, length or version of the object than the one planned."""


@dataclasses.dataclass(frozen=True)
class Part:
    """Bytes of an object as the socket delivered them (not joined), and which version they are of."""

    chunks: list[bytes]
    etag: str | None


#: Failures of the connection or of a body in transit: the request may work next time.
_TRANSPORT_ERRORS = (
    aiohttp.ClientError,  # payload cut short, server disconnected, connection refused or reset
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    asyncio.TimeoutError,
    ConnectionError,
)

#: A TLS handshake refused (a CA bundle, a proxy's certificate): the job's setup, whatever S3's state.
_TLS_ERRORS = (ssl.SSLError, botocore.exceptions.SSLError, aiohttp.ClientSSLError)


#: What reading S3 can raise beyond our control (s3fs turns most server answers into
#: OSError). Anything else from a read is a bug of ours, exit 70, never a
#: retryable S3 error: a retry cannot fix it, and the job runner would retry it.
S3_FAILURES: tuple[type[BaseException], ...] = (
    botocore.exceptions.ClientError,
    botocore.exceptions.BotoCoreError,
    *_TRANSPORT_ERRORS,
    OSError,
)
#: BotoCoreErrors that mean the request we built is wrong: bugs, not S3 failures.
_OUR_REQUEST_ERRORS = (botocore.exceptions.ParamValidationError,)


def s3_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is S3's or the network's doing rather than crds-job's."""
    return isinstance(exc, S3_FAILURES) and not isinstance(exc, _OUR_REQUEST_ERRORS)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and its causes (or contexts), outermost first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _in_chain(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``types`` in ``exc``'s cause/context chain."""
    return next((link for link in _chain(exc) if isinstance(link, types)), None)


def _client_error(exc: BaseException) -> botocore.exceptions.ClientError | None:
    """The botocore ClientError behind an exception s3fs translated to OSError."""
    found = _in_chain(exc, (botocore.exceptions.ClientError,))
    return found  # type: ignore[return-value]


def translate(exc: BaseException, uri: str, location: Location, credentials: str) -> CrdsJobError:
    """Say in one line what an S3 failure (``s3_failure``) means for this job, and what to do."""
    client_error = _client_error(exc)
    code = str(client_error.response.get("Error", {}).get("Code", "")) if client_error else ""
    if isinstance(exc, botocore.exceptions.NoCredentialsError) or (
        isinstance(exc, botocore.exceptions.PartialCredentialsError)
    ):
        return S3AccessError(
            f"no AWS credentials to read private bucket {location.bucket}",
            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or give the job an IAM role",
        )
    if any(isinstance(link, OSError) and link.errno in DESCRIPTORS_EXHAUSTED for link in _chain(exc)):
        return TooManyOpenFiles(f"reading {uri}")  # a socket not opened: no retry will have more
    checksum = _in_chain(exc, (botocore.exceptions.FlexibleChecksumError,))
    if checksum is not None:
        return BodyCorrupt(f"{uri} arrived damaged: {checksum}", "fetch it again")
    if code in ("InvalidRange", "416"):  # a part past the object's end: the object or its metadata is wrong
        return BodyCorrupt(f"{uri} is shorter than the bucket's metadata says (a ranged GET past its end: {code})",
                           "fetch it again")
    if isinstance(exc, OSError) and exc.filename and client_error is None:  # a local file, not an object
        return S3AccessError(
            f"the AWS SDK could not read {exc.filename} ({exc.strerror}) to sign requests for {uri}",
            "check the job's AWS files: AWS_WEB_IDENTITY_TOKEN_FILE (IRSA), AWS_CONFIG_FILE, "
            "AWS_SHARED_CREDENTIALS_FILE",
        )
    if code in _CREDENTIAL_CODES:
        return S3AccessError(
            f"S3 refused the credentials ({credentials}) with {code} reading {uri}",
            "refresh or replace the AWS credentials of the job",
        )
    if (code in ("AccessDenied", "403", "AllAccessDisabled") or isinstance(exc, PermissionError)) and (
        credentials == "anonymous"
    ):
        return Denied(
            f"access denied reading {uri} without credentials",
            "the bucket is not public to anonymous requests: give the job AWS credentials",
        )
    if code in ("AccessDenied", "403", "AllAccessDisabled") or isinstance(exc, PermissionError):
        return Denied(
            f"access denied reading {uri} (credentials: {credentials})",
            f"grant s3:GetObject and s3:ListBucket on {location.uri('')} to the job's role (S3 also answers "
            "403, not 404, for a missing object when the role may not list where it would be)",
        )
    if code == "NoSuchBucket":
        return S3AccessError(
            f"bucket {location.bucket} does not exist at this endpoint",
            "check --bucket and AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL",
        )
    if code in ("NoSuchKey", "404") or isinstance(exc, FileNotFoundError):
        return Missing(
            f"{uri} is missing from the bucket",
            "the bucket is incomplete or changing; run the job again later or pin another context",
        )
    if code in _THROTTLING_CODES:
        return Transient(f"S3 throttled reading {uri} ({code})",
                         "run fewer jobs at once against this bucket's prefix, or raise --patience", throttled=True)
    transport = _in_chain(exc, _TRANSPORT_ERRORS)
    if code in _TRANSIENT_CODES or transport is not None or (
        # s3fs's OSError for an answer it has no name for carries the ClientError: that code decides
        isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET)
        and client_error is None
    ):
        cause = transport or exc
        return Transient(
            f"S3 kept failing reading {uri}: {code or type(cause).__name__}: {str(cause)[:120]}",
            "check the endpoint and network, or run the job again; S3 may be throttling",
            outage=_in_chain(exc, _TLS_ERRORS) is None,  # a certificate refused is the job's setup, not an outage
        )
    return Transient(
        f"reading {uri} failed: {type(exc).__name__}{f' {code}' if code else ''}: {str(exc)[:200]}",
        "run the job again; if it persists, report it with this line",
        outage=False,
    )


async def _credential_source(session: aiobotocore.session.AioSession) -> str | None:
    """How the AWS SDK would sign requests ('env', 'iam-role', ...), or None without credentials."""
    credentials = await session.get_credentials()
    if credentials is None:
        return None
    return str(getattr(credentials, "method", "unknown"))


async def at_most(body: AsyncIterable[bytes], most: int | None, announced: int | None,
                  refuse: Callable[[str], Exception]) -> list[bytes]:
    """A body's chunks (as the socket delivered them, ``READ_CHUNK`` at most each), refused with
    ``refuse(size)`` once it is (or says it is) over ``most`` bytes. Any HTTP client's body: S3's, a
    CRDS server's."""
    if most is not None and announced is not None and announced > most:
        raise refuse(str(announced))
    chunks, held = [], 0
    async for chunk in body:
        held += len(chunk)
        if most is not None and held > most:  # no length announced, or not the one announced
            raise refuse(f"more than {most}")
        chunks.append(chunk)
    return chunks


def _check_range(response: dict[str, Any], span: tuple[int, int], size: int, uri: str) -> None:
    """Refuse, before reading its body, an answer that is not ``span`` of an object of ``size`` bytes.

    A server that ignores the Range header (200 and the whole object), or an
    object replaced by one of another size since its size was published,
    would otherwise be read whole, only to be refused at the end.
    """
    start, end = span
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    answered = str(response.get("ContentRange") or "")
    if (status, answered) == (206, f"bytes {start}-{end - 1}/{size}"):
        return
    total = answered.rpartition("/")[2]
    if status == 206 and total.isdigit() and int(total) != size:
        raise BodyCorrupt(f"{uri} is {total} bytes, {'shorter' if int(total) < size else 'longer'} than the "
                          f"bucket's metadata says ({size})", "the object or its metadata changed: run the job "
                          "again, or report it")
    raise BodyCorrupt(f"{uri} answered a GET of bytes {start}-{end - 1} with {status} {answered or 'and no range'}",
                      "the endpoint does not serve ranges as S3 does: raise --part-size above the largest file")


class Bucket:
    """Async reads of one observatory/environment's objects.

    Use as ``async with Bucket(location, concurrency, retries) as bucket``.
    """

    def __init__(self, location: Location, concurrency: int, retries: int) -> None:
        self.location = location
        self.concurrency = concurrency
        self.retries = retries
        self.credentials = "unknown"
        self._fs: s3fs.S3FileSystem | None = None
        self._client: Any = None

    async def __aenter__(self) -> Bucket:
        # One SDK session for both: the credential chain is resolved once, and the
        # SDK's data files are loaded once.
        session = aiobotocore.session.AioSession()
        try:
            source = await _credential_source(session)
        except botocore.exceptions.ProfileNotFound as exc:
            raise UsageError(f"AWS_PROFILE names the profile {exc.kwargs.get('profile')!r}, which no AWS config "
                             "file defines", "set AWS_PROFILE to a profile of the AWS config files, or unset it"
                             ) from None
        except botocore.exceptions.BotoCoreError as exc:  # a credential process, SSO, a config file...
            raise S3AccessError(f"the AWS SDK could not get credentials: {exc}",
                                "check the job's AWS configuration (AWS_* variables, config files, role)") from None
        if source is None and not self.location.public:
            raise translate(botocore.exceptions.NoCredentialsError(), self.location.uri(""),
                            self.location, "none")
        self.credentials = source or "anonymous"
        self._fs = s3fs.S3FileSystem(
            asynchronous=True,
            anon=source is None,
            session=session,
            skip_instance_cache=True,
            max_concurrency=1,  # we split large files ourselves, within the memory budget
            config_kwargs={
                # total_: the first try included (the SDK's max_attempts counts retries only, one more).
                "retries": {"mode": "adaptive", "total_max_attempts": self.retries},
                "max_pool_connections": self.concurrency,
                "connect_timeout": 10,
                "read_timeout": 60,
                "response_checksum_validation": "when_required",  # only for reads that ask (``checked``)
            },
        )
        self._fs.retries = 1  # body errors go up to fetch, which retries the part (or the whole file)
        try:
            self._client = await self._fs.set_session()
        except (ValueError, botocore.exceptions.ValidationError) as exc:  # "Invalid endpoint", a malformed region
            raise UsageError(f"the AWS SDK refuses this job's S3 settings: {exc}",
                             "check AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (a URL such as https://host:port) "
                             "and AWS_REGION / AWS_DEFAULT_REGION") from None
        return self

    @property
    def anonymous(self) -> bool:
        return self.credentials == "anonymous"

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            await self._client.close()

    @property
    def fs(self) -> s3fs.S3FileSystem:
        assert self._fs is not None, "use Bucket as an async context manager"
        return self._fs

    @contextlib.contextmanager
    def _translated(self, uri: str) -> Iterator[None]:
        """Every S3 failure inside becomes one clear error about ``uri``; a bug stays one."""
        try:
            yield
        except Exception as exc:
            if not s3_failure(exc):
                raise
            raise translate(exc, uri, self.location, self.credentials) from exc

    @contextlib.asynccontextmanager
    async def _get(self, area: str, name: str, **params: str) -> AsyncIterator[dict[str, Any]]:
        """The answer to a GET of ``name`` in ``area``; its body is closed on the way out."""
        bucket, key, _ = self.fs.split_path(self.location.path(area, name))
        uri = self.location.uri(area, name)
        try:
            with self._translated(uri):
                response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key, **params)
        except Transient as exc:  # the SDK has tried it --retries times already: another round would square that
            if exc.throttled:  # but throttling only asks for patience: fetch paces another try
                raise
            raise exc.final() from exc
        with self._translated(uri):
            try:
                yield response  # its body's failures (a reset, a stall) the SDK never retries: fetch does
            finally:
                response["Body"].close()

    async def read(self, area: str, name: str, most: int | None = None) -> bytes:
        """The bytes of ``name`` in ``area``, in one piece, checked by the SDK.

        ``most``: a body longer than this raises ``Oversized`` before it is
        held in memory (an object whose size nothing published: the bucket's config).
        """
        uri = self.location.uri(area, name)

        def refuse(size: str) -> Oversized:
            return Oversized(f"{uri} is {size} bytes, over the {most} any such object could be",
                             "the bucket holds something else under this name: fix or replace the object")

        async with self._get(area, name, ChecksumMode="ENABLED") as response:
            return b"".join(await at_most(response["Body"].iter_chunks(READ_CHUNK), most,
                                          response.get("ContentLength"), refuse))

    async def read_part(
        self, area: str, name: str, size: int, span: tuple[int, int] | None = None, checked: bool = False
    ) -> Part:
        """Bytes ``[start, end)`` of ``name`` in ``area``, an object of ``size`` bytes (all of it without ``span``).

        Not joined: joining would copy every byte once more, on the event
        loop, which is most of a large file's cost here beyond the transfer.
        Exactly the bytes asked for, or ``BodyCorrupt``: never more are held,
        whatever the server sends. ``checked``: the SDK validates the checksum
        the server stores with the object, where it has one for the bytes asked
        (whole objects, not ranges). A GET slower on average than ``MIN_RATE``
        is given up as ``Transient``.
        """
        start, end = span or (0, size)
        uri = self.location.uri(area, name)
        params = {"Range": f"bytes={start}-{end - 1}"} if span else {}
        if checked:
            params["ChecksumMode"] = "ENABLED"

        def refuse(got: str) -> BodyCorrupt:
            if span:
                return BodyCorrupt(f"{uri}: a GET of bytes {start}-{end - 1} sent {got} bytes",
                                   "the object changed: run the job again, or report it")
            return BodyCorrupt(f"{uri} arrived with {got} bytes, the bucket publishes {size}",
                               "the object or its metadata changed: run the job again, or report it")

        # The body alone is timed: until its answer starts, a request is the SDK's (each attempt within its
        # connect and read timeouts), and may wait long in its adaptive rate while S3 throttles: no stall.
        async with self._get(area, name, **params) as response:
            if span:
                _check_range(response, span, size, uri)
            try:
                async with asyncio.timeout(GET_GRACE + (end - start) / MIN_RATE):
                    chunks = await at_most(response["Body"].iter_chunks(READ_CHUNK), end - start,
                                           response.get("ContentLength"), refuse)
            except TimeoutError:
                raise Transient(f"reading {uri} stalled: its bytes came slower than {MIN_RATE} bytes/s on average",
                                "check the network and the endpoint, then run the job again") from None
        received = sum(map(len, chunks))
        if received != end - start:
            raise refuse(str(received))
        return Part(chunks, response.get("ETag"))

    async def size(self, area: str, name: str) -> int | None:
        """The size of ``name`` in ``area`` (one HEAD), or None when the bucket has no such object."""
        bucket, key, _ = self.fs.split_path(self.location.path(area, name))
        try:
            with self._translated(self.location.uri(area, name)):
                response = await self.fs._call_s3("head_object", Bucket=bucket, Key=key)
        except Missing:
            return None
        except Transient as exc:  # the SDK has tried it --retries times already
            if exc.throttled:  # but throttling only asks for patience: the caller's retries pace another try
                raise
            raise exc.final() from exc
        return int(response["ContentLength"])

    async def name_context(self, requested: str) -> str | None:
        """A bucket resolves no name beyond its config's (crds refuses dates in S3 mode too)."""
        return None

    async def list_names(self, area: str, suffix: str) -> list[str]:
        """Names in ``area`` ending with ``suffix`` (e.g. the contexts still in the bucket); none if no such folder."""
        folder = self.location.path(area)
        try:
            with self._translated(self.location.uri(area)):
                listing = await self.fs._ls(folder, detail=False, refresh=True)
        except Missing:
            return []
        return sorted(path.rsplit("/", 1)[-1] for path in listing if path.endswith(suffix))
