"""Moving bytes from the bucket into the cache, concurrently and verified.

Every file is fetched as one GET, or, when larger than the part size, as
ranged GETs in flight together. Two bounds hold whatever the file sizes:
requests in flight (``concurrency``) and bytes held in memory
(``memory_budget``: a part is fetched only once its bytes fit). Parts are
written in order, as the pieces the socket delivered (never joined: a copy
of every byte on the event loop was the largest cost after the transfer),
and the sha1 is computed as they are written (in a worker thread, beside the
event loop), so no file is ever read twice nor held whole. A file's disk
blocks are reserved (where the filesystem can) before its first byte is
fetched, and unless nothing is to survive a crash (``--no-fsync``), each
part's writeback starts as soon as it is written: an fsync then waits for the
last part only, and a warm of many GB never piles up dirty pages for the
kernel to throttle it on.

A file whose body is cut short or does not match its size and sha1 is
fetched again, up to ``retries`` times with jittered exponential backoff;
after that the job stops with an integrity or S3 error, and the cache keeps
only what was verified. A request S3 throttles uses no attempt: S3 asks for
patience, not for giving up, so it is tried again, paced, for as long as some
file (or part of a large one) completes within ``--patience`` seconds. A file that fails
for good lets the files already in flight finish (a rerun resumes from
them); files not yet started are not started.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .cache import Cache, FileId, out_of_room, sha1_of
from .durability import Durability
from .errors import RETRYABLE, BucketContentError, CacheError, CrdsJobError, IntegrityError
from .launch import hold_stop_signals
from .plan import Entry
from .progress import Progress
from .remote import BodyCorrupt, Part, Transient, Unreachable
from .source import Source

BACKOFF_BASE = 0.5
BACKOFF_CAP = 20.0
#: Threads for hashing and writing: sha1 and write() release the GIL.
DISK_THREADS = 4


class _NotStarted(Exception):
    """A file not started because another failed for good first."""


def _retryable(failure: BaseException) -> bool:
    return isinstance(failure, CrdsJobError) and failure.exit_code in RETRYABLE


def _worst(done: set[asyncio.Task[bool]]) -> BaseException | None:
    """The failure among finished fetches that decides the job's end: one no rerun fixes first.

    A fetch cancelled without the warm being cancelled is a bug: never taken for a file fetched.
    """
    failures = []
    for task in done:
        if task.cancelled():
            failures.append(RuntimeError("a file's fetch was cancelled while the warm was not"))
        elif task.exception() is not None and not isinstance(task.exception(), _NotStarted):
            failures.append(task.exception())
    return min(failures, key=_retryable, default=None)  # False (not retryable) sorts first


class Mismatch(Exception):
    """The bytes received are not the file the bucket publishes (retryable).

    ``received``: what came instead (its size and sha1), to tell a transfer
    that damages bytes differently each time from an object that differs.
    """

    def __init__(self, message: str, received: tuple[int, str]) -> None:
        super().__init__(message)
        self.received = received


class ByteBudget:
    """A first-come, first-served semaphore counted in bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.available = capacity
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, amount: int) -> None:
        amount = min(amount, self.capacity)
        if not self._waiters and self.available >= amount:
            self.available -= amount
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((amount, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(amount)  # granted just as we were cancelled
            else:
                with contextlib.suppress(ValueError):  # a release() in between may have dropped it
                    self._waiters.remove((amount, future))
                self.release(0)  # the waiters it held back may fit now
            raise

    def release(self, amount: int) -> None:
        self.available += min(amount, self.capacity)
        while self._waiters and self._waiters[0][0] <= self.available:
            amount, future = self._waiters.popleft()
            if not future.done():
                self.available -= amount
                future.set_result(None)


def ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """The [start, end) byte ranges a file of ``size`` is fetched in."""
    return [(start, min(start + part_size, size)) for start in range(0, size, part_size)] or [(0, 0)]


def backoff(attempt: int) -> float:
    """Full-jitter exponential backoff before ``attempt`` (2, 3, ...)."""
    return random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 2)))


