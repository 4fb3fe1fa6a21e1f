"""``python -m crds_job.sample``: the README's demo, a local S3 to play with, and a stand-in calibration.

- ``demo``: start a local S3 server, seed it like STScI's Roman ops bucket
  (``s3://stpubdata/roman/crds``), write a sample WFI exposure ``l1_img.asdf``,
  run ``crds-job roman ops`` with a command that names it (so only its
  references are warmed) and asks the real crds library for its best
  references, offline; then stop.
- ``serve``: the same server and bucket, and an HST ops bucket laid out as
  STScI's (``s3://hst-crds-cache-ops``: pickled contexts, no mappings), kept
  up until Ctrl-C, with the variables to export printed, to try ``crds-job``
  by hand; and, since JWST has no S3 bucket, a stand-in CRDS server with a
  sample JWST context (its ``CRDS_SERVER_URL`` printed).
- ``getreferences [DATASET]``: what the demo runs after the warm:
  crds.getreferences for the dataset's header (default: a sample WFI
  exposure header), printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from . import context, crds_server, datasets, pickles, server


def seeded(kind: str, hst: bool = False) -> server.LocalS3:
    """A local S3 with STScI's Roman ops bucket; with ``hst``, its HST ops bucket too (pickles, no mappings)."""
    s3 = server.LocalS3(kind).__enter__()
    server.seed(s3.client(), "stpubdata", "/roman/crds", context.roman(), public=True)
    if hst:
        server.seed(s3.client(), "hst-crds-cache-ops", "", pickles.pickled(context.hst()))
    return s3


#: What the user's shell may set that the demo must not use: a CRDS_PATH (``crds_s3_set``
#: exports one) would fill a real cache with sample files, AWS_* would point at a real account.
_IGNORED = ("CRDS", "AWS_")
#: Presentation only: kept.
_KEPT = ("CRDS_JOB_LOG_FORMAT", "CRDS_JOB_LOG_LEVEL")


def demo(arguments: argparse.Namespace) -> int:
    """Warm a cache for the sample exposure and run crds on it, isolated from the user's own setup."""
    for name in [name for name in os.environ if name.startswith(_IGNORED) and name not in _KEPT]:
        del os.environ[name]  # nor used here: an AWS_PROFILE would be looked for by the seeding client
    scratch = tempfile.mkdtemp(prefix="crds-job-demo-")
    cache = arguments.cache or os.path.join(scratch, "cache")
    exposure = datasets.write_asdf(os.path.join(scratch, "l1_img.asdf"), context.ROMAN_DATASET_HEADER)
    s3 = seeded(arguments.server)
    try:
        env = dict(os.environ, **s3.client_env(), CRDS_PATH=cache)
        env.setdefault("CRDS_JOB_LOG_FORMAT", "console")
        command = [sys.executable, "-m", "crds_job", "roman", "ops", "--",
                   sys.executable, "-m", "crds_job.sample", "getreferences", exposure]
        kept = "kept" if arguments.cache else "removed at the end; --cache DIR keeps one"
        print(f"# local S3 at {s3.endpoint}, bucket s3://stpubdata/roman/crds; cache {cache} ({kept})",
              file=sys.stderr)
        print(f"# running: crds-job roman ops -- python -m crds_job.sample getreferences {exposure}",
              file=sys.stderr)
        return subprocess.run(command, env=env).returncode
    finally:
        s3.__exit__()
        shutil.rmtree(scratch, ignore_errors=True)


def serve(arguments: argparse.Namespace) -> int:
    s3 = seeded(arguments.server, hst=True)
    jwst = crds_server.LocalCrdsServer(context.jwst()).start()
    try:
        print("# a local S3 with sample Roman ops and HST ops buckets (HST's: pickles, no mappings); "
              "in another shell:")
        for name, value in s3.client_env().items():
            print(f"export {name}={value}")
        # Not an export: a CRDS_SERVER_URL in the shell would also reach the Roman and HST commands.
        print(f"# JWST has no S3 bucket; a stand-in CRDS server with a sample JWST context, for JWST commands: "
              f"CRDS_SERVER_URL={jwst.url} CRDS_OBSERVATORY=jwst")
        print("crds-job --dry-run hst ops        # the HST bucket's plan: its context's pickle and references")
        print("crds-job --dry-run roman ops      # then without --dry-run; Ctrl-C here stops the server")
        sys.stdout.flush()
        try:
            while True:
                signal.pause()  # until Ctrl-C (SIGINT), whatever stdin is
        except KeyboardInterrupt:
            return 0
    finally:
        jwst.stop()
        s3.__exit__()


def getreferences(arguments: argparse.Namespace) -> int:
    import crds  # the real client, as in a calibration image

    header = context.ROMAN_DATASET_HEADER
    if arguments.dataset:
        from crds import data_file

        header = data_file.get_free_header(arguments.dataset, (), None, "roman")
    refs = crds.getreferences(header, observatory="roman")
    print(json.dumps({"context": os.environ.get("CRDS_CONTEXT"), "references": refs}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crds_job.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("demo", "serve", "getreferences"))
    parser.add_argument("dataset", nargs="?", help="getreferences: the dataset whose header to use")
    parser.add_argument("--server", choices=("moto", "seaweedfs"), default="moto",
                        help="which local S3 server to run (default: moto)")
    parser.add_argument("--cache", help="demo: warm this cache and keep it (default: a temporary one, "
                                        "removed at the end; never $CRDS_PATH, which may be a real cache)")
    arguments = parser.parse_args(argv)
    return {"demo": demo, "serve": serve, "getreferences": getreferences}[arguments.action](arguments)


if __name__ == "__main__":
    sys.exit(main())
