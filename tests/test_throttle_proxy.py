"""The throttling proxy (``crds_job.sample.throttle``) checked against the real SDK it stands in front of.

Benchmarks and tests trust the proxy to be S3 with a request rate: transparent under
the rate, and above it answering what S3 answers, so that botocore and aiobotocore
react as they do to a real bucket. Each claim is checked here with the SDK itself
(boto3, aiobotocore and botocore's own retry classification) against moto as the
upstream, not against what we believe S3 looks like.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import http.server
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import boto3
import botocore.exceptions
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.retries import standard

from crds_job.sample import server
from crds_job.sample.throttle import ThrottlingProxy

BUCKET = "throttle-proxy-test"
SMALL = {f"small/{index:02d}.txt": f"object {index}\n".encode() * (index + 1) for index in range(20)}
BIG_KEY = "big/one-mib.bin"
BIG = random.Random(0).randbytes(1 << 20)

#: S3's answer to a request over the rate, byte for byte but for its ids.
SLOW_DOWN = re.compile(rb'<\?xml version="1.0" encoding="UTF-8"\?>\n?<Error><Code>SlowDown</Code>'
                       rb"<Message>Please reduce your request rate.</Message><RequestId>([0-9A-F]{16})</RequestId>"
                       rb"<HostId>([A-Za-z0-9+/=]+)</HostId></Error>")

#: No retries at all. botocore reads ``max_attempts`` in ``retries`` as *retries* (it adds one):
#: ``{"mode": "standard", "max_attempts": 1}`` would still try twice.
NO_RETRIES = {"mode": "standard", "total_max_attempts": 1}

#: What differs between two answers to the same request, whoever forwards it; and ``Connection``, which
#: is about one connection, not the answer: moto closes each, the proxy keeps its clients' open, as S3 does.
PER_ANSWER = {"date", "x-amz-request-id", "x-amz-id-2", "x-amzn-requestid", "connection"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[server.LocalS3]:
    with server.LocalS3("moto") as s3:
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_policy(Bucket=BUCKET, Policy=server.public_read_policy(BUCKET))  # for unsigned GETs
        for key, body in {**SMALL, BIG_KEY: BIG}.items():
            client.put_object(Bucket=BUCKET, Key=key, Body=body)
        yield s3


def s3_client(endpoint: str) -> Any:
    """boto3 at ``endpoint``, with no retries: each call's answer is the one the server sent."""
    credentials = server.LOCAL_CREDENTIALS
    return boto3.client("s3", endpoint_url=endpoint, region_name=credentials["AWS_DEFAULT_REGION"],
                        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"], config=Config(retries=NO_RETRIES))


def outcome(call: Any, **kwargs: Any) -> dict[str, Any]:
    """A client call's answer or error, bodies read, without what differs from one answer to the next."""
    try:
        answer = call(**kwargs)
    except botocore.exceptions.ClientError as error:
        answer = error.response
    answer = dict(answer)
    if "Body" in answer:
        answer["Body"] = answer["Body"].read()
    metadata = answer.pop("ResponseMetadata")
    answer["status"] = metadata["HTTPStatusCode"]
    answer["headers"] = {name: value for name, value in metadata["HTTPHeaders"].items() if name not in PER_ANSWER}
    assert metadata["RetryAttempts"] == 0
    return answer


# ----- transparent under the rate ------------------------------------------------------------------


def test_under_the_rate_the_sdk_gets_exactly_what_the_upstream_answers(upstream):
    direct = upstream.client()
    with ThrottlingProxy(upstream.endpoint, rate=1000) as proxy:
        proxied = s3_client(proxy.endpoint)
        etag = direct.head_object(Bucket=BUCKET, Key=BIG_KEY)["ETag"]
        calls = [
            ("get_object", {"Key": "small/03.txt"}),
            ("get_object", {"Key": BIG_KEY}),
            ("get_object", {"Key": BIG_KEY, "Range": "bytes=1000-300999"}),  # 206, Content-Range
            ("get_object", {"Key": BIG_KEY, "Range": "bytes=-10"}),
            ("get_object", {"Key": BIG_KEY, "IfNoneMatch": etag}),  # 304, no body
            ("get_object", {"Key": "small/missing.txt"}),  # 404 NoSuchKey, S3's XML body
            ("head_object", {"Key": BIG_KEY}),  # a length, and no body
            ("head_object", {"Key": "small/missing.txt"}),
            ("list_objects_v2", {"Prefix": "small/", "MaxKeys": 7}),
            ("list_objects_v2", {"Prefix": "small/", "StartAfter": "small/15.txt"}),
        ]
        for name, kwargs in calls:
            expected = outcome(getattr(direct, name), Bucket=BUCKET, **kwargs)
            assert outcome(getattr(proxied, name), Bucket=BUCKET, **kwargs) == expected, (name, kwargs)
        whole = outcome(proxied.get_object, Bucket=BUCKET, Key=BIG_KEY)
        part = outcome(proxied.get_object, Bucket=BUCKET, Key=BIG_KEY, Range="bytes=1000-300999")
        assert whole["Body"] == BIG and whole["status"] == 200
        assert part["Body"] == BIG[1000:301000] and part["status"] == 206
        assert part["ContentRange"] == f"bytes 1000-300999/{len(BIG)}"

        # Bodies go upstream too: an object put through the proxy is the object read from the server.
        proxied.put_object(Bucket=BUCKET, Key="put/through-proxy.bin", Body=BIG[:300_000], Metadata={"k": "v"})
        stored = direct.get_object(Bucket=BUCKET, Key="put/through-proxy.bin")
        assert stored["Body"].read() == BIG[:300_000] and stored["Metadata"] == {"k": "v"}
        assert proxy.throttled == 0


#: An empty listing, for a ListObjectsV2 (botocore takes a body it cannot parse, even with a 200, as an error).
LISTING = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           b"<Name>" + BUCKET.encode() + b"</Name><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated>"
           b"</ListBucketResult>")


