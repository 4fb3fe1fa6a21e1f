"""Every way crds-job can fail, and the exit code each one gets.

A job runner (Kubernetes, AWS Batch, a shell pipeline) decides what to do from
the exit code alone: retry an S3 outage, never retry a typo. So each failure
family has one code, listed here and nowhere else. The codes follow
sysexits(3) where one fits, which keeps them clear of the small codes that
calibration commands use (1, 2) and of the shell's (126, 127, 128+N).

Every error carries two sentences: what is wrong, and what to do about it.
``cli.main`` logs them as one line and exits with the error's code.
"""

from __future__ import annotations

import enum
import errno
import signal


class ExitCode(enum.IntEnum):
    """The process exit codes of crds-job (the command's own pass through exec)."""

    OK = 0
    USAGE = 64  # EX_USAGE: a bad argument or environment value
    BUCKET_CONTENT = 65  # EX_DATAERR: the bucket's config or mappings are unusable
    DATASET = 66  # EX_NOINPUT: an input dataset is missing or unreadable
    S3_ACCESS = 69  # EX_UNAVAILABLE: endpoint, credentials, permission or object missing
    INTERNAL = 70  # EX_SOFTWARE: a bug in crds-job itself
    DISK_FULL = 71  # EX_OSERR: the cache's filesystem has too little room
    CACHE = 73  # EX_CANTCREAT: cache unwritable, read-only yet incomplete, or unsafe
    INTEGRITY = 74  # EX_IOERR: a file's size or sha1 never matched, after every retry
    COMMAND_NOT_EXECUTABLE = 126  # as a shell reports it
    COMMAND_NOT_FOUND = 127  # as a shell reports it
    INTERRUPTED_SIGHUP = 128 + signal.SIGHUP  # 129
    INTERRUPTED_SIGINT = 128 + signal.SIGINT  # 130
    INTERRUPTED_SIGTERM = 128 + signal.SIGTERM  # 143


#: Codes that a job runner may retry: the same job can succeed next time.
RETRYABLE = (ExitCode.S3_ACCESS, ExitCode.INTEGRITY)

#: Codes of a failed warm that no other attempt can fix: a job runner should stop at once.
FINAL = (ExitCode.USAGE, ExitCode.BUCKET_CONTENT, ExitCode.DATASET, ExitCode.DISK_FULL, ExitCode.CACHE)

#: What each code means to the person reading a failed job (the table of docs/exit-codes.md).
MEANING = {
    ExitCode.OK: "the cache is warm (and no command was given)",
    ExitCode.USAGE: "bad argument or environment value: unknown observatory/environment, a context "
                    "that cannot be resolved or is not in the bucket, an unknown instrument, a pickled context "
                    "with --no-pickles or without crds installed",
    ExitCode.BUCKET_CONTENT: "the bucket's server_config, a mapping or a context's pickle is unusable (malformed, "
                             "unsafe names, files missing from its metadata, a pickle crds cannot load), or a "
                             "file came the same wrong way at every attempt",
    ExitCode.DATASET: "an input dataset (--datasets, or found in COMMAND) is missing, unreadable, or of an "
                      "instrument the context does not cover",
    ExitCode.S3_ACCESS: "S3 or the CRDS server unreachable or refusing: no or expired credentials, access "
                        "denied, no such bucket, an object missing, a server asking for a login, throttling or 5xx "
                        "that outlasted the retries (a source unreachable with a cache already complete for the "
                        "job is no failure: the command runs offline, unless --require-source)",
    ExitCode.INTERNAL: "a bug in crds-job (the log line carries the traceback), or crds dying while it chooses "
                       "a selective warm's references (killed, e.g. out of memory, or crashed), or killed by "
                       "SIGKILL (out of memory) while it loads a context's pickle",
    ExitCode.DISK_FULL: "the cache's filesystem is too small for the plan, or filled up during the warm",
    ExitCode.CACHE: "the cache cannot be written, is read-only yet incomplete, has another layout, "
                    "or holds a symbolic link",
    ExitCode.INTEGRITY: "a file's size or sha1 never matched the bucket's metadata, after every retry",
    ExitCode.COMMAND_NOT_EXECUTABLE: "the command exists but cannot be executed",
    ExitCode.COMMAND_NOT_FOUND: "the command is not on PATH",
    ExitCode.INTERRUPTED_SIGHUP: "interrupted by SIGHUP (its terminal went away) before the command started "
                                 "(temp files removed)",
    ExitCode.INTERRUPTED_SIGINT: "interrupted by SIGINT before the command started (temp files removed)",
    ExitCode.INTERRUPTED_SIGTERM: "interrupted by SIGTERM before the command started (temp files removed)",
}


