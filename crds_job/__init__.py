"""crds-job: warm a CRDS cache from S3, checksum-checked and concurrent, then run the calibration.

The public API, for callers that embed the warm instead of running the command:

- ``main(argv)``: the ``crds-job`` command line; returns an exit code (or execs).
- ``parse(argv, environ)`` -> ``Settings``: resolve argv and ``CRDS_JOB_*`` variables.
- ``warm(settings, log)``: the async warm; returns an ``Outcome`` (plan, context, cache).
- ``ExitCode`` and the ``CrdsJobError`` family: what can fail, and its exit code.
- ``locate(observatory, environment)``: where STScI's S3 cache of that pair lives.
"""

import gc as _gc

# Importing the AWS SDK builds tens of thousands of objects that live as long as
# the process; the collector ran 117 times while they were built, 80 ms of each
# job's start. The collector is put back as it was, for programs that import us.
_collecting = _gc.isenabled()
_gc.disable()
try:
    from .cli import main
    from .environments import Location, locate
    from .errors import CrdsJobError, ExitCode
    from .settings import OPTIONS, Settings, parse
    from .warm import Outcome, warm
finally:
    # Straight to the oldest generation, without a walk: else the first young
    # collection after the pause would walk them all at once.
    _gc.freeze()
    _gc.unfreeze()
    if _collecting:
        _gc.enable()

__all__ = [
    "main", "parse", "warm", "locate",
    "Settings", "Outcome", "Location", "OPTIONS",
    "ExitCode", "CrdsJobError",
]
