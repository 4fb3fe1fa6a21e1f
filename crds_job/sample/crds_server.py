"""A stand-in CRDS server on loopback, serving a ``SampleBucket`` as the real server does.

There is no JWST S3 bucket: a JWST pipeline gets its references from the CRDS
server itself (``https://jwst-crds.stsci.edu``). To test against that without
the network, this serves the two halves of the protocol the real ``crds``
client (14.0.3, ``crds/client/api.py`` and ``proxy.py``) speaks:

- JSON-RPC 1.0, ``POST <url>/json/<method>/<id>/`` (the path past ``/json/`` is
  only a label for logs: the method is in the body). Answers
  ``{"result": R, "error": null, "id": ID}``, or on failure
  ``{"result": null, "error": {"message": M}, "id": ID}`` with status 200, since
  the client reads ``error.message`` from the body.
- Files, ``GET``/``HEAD <url>/unchecked_get/{mappings,references,pickles,config}/<obs>/<name>``
  (the "unchecked" URLs of ``get_server_info``), with ``Range: bytes=a-b``
  answered 206, and ``<url>/get/<name>`` for the "checked" URLs.

Test hooks: a delay before each file's first byte, other bytes for a file
(``replace``), every request failing with one status (``fail_with``), the log
of requests and the most file GETs served at once (``max_in_flight``).

The stdlib's threading server: a thread per connection, so many concurrent
downloads are served at once, and no event loop to share with the caller.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import http.server
import inspect
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any

from ..mapping import parse
from ..names import geis_partner, kind_of
from .context import SampleBucket

#: Bytes written at a time: small enough that a stop or a slow reader is seen between writes.
_CHUNK = 64 * 1024

#: Context names every CRDS server resolves, to the server_info field naming them (``<obs>-`` prefixed or not).
_SYMBOLIC = {"latest": "latest_context", "operational": "operational_context", "edit": "edit_context",
             "build": "build_context", "versions": "versions_context"}


class RpcError(Exception):
    """A JSON-RPC failure: its message goes to the client as ``error.message``."""


def server_info(sample: SampleBucket, url: str) -> dict[str, Any]:
    """What ``get_server_info`` answers for ``sample`` served at ``url``.

    The bucket's ``server_config`` (the very dict the real server publishes, with
    ``download_metadata`` crds-encoded), plus what only a server carries: the
    build context, and the URLs the client appends a file name to.
    """
    info = ast.literal_eval(sample.server_config().decode())
    obs = sample.observatory
    info["build_context"] = info["latest_context"]

    def urls(kind: str) -> dict[str, dict[str, str]]:
        return {"checked": {obs: f"{url}/get/"}, "unchecked": {obs: f"{url}/unchecked_get/{kind}/{obs}/"}}

    info.update(mapping_url=urls("mappings"), reference_url=urls("references"), config_url=urls("config"),
                pickle_url=urls("pickles"))
    return info


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``(first, last)`` (inclusive) for a single ``bytes=`` range over ``size`` bytes.

    None when the header is not one satisfiable range we serve: several ranges
    or another unit are answered with the whole file (RFC 9110 lets a server
    ignore Range); an unsatisfiable one raises ValueError (416).
    """
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if size == 0:
        raise ValueError("no range of an empty file is satisfiable")
    if first == "":  # bytes=-N: the last N bytes
        if int(last) == 0:
            raise ValueError("a zero-length suffix range")
        return max(size - int(last), 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise ValueError(f"range {header!r} outside {size} bytes")
    return start, end


class _Catalog:
    """What the server knows of the sample: files by kind, each context's closure, each file's owner."""

    def __init__(self, sample: SampleBucket) -> None:
        self.sample = sample
        obs = sample.observatory
        self.parsed = {name: parse(name, data.decode(), obs) for name, data in sample.mappings.items()}
        #: reference -> (instrument, filekind) of the rmap naming it.
        self.owner: dict[str, tuple[str, str]] = {}
        for mapping in self.parsed.values():
            if mapping.kind == "rmap":
                for child in mapping.children:
                    kind = (mapping.instrument, str(mapping.header.get("filekind", "")).lower())
                    self.owner[child] = kind
                    partner = geis_partner(child)
                    if partner:
                        self.owner[partner] = kind
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @functools.cached_property
    def metadata(self) -> dict[str, dict[str, str]]:
        """Size and sha1 of every file, as published (computed once: it reads every reference)."""
        return self.sample.metadata()

    def closure(self, mapping: str) -> list[str]:
        """``mapping`` and every mapping below it, as ``get_mapping_names`` lists them."""
        names, todo = [], [mapping]
        while todo:
            name = todo.pop()
            if name not in names:
                names.append(name)
                todo.extend(child for child in self.parsed[name].children if kind_of(child) != "reference")
        return names

    def references(self, mapping: str) -> list[str]:
        """Every reference named below ``mapping`` (GEIS data partners included, as the server lists them)."""
        refs = {ref for name in self.closure(mapping) if self.parsed[name].kind == "rmap"
                for ref in self.parsed[name].children}
        return sorted(refs | {p for p in map(geis_partner, refs) if p and p in self.sample.reference_sizes})

    def files(self, kind: str) -> Callable[[str], bytes | None]:
        """The producer of a file's bytes for one URL kind (None: no such file there)."""
        sample = self.sample
        if kind == "mappings":
            return sample.mappings.get
        if kind == "pickles":
            return sample.pickles.get
        if kind == "config":
            return lambda name: sample.server_config() if name == "server_config" else None
        return lambda name: sample.reference_bytes(name) if name in sample.reference_sizes else None

    def data(self, kind: str, name: str) -> bytes | None:
        """A file's bytes, made once (references are generated): many GETs of one file cost one."""
        key = f"{kind}/{name}"
        with self._lock:
            if key not in self._data:
                produced = self.files(kind)(name)
                if produced is None:
                    return None
                self._data[key] = produced
            return self._data[key]

    def replace(self, name: str, data: bytes) -> None:
        """Serve ``data`` for ``name`` wherever it is served from."""
        with self._lock:
            found = False
            for kind in ("mappings", "references", "pickles", "config"):
                if self.files(kind)(name) is not None:
                    self._data[f"{kind}/{name}"] = data
                    found = True
        if not found:
            raise KeyError(f"{name} is not a file of the sample")


class _Rpc:
    """The JSON-RPC methods, by name: what a CRDS server answers, for one sample."""

    def __init__(self, catalog: _Catalog, info: dict[str, Any]) -> None:
        self.catalog = catalog
        self.info = info
        self.obs = catalog.sample.observatory

    def call(self, method: str, params: list[Any]) -> Any:
        """The method's result; RpcError for an unknown method, bad parameters, or any failure in it
        (a real server answers an error too, rather than dropping the connection)."""
        handler = getattr(self, f"rpc_{method}", None) if isinstance(method, str) else None
        if handler is None:
            raise RpcError(f"Method '{method}' not found.")
        try:
            inspect.signature(handler).bind(*params)
        except TypeError as exc:
            raise RpcError(f"Bad parameters for '{method}': {exc}") from None
        try:
            return handler(*params)
        except RpcError:
            raise
        except Exception as exc:
            raise RpcError(f"Internal error in '{method}': {exc!r}") from exc

    def _check_observatory(self, observatory: str | None) -> None:
        if observatory not in (None, self.obs):
            raise RpcError(f"Unknown observatory {observatory!r}: this server is {self.obs!r}.")

    def context(self, name: str) -> str:
        """A context (or any mapping) name, symbolic (``jwst-edit``, ``latest``) or date-based, resolved."""
        if name in self.catalog.parsed:
            return name
        state = name.removeprefix(f"{self.obs}-")
        if state in _SYMBOLIC:
            return self.info[_SYMBOLIC[state]]
        if name.startswith(f"{self.obs}-"):
            return self.rpc_get_context_by_date(name, self.obs)
        raise RpcError(f"Unknown context {name!r}.")

    def rpc_get_server_info(self) -> dict[str, Any]:
        return self.info

    def rpc_get_default_context(self, observatory: str | None = None, state: str | None = None) -> str:
        self._check_observatory(observatory)
        if (state or "latest") not in _SYMBOLIC:
            raise RpcError(f"Unknown context state {state!r}.")
        return self.info[_SYMBOLIC[state or "latest"]]

    def rpc_get_build_context(self, observatory: str | None = None, calver: str | None = None) -> str:
        """The context made for calibration software version ``calver``: here always the latest."""
        self._check_observatory(observatory)
        return self.info["build_context"]

    def rpc_get_context_by_date(self, date: str, observatory: str | None = None) -> str:
        """The context in use at ``date`` (``2025-01-02T00:00:00``, or ``jwst-2025-01-02T00:00:00``)."""
        self._check_observatory(observatory)
        text = str(date).removeprefix(f"{self.obs}-")
        if text in _SYMBOLIC:
            return self.info[_SYMBOLIC[text]]
        try:
            when = datetime.fromisoformat(text.replace("T", " "))
        except ValueError:
            raise RpcError(f"Invalid date-based context {date!r}.") from None
        chosen = [context for start, context, *_ in sorted(self.info["context_history"])
                  if datetime.fromisoformat(start) <= when]
        if not chosen:
            raise RpcError(f"No context was in use at {date!r}.")
        return chosen[-1]

    def rpc_get_context_history(self, observatory: str | None = None) -> list[list[str]]:
        self._check_observatory(observatory)
        return self.info["context_history"]

    def rpc_get_mapping_names(self, context: str) -> list[str]:
        return self.catalog.closure(self.context(context))

    def rpc_get_reference_names(self, context: str) -> list[str]:
        return self.catalog.references(self.context(context))

    def rpc_get_file_info(self, context: str, filename: str) -> dict[str, str]:
        self.context(context)
        info = self.rpc_get_file_info_map(self.obs, [filename], None)[filename]
        if isinstance(info, str):
            raise RpcError(f"File {filename!r} is not known to CRDS.")
        return info

    def rpc_get_file_info_map(self, observatory: str, files: list[str] | None = None,
                              fields: list[str] | None = None) -> dict[str, Any]:
        """``{name: {field: value}}``, values as strings, "NOT FOUND" for unknown names."""
        self._check_observatory(observatory)
        metadata = self.catalog.metadata
        answer: dict[str, Any] = {}
        for name in metadata if files is None else files:
            if name not in metadata:
                answer[name] = "NOT FOUND"
                continue
            instrument, filekind = self._properties(name)
            full = {"name": name, "observatory": self.obs, "instrument": instrument, "filekind": filekind,
                    "state": "archived", "rejected": "false", "blacklisted": "false", **metadata[name]}
            answer[name] = {key: full.get(key, "") for key in fields} if fields else full
        return answer

    def _properties(self, name: str) -> tuple[str, str]:
        if name in self.catalog.owner:
            return self.catalog.owner[name]
        mapping = self.catalog.parsed.get(name)
        if mapping is None:
            return "", ""
        return mapping.instrument, str(mapping.header.get("filekind", "")).lower()


class _Handler(http.server.BaseHTTPRequestHandler):
    """One connection's requests (HTTP/1.1, keep-alive): routes to the server's files and JSON-RPC."""

    protocol_version = "HTTP/1.1"
    server: _HttpServer
    timeout = 60  # an idle keep-alive connection gives its thread back after this

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the requests are in ``LocalCrdsServer.requests``, and test output stays readable."""

    def do_GET(self) -> None:
        self._file(body=True)

    def do_HEAD(self) -> None:
        self._file(body=False)

    def do_POST(self) -> None:
        owner = self.server.owner
        body = self._read_body()
        if self.path != "/json" and not self.path.startswith("/json/"):
            owner.record("POST", self.path)
            if not self._failing():
                self._send(404, b"not found\n", "text/plain")
            return
        try:
            request = json.loads(body)
            method, params, ident = request["method"], request.get("params") or [], request.get("id")
        except (ValueError, KeyError, TypeError):
            method, params, ident = None, [], None
        owner.record("POST", str(method))
        if self._failing():
            return
        if method is None:
            answer = {"result": None, "error": {"message": "Invalid JSON-RPC request."}, "id": None}
        else:
            answer = self._answer(method, params if isinstance(params, list) else [params], ident)
        self._send_json(answer)

    def _answer(self, method: str, params: list[Any], ident: Any) -> dict[str, Any]:
        """The JSON-RPC 1.0 answer: a result, or an error whose message the client shows."""
        try:
            return {"result": self.server.owner.rpc.call(method, params), "error": None, "id": ident}
        except RpcError as exc:
            return {"result": None, "error": {"message": str(exc)}, "id": ident}

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _failing(self) -> bool:
        status = self.server.owner.failing
        if status is None:
            return False
        reason = self.responses.get(status, ("",))[0]
        self._send(status, f"{status} {reason}\n".encode(), "text/plain", body=self.command != "HEAD")
        return True

    def _locate(self) -> tuple[str, str] | None:
        """(kind, name) for a file URL of this server's observatory, else None."""
        path = self.path.split("?", 1)[0]
        obs = self.server.owner.sample.observatory
        unchecked = re.fullmatch(rf"/unchecked_get/(mappings|references|pickles|config)/{obs}/([^/]+)", path)
        if unchecked:
            return unchecked.group(1), unchecked.group(2)
        checked = re.fullmatch(r"/get/([^/]+)", path)
        if checked:
            name = checked.group(1)
            return ("mappings" if kind_of(name) != "reference" else "references"), name
        return None

    def _file(self, body: bool) -> None:
        owner = self.server.owner
        owner.record(self.command, self.path)
        if self._failing():
            return
        where = self._locate()
        data = owner.catalog.data(*where) if where else None
        if data is None:
            self._send(404, b"not found\n", "text/plain", body=body)
            return
        if not body:
            self._send_file(data, body=False)
            return
        with owner.serving_file():
            if owner.delay and owner.stopping.wait(owner.delay):
                return  # stopped while waiting: the connection is being closed
            self._send_file(data, body=True)

    def _send_file(self, data: bytes, body: bool) -> None:
        """The file, or the slice a ``Range`` header asks for (206), or 416 for one outside it."""
        status, first, last = 200, 0, len(data) - 1
        extra = {"Accept-Ranges": "bytes"}
        if self.headers.get("Range") and not self.server.owner.ignore_ranges:
            try:
                span = parse_range(self.headers["Range"], len(data))
            except ValueError:
                self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"}, body=body)
                return
            if span:
                status, (first, last) = 206, span
                extra["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        self._send(status, memoryview(data)[first:last + 1], "application/octet-stream", extra, body=body)

    def _send_json(self, answer: dict[str, Any]) -> None:
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _send(self, status: int, payload: bytes | memoryview, content_type: str,
              headers: dict[str, str] | None = None, body: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            with contextlib.suppress(ConnectionError):
                for start in range(0, len(payload), _CHUNK):
                    self.wfile.write(payload[start:start + _CHUNK])


class _HttpServer(http.server.ThreadingHTTPServer):
    """Threading server that remembers its open connections, so that ``stop`` can cut them."""

    daemon_threads = True
    request_queue_size = 256  # a burst of concurrent connects is queued, not refused

    def __init__(self, owner: LocalCrdsServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self.connections_lock:
            for connection in self.connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class LocalCrdsServer:
    """``with LocalCrdsServer(jwst()) as server: server.url``: a CRDS server for ``sample`` on loopback.

    The port is bound at construction (so ``url`` is known at once) and served
    from ``__enter__`` (or ``start``) until ``__exit__`` (or ``stop``).
    ``delay``: seconds to wait before each file GET's first byte.
    """

    def __init__(self, sample: SampleBucket, delay: float = 0.0) -> None:
        self.sample = sample
        self.delay = delay
        self.catalog = _Catalog(sample)
        self._http = _HttpServer(self)
        self.port: int = self._http.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.info = server_info(sample, self.url)
        self.rpc = _Rpc(self.catalog, self.info)
        #: (method, path) of every request, or ("POST", json-rpc method) for JSON-RPC calls.
        self.requests: list[tuple[str, str]] = []
        #: The most file GETs in progress at once (from the request to the last byte, delay included).
        self.max_in_flight = 0
        self.ignore_ranges = False  # answer a ranged GET with the whole file (200), as some HTTP servers do
        self.failing: int | None = None
        self.stopping = threading.Event()
        self._in_flight = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> LocalCrdsServer:
        """Serve from a daemon thread (idempotent): a test that forgets to stop does not hang the run."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._http.serve_forever, name=f"crds-server-{self.port}",
                                            daemon=True)
            self._thread.start()
        return self

    def __enter__(self) -> LocalCrdsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving: the port is closed (connections are refused) and open connections are cut."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
        self._http.server_close()
        self._http.cut_connections()

    def replace(self, name: str, data: bytes) -> None:
        """Serve ``data`` for file ``name`` from now on; its size and sha1 in server_info stay the old ones."""
        self.catalog.replace(name, data)

    def fail_with(self, status: int | None) -> None:
        """Answer every request, JSON-RPC and files, with HTTP ``status`` (e.g. 503, 401); None: serve again."""
        self.failing = status

    def record(self, method: str, what: str) -> None:
        """Log one request (called by the handler threads)."""
        with self._lock:
            self.requests.append((method, what))

    @contextlib.contextmanager
    def serving_file(self) -> Iterator[None]:
        """Count one file GET in flight for as long as the block runs."""
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