@dataclass
class Received:
    method: str
    target: str  # the request line's path and query, as sent
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        return next(value for key, value in self.headers if key.lower() == name.lower())


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[Received]]]:
    """An upstream that records each request as it arrived, and answers with odd headers (repeated, custom)."""
    received: list[Received] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append(Received(self.command, self.path, list(self.headers.items()), self.rfile.read(length)))
            body = b"" if self.command != "GET" else LISTING if "list-type=2" in self.path else b"recorded\n"
            self.send_response(200)
            for name, value in (("Content-Type", "text/plain"), ("X-Repeated", "one"), ("X-Repeated", "two"),
                                ("x-amz-meta-odd", "  spaced  value "), ("Content-Length", str(len(body)))):
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = answer  # noqa: N815

    recording = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recording.daemon_threads = True
    threading.Thread(target=recording.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{recording.server_address[1]}", received
    finally:
        recording.shutdown()
        recording.server_close()


def signature_verifies(request: Received, host: str | None = None) -> bool:
    """What a server checking SigV4 computes from the request it received (``host``: as if its Host were that)."""
    found = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                         r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})", request.header("Authorization"))
    assert found, request.header("Authorization")
    _key, _day, region, service, signed, signature = found.groups()
    headers = {name: value for name, value in request.headers if name.lower() in signed.split(";")}
    if host is not None:
        headers = {**{name: value for name, value in headers.items() if name.lower() != "host"}, "Host": host}
    rebuilt = AWSRequest(method=request.method, url=f"http://{headers.get('Host') or headers['host']}{request.target}",
                         headers=headers, data=request.body)
    rebuilt.context["timestamp"] = request.header("X-Amz-Date")
    signer = S3SigV4Auth(Credentials(server.LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                     server.LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]), service, region)
    return signer.signature(signer.string_to_sign(rebuilt, signer.canonical_request(rebuilt)), rebuilt) == signature


def test_requests_arrive_as_signed_and_answers_return_as_sent(recorder):
    """Host, raw path and query, headers and body reach the server untouched: its SigV4 check passes."""
    endpoint, received = recorder
    with ThrottlingProxy(endpoint, rate=1000) as proxy:
        client = s3_client(proxy.endpoint)
        key = "odd keys/ü~(1)+plus=equals&amp.txt"
        client.put_object(Bucket=BUCKET, Key=key, Body=b"payload " * 1000, Metadata={"who": "me"},
                          ContentType="application/x-odd")
        client.get_object(Bucket=BUCKET, Key=key, Range="bytes=0-3")
        client.head_object(Bucket=BUCKET, Key=key)
        client.list_objects_v2(Bucket=BUCKET, Prefix="odd keys/ü", Delimiter="/")
        host = urllib.parse.urlsplit(proxy.endpoint).netloc

        connection = http.client.HTTPConnection(host, timeout=10)
        connection.request("GET", f"/{BUCKET}/raw")
        response = connection.getresponse()
        assert response.read() == b"recorded\n"
        assert response.headers.get_all("X-Repeated") == ["one", "two"]
        assert response.headers["x-amz-meta-odd"] == "spaced  value"  # http.server strips the ends itself
        connection.close()

    assert [request.method for request in received] == ["PUT", "GET", "HEAD", "GET", "GET"]
    put, ranged = received[0], received[1]
    assert put.target.startswith(f"/{BUCKET}/odd%20keys/%C3%BC~%281%29%2Bplus%3Dequals%26amp.txt")
    assert put.body == b"payload " * 1000
    assert put.header("Content-Type") == "application/x-odd" and put.header("x-amz-meta-who") == "me"
    assert ranged.header("Range") == "bytes=0-3" and ranged.body == b""
    for request in received[:4]:
        assert request.header("Host") == host  # the proxy's, which the client signed; not the upstream's
        assert signature_verifies(request), request
        assert not signature_verifies(request, host=urllib.parse.urlsplit(endpoint).netloc)  # the check bites
        checksum = request.header("X-Amz-Content-SHA256")
        assert checksum == hashlib.sha256(request.body).hexdigest() or not re.fullmatch("[0-9a-f]{64}", checksum)


