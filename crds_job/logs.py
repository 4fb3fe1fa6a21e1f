"""Log lines on stderr: JSON for machines (the default), or plain for people.

stdout belongs to the calibration command (and to ``--dry-run``'s plan), so
every log line, ours or a library's (botocore, s3fs, aiohttp), goes to stderr
through the same renderer: a log collector sees one JSON object per line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


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
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries speak only when something is wrong, unless we are debugging.
    root.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("crds-job").bind(**context)
