"""Reading a CRDS server: JSON-RPC for what a bucket's config says, plain GETs for files.

The protocol is the one the crds client speaks in its server mode
(``crds/client/api.py``, ``proxy.py``): JSON-RPC 1.0 posted to
``<server>/json/<method>/<id>/``. ``get_server_info`` answers what a bucket's
``server_config`` holds (the contexts, ``download_metadata`` with every file's
size and sha1, the URLs files are fetched from), so the warm reads it exactly
as it reads a bucket's, and checks every file against it. Files are GET from
the server's ``unchecked`` URLs, in byte ranges as S3 objects are, through one
aiohttp session of ``--concurrency`` connections: the same fetch engine,
limits, retries and checks as a bucket. aiohttp directly, not fsspec's HTTP
filesystem built on it: its ``cat_file`` can neither bound a body nor check
the range an answer holds, which every read here needs.

A CRDS server is public: no credential is sent. One that answers 401/403
needs a login that the crds client itself has no way to give, and says so.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import importlib.metadata
import itertools
import json
import re
import ssl
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp

from . import names, server_config
from .errors import BucketContentError, CrdsJobError, S3AccessError, UsageError
from .remote import GET_GRACE, MIN_RATE, READ_CHUNK, BodyCorrupt, Denied, Missing, Oversized, Part, Transient, at_most

#: How the log names this source's credentials.
CREDENTIALS = "none: a CRDS server is public"
#: The config object a warm reads first (``server_config``): the server's ``get_server_info``.
CONFIG = "server_config"
#: The calibration package whose version names a build context (the client's ``get_cal_version``).
CALIBRATION_PACKAGES = {"jwst": "jwst", "roman": "romancal", "hst": "caldp"}
#: At most this long for one JSON-RPC answer (JWST's download_metadata lists ~100k files).
RPC_TIMEOUT = 300.0
_IDS = itertools.count(1)


class Refused(S3AccessError):
    """The server answered a JSON-RPC call with an error (an unknown context, a method it lacks)."""


@dataclass(frozen=True)
class ServerLocation:
    """One observatory/environment on a CRDS server, and how to name its files in messages."""

    observatory: str
    environment: str
    url: str  # no trailing slash
    public = True
    context_areas: ClassVar[tuple[str, ...]] = ("mappings",)  # its clients load contexts from mappings only

    def uri(self, area: str, name: str = "") -> str:
        """The file's URL on the server (its ``unchecked_get`` path), or the server's for ``config``."""
        if not area:
            return self.url
        if area == "config":
            return f"{self.url}/json/ (get_server_info)"
        return f"{self.url}/unchecked_get/{area}/{self.observatory}/{name}"


class ServerSource:
    """A CRDS server, read as a warm reads a bucket (``source.Source``).

    Use as ``async with ServerSource(location, concurrency) as server``.
    """

    def __init__(self, location: ServerLocation, concurrency: int) -> None:
        self.location = location
        self.credentials = CREDENTIALS
        self.anonymous = False  # datasets named by s3:// URIs are read with whatever credentials the job has
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._info: dict[str, Any] | None = None

    async def __aenter__(self) -> ServerSource:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
            # Bytes exactly as the metadata describes them: no transfer encoding that would change their count.
            headers={"User-Agent": "crds-job", "Accept-Encoding": "identity"},
            trust_env=True,  # HTTPS_PROXY / NO_PROXY, as the crds client's urllib honours them
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use ServerSource as an async context manager"
        return self._session

    # ----- JSON-RPC ---------------------------------------------------------------------------

    async def call(self, method: str, *params: Any) -> Any:
        """One JSON-RPC call, its result decoded as the client decodes it; the server's error, raised."""
        ident = str(next(_IDS))
        url = f"{self.location.url}/json/{method}/{ident}/"
        body = json.dumps({"jsonrpc": "1.0", "method": method, "params": list(params), "id": ident})
        where = f"{self.location.url} ({method})"
        with self._translated(where):
            async with asyncio.timeout(RPC_TIMEOUT):
                async with self.session.post(url, data=body, headers={"Content-Type": "application/json"},
                                             allow_redirects=False) as answer:  # a redirect would make it a GET
                    if 300 <= answer.status < 400:
                        raise UsageError(f"{self.location.url} redirects its JSON-RPC to "
                                         f"{answer.headers.get('Location', '(nowhere)')} ({answer.status})",
                                         "set --server / CRDS_SERVER_URL to the server it redirects to")
                    if answer.status in (404, 405):
                        raise UsageError(f"{self.location.url} answers no JSON-RPC at /json/ ({answer.status}): it "
                                         "is not a CRDS server", "check --server / CRDS_SERVER_URL: it names the "
                                         "server's root, e.g. https://jwst-crds.stsci.edu")
                    self._check_status(answer.status, where)
                    text = b"".join(await _at_most(answer, server_config.MAX_CONFIG_BYTES, where))
        try:
            reply = json.loads(text)
            error, result = reply.get("error"), reply["result"]
        except (ValueError, KeyError, AttributeError):
            raise UsageError(f"{where} did not answer as a CRDS server does (JSON-RPC): {text[:80]!r}",
                             "check --server / CRDS_SERVER_URL: it names the server's root, e.g. "
                             "https://jwst-crds.stsci.edu") from None
        if error:
            message = error.get("message", error) if isinstance(error, dict) else error
            raise Refused(f"the CRDS server refused {method}: {str(message)[:200]}",
                          "check the context asked for; if it is right, report the server's answer")
        return _decoded(result)

    async def server_info(self) -> dict[str, Any]:
        """``get_server_info``, asked once per job: the contexts, every file's size and sha1, the URLs."""
        if self._info is None:
            info = await self.call("get_server_info")
            if not isinstance(info, dict):
                raise UsageError(f"{self.location.url}'s get_server_info is not a dict", "check --server")
            self._info = info
        return self._info

    async def _file_url(self, area: str, name: str) -> str:
        """Where the server serves ``name``: its ``unchecked`` URL for the area, as the client builds it."""
        key = {"mappings": "mapping_url", "references": "reference_url", "pickles": "pickle_url"}.get(area)
        info = await self.server_info()
        try:
            base = info[key]["unchecked"][self.location.observatory]
        except (KeyError, TypeError):
            base = f"{self.location.url}/unchecked_get/{area}/{self.location.observatory}/"
        return base.rstrip("/") + "/" + names.check_name(name)

    # ----- the Source interface ----------------------------------------------------------------

    async def read(self, area: str, name: str, most: int | None = None) -> bytes:
        """The server's config (``get_server_info``, as a bucket's server_config literal), or a whole file."""
        if area == "config" and name == CONFIG:
            self._info = None  # each read of the config asks again: a retry must not reuse a failed answer
            return (repr(await self.server_info()) + "\n").encode("utf-8")
        part = await self._get(area, name, None, most)
        return b"".join(part.chunks)

    async def read_part(self, area: str, name: str, size: int, span: tuple[int, int] | None = None,
                        checked: bool = False) -> Part:
        """Bytes ``[start, end)`` of a file of ``size`` bytes: exactly those, or ``Transient``/``Missing``.

        ``checked`` asks for a checksum kept with the object: a CRDS server keeps
        none beyond the metadata's sha1, which ``fetch`` checks wherever it is published.
        """
        return await self._get(area, name, span, size)

    async def size(self, area: str, name: str) -> int | None:
        """A file's size (one HEAD), or None where the server has no such file."""
        if area == "pickles":  # a server's clients load contexts from mappings, which it always serves
            return None
        url = await self._file_url(area, name)
        where = self.location.uri(area, name)
        with self._translated(where):
            async with self.session.head(url, allow_redirects=True) as answer:
                if answer.status == 404:
                    return None
                self._check_status(answer.status, where)
                return answer.content_length

    async def list_names(self, area: str, suffix: str) -> list[str]:
        """The names the server's metadata lists (its mappings, for the contexts it holds)."""
        info = await self.server_info()
        if area != "mappings":
            return []
        listed = info.get("mappings")
        if not isinstance(listed, list):
            listed = list(server_config.decode_metadata(info.get("download_metadata")))
        return sorted(str(name) for name in listed if str(name).endswith(suffix))

    async def name_context(self, requested: str) -> str | None:
        """A date-based name (``jwst-2024-01-01T00:00:00``, or a bare date) as the server resolves it
        (``get_context_by_date``), or ``build``: the server's build context for the calibration
        package installed beside crds-job (``get_build_context``), as the client resolves them."""
        obs = self.location.observatory
        if requested.lower() in ("build", f"{obs}-build"):
            return await self._build_context()
        if not server_config.DATE_CONTEXT.search(requested):
            return None
        try:
            return str(await self.call("get_context_by_date", requested, obs))
        except Refused as exc:
            raise UsageError(f"the CRDS server cannot resolve context {requested!r}: {exc.what}",
                             "pin a literal .pmap with --context or CRDS_CONTEXT") from None

    async def _build_context(self) -> str:
        """As the client's ``api.get_build_context``: the context the server names for the installed
        calibration package's version; ``<obs>-edit`` for a development version; else the latest."""
        obs = self.location.observatory
        try:
            version = importlib.metadata.version(CALIBRATION_PACKAGES[obs])
        except (importlib.metadata.PackageNotFoundError, KeyError):
            return "latest"
        if "dev" in version:
            return f"{obs}-edit"
        simple = re.match(r"\d+(\.\d+)*", version)
        try:
            return str(await self.call("get_build_context", obs, simple.group(0) if simple else version))
        except Refused:
            return "latest"

    # ----- one GET ------------------------------------------------------------------------------

    async def _get(self, area: str, name: str, span: tuple[int, int] | None, most: int | None) -> Part:
        """``span`` of a file (all of it without: then at most ``most`` bytes); stalls are ``Transient``."""
        url = await self._file_url(area, name)
        where = self.location.uri(area, name)
        headers = {"Range": f"bytes={span[0]}-{span[1] - 1}"} if span else {}
        want = (span[1] - span[0]) if span else most
        limit = GET_GRACE + (want or 0) / MIN_RATE
        with self._translated(where):
            try:
                async with asyncio.timeout(limit):
                    async with self.session.get(url, headers=headers) as answer:
                        self._check_status(answer.status, where)
                        if span:
                            _check_range(answer, span, most, where)
                        chunks = await _at_most(answer, want, where)
            except TimeoutError:
                raise Transient(f"reading {where} stalled: its bytes came slower than {MIN_RATE} bytes/s on "
                                "average", "check the network and the server, then run the job again") from None
        received = sum(map(len, chunks))
        if span and received != want:  # a whole answer, of another length: not the file published
            raise BodyCorrupt(f"{where} arrived with {received} bytes of the {want} asked for",
                              "the file or its metadata changed on the server: run the job again, or report it")
        return Part(chunks, answer.headers.get("ETag"))

    def _check_status(self, status: int, where: str) -> None:
        """An HTTP status as what it means for the job (2xx passes)."""
        if 200 <= status < 300:
            return
        if status == 404:
            raise Missing(f"{where} is not on the CRDS server (404)",
                          "the server does not serve it: pin another context, or report it to the server's "
                          "maintainers")
        if status in (401, 403):
            raise Denied(f"the CRDS server refused {where} with {status}: it asks for a login",
                         "crds-job, like the crds client, reads public CRDS servers only: check --server / "
                         "CRDS_SERVER_URL, or warm from a mirror the job may read")
        if status in (408, 429) or status >= 500:
            raise Transient(f"the CRDS server kept failing: {status} for {where}",
                            "check the server's status and the network, or run the job again")
        raise S3AccessError(f"the CRDS server answered {status} for {where}",
                            "check --server / CRDS_SERVER_URL; if it is right, report the answer")

    @contextlib.contextmanager
    def _translated(self, where: str) -> Iterator[None]:
        """A failure of the connection as a retryable ``Transient`` (an outage unless TLS refused it)."""
        try:
            yield
        except CrdsJobError:
            raise
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise Transient(f"TLS with the CRDS server failed reading {where}: {exc}",
                            "check the server's certificate and the job's CA bundle (SSL_CERT_FILE)",
                            outage=False) from None
        except _OUTAGES as exc:
            raise Transient(f"the CRDS server could not be reached reading {where}: {type(exc).__name__}: "
                            f"{str(exc)[:120]}", "check the server's URL and the network, or run the job again"
                            ) from None
        except aiohttp.ClientError as exc:  # a proxy's refusal, a redirect loop, a URL that is none: setup
            raise S3AccessError(f"reading {where} from the CRDS server failed: {type(exc).__name__}: "
                                f"{str(exc)[:160]}", "check --server / CRDS_SERVER_URL and HTTPS_PROXY / NO_PROXY"
                                ) from None