# ----- over the rate: S3's SlowDown, as botocore sees it ----------------------------------------------


def test_over_the_rate_a_get_is_s3s_slowdown_and_botocore_calls_it_throttling(upstream):
    with ThrottlingProxy(upstream.endpoint, rate=1, burst=1) as proxy:
        client = s3_client(proxy.endpoint)
        # Judged by botocore's own retry machinery, on the very kwargs its needs-retry event carries:
        # the detector is the one adaptive mode slows down on, the conditions standard mode retries on.
        adapter = standard.RetryEventAdapter()
        detector = standard.ThrottlingErrorDetector(adapter)
        conditions = standard.StandardRetryConditions(max_attempts=3)
        verdicts: list[tuple[Any, ...]] = []

        def judge(**kwargs: Any) -> None:
            context = adapter.create_retry_context(**kwargs)
            if context.http_response is not None and context.http_response.status_code == 503:
                verdicts.append((context.get_error_code(), detector.is_throttling_error(**kwargs),
                                 conditions.is_retryable(context)))

        client.meta.events.register("needs-retry.s3.GetObject", judge)
        errors = []
        for _ in range(12):
            try:
                client.get_object(Bucket=BUCKET, Key="small/01.txt")["Body"].read()
            except botocore.exceptions.ClientError as error:
                errors.append(error)
        assert len(errors) >= 9, "a burst well above 1 GET/s is mostly refused"
        for error in errors:
            metadata = error.response["ResponseMetadata"]
            assert error.response["Error"] == {"Code": "SlowDown", "Message": "Please reduce your request rate."}
            assert metadata["HTTPStatusCode"] == 503 and metadata["RetryAttempts"] == 0
            assert metadata["RequestId"] == metadata["HTTPHeaders"]["x-amz-request-id"]
            assert metadata["HostId"] == metadata["HTTPHeaders"]["x-amz-id-2"]
            assert metadata["HTTPHeaders"]["content-type"] == "application/xml"
            assert "retry-after" not in metadata["HTTPHeaders"]
        assert verdicts == [("SlowDown", True, True)] * len(errors)

        # Only GETs are limited: a HEAD or a PUT meanwhile goes through.
        assert client.head_object(Bucket=BUCKET, Key="small/01.txt")["ContentLength"] == len(SMALL["small/01.txt"])

        # On the wire: status line, headers and body as S3 sends them, on a connection kept open.
        connection = http.client.HTTPConnection(urllib.parse.urlsplit(proxy.endpoint).netloc, timeout=10)
        for _ in range(2):
            connection.request("GET", f"/{BUCKET}/small/01.txt")
            response = connection.getresponse()
            body = response.read()
            assert (response.status, response.reason) == (503, "Slow Down")
            assert SLOW_DOWN.fullmatch(body), body
            request_id, host_id = SLOW_DOWN.fullmatch(body).groups()
            assert response.headers["x-amz-request-id"].encode() == request_id
            assert response.headers["x-amz-id-2"].encode() == host_id
            assert response.headers["Content-Type"] == "application/xml"
            assert response.headers["Content-Length"] == str(len(body))
            assert "Retry-After" not in response.headers and not response.will_close
        connection.close()


