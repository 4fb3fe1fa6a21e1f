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
    from .cli import main
    from .environments import Location, locate
    from .errors import CrdsJobError, ExitCode
    from .settings import OPTIONS, Settings, parse
    from .warm import Outcome, warm
finally:
    if _quiet:
        _signal.signal(_signal.SIGINT, _interrupt)
    if not _frozen_by_caller:
        _gc.freeze()
        _gc.unfreeze()
    if _collecting:
        _gc.enable()

__all__ = [
    "main", "parse", "warm", "locate",
    "Settings", "Outcome", "Location", "OPTIONS",
    "ExitCode", "CrdsJobError",
]
