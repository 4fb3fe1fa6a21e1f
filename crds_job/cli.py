"""``crds-job``: parse, warm, then exec the command (or print the plan).

Everything that can go wrong ends here as one log line on stderr and a
distinct exit code (``errors.ExitCode``); stdout carries nothing of ours
except the plan of ``--dry-run``.
"""

from __future__ import annotations

import gc as _gc

# Importing the AWS SDK builds tens of thousands of objects that live as long as
# the process; the collector ran 117 times while they were built, 80 ms of each
# job's start. So it is paused, and what the import built goes straight to the
# oldest generation (freeze, then unfreeze: nothing is walked), else the first
# collection after the pause would walk it all. Not when the importing program
# has frozen objects of its own: unfreeze would release them too. The collector
# is left on or off as it was found.
_collecting = _gc.isenabled()
_frozen_by_caller = _gc.get_freeze_count()
_gc.disable()
import signal as _signal  # noqa: E402 (after the pause: they too allocate)
import threading as _threading  # noqa: E402

# A SIGINT during these imports (the first half second of every job) would print a traceback of
# the SDK's import, in what must be JSON lines: it ends the process as SIGTERM does, silently.
# Only Python's own handler is set aside, and only while importing; the caller's stays.
_interrupt = _signal.getsignal(_signal.SIGINT)
_quiet = _interrupt is _signal.default_int_handler and _threading.current_thread() is _threading.main_thread()
if _quiet:
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
try:
    import asyncio
    import concurrent.futures
    import contextlib
    import errno
    import fcntl
    import gc
    import json
    import os
    import signal
    import socket
    import sys
    from collections.abc import Awaitable, Callable, Iterator, Sequence
    from typing import Any, TypeVar

    from . import launch, logs, retention, rules
    from . import settings as settings_module
    from .cache import Cache, nearest_existing, out_of_room, still_at, temp_path
    from .errors import CrdsJobError, ExitCode, Interrupted, UsageError
    from .settings import Settings
    from .warm import Outcome, warm
finally:
    if _quiet:
        _signal.signal(_signal.SIGINT, _interrupt)
    if not _frozen_by_caller:
        _gc.freeze()
        _gc.unfreeze()
    if _collecting:
        _gc.enable()

T = TypeVar("T")


@contextlib.contextmanager
def _stopping_on_signals(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], received: list[int]
                         ) -> Iterator[None]:
    """While inside, the stop signals are recorded in ``received`` and cancel ``task`` (the first one only).

    Recorded by a plain handler, the moment Python sees the signal, not by
    ``loop.add_signal_handler``'s callback on a later loop pass, which never
    comes for a signal landing as the warm returns. The wake-up descriptor
    brings the loop out of its wait, whichever thread the kernel chose. On
    the way out the signals are held (``launch.hold_stop_signals``), and one
    Python saw but has not yet handled is handled then: none is lost.
    """
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    loop.add_reader(reader.fileno(), _drain, reader)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def handler(signum: int, _frame: object) -> None:
        if not received:  # a second signal must not cancel the clean-up of the first
            loop.call_soon_threadsafe(task.cancel)
        received.append(signum)

    previous = {signum: signal.signal(signum, handler) for signum in launch.STOP_SIGNALS}
    try:
        yield
    finally:
        launch.hold_stop_signals()  # runs the handler of a signal that came just before
        for signum, old in previous.items():
            signal.signal(signum, old)
        signal.set_wakeup_fd(previous_fd)
        loop.remove_reader(reader.fileno())
        reader.close()
        writer.close()


