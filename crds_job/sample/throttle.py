"""A throttling reverse proxy in front of a local S3 server: S3's ``503 SlowDown``, on demand.

A real bucket answers ``503 SlowDown`` once a prefix gets more GETs a second than
it can serve, and clients are expected to slow down (botocore's ``adaptive`` retry
mode, crds-job's own pacing). moto and SeaweedFS never do, so tests and benchmarks
put this proxy between the client and them::

    with LocalS3("seaweedfs") as s3, ThrottlingProxy(s3.endpoint, rate=500) as proxy:
        run_job(AWS_ENDPOINT_URL_S3=proxy.endpoint)
        print(proxy.gets, proxy.throttled, proxy.max_in_flight)

Every request is forwarded unchanged (method, raw path and query, headers with the
original ``Host``, so SigV4 signatures still verify, and body), and every answer
streamed back unchanged (status, headers, body: ranges and ``206`` included), except
GETs beyond a token bucket of ``rate`` a second (``burst`` deep): those are answered
as S3 answers them, ``503`` with S3's ``SlowDown`` XML body and no ``Retry-After``.
Optionally a first-byte ``delay`` is added to each forwarded GET (S3's latency, which
local servers lack) and each answer's body is paced to ``bandwidth`` bytes a second.

It runs in a thread of its own with its own event loop (aiohttp server and client),
streams bodies rather than buffering them and keeps a large pool of upstream
connections, so that hundreds of client connections from several processes can go
through it at a thousand GETs a second without it being the bottleneck.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import socket
import threading
import time
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

#: Headers that describe one HTTP connection, not the message: never forwarded either way.
#: ``Expect`` is answered here (``100 Continue``), so the upstream request is sent whole.
HOP_BY_HOP = frozenset(
    name.lower() for name in ("Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
                              "Trailer", "Transfer-Encoding", "Upgrade", "Expect", "Proxy-Connection")
)

#: S3's answer to a GET beyond the prefix's rate, as S3 words it (the ids are filled in per answer).
SLOW_DOWN = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             "<Message>Please reduce your request rate.</Message><RequestId>{request_id}</RequestId>"
             "<HostId>{host_id}</HostId></Error>")

#: Upstream connections kept open at most: more than the clients in front can hold at once
#: (32 processes of 32 connections), so a forwarded request never waits for one.
UPSTREAM_CONNECTIONS = 2048

#: Pending connections the listening socket holds (the kernel caps it at ``somaxconn``): many
#: client processes connecting at once must not overflow it, or their SYNs wait a second to retry.
BACKLOG = 4096

#: Longest request line or header accepted either way (aiohttp's default is 8 KiB): a presigned URL's
#: query with a session token, or many user metadata headers, may be longer, and S3 takes them.
LONGEST_LINE = 1 << 16

#: File descriptors the process is allowed at least, if its hard limit lets it: each client connection
#: takes one, and its upstream connection another (the common soft limit, 1024, is short of that).
FILE_DESCRIPTORS = 8192

#: Bytes read from the upstream answer per write when pacing to a bandwidth: about 20 ms of it.
PACING_SLICE_SECONDS = 0.02


class ThrottlingProxy:
    """``with ThrottlingProxy(upstream, rate=...) as proxy: proxy.endpoint``: S3 with a request rate.

    ``rate``: GETs a second let through (``None``: all); ``burst``: how many may come at once
    beyond that rate (default: a tenth of a second's worth, at least 1); ``delay``: seconds
    added before each forwarded GET's answer; ``bandwidth``: bytes a second each answer's body
    is paced to (one connection carries one answer at a time, so this caps each connection).

    The counters are for tests and benchmarks, and may be read from any thread: ``gets``
    (GETs received), ``throttled`` (of them, answered ``503 SlowDown``), ``forwarded``
    (requests of any method sent upstream) and ``max_in_flight`` (most requests being
    answered at once, throttled ones included).
    """

    gets: int
    throttled: int
    forwarded: int
    max_in_flight: int

    def __init__(self, upstream: str, rate: float | None = None, burst: int | None = None,
                 delay: float = 0.0, bandwidth: float | None = None) -> None:
        if rate is not None and rate < 0:
            raise ValueError(f"rate must be >= 0 GETs a second, not {rate}")
        if burst is not None and burst < 1:
            raise ValueError(f"burst must be >= 1, not {burst}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, not {delay}")
        if bandwidth is not None and bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0 bytes a second, not {bandwidth}")
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.burst = burst if burst is not None else max(1, round((rate or 0) / 10))
        self.delay = delay
        self.bandwidth = bandwidth
        self._lock = threading.Lock()
        self._in_flight = 0
        self.gets = self.throttled = self.forwarded = self.max_in_flight = 0
        self._tokens = float(self.burst)
        self._refilled = time.monotonic()
        # Bound now, so the endpoint is known before the proxy starts (and no other process takes the port).
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # ----- starting and stopping ----------------------------------------------------------------

    def __enter__(self) -> ThrottlingProxy:
        if self._loop is not None:
            raise RuntimeError("a ThrottlingProxy starts once")
        enough_file_descriptors()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"throttling-proxy {self.endpoint}",
                                        daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            self._socket.close()
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            if not thread.is_alive():
                loop.close()
            self._socket.close()

    async def _start(self) -> None:
        connector = aiohttp.TCPConnector(limit=UPSTREAM_CONNECTIONS, limit_per_host=0, keepalive_timeout=60)
        # Nothing added to or taken from what the client sent and the server answered: no default
        # headers (a Content-Type would change a PUT's object), no decompression, no cookies.
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30), read_bufsize=1 << 18,
            max_line_size=LONGEST_LINE, max_field_size=LONGEST_LINE)
        server = web.Server(self._handle, access_log=None, max_line_size=LONGEST_LINE, max_field_size=LONGEST_LINE)
        self._runner = web.ServerRunner(server, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self._socket, backlog=BACKLOG).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # ----- counters ---------------------------------------------------------------------------

    def reset_counts(self) -> None:
        """Zero the counters (``max_in_flight`` starts again from the requests now in flight)."""
        with self._lock:
            self.gets = self.throttled = self.forwarded = 0
            self.max_in_flight = self._in_flight

    def _arrive(self, is_get: bool) -> None:
        with self._lock:
            self._in_flight += 1
            if self._in_flight > self.max_in_flight:
                self.max_in_flight = self._in_flight
            if is_get:
                self.gets += 1

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _take_token(self) -> bool:
        """Whether a GET may go now: a token bucket of ``rate`` a second, ``burst`` deep (event loop only)."""
        if self.rate is None:
            return True
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    # ----- answering --------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        is_get = request.method == "GET"
        self._arrive(is_get)
        try:
            if is_get and not self._take_token():
                with self._lock:
                    self.throttled += 1
                return slow_down()
            if is_get and self.delay:
                await asyncio.sleep(self.delay)  # before going upstream: no upstream connection held meanwhile
            return await self._forward(request)
        finally:
            self._leave()

    async def _forward(self, request: web.BaseRequest) -> web.StreamResponse:
        assert self._session is not None
        headers = [(name, value) for name, value in request.headers.items() if name.lower() not in HOP_BY_HOP]
        if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
            # What aiohttp's router does for an application; a low-level server must say it itself.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        body = request.content if request.body_exists else None
        # encoded=True: the path and query go upstream byte for byte, as they were signed.
        url = URL(self.upstream + request.raw_path, encoded=True)
        with self._lock:
            self.forwarded += 1
        try:
            upstream = await self._session.request(request.method, url, headers=headers, data=body,
                                                   allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:
            return web.Response(status=502, text=f"throttling proxy: upstream {self.upstream} failed: {exc!r}\n")
        try:
            answer = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=CIMultiDict(
                (name, value) for name, value in upstream.headers.items() if name.lower() not in HOP_BY_HOP))
            try:
                await answer.prepare(request)
                await self._copy_body(upstream, answer)
                await answer.write_eof()
            except (TimeoutError, aiohttp.ClientError, OSError):
                # The client went away, or the upstream failed mid-body: either way the answer is cut
                # short, and the connection must close so that the client cannot take it as whole.
                if request.transport is not None:
                    request.transport.abort()
            return answer
        finally:
            upstream.release()

    async def _copy_body(self, upstream: aiohttp.ClientResponse, answer: web.StreamResponse) -> None:
        if self.bandwidth is None:
            async for chunk in upstream.content.iter_any():
                await answer.write(chunk)
            return
        loop = asyncio.get_running_loop()
        piece = max(1024, int(self.bandwidth * PACING_SLICE_SECONDS))
        started, sent = loop.time(), 0
        while chunk := await upstream.content.read(piece):
            await answer.write(chunk)
            sent += len(chunk)
            ahead = started + sent / self.bandwidth - loop.time()
            if ahead > 0:
                await asyncio.sleep(ahead)


def enough_file_descriptors() -> None:
    """Raise this process's soft limit on open files to ``FILE_DESCRIPTORS``, as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FILE_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(FILE_DESCRIPTORS, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def slow_down() -> web.Response:
    """S3's ``503 SlowDown``: XML body, ids in both body and headers, no ``Retry-After``, connection kept."""
    request_id = os.urandom(8).hex().upper()
    host_id = base64.b64encode(os.urandom(57)).decode()
    body = SLOW_DOWN.format(request_id=request_id, host_id=host_id).encode()
    headers: dict[str, Any] = {"Content-Type": "application/xml", "x-amz-request-id": request_id,
                               "x-amz-id-2": host_id, "Server": "AmazonS3"}
    return web.Response(status=503, reason="Slow Down", body=body, headers=headers)