class Tries:
    """The attempts one file has left. A failed part and a failed whole file each use one.

    A part that fails in transit is fetched again on its own: its bytes are
    hashed and written only once whole, in order, so the file's running
    sha1 stays good. Refetching the whole file for it would fail a file of
    many parts over and over on a network that drops one request in a few
    hundred. Bytes that arrive whole but wrong (size, sha1, another version
    between two parts) need the whole file again. One count for both keeps
    a file's attempts at ``--retries`` (so each part's requests too), not
    ``--retries`` whole-file attempts each with ``--retries`` per part.

    The count is of failures, not of failed requests: requests already in
    flight when an attempt was counted (one blip resets every part of a
    file at once) fail within that attempt, and wait out its backoff
    without using another. Only a request started since counts anew.
    """

    def __init__(self, fetcher: Fetcher, entry: Entry) -> None:
        self.fetcher = fetcher
        self.entry = entry
        self.attempt = 1
        self._resume_at = 0.0  # the loop time the current attempt's backoff ends
        self._wrong: list[object] = []  # what came wrong at each attempt: the same each time is the object

    async def again(self, failure: Exception, started: int, part: tuple[int, int] | None = None) -> None:
        """Wait out the backoff before the next attempt after ``failure``; raise if none is left.

        ``started``: the attempt the failed request was made in (``attempt`` as it started).
        """
        loop = asyncio.get_running_loop()
        if isinstance(failure, Transient) and failure.throttled:
            await self.fetcher.slow_down(failure)
            return
        if started < self.attempt:  # in flight when this attempt was counted: the same failure
            await asyncio.sleep(max(0.0, self._resume_at - loop.time()))
            return
        retries = self.fetcher.retries
        # A whole file's wrong answer, not a part's: which part fails first in an attempt is timing,
        # and would make the verdict below timing too.
        if isinstance(failure, (Mismatch, BodyCorrupt)) and part is None:
            self._wrong.append(failure.received if isinstance(failure, Mismatch) else str(failure))
        if self.attempt >= retries:
            if len(self._wrong) == retries > 1 and len(set(self._wrong)) == 1:
                # The very same wrong answer each time: no damage on the way (HTTPS would have failed
                # instead, and damage differs each time), but the object, its metadata or the server:
                # final, not worth the job runner's retries.
                raise BucketContentError(
                    f"{getattr(failure, 'what', failure)}, the same at each of {retries} attempts: the object is "
                    "not the one its metadata describes",
                    "pin another context, or report it to the bucket's maintainers",
                ) from failure
            if isinstance(failure, (Mismatch, BodyCorrupt)):
                raise IntegrityError(
                    f"{failure}; still wrong after {retries} attempts",
                    "the bucket's object or its metadata is corrupt: pin another context or report it",
                ) from failure
            if isinstance(failure, Transient):
                raise failure.final() from failure
            raise failure
        self.attempt += 1
        delay = backoff(self.attempt)
        self._resume_at = loop.time() + delay
        self.fetcher.progress.retries += 1
        where = {} if part is None else {"part": f"bytes {part[0]}-{part[1] - 1}"}
        self.fetcher.log.warning("retrying", file=self.entry.name, attempt=self.attempt, of=retries, **where,
                                 delay_s=round(delay, 2), error=str(failure))
        await asyncio.sleep(delay)


