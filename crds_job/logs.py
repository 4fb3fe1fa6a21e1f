"""Log lines on stderr: JSON for machines (the default), or plain for people.

stdout belongs to the calibration command (and to ``--dry-run``'s plan), so
every log line, ours or a library's (botocore, s3fs, aiohttp), goes to stderr
through the same renderer: a log collector sees one JSON object per line.

Logs are shipped (CloudWatch, a cluster's collector) and read by more people
than the job's credentials are meant for. At ``debug`` the AWS SDK logs each
signed request, session token included, and the answers of STS: every line,
ours or a library's, has credentials redacted before it is rendered.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


#: A credential wherever the AWS SDK's debug lines may carry one: signed headers, presigned
#: query strings, canonical requests, STS answers, credential process output.
_CREDENTIAL = re.compile(
    r"(?i)((?:x-amz-security-token|(?:aws_)?session_?token|(?:aws_)?secret_?access_?key|(?:aws_)?access_?key_?id"
    r"|web_?identity_?token|signature|credential)"
    r"(?:['\"]?\s*[:=]\s*(?:b?['\"])?|>))[^\s'\",<&]+"  # b'...': a bytes repr; a b alone is the secret's
)
REDACTED = "[redacted]"
#: Loggers whose debug lines are only signing arithmetic, credentials in every one.
_SIGNING_LOGGERS = ("botocore.auth",)


def redact_text(text: str) -> str:
    return _CREDENTIAL.sub(lambda match: match.group(1) + REDACTED, text)


def _redacted(value: Any) -> Any:
    """``value`` with every string in it redacted, however deep (a command's arguments, a dataset list...)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_redacted(item) for item in value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    return value


def redact(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: no credential reaches a log line, whoever logged it."""
    return _redacted(event)  # type: ignore[no-any-return]


class _Stderr:
    """Where log lines go: stderr as it is now, and never a reason for the job to fail.

    With stderr closed (``2>&-``) or a pipe nobody reads any more, lines are
    dropped: the warm and the command matter more than their logs, and
    structlog would otherwise fall back to stdout, which is the command's.
    """

    def write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # broken pipe, closed, None
            sys.stderr.write(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()


def configure(log_format: str = "json", level: str = "info") -> None:
    """Set up structlog and the standard library's loggers for one run."""
    renderer: Any
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(_Stderr())  # type: ignore[arg-type]
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, redact, renderer],
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries speak only when something is wrong, unless we are debugging.
    root.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    for name in _SIGNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("crds-job").bind(**context)