#: The server or the network failing (an outage, which a complete cache may stand in for): not a
#: proxy's refusal, a redirect loop or a malformed URL (``aiohttp.ClientResponseError``, ``InvalidURL``).
_OUTAGES = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError,
            aiohttp.ServerTimeoutError, TimeoutError, ConnectionError)


def _check_range(answer: aiohttp.ClientResponse, span: tuple[int, int], size: int | None, where: str) -> None:
    """Refuse, before its body is read, an answer that is not ``span`` of a file of ``size`` bytes."""
    if answer.status != 206:  # the whole file for each part: every part the size of the file, never joined
        raise BucketContentError(f"{where} answered a ranged GET with {answer.status}, not 206: the server does "
                                 "not serve byte ranges", "warm with --part-size and --memory-budget above the "
                                 "largest file (each is then fetched whole), or use another server")
    expected = f"bytes {span[0]}-{span[1] - 1}/{size}"
    found = answer.headers.get("Content-Range", "")
    if found.replace(" ", "") != expected.replace(" ", ""):
        raise BodyCorrupt(f"{where} answered bytes {span[0]}-{span[1] - 1} with {found or 'no Content-Range'}, "
                          f"not {expected}", "the file changed on the server, or a proxy altered the answer: run "
                          "the job again")


async def _at_most(answer: aiohttp.ClientResponse, most: int | None, where: str) -> list[bytes]:
    """The body's chunks, refused (``Oversized``) once it is (or says it is) over ``most`` bytes."""
    def refuse(size: str) -> Exception:
        return Oversized(f"{where} is {size} bytes, over the {most} expected", "the server serves something else "
                         "under this name: report it to its maintainers")

    return await at_most(answer.content.iter_chunked(READ_CHUNK), most, answer.content_length, refuse)


def _decoded(result: Any) -> Any:
    """A result as the client decodes it: a ``crds_encoded`` one inflated (base64 of gzip of JSON)."""
    if isinstance(result, dict) and "crds_encoded" in result:
        try:
            return json.loads(server_config.inflate(str(result["crds_payload"])))
        except (KeyError, ValueError, binascii.Error, zlib.error) as exc:
            raise S3AccessError(f"a CRDS server's encoded answer does not decode: {exc}",
                                "check --server / CRDS_SERVER_URL, or report the answer") from None
    return result