class Fetcher:
    """Fetches entries from one bucket into one cache, within the job's bounds."""

    def __init__(
        self, bucket: Source, settings: Any, progress: Progress, log: Any, durability: Durability
    ) -> None:
        self.bucket = bucket
        self.part_size = min(settings.part_size, settings.memory_budget)
        self.retries = max(1, settings.retries)  # at least the one attempt, whoever built the settings
        self.durability = durability  # which files are fsync'ed before their rename
        self.progress = progress
        self.log = log
        self.patience = settings.patience  # seconds of throttling with no file completed before giving up
        self.last_progress = time.monotonic()
        self.stopping = False  # a file failed for good: files not yet started are not started
        self._throttled_in_a_row = 0
        self._requests = asyncio.Semaphore(settings.concurrency)
        self._files = asyncio.Semaphore(settings.concurrency)
        self._budget = ByteBudget(settings.memory_budget)
        self._pool = concurrent.futures.ThreadPoolExecutor(DISK_THREADS, thread_name_prefix="crds-job-disk",
                                                           initializer=hold_stop_signals)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def progressed(self) -> None:
        """A part or a file is done: the job is making progress, whatever S3 throttles meanwhile."""
        self.last_progress = time.monotonic()
        self._throttled_in_a_row = 0

    async def slow_down(self, failure: Transient) -> None:
        """Wait before trying a throttled request again; give up once nothing completed for ``patience`` s.

        The wait grows with the throttling answers since the last part or file completed
        (full jitter, up to ``BACKOFF_CAP``): requests that all wait the same
        would come back together. The SDK's adaptive rate paces the tries too.
        """
        if self.stopping:  # the warm is failing anyway: no reason to wait for S3
            raise failure.final() from failure
        idle = time.monotonic() - self.last_progress
        if idle > self.patience:
            raise Unreachable(f"S3 kept throttling the job: no file (nor part of one) completed in the last "
                              f"{idle:.0f} s "
                              f"({self.progress.throttled} throttled answers); last: {failure.what}",
                              "run fewer jobs at once against this bucket's prefix, or raise --patience "
                              "(CRDS_JOB_PATIENCE); a rerun resumes from the verified files") from failure
        self._throttled_in_a_row += 1
        self.progress.throttled += 1
        if self.progress.throttled == 1 or self.progress.throttled % 100 == 0:
            self.log.warning("S3 is throttling the job: slowing down", throttled=self.progress.throttled,
                             patience_s=self.patience, error=failure.what)
        await asyncio.sleep(backoff(min(self._throttled_in_a_row + 1, 8)))

    async def in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run blocking disk work in the pool; if cancelled, let it finish first.

        A thread cannot be stopped, and it may be writing to a descriptor the
        caller is about to close: returning before it ends could let it write
        into whatever file reuses that descriptor.
        """
        future = self._pool.submit(function, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            concurrent.futures.wait([future])
            raise

    # ----- one pass over a file's bytes -------------------------------------------------------

    async def _part(self, entry: Entry, start: int, end: int, tries: Tries | None) -> Part:
        """Bytes ``[start, end)`` of ``entry`` (all of it without ``tries``, else a part retried on its own)."""
        span = None if tries is None else (start, end)
        while True:
            started = tries.attempt if tries is not None else 0
            try:
                async with self._requests:  # the SDK's check only without a sha1, which checks end to end
                    part = await self.bucket.read_part(entry.area, entry.name, entry.size, span,
                                                       checked=not entry.sha1)
                break
            except (Transient, BodyCorrupt) as exc:
                if tries is None:
                    raise
                await tries.again(exc, started, (start, end))
        self.progress.bytes_transferred += end - start
        if tries is not None:  # a part of a large file: progress too
            self.progressed()
        return part

    async def _stream(self, entry: Entry, sink: Callable[[list[bytes]], None], tries: Tries) -> str:
        """Pass ``entry``'s bytes, in order, to ``sink`` (run in the disk pool); return their sha1."""
        digest = hashlib.sha1()

        def hashed(chunks: list[bytes]) -> None:
            for chunk in chunks:
                digest.update(chunk)
            sink(chunks)

        spans = ranges(entry.size, self.part_size)
        if len(spans) == 1:
            await self._budget.acquire(entry.size)
            try:
                part = await self._part(entry, 0, entry.size, None)
                await self.in_thread(hashed, part.chunks)
            finally:
                self._budget.release(entry.size)
            return digest.hexdigest()
        # Parts start in order, each once its bytes fit in the budget, and are
        # written in order: the part being waited for always holds its budget,
        # so the pipeline cannot deadlock however many files share the budget.
        queue: asyncio.Queue[tuple[asyncio.Task[Part], int] | None] = asyncio.Queue()

        async def produce() -> None:
            for start, end in spans:
                await self._budget.acquire(end - start)
                task = asyncio.ensure_future(self._part(entry, start, end, tries))
                await queue.put((task, end - start))
            await queue.put(None)

        producer = asyncio.ensure_future(produce())
        held: list[tuple[asyncio.Task[Part], int]] = []
        versions: set[str | None] = set()  # the ETags the parts came with
        try:
            while (item := await queue.get()) is not None:
                task, amount = item
                held.append(item)
                part = await task
                versions.add(part.etag)
                if len(versions) > 1:  # replaced in the bucket between two GETs: never splice the two
                    raise BodyCorrupt(f"{entry.name} changed in the bucket while its parts were read",
                                      "run the job again")
                await self.in_thread(hashed, part.chunks)
                held.remove(item)
                self._budget.release(amount)
            await producer
        finally:
            producer.cancel()
            while not queue.empty():
                item = queue.get_nowait()
                if item is not None:
                    held.append(item)
            for task, amount in held:
                task.cancel()
                self._budget.release(amount)
            await asyncio.gather(producer, *(task for task, _ in held), return_exceptions=True)
        return digest.hexdigest()

    @staticmethod
    def _check(entry: Entry, size: int, sha1: str) -> None:
        if size != entry.size:
            raise Mismatch(f"{entry.name} arrived with {size} bytes, the bucket publishes {entry.size}", (size, sha1))
        if not entry.accepts_sha1(sha1):
            raise Mismatch(f"{entry.name} arrived with sha1 {sha1}, the bucket publishes {entry.sha1}", (size, sha1))

    # ----- retries ----------------------------------------------------------------------------

    async def with_retries(self, entry: Entry, attempt_once: Callable[[Tries], Any]) -> Any:
        """Run ``attempt_once(tries)`` until it succeeds, retrying mismatches and transient S3 errors."""
        tries = Tries(self, entry)
        while True:
            started = tries.attempt
            try:
                return await attempt_once(tries)
            except (Mismatch, BodyCorrupt, Transient) as exc:
                await tries.again(exc, started)

    async def request(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """One request that fetches no file (the config, a HEAD, a JSON-RPC call), retried as a file's
        are: transient failures within ``--retries``, throttling within ``--patience``."""
        return await self.with_retries(Entry(name=what, kind="config", size=-1, sha1=""), lambda _tries: call())

    # ----- the two uses -----------------------------------------------------------------------

    async def fetch_bytes(self, entry: Entry) -> bytes:
        """The verified bytes of a (small) file, e.g. a mapping or the bucket's config."""

        async def once(tries: Tries) -> bytes:
            chunks: list[bytes] = []
            sha1 = await self._stream(entry, chunks.extend, tries)
            data = b"".join(chunks)
            self._check(entry, len(data), sha1)
            return data

        data = await self.with_retries(entry, once)
        self.progressed()
        return data

    async def fetch_file(self, entry: Entry, cache: Cache, stale: FileId | None = None) -> bool:
        """Put ``entry`` in ``cache``, verified. False if another writer put it there first.

        ``stale`` is the cached copy whose sha1 was found wrong: it is
        replaced, unless another writer has replaced it already.
        """
        async with self._files:  # bounds open temp files, not only requests
            if self.stopping:
                raise _NotStarted  # fetch_all reports the failure that stopped the warm
            return await self._fetch_file(entry, cache, stale)

    async def _fixed(self, path: str, entry: Entry) -> bool:
        """Whether the file another writer put in place of a corrupt copy has the right sha1.

        Checked, not assumed from its new identity: on filesystems whose inode
        numbers are not stable (some FUSE mounts) the corrupt copy itself may
        seem new. Only on this rare path, and under the lock, so nothing changes it meanwhile.
        """
        if not entry.sha1:  # nothing to check it against: its size was checked already
            return True
        digest, _ = await self.in_thread(sha1_of, path)
        return entry.accepts_sha1(digest)

    async def _fetch_file(self, entry: Entry, cache: Cache, stale: FileId | None) -> bool:
        final = cache.path(entry)
        claim = await cache.claim(final, waiting=lambda: self.log.info(
            "waiting for another writer of a file: a warm sharing the cache, maybe stopped", file=entry.name))
        if self.stopping:  # the warm failed while this one waited for the lock: not started
            claim.release()
            raise _NotStarted
        try:
            if cache.holds(final, entry.size, stale) and (stale is None or await self._fixed(final, entry)):
                claim.release()  # another process finished it while we waited
                self.progress.files_present += 1
                self.progress.bytes_present += entry.size
                self.progressed()
                return False
        except BaseException:
            claim.release()
            raise

        fsync = self.durability.needs_fsync(final)
        early = fsync or self.durability.writes_back_early

        async def once(tries: Tries) -> None:
            os.lseek(claim.fd, 0, os.SEEK_SET)
            os.ftruncate(claim.fd, 0)
            await self.in_thread(claim.reserve, entry.size)
            sha1 = await self._stream(entry, lambda chunks: claim.append(chunks, flush_early=early), tries)
            self._check(entry, os.fstat(claim.fd).st_size, sha1)

        try:
            await self.with_retries(entry, once)
            await self.in_thread(claim.commit, fsync)
        except OSError as exc:
            raise out_of_room(exc, final) or CacheError(f"cannot write {final}: {exc.strerror}",
                                                      "check the cache volume") from exc
        finally:
            claim.release()  # a no-op once committed
        self.progress.files_fetched += 1
        self.progress.bytes_fetched += entry.size
        self.progressed()
        return True


async def fetch_all(
    fetcher: Fetcher, cache: Cache, entries: list[Entry], stale: Mapping[str, FileId]
) -> None:
    """Fetch every entry (``stale``: the corrupt cached copies, by name).

    The first failure stops the warm. One a rerun may get past (S3 out of
    reach, bytes damaged on the way: ``errors.RETRYABLE``) lets the files in
    flight finish, so the rerun has less to do; any other (a full disk, a
    cache that cannot be written) cancels them at once.
    """
    tasks = [asyncio.ensure_future(fetcher.fetch_file(entry, cache, stale.get(entry.name))) for entry in entries]
    if not tasks:
        return
    fetcher.progressed()  # the patience with throttling counts from here, not from the planning before
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failure = _worst(done)
        if failure is None:
            return
        fetcher.stopping = True
        while pending and _retryable(failure):  # let the files in flight finish, unless something worse comes
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            worse = _worst(done)
            if worse is not None and not _retryable(worse):
                failure = worse
        raise failure
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

