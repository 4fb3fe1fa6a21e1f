"""A fault-injecting HTTP proxy between crds-job and the S3 server, for the tests.

crds-job is pointed at the proxy (``AWS_ENDPOINT_URL_S3``); the proxy forwards
each request to the real S3 server unchanged (the Host header included, so
signatures still verify) and, when a rule matches, breaks the answer the way
networks and S3 break them: an error status with S3's XML body, a connection
reset mid-body, a body cut short, a flipped byte, a slow answer; and the way
odd servers answer: more bytes than asked, the whole object for a range. A
rule may also act on the bucket first (replace the object being read). Every
request is recorded, so tests can also count downloads per object.
"""

from __future__ import annotations

import http.client
import http.server
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

S3_ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    403: ("AccessDenied", "Access Denied"),
    400: ("ExpiredToken", "The provided token has expired."),
}

#: Faults: an S3 error status, or a way of breaking a good answer.
FAULTS = ("503", "500", "403", "expired", "reset", "truncate", "flip", "slow", "long", "whole", "act")


@dataclass
class Rule:
    """Break answers to requests whose path matches ``path`` (a regex), ``times`` times (None: always)."""

    fault: str
    path: str = ".*"
    times: int | None = None
    method: str = "GET"
    delay: float = 0.5  # for "slow": seconds before the body
    extra: int = 1 << 20  # for "long": bytes sent beyond the answer's
    action: Callable[[], None] | None = None  # for "act": run before the request goes upstream
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if method != self.method or not re.search(self.path, urllib.parse.unquote(path)):
            return False
        return self.times is None or self.hits < self.times


@dataclass
class Record:
    method: str
    path: str
    range: str | None
    fault: str | None
    status: int  # as the client saw it: an injected error's, else the server's


@dataclass
class FaultProxy:
    """``with FaultProxy(upstream) as proxy: proxy.endpoint``; ``proxy.rules`` may change at any time."""

    upstream: str
    rules: list[Rule] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[int, int] = {}  # GETs being answered: bytes of each body (0 until known)
        self.peak_gets = 0  # most GETs answered at once
        self.peak_bytes = 0  # most body bytes of GETs answered at once
        parsed = urllib.parse.urlparse(self.upstream)
        self._upstream = (parsed.hostname, parsed.port)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle_one(self) -> None:
                proxy._carry(self, 0)
                try:
                    proxy._serve(self)
                finally:
                    with proxy._lock:
                        proxy._in_flight.pop(id(self), None)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = handle_one  # noqa: N815

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a connection we broke on purpose is not news

        self._server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ----- what happened ---------------------------------------------------------------------

    def gets(self, pattern: str = ".*") -> list[Record]:
        with self._lock:
            return [r for r in self.records if r.method == "GET" and re.search(pattern, r.path)]

    def faults(self) -> list[Record]:
        with self._lock:
            return [r for r in self.records if r.fault]

    # ----- serving ---------------------------------------------------------------------------

    def _carry(self, handler: http.server.BaseHTTPRequestHandler, size: int) -> None:
        """Count ``handler``'s GET as in flight with a body of ``size`` bytes, and the peaks."""
        if handler.command != "GET":
            return
        with self._lock:
            self._in_flight[id(handler)] = size
            self.peak_gets = max(self.peak_gets, len(self._in_flight))
            self.peak_bytes = max(self.peak_bytes, sum(self._in_flight.values()))

    def _choose(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.hits += 1
                    return rule
        return None

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", 0) or 0)
        body = handler.rfile.read(length) if length else b""
        rule = self._choose(handler.command, handler.path)

        def record(fault: str | None, status: int) -> None:
            with self._lock:
                self.records.append(Record(handler.command, urllib.parse.unquote(handler.path),
                                           handler.headers.get("Range"), fault, status))

        if rule and rule.fault in ("503", "500", "403", "expired"):
            status = 400 if rule.fault == "expired" else int(rule.fault)
            record(rule.fault, status)
            code, message = S3_ERRORS[status]
            payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                       f"<Message>{message}</Message><RequestId>fault</RequestId></Error>").encode()
            handler.send_response(status)
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if handler.command != "HEAD":  # as S3: a HEAD answer has no body, even an error's
                handler.wfile.write(payload)
            return
        headers = dict(handler.headers)
        if rule and rule.fault == "act" and rule.action is not None:
            rule.action()
        if rule and rule.fault == "whole":  # a server that ignores ranges: 200 and the whole object
            headers = {name: value for name, value in headers.items() if name.lower() != "range"}
        upstream = http.client.HTTPConnection(*self._upstream, timeout=60)
        try:
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self._carry(handler, len(data))
            headers = response.getheaders()
            status = response.status
        finally:
            upstream.close()
        fault = rule.fault if rule else None
        if fault == "long":
            data += b"\0" * rule.extra  # type: ignore[union-attr]
        if fault and (handler.command != "GET" or status >= 300 or len(data) < 2):
            fault = None  # nothing to break in this answer
        record(fault, status)
        handler.send_response(status)
        for name, value in headers:
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                handler.send_header(name, value)
        # A HEAD answer has no body but the length of the object it describes.
        length = response.getheader("Content-Length", "0") if handler.command == "HEAD" else str(len(data))
        handler.send_header("Content-Length", length)
        if fault in ("reset", "truncate"):
            handler.send_header("Connection", "close")
        handler.end_headers()
        if fault == "slow":
            time.sleep(rule.delay)  # type: ignore[union-attr]
        if fault == "flip":  # damage on the way: another byte each time
            where = (len(data) // 2 + rule.hits) % max(1, len(data))  # type: ignore[union-attr]
            data = data[:where] + bytes([data[where] ^ 0x01]) + data[where + 1:]
        if fault in ("reset", "truncate"):
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            if fault == "reset":  # an RST, not a FIN: the peer sees "connection reset"
                handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.close_connection = True
            handler.connection.close()
            return
        handler.wfile.write(data)
