"""``python -m crds_job``: the same command line as ``crds-job``."""

from .cli import console_main

console_main()
