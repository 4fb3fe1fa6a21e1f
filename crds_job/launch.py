"""Handing over to the calibration command: its CRDS environment, then exec.

By default the command's crds works from the warmed cache alone: read-only,
a "serverless" server URL (the client then makes no JSON-RPC call), and none
of the S3 variables (with ``CRDS_CONFIG_URI`` left set the client re-reads
the bucket's config on every run). ``--allow-fetch`` instead exports what
``crds_s3_set`` would, so that a cache miss is fetched from S3 by crds itself.

The command replaces our process (``execvpe``): its signals and exit code are
its own, and nothing of ours runs after it starts. It starts with the signal
dispositions a process started by a shell has: Python ignores SIGPIPE and
SIGXFSZ, and an ignored signal stays ignored across exec, where a
non-interactive shell cannot undo it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from .environments import Location
from .errors import CommandNotExecutable, CommandNotFound, CrdsJobError, Interrupted

#: What crds_s3_set exports to make the client read S3: removed for offline runs.
S3_VARIABLES = (
    "CRDS_MODE", "CRDS_S3_ENABLED", "CRDS_S3_RETURN_URI", "CRDS_S3_BUCKET", "CRDS_S3_PREFIX",
    "CRDS_CONFIG_URI", "CRDS_MAPPING_URI", "CRDS_REFERENCE_URI", "CRDS_PICKLE_URI",
    "CRDS_DOWNLOAD_MODE", "CRDS_DOWNLOAD_PLUGIN", "CRDS_REF_SUBDIR_MODE",
)
#: Overrides of single cache folders: they would send crds elsewhere than CRDS_PATH.
PATH_OVERRIDES = tuple(
    f"CRDS_{part}{suffix}"
    for part in ("PATH", "MAPPATH", "REFPATH", "CFGPATH", "PICKLEPATH")
    for suffix in ("_SINGLE", "")
    if (part, suffix) != ("PATH", "")
)
#: The signals that stop a warm cleanly (``cli.run_warm``); from the warm's end to the exec they wait.
#: One ignored when we started (``nohup``, ``&`` in a script) is left alone: ignored, it stays ignored
#: for the command too, as a shell's ``exec`` would leave it.
STOP_SIGNALS = tuple(signum for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                     if signal.getsignal(signum) != signal.SIG_IGN)
#: Ignored by Python itself: given back their default action for the command.
_PYTHON_IGNORES = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))

#: HST: the IRAF-style folders (``jref$n3o1022nj_drk.fits``) that the calibration programs (calacs.e,
#: calwf3.e...) read reference names from the dataset's header with, and the instrument of each
#: (crds's ``hst.siname``/``hst.locate``). crds bestrefs --update-bestrefs writes these names.
HST_REFERENCE_FOLDERS = {"iref": "wfc3", "jref": "acs", "lref": "cos", "nref": "nicmos", "oref": "stis",
                         "uref": "wfpc2"}

#: crds_s3_get's command template (the client fills in the ${...} fields itself).
S3_PLUGIN = "crds_s3_get ${FILENAME} -d ${OUTPUT_PATH} -s ${FILE_SIZE} -c ${FILE_SHA1SUM}"


def crds_environment(
    location: Location, cache: str, context: str, ref_mode: str, allow_fetch: bool, pickled: bool = False,
    server: str | None = None,
) -> dict[str, str | None]:
    """The CRDS variables to set (str) or unset (None) for the command (for HST, also ``jref`` & co.).

    ``pickled``: the cache holds the context as a pickle, not as mappings. crds then loads it from
    the cache (``CRDS_USE_PICKLED_CONTEXTS``, and no ``CRDS_PICKLE_URI``, with which it would read the
    bucket's copy again, unchecked, on every run), even when it may fetch references itself.
    ``server``: the files came from this CRDS server, which ``allow_fetch`` then lets crds read for
    its misses (in its own server mode, with no S3 variable).
    """
    changes: dict[str, str | None] = dict.fromkeys(PATH_OVERRIDES + S3_VARIABLES)
    changes.update({
        "CRDS_PATH": cache,
        "CRDS_CONTEXT": context,
        "CRDS_OBSERVATORY": location.observatory,
        "CRDS_SERVER_URL": location.serverless_url,
    })
    if pickled:
        changes["CRDS_USE_PICKLED_CONTEXTS"] = "1"
    if location.observatory == "hst":
        references = os.path.join(cache, "references", "hst", "")
        changes.update({variable: os.path.join(references, instrument, "") if ref_mode == "instrument" else references
                        for variable, instrument in HST_REFERENCE_FOLDERS.items()})
    if allow_fetch and server is not None:
        changes.update({"CRDS_READONLY_CACHE": None, "CRDS_SERVER_URL": server})
    elif allow_fetch:
        changes.update({
            "CRDS_READONLY_CACHE": None,
            "CRDS_MODE": "s3",
            "CRDS_S3_ENABLED": "1",
            "CRDS_S3_RETURN_URI": "0",
            "CRDS_S3_BUCKET": location.bucket,
            "CRDS_S3_PREFIX": location.prefix,
            "CRDS_CONFIG_URI": location.uri("config"),
            "CRDS_MAPPING_URI": location.uri("mappings"),
            "CRDS_REFERENCE_URI": location.uri("references"),
            "CRDS_DOWNLOAD_MODE": "plugin",
            "CRDS_DOWNLOAD_PLUGIN": S3_PLUGIN,
            "CRDS_REF_SUBDIR_MODE": ref_mode,
        })
    else:
        changes["CRDS_READONLY_CACHE"] = "1"
    return changes


def apply(environ: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """``environ`` with ``changes`` applied (None unsets)."""
    env = dict(environ)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def shell_script(changes: Mapping[str, str | None]) -> str:
    """``changes`` as POSIX shell lines, for ``. FILE`` in another container."""
    lines = ["# CRDS environment written by crds-job: source it before running crds"]
    for name, value in sorted(changes.items()):
        lines.append(f"unset {name}" if value is None else f"export {name}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


def hold_stop_signals() -> None:
    """Make the stop signals wait, in the calling thread: they are for the event loop, or the command."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def release_stop_signals() -> None:
    """Let the stop signals act again, with their default action: one held meanwhile ends the process now."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def stop_signal_pending() -> int | None:
    """A stop signal that arrived while held, if any: the job is to stop, not to start the command."""
    pending = signal.sigpending() & set(STOP_SIGNALS)
    return min(pending) if pending else None


def exec_command(command: Sequence[str], env: Mapping[str, str]) -> NoReturn:
    """Replace this process with ``command``; raise only if it cannot start, or a stop signal came first.

    The stop signals are held since the warm ended (``cli.run_warm``): one that
    came meanwhile stops the job here; one that comes now reaches the command,
    or, in the instant before it starts, ends this process as it would end it.
    """
    for stream in (sys.stdout, sys.stderr):  # either may be closed, or a pipe nobody reads
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    waiting = stop_signal_pending()
    if waiting is not None:
        raise Interrupted(waiting, warm_done=True)
    for signum in _PYTHON_IGNORES:
        signal.signal(signum, signal.SIG_DFL)
    release_stop_signals()
    try:
        os.execvpe(command[0], list(command), dict(env))
    except OSError as exc:
        for signum in _PYTHON_IGNORES:  # ours again, while we say why the command did not start
            signal.signal(signum, signal.SIG_IGN)
        raise _cannot_start(command, env, exc) from None
    raise AssertionError("unreachable: execvpe returns only by raising")


def check_startable(command: Sequence[str], env: Mapping[str, str]) -> None:
    """Refuse, before the warm, a command that is not there (127) or not executable (126).

    exec checks again (and finds what only it can, such as a missing #!
    interpreter); this spares a warm of many GB, retried by the Job's
    backoffLimit, for a typo or the wrong image.
    """
    program = command[0]
    if os.sep in program:
        found = program if os.path.lexists(program) else None
    else:
        found = shutil.which(program, mode=os.F_OK, path=env.get("PATH", os.defpath))
    if found is None:
        raise _cannot_start(command, env, FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))
    if os.path.isdir(found) or not os.access(found, os.X_OK):
        raise _cannot_start(command, env, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))


def _cannot_start(command: Sequence[str], env: Mapping[str, str], exc: OSError) -> CrdsJobError:
    """Why ``command`` could not be exec'd, as the error to raise."""
    if isinstance(exc, FileNotFoundError):
        if shutil.which(command[0], path=env.get("PATH", os.defpath)):  # there, yet ENOENT: its #! interpreter
            return CommandNotExecutable(f"command {command[0]!r} could not start: the interpreter its #! line "
                                        "names does not exist", "fix the script's first line, or the image")
        return CommandNotFound(f"command {command[0]!r} not found", "check the command and the image's PATH")
    if exc.errno == errno.ENOEXEC:  # a script without its #! line, which a shell would run itself
        return CommandNotExecutable(f"command {command[0]!r} could not start: it is neither a program nor a "
                                    "script with a #! line", "give the script a first line such as #!/bin/sh, "
                                    "or run it through its interpreter (sh SCRIPT)")
    return CommandNotExecutable(f"command {command[0]!r} could not start: {exc.strerror}",
                                "check the command's permissions and the image")
