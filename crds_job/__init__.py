"""crds-job: warm a CRDS cache from S3, checksum-checked and concurrent, then run the calibration.

The public API, for callers that embed the warm instead of running the command:

- ``main(argv)``: the ``crds-job`` command line; returns an exit code (or execs).
- ``parse(argv, environ)`` -> ``Settings``: resolve argv and ``CRDS_JOB_*`` variables.
- ``warm(settings, log)``: the async warm; returns an ``Outcome`` (plan, context, cache).
- ``ExitCode`` and the ``CrdsJobError`` family: what can fail, and its exit code.
- ``locate(observatory, environment)``: where STScI's S3 cache of that pair lives.
"""

from __future__ import annotations

#: Each public name and its module: imported on first use (PEP 562), not with the package. The crds
#: child (``python -m crds_job.bestrefs``) imports this package too, and needs none of the AWS SDK
#: that ``cli`` and ``warm`` bring: 0.3 s of every selective warm. ``cli`` imports the SDK with the
#: collector paused and SIGINT quiet (see there), so it comes first.
_PUBLIC = {
    "main": "cli", "parse": "settings", "Settings": "settings", "OPTIONS": "settings", "warm": "warm",
    "Outcome": "warm", "locate": "environments", "Location": "environments", "ExitCode": "errors",
    "CrdsJobError": "errors",
}

__all__ = [
    "main", "parse", "warm", "locate",
    "Settings", "Outcome", "Location", "OPTIONS",
    "ExitCode", "CrdsJobError",
]


def _bind() -> None:
    """Bind every public name over the submodules of the same name that importing them bound (``warm``
    the function, not the module). ``cli`` calls it once it is loaded: it imports all of them."""
    import importlib

    for public, module in _PUBLIC.items():
        globals()[public] = getattr(importlib.import_module(f"{__name__}.{module}"), public)


def __getattr__(name: str) -> object:
    """A public name, on first use: nothing heavy is imported with the package itself."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    importlib.import_module(f"{__name__}.cli")  # which binds them all
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
