#!/usr/bin/env python3
"""The container's entry point: ``docker run crds-job roman ops strun ...``.

A thin call of the same ``main`` as the ``crds-job`` command, so that the
image behaves exactly like the command line documented in the README.
"""

from crds_job.cli import console_main

if __name__ == "__main__":
    console_main()