def markdown_table() -> str:
    """The exit-code table of docs/exit-codes.md, generated from MEANING (a test keeps them equal)."""
    rows = ["| code | name | meaning | retry? |", "| --- | --- | --- | --- |"]
    for code in ExitCode:
        retry = "yes" if code in RETRYABLE else "no"
        rows.append(f"| {int(code)} | `{code.name}` | {MEANING[code]} | {retry} |")
    return "\n".join(rows)


class CrdsJobError(Exception):
    """A failure crds-job understands: it stops the job with ``exit_code``."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, what: str, todo: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.todo = todo

    def __str__(self) -> str:
        return f"{self.what}; {self.todo}" if self.todo else self.what


class UsageError(CrdsJobError):
    """The job was asked for something that cannot be: fix the job's arguments."""

    exit_code = ExitCode.USAGE


class ContextAbsent(UsageError):
    """A pinned context the source does not hold: in auto mode, the CRDS server may."""


class TooManyOpenFiles(UsageError):
    """The process ran out of file descriptors: more than the job's open-file limit allows at this concurrency."""

    def __init__(self, doing: str) -> None:
        super().__init__(f"too many open files {doing}",
                         "lower --concurrency, or raise the job's open-file limit (ulimit -n, the container "
                         "runtime's nofile)")


#: The errnos of running out of file descriptors (the process's, or the system's).
DESCRIPTORS_EXHAUSTED = (errno.EMFILE, errno.ENFILE)


class BucketContentError(CrdsJobError):
    """The bucket answered, but what it holds cannot be used as a CRDS cache."""

    exit_code = ExitCode.BUCKET_CONTENT


class DatasetError(CrdsJobError):
    """An input dataset named for a selective warm is missing or unreadable."""

    exit_code = ExitCode.DATASET


class S3AccessError(CrdsJobError):
    """S3 could not be reached or refused us; often transient, so retryable."""

    exit_code = ExitCode.S3_ACCESS


class DiskFullError(CrdsJobError):
    """The cache's filesystem lacks the room the plan needs."""

    exit_code = ExitCode.DISK_FULL


class CacheError(CrdsJobError):
    """The cache directory cannot be written, or holds something unsafe."""

    exit_code = ExitCode.CACHE


class IntegrityError(CrdsJobError):
    """Downloaded bytes never matched the size and sha1 the bucket publishes."""

    exit_code = ExitCode.INTEGRITY


class Interrupted(CrdsJobError):
    """A signal stopped the warm; temporary files were removed on the way out."""

    def __init__(self, signum: int, warm_done: bool = False) -> None:
        name = signal.Signals(signum).name
        if warm_done:
            super().__init__(f"interrupted by {name} as the warm ended, before any command started",
                             "the cache is warm; run the job again if it is to go on")
        else:
            super().__init__(f"interrupted by {name} during the warm",
                             "the cache holds only verified files; run the job again to finish it")
        self.exit_code = ExitCode(128 + signum)


class CommandNotFound(CrdsJobError):
    """The calibration command does not exist on PATH."""

    exit_code = ExitCode.COMMAND_NOT_FOUND


class CommandNotExecutable(CrdsJobError):
    """The calibration command exists but cannot be executed."""

    exit_code = ExitCode.COMMAND_NOT_EXECUTABLE