def _drain(reader: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while reader.recv(4096):
            pass


def run_warm(settings: Settings, log: object) -> Outcome:
    """Run the warm, stopped cleanly by a stop signal (``run_stoppable``)."""
    return run_stoppable(lambda: warm(settings, log))


def run_prune(settings: Settings, log: object) -> int:
    """``--prune``: prune the cache; the report on stdout with ``--dry-run`` (as a warm's plan), else in the log."""
    cache = Cache.open(settings.cache, settings.location.observatory, None)
    done = run_stoppable(lambda: retention.prune(cache, settings.keep_contexts, settings.keep, settings.max_bytes,
                                                 settings.dry_run, log))
    launch.release_stop_signals()
    if settings.dry_run:
        sys.stdout.write(json.dumps({**done.report(), "files": [{"path": path, "size": size}
                                                               for path, size in done.removed]}, indent=1) + "\n")
        sys.stdout.flush()
    log.info("would prune" if settings.dry_run else "pruned",  # type: ignore[attr-defined]
             cache=cache.root, **done.report())
    return ExitCode.OK


def run_stoppable(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work()`` in an event loop that turns SIGINT/SIGTERM/SIGHUP into a clean stop.

    The signal cancels the warm; every file being written removes its temp
    file on the way out, and ``Interrupted`` carries the exit code 128+N.
    Worker threads hold the signals. From the warm's end on they stay held,
    so that none is lost or kills the job half-way through its env file:
    ``launch.exec_command`` looks for one before the exec, and the other ends
    of a run let them go (``launch.release_stop_signals``).
    """

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(initializer=launch.hold_stop_signals))
        task = asyncio.current_task()
        assert task is not None
        received: list[int] = []
        try:
            with _stopping_on_signals(loop, task, received):
                outcome = await work()
        except asyncio.CancelledError:
            if received:
                raise Interrupted(received[0]) from None
            raise
        if received:  # came as the warm returned: too late to cancel it, not too late to stop
            raise Interrupted(received[0], warm_done=True)
        return outcome

    return asyncio.run(guarded())


def _env_file_error(path: str, why: str) -> UsageError:
    return UsageError(f"cannot write the env file {path}: {why}",
                      "give --env-file a path the job may write, e.g. in the cache volume")


def check_env_file(path: str) -> None:
    """Refuse, before the warm, an env file the job could not write (``write_env_file`` writes it after)."""
    target = os.path.abspath(path)
    if os.path.isdir(target):
        raise _env_file_error(path, os.strerror(errno.EISDIR))
    folder = nearest_existing(os.path.dirname(target))
    if not os.path.isdir(folder):
        raise _env_file_error(path, os.strerror(errno.ENOTDIR))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _env_file_error(path, os.strerror(errno.EACCES))


def write_env_file(path: str, text: str) -> None:
    """Write the env file atomically: a reader never sees half of it.

    Through one temp file per env file (``temp_path``), locked while written:
    a job killed before its rename leaves that one file, which the next job
    writing the same env file takes over, not one more each time.
    """
    temp = temp_path(os.path.abspath(path))
    handle = None
    try:
        os.makedirs(os.path.dirname(temp), exist_ok=True)
        while True:  # another job writing the same file: after it, and never into the file it renamed
            handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            fcntl.flock(handle, fcntl.LOCK_EX)
            if still_at(handle, temp):
                break
            os.close(handle)
            handle = None
        os.ftruncate(handle, 0)
        os.write(handle, text.encode(errors="surrogateescape"))  # a path's bytes as the OS gave them
        os.fchmod(handle, 0o644)
        os.replace(temp, path)
    except BaseException as exc:
        if handle is not None and os.path.exists(temp):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise out_of_room(exc, path) or _env_file_error(path, str(exc.strerror)) from exc
        raise
    finally:
        if handle is not None:
            os.close(handle)


def _fail(log: object, error: CrdsJobError) -> int:
    log.error(str(error), error=type(error).__name__, exit_code=int(error.exit_code))  # type: ignore[attr-defined]
    return int(error.exit_code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run crds-job; returns the exit code (the command's own, once exec'd, is never seen here)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ
    boot_format = environ.get(settings_module.OPTION_BY_NAME["log_format"].env, "json")
    logs.configure("console" if boot_format.strip().lower() == "console" else "json")
    log = logs.get_logger()
    try:
        settings = settings_module.parse(argv, environ)
    except UsageError as error:
        return _fail(log, error)
    logs.configure(settings.log_format, settings.log_level)
    log = logs.get_logger(observatory=settings.observatory, environment=settings.environment)
    log.info("starting", **settings.describe())
    for doubt in settings.doubts():
        log.warning(doubt)
    try:
        if settings.command and not settings.dry_run:  # before the warm, not after many GB of it
            launch.check_startable(settings.command, environ)
        if settings.env_file and not settings.dry_run:
            check_env_file(settings.env_file)
        if settings.prune:
            return run_prune(settings, log)
        outcome = run_warm(settings, log)
        if settings.dry_run:
            if settings.command:  # a dry run left set (CRDS_JOB_DRY_RUN in shared settings) must not pass unseen
                log.warning("a dry run: the command was not run", command=list(settings.command))
            launch.release_stop_signals()  # nothing left to protect: a signal ends the job as it would any tool
            try:
                sys.stdout.write(json.dumps(outcome.report(), indent=1) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:  # the reader (``| head``) has seen enough: not a failure of ours
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at the exit's flush
            return ExitCode.OK
        changes = launch.crds_environment(settings.location, outcome.cache.root, outcome.context,
                                          outcome.cache.mode, settings.allow_fetch,
                                          pickled=outcome.plan.form == rules.PICKLE, server=outcome.server)
        if settings.env_file:
            write_env_file(settings.env_file, launch.shell_script(changes))
            log.info("wrote the command's CRDS environment", env_file=settings.env_file)
        if not settings.command:
            launch.release_stop_signals()
            return ExitCode.OK
        log.info("exec", command=list(settings.command), context=outcome.context,
                 offline=not settings.allow_fetch)
        launch.exec_command(settings.command, launch.apply(environ, changes))
    except CrdsJobError as error:
        return _fail(log, error)
    except Exception as error:  # a bug: say so with the traceback, and a code of its own
        log.exception("internal error", error=type(error).__name__)
        return ExitCode.INTERNAL


def console_main() -> None:
    # The modules outlive the warm: frozen, they are not walked by the full
    # collections the warm's own garbage may set off.
    gc.freeze()
    try:
        code = main()
    except KeyboardInterrupt:  # before the warm's own handlers: one line, not a traceback
        logs.get_logger().error("interrupted by SIGINT before the warm began", exit_code=128 + signal.SIGINT)
        code = 128 + signal.SIGINT
    # Teardown would walk every object the AWS SDK built (a fifth of a second per
    # job, measured in bench/) only to free memory that the exit frees anyway.
    gc.freeze()
    sys.exit(code)


# The package's public names, bound now that cli holds them all (see ``crds_job.__init__``).
from . import _bind  # noqa: E402

_bind()
