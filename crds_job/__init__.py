"""crds-job: warm a CRDS cache from S3, checksum-checked and concurrent, then run the calibration.

The public API, for callers that embed the warm instead of running the command:

- ``main(argv)``: the ``crds-job`` command line; returns an exit code (or execs).
- ``parse(argv, environ)`` -> ``Settings``: resolve argv and ``CRDS_JOB_*`` variables.
- ``warm(settings, log)``: the async warm; returns an ``Outcome`` (plan, context, cache).
- ``ExitCode`` and the ``CrdsJobError`` family: what can fail, and its exit code.
- ``locate(observatory, environment)``: where STScI's S3 cache of that pair lives.
"""

from .cli import main
from .environments import Location, locate
from .errors import CrdsJobError, ExitCode
from .settings import OPTIONS, Settings, parse
from .warm import Outcome, warm

__all__ = [
    "main", "parse", "warm", "locate",
    "Settings", "Outcome", "Location", "OPTIONS",
    "ExitCode", "CrdsJobError",
]
