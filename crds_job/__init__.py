"""crds-job: warm a CRDS cache from S3, checksum-checked and concurrent, then run the calibration.

The pure core so far: settings, exit codes, the bucket table, and planning.
"""

from .environments import Location, locate
from .errors import CrdsJobError, ExitCode
from .settings import OPTIONS, Settings, parse

__all__ = ["parse", "locate", "Settings", "Location", "OPTIONS", "ExitCode", "CrdsJobError"]