def test_adaptive_aiobotocore_is_slowed_down_not_failed(upstream):
    """crds-job's SDK, in adaptive mode, through a binding rate: every GET succeeds in the end.

    With its requests bounded, as crds-job bounds them (32 at once): the SDK's retry quota
    (500, 5 a retry, given back on success) runs out if hundreds of requests retry at once,
    and then a throttled request fails with no retry at all, whatever ``total_max_attempts``.
    """
    keys = [key for _ in range(10) for key in SMALL]  # 200 GETs

    async def read_all(endpoint: str) -> list[tuple[bytes, int]]:
        credentials = server.LOCAL_CREDENTIALS
        config = AioConfig(retries={"mode": "adaptive", "total_max_attempts": 20}, max_pool_connections=32)
        async with get_session().create_client(
                "s3", endpoint_url=endpoint, region_name=credentials["AWS_DEFAULT_REGION"],
                aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"], config=config) as client:

            at_once = asyncio.Semaphore(32)

            async def read(key: str) -> tuple[bytes, int]:
                async with at_once:
                    answer = await client.get_object(Bucket=BUCKET, Key=key)
                    async with answer["Body"] as body:
                        return await body.read(), answer["ResponseMetadata"]["RetryAttempts"]

            return await asyncio.gather(*(read(key) for key in keys))

    with ThrottlingProxy(upstream.endpoint, rate=100, burst=10) as proxy:
        started = time.monotonic()
        results = asyncio.run(asyncio.wait_for(read_all(proxy.endpoint), timeout=60))
        took = time.monotonic() - started
        assert [body for body, _ in results] == [SMALL[key] for key in keys]
        assert proxy.throttled > 0 and sum(retries for _, retries in results) == proxy.throttled
        assert proxy.gets == len(keys) + proxy.throttled and proxy.forwarded == len(keys)
        assert took >= (len(keys) - 10) / 100 * 0.9  # no faster than the rate lets it


# ----- latency and bandwidth ----------------------------------------------------------------------------


def test_the_first_byte_delay_is_added_to_each_get(upstream):
    with ThrottlingProxy(upstream.endpoint, delay=0.05) as proxy:
        client = s3_client(proxy.endpoint)
        client.head_object(Bucket=BUCKET, Key="small/00.txt")  # connected, and HEAD is not delayed
        started = time.monotonic()
        for _ in range(10):
            assert client.get_object(Bucket=BUCKET, Key="small/00.txt")["Body"].read() == SMALL["small/00.txt"]
        assert time.monotonic() - started >= 0.5


def test_the_bandwidth_cap_paces_each_body(upstream):
    with ThrottlingProxy(upstream.endpoint, bandwidth=2_000_000) as proxy:
        client = s3_client(proxy.endpoint)
        client.head_object(Bucket=BUCKET, Key=BIG_KEY)
        started = time.monotonic()
        assert client.get_object(Bucket=BUCKET, Key=BIG_KEY)["Body"].read() == BIG
        assert time.monotonic() - started >= 0.4  # 1 MiB at 2 MB/s: 0.52 s
        started = time.monotonic()
        assert client.get_object(Bucket=BUCKET, Key=BIG_KEY, Range="bytes=0-499999")["Body"].read() == BIG[:500_000]
        assert 0.2 <= time.monotonic() - started


# ----- counters and concurrency -------------------------------------------------------------------------


def test_the_counters_count(upstream):
    with ThrottlingProxy(upstream.endpoint, rate=0.001, burst=3) as proxy:  # 3 GETs, then none for a long while
        client = s3_client(proxy.endpoint)
        assert (proxy.gets, proxy.throttled, proxy.forwarded, proxy.max_in_flight) == (0, 0, 0, 0)
        outcomes = [outcome(client.get_object, Bucket=BUCKET, Key="small/02.txt")["status"] for _ in range(5)]
        assert outcomes == [200, 200, 200, 503, 503]
        client.head_object(Bucket=BUCKET, Key="small/02.txt")
        client.put_object(Bucket=BUCKET, Key="put/counted.txt", Body=b"x")
        assert outcome(client.list_objects_v2, Bucket=BUCKET)["status"] == 503  # a listing is a GET too
        assert (proxy.gets, proxy.throttled, proxy.forwarded, proxy.max_in_flight) == (6, 3, 5, 1)
        proxy.reset_counts()
        assert (proxy.gets, proxy.throttled, proxy.forwarded, proxy.max_in_flight) == (0, 0, 0, 0)
        client.head_object(Bucket=BUCKET, Key="small/02.txt")
        assert (proxy.gets, proxy.throttled, proxy.forwarded, proxy.max_in_flight) == (0, 0, 1, 1)


def test_hundreds_of_connections_at_once(upstream):
    """The proxy holds as many connections as the clients open, and forwards every GET."""
    connections = 300

    async def swarm(endpoint: str) -> list[bytes]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def read(index: int) -> bytes:
                key = f"small/{index % 20:02d}.txt"
                async with session.get(f"{endpoint}/{BUCKET}/{key}") as answer:  # public: no signature needed
                    assert answer.status == 200
                    return await answer.read()

            return await asyncio.gather(*(read(index) for index in range(connections)))

    with ThrottlingProxy(upstream.endpoint, delay=1.0) as proxy:
        bodies = asyncio.run(asyncio.wait_for(swarm(proxy.endpoint), timeout=60))
        assert bodies == [SMALL[f"small/{index % 20:02d}.txt"] for index in range(connections)]
        assert proxy.gets == proxy.forwarded == connections and proxy.throttled == 0
        assert proxy.max_in_flight >= connections * 0.8  # all waiting out the delay together
