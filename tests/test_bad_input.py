"""Bad input: one clear line, a distinct exit code, and a cache holding nothing unverified."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import (
    Bucket,
    Run,
    assert_cache_verified,
    cache_files,
    largest_wfi_reference,
    needs_tmpfs,
    new_bucket,
    parse_logs,
    publish_rmap,
)

from crds_job.errors import ExitCode
from crds_job.sample import context


def only_error(run) -> str:
    """The run's single error line (its message), after checking it is one line."""
    assert len(run.errors) == 1, run.stderr
    message = run.errors[0]["event"]
    assert "\n" not in message and "; " in message, "what is wrong; what to do"
    return message


@pytest.mark.parametrize("args, code, words", [
    (["mars", "ops"], ExitCode.USAGE, "unknown observatory 'mars'"),
    (["roman", "prod"], ExitCode.USAGE, "unknown environment 'prod' for roman; use one of: ops, test, int, dev"),
    (["roman", "ops", "--source", "s3", "--context", "roman-2024-01-01"], ExitCode.USAGE, "date-based context"),
    (["roman", "ops", "--bucket", "s3://my-mirror/crds"], ExitCode.USAGE,
     "'s3://my-mirror/crds' (CRDS_S3_BUCKET or --bucket) is not an S3 bucket name"),
])
def test_usage_errors(roman_bucket, args, code, words):
    run = roman_bucket.run(*args)
    assert run.returncode == code
    assert words in only_error(run)
    assert not os.path.exists(roman_bucket.cache)


def test_a_context_absent_from_the_bucket_lists_those_there(roman_bucket):
    # --source s3: the default would ask the CRDS server next (test_server_source)
    run = roman_bucket.run("roman", "ops", "--source", "s3", "--context", "roman_0042.pmap")
    assert run.returncode == ExitCode.USAGE
    message = only_error(run)
    assert "roman_0042.pmap is not in" in message
    assert "contexts there: roman_0050.pmap, roman_0051.pmap" in message
    assert not any(f.startswith("references") for f in cache_files(roman_bucket.cache))


def test_a_latest_context_the_bucket_does_not_hold_is_a_bucket_content_error(roman_bucket):
    """Not pinned by the user, so not a usage error: the bucket is inconsistent (65), e.g. mid-update."""
    import ast

    config = ast.literal_eval(roman_bucket.sample.server_config().decode())
    config["latest_context"] = "roman_0099.pmap"
    roman_bucket.put("config/roman/server_config", repr(config).encode())
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.BUCKET_CONTENT
    message = only_error(run)
    assert "the bucket's latest context roman_0099.pmap is not in" in message
    assert "contexts there: roman_0050.pmap, roman_0051.pmap" in message
    assert "pin one of those" in message and "again later" not in message  # 65 is final: not retried
    roman_bucket.reseed_config()
    roman_bucket.delete("mappings/roman/roman_0051.pmap")  # published in the metadata, yet gone
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.BUCKET_CONTENT
    message = only_error(run)
    assert "latest context roman_0051.pmap is not in" in message and "(contexts there: roman_0050.pmap)" in message
    assert not any(f.startswith("references") for f in cache_files(roman_bucket.cache))


def test_missing_credentials_for_a_private_bucket(roman_bucket):
    env = roman_bucket.env()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        del env[name]
    run = roman_bucket.run("roman", "ops", env=env)
    assert run.returncode == ExitCode.S3_ACCESS
    assert "no AWS credentials to read private bucket" in only_error(run)


def test_the_public_bucket_is_read_anonymously_without_credentials(s3, tmp_path):
    name = "stpubdata"
    if name not in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]:
        from crds_job.sample import server

        server.seed(s3.client(), name, "/roman/crds", context.roman(), public=True)
    bucket = Bucket(s3=s3, name=name, prefix="/roman/crds", sample=context.roman(), cache=str(tmp_path / "cache"))
    env = bucket.env()
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CRDS_S3_BUCKET", "CRDS_S3_PREFIX"):
        env.pop(variable)
    run = bucket.run("roman", "ops", env=env)
    assert run.returncode == 0, run.stderr
    assert run.event("context resolved")["credentials"] == "anonymous"
    assert run.event("context resolved")["source"] == "s3://stpubdata/roman/crds/roman"


def test_an_aws_profile_that_does_not_exist(roman_bucket):
    run = roman_bucket.run("roman", "ops", env=dict(roman_bucket.env(), AWS_PROFILE="no-such-profile"))
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert "AWS_PROFILE names the profile 'no-such-profile', which no AWS config file defines" in only_error(run)
    assert not any(f.startswith("references") for f in cache_files(roman_bucket.cache))


def test_too_few_file_descriptors_for_the_concurrency_is_a_usage_error(roman_bucket):
    """Not "make the cache writable" (73): the job's open-file limit is too low for --concurrency."""
    import resource

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (32, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    done = subprocess.run([sys.executable, "-m", "crds_job", "roman", "ops", "--concurrency", "64"],
                          env=roman_bucket.env(), capture_output=True, text=True, timeout=120,
                          preexec_fn=few_descriptors)
    assert done.returncode == ExitCode.USAGE, done.stderr
    (error,) = [json.loads(line) for line in done.stderr.splitlines() if '"level": "error"' in line]
    assert error["event"].startswith("too many open files ") and "lower --concurrency" in error["event"]
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


def test_an_env_file_that_cannot_be_written(roman_bucket, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the env file's folder should be")
    run = roman_bucket.run("roman", "ops", "--env-file", str(blocked / "crds-job.env"))
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert f"cannot write the env file {blocked / 'crds-job.env'}" in only_error(run)
    assert not run.events("context resolved") and not os.path.exists(roman_bucket.cache)  # said before the warm
    run = roman_bucket.run("roman", "ops", "--env-file", str(tmp_path))  # a folder
    assert run.returncode == ExitCode.USAGE and "Is a directory" in only_error(run), run.stderr


def test_a_bucket_that_does_not_exist(roman_bucket):
    run = roman_bucket.run("roman", "ops", CRDS_S3_BUCKET="no-such-crds-bucket")
    assert run.returncode == ExitCode.S3_ACCESS
    assert "bucket no-such-crds-bucket does not exist" in only_error(run)


@pytest.mark.parametrize("variable, value", [
    ("AWS_ENDPOINT_URL_S3", "localhost:9000"), ("AWS_ENDPOINT_URL_S3", "http://[::1"),
    ("AWS_DEFAULT_REGION", "us east 1!"),
])
def test_s3_settings_the_sdk_refuses_are_a_usage_error(roman_bucket, variable, value):
    run = roman_bucket.run("roman", "ops", **{variable: value})
    assert run.returncode == ExitCode.USAGE, run.stderr
    assert "the AWS SDK refuses this job's S3 settings" in only_error(run)


def test_an_unreachable_endpoint(roman_bucket):
    run = roman_bucket.run("roman", "ops", "--retries", "1", AWS_ENDPOINT_URL_S3="http://127.0.0.1:9")
    assert run.returncode == ExitCode.S3_ACCESS
    assert "S3 kept failing" in only_error(run)


def test_a_server_config_too_large_to_be_one_is_refused_unread(roman_bucket):
    from crds_job.server_config import MAX_CONFIG_BYTES

    roman_bucket.put("config/roman/server_config", b" " * (MAX_CONFIG_BYTES + 1))
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.BUCKET_CONTENT
    assert f"is {MAX_CONFIG_BYTES + 1} bytes, over the {MAX_CONFIG_BYTES} any such object could be" in only_error(run)
    assert not os.path.exists(roman_bucket.cache)


def test_a_malformed_server_config(roman_bucket):
    roman_bucket.put("config/roman/server_config", b"{'observatory': 'roman', 'latest_context': print('x')}")
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.BUCKET_CONTENT
    assert "server_config is unusable: it is not a Python literal dict" in only_error(run)


def corrupt_reference(bucket, transform) -> str:
    """Replace a reference of the latest context in S3 (its metadata unchanged); return its name."""
    name = largest_wfi_reference(bucket)
    assert bucket.sample.reference_sizes[name] > 11, "the sample needs a reference of some size"
    bucket.put(f"references/roman/{name}", transform(bucket.sample.reference_bytes(name)))
    return name


@pytest.mark.parametrize("transform, words", [
    (lambda data: data[:10] + bytes([data[10] ^ 1]) + data[11:], "arrived with sha1"),
    (lambda data: data[: len(data) // 2], "arrived with"),
    (lambda data: data + b"tail", "arrived with"),
])
def test_a_corrupt_object_never_reaches_the_cache(roman_bucket, transform, words):
    """Retried; then, the same wrong bytes every time, it is the object's fault: final (65), not 74,
    which job runners would retry (damage on the way differs each time: test_faults)."""
    name = corrupt_reference(roman_bucket, transform)
    run = roman_bucket.run("roman", "ops", "--retries", "2")
    assert run.returncode == ExitCode.BUCKET_CONTENT, run.stderr
    message = only_error(run)
    assert name in message and words in message and "the same at each of 2 attempts" in message
    assert run.events("retrying"), "an integrity failure is retried before it is final"
    assert not any(os.path.basename(f) == name for f in cache_files(roman_bucket.cache))
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


def test_an_object_shorter_than_its_metadata_is_an_integrity_error_in_parts_too(roman_bucket):
    """A ranged GET past the object's end answers 416: the same verdict as one GET (74), not an S3 error."""
    name = corrupt_reference(roman_bucket, lambda data: data[:64 * 1024])
    run = roman_bucket.run("roman", "ops", "--retries", "2", "--part-size", "64KiB")
    assert run.returncode == ExitCode.INTEGRITY, run.stderr
    message = only_error(run)
    assert name in message and "shorter than the bucket's metadata says" in message and "after 2 attempts" in message
    assert not any(os.path.basename(f) == name for f in cache_files(roman_bucket.cache))
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


def test_a_ranged_part_cut_short_is_caught(s3, tmp_path):
    sample = context.roman(size=lambda rng, name: 300_000)
    bucket = new_bucket(s3, sample, str(tmp_path / "cache"))
    name = corrupt_reference(bucket, lambda data: data[:250_000])
    run = bucket.run("roman", "ops", "--retries", "1", "--part-size", "64KiB")
    assert run.returncode == ExitCode.INTEGRITY
    assert name in only_error(run)
    assert_cache_verified(bucket.cache, bucket.sample)


def test_an_object_listed_in_the_metadata_but_missing(roman_bucket):
    name = "roman_wfi_flat_0002.asdf"
    roman_bucket.delete(f"references/roman/{name}")
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.S3_ACCESS
    assert f"{name} is missing from the bucket" in only_error(run)
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


@pytest.mark.parametrize("bad", ["../../escape.asdf", "/tmp/escape.asdf", "sub/escape.asdf", "roman_wfi_0099.imap"])
def test_a_mapping_naming_a_path_outside_the_cache_is_refused(roman_bucket, tmp_path, bad):
    publish_rmap(roman_bucket, "roman_wfi_gain_0001.rmap", f"Match({{('WFI01',) : {bad!r}}})",
                 {bad: {"size": "1", "sha1sum": "0" * 40}})
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.BUCKET_CONTENT
    message = only_error(run)
    assert "mapping roman_wfi_gain_0001.rmap is unusable" in message
    for root in (str(tmp_path), "/tmp"):
        assert not os.path.exists(os.path.join(root, "escape.asdf"))
    assert not any(f.startswith("references") for f in cache_files(roman_bucket.cache))


@pytest.mark.parametrize("instrument", ["../../../outside", "..", "wfi/../../../config/roman"])
def test_a_mapping_whose_instrument_is_a_path_is_refused(roman_bucket, instrument):
    """In the ``instrument`` layout an rmap's instrument is a folder: a path there must go nowhere."""
    selector = "Match({('WFI01',) : 'roman_wfi_gain_0001.asdf'})"
    publish_rmap(roman_bucket, "roman_wfi_gain_0001.rmap", selector, {}, instrument=instrument)
    run = roman_bucket.run("roman", "ops", "--ref-subdir-mode", "instrument")
    assert run.returncode == ExitCode.BUCKET_CONTENT, run.stderr
    assert "mapping roman_wfi_gain_0001.rmap is unusable: header 'instrument'" in only_error(run)
    assert not any(f.startswith("references") for f in cache_files(roman_bucket.cache))
    around = os.path.dirname(os.path.normpath(roman_bucket.cache))
    escaped = os.path.normpath(os.path.join(roman_bucket.cache, "references", "roman", instrument))
    if not escaped.startswith(os.path.normpath(roman_bucket.cache) + os.sep):
        assert escaped.startswith(around) and not os.path.exists(escaped), "no folder made outside the cache"
    written = [os.path.join(folder, name) for folder, _, files in os.walk(around) for name in files]
    assert not [path for path in written if path.endswith("roman_wfi_gain_0001.asdf")]


def test_a_mapping_with_crlf_line_ends_is_read_as_the_crds_client_reads_it(roman_bucket, monkeypatch):
    """crds reads mappings as text (CRLF is LF) before checking their header sha1sum: so does crds-job."""
    rmap_module = pytest.importorskip("crds.core.rmap", reason="the crds client is in the test extra")
    name = "roman_wfi_gain_0001.rmap"
    publish_rmap(roman_bucket, name, "Match({('WFI01',) : 'roman_wfi_gain_0001.asdf'})", {}, line_end="\r\n")
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == 0, run.stderr
    cached = os.path.join(roman_bucket.cache, "mappings", "roman", name)
    with open(cached, "rb") as handle:
        assert b"\r\n" in handle.read(), "the cache holds the bucket's bytes"
    monkeypatch.setenv("CRDS_PATH", roman_bucket.cache)
    monkeypatch.setenv("CRDS_READONLY_CACHE", "1")
    assert rmap_module.asmapping(cached, cached=False, ignore_checksum=False).header["name"] == name
    edited = roman_bucket.sample.mappings[name].replace(b"WFI01", b"WFI02")  # its sha1sum now wrong
    roman_bucket.sample.mappings[name] = edited
    roman_bucket.put(f"mappings/roman/{name}", edited)
    roman_bucket.publish_metadata({})
    for ignore in ("0", "false", "maybe"):  # not true for crds either: it checks, so crds-job does
        run = roman_bucket.run("roman", "ops", env=dict(roman_bucket.env(), CRDS_IGNORE_MAPPING_CHECKSUM=ignore))
        assert run.returncode == ExitCode.BUCKET_CONTENT, (ignore, run.stderr)
        assert "header sha1sum does not match" in only_error(run)


def test_a_file_named_by_a_mapping_but_absent_from_the_metadata(roman_bucket):
    publish_rmap(roman_bucket, "roman_wfi_gain_0001.rmap", "Match({('WFI01',) : 'roman_wfi_gain_9999.asdf'})", {})
    run = roman_bucket.run("roman", "ops")
    assert run.returncode == ExitCode.BUCKET_CONTENT
    assert "roman_wfi_gain_9999.asdf, named by roman_wfi_gain_0001.rmap, is absent" in only_error(run)


def test_a_command_that_cannot_start(roman_bucket, tmp_path):
    """Not there, or not executable: said before the warm, which would fetch many GB for nothing."""
    run = roman_bucket.run("roman", "ops", "--", "no-such-calibration-command")
    assert run.returncode == ExitCode.COMMAND_NOT_FOUND
    assert "command 'no-such-calibration-command' not found" in only_error(run)
    assert not run.events("context resolved") and not os.path.exists(roman_bucket.cache)
    script = tmp_path / "calibrate"
    script.write_text("#!/bin/sh\nexit 0\n")
    for program in (str(script), str(tmp_path)):  # not executable; a folder
        run = roman_bucket.run("roman", "ops", "--", program)
        assert run.returncode == ExitCode.COMMAND_NOT_EXECUTABLE, run.stderr
        assert not run.events("context resolved") and not os.path.exists(roman_bucket.cache)
    assert roman_bucket.run("roman", "ops", "--dry-run", "--", "no-such-calibration-command").returncode == 0
    script.write_text("exit 0\n")  # a shell would run it; exec cannot
    script.chmod(0o755)
    run = roman_bucket.run("roman", "ops", "--", str(script))
    assert run.returncode == ExitCode.COMMAND_NOT_EXECUTABLE, run.stderr
    assert "neither a program nor a script with a #! line" in only_error(run)
    script.write_text("#!/no/such/python\n")
    script.chmod(0o755)
    run = roman_bucket.run("roman", "ops", "--", str(script))
    assert run.returncode == ExitCode.COMMAND_NOT_EXECUTABLE, "as a shell says it: 126, not 'not found'"
    assert "the interpreter its #! line names does not exist" in only_error(run)


def test_a_prefix_that_names_no_cache_says_to_check_it(roman_bucket):
    run = roman_bucket.run("roman", "ops", CRDS_S3_PREFIX="/roman/crd")
    assert run.returncode == ExitCode.S3_ACCESS
    assert "check that --bucket/--prefix (CRDS_S3_BUCKET/CRDS_S3_PREFIX) name a CRDS cache" in only_error(run)


def test_an_irsa_token_file_that_is_not_there_is_not_a_missing_object(roman_bucket):
    env = roman_bucket.env(AWS_ROLE_ARN="arn:aws:iam::123456789012:role/crds-job",
                           AWS_WEB_IDENTITY_TOKEN_FILE="/no/such/token")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        del env[name]
    run = roman_bucket.run("roman", "ops", env=env)
    assert run.returncode == ExitCode.S3_ACCESS
    message = only_error(run)
    assert "could not read /no/such/token" in message and "AWS_WEB_IDENTITY_TOKEN_FILE" in message


VERIFY = """
import hashlib, json, os, sys
root = sys.argv[1]
found = {}
for folder, _, files in os.walk(root):
    for name in files:
        path = os.path.join(folder, name)
        found[os.path.relpath(path, root)] = hashlib.sha1(open(path, "rb").read()).hexdigest()
print(json.dumps(found))
"""


def run_on_tmpfs(bucket, size: str, *args: str) -> tuple[Run, dict[str, str]]:
    """Run crds-job with its cache on a tmpfs of ``size``, in a private mount namespace.

    The cache is gone with the namespace, so the sha1 of every file it holds
    is listed from inside, on stdout (crds-job writes nothing there).
    """
    mount = os.path.dirname(bucket.cache)
    os.makedirs(mount, exist_ok=True)
    job = shlex.join([sys.executable, "-m", "crds_job", *args])
    script = (f"mount -t tmpfs -o size={size} tmpfs '{mount}' && {{ {job}; code=$?; "
              f"'{sys.executable}' -c '{VERIFY}' '{bucket.cache}'; exit $code; }}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=bucket.env(), capture_output=True,
                          text=True, timeout=120)
    return Run(done.returncode, done.stdout, done.stderr, *parse_logs(done.stderr)), json.loads(done.stdout)


@needs_tmpfs
def test_a_too_small_disk_is_refused_before_the_warm_with_the_shortfall(roman_bucket):
    run, listing = run_on_tmpfs(roman_bucket, "1m", "roman", "ops")
    assert run.returncode == ExitCode.DISK_FULL
    message = only_error(run)
    assert "bytes free but the warm needs" in message and "short by" in message
    assert not any(path.startswith("references") for path in listing)


@needs_tmpfs
def test_running_out_of_space_mid_write_leaves_no_partial_file(roman_bucket):
    """Where blocks can be reserved (tmpfs can), the reservation meets the full disk, else a write does.

    Both raise in the same step of the fetch and end in the same error.
    """
    run, listing = run_on_tmpfs(roman_bucket, "8k", "roman", "ops")
    assert run.returncode == ExitCode.DISK_FULL
    assert "ran out of space writing" in only_error(run)
    meta = roman_bucket.sample.metadata()
    for path, digest in listing.items():
        name = os.path.basename(path)
        assert not name.startswith("."), f"temp file left: {path}"
        if name in meta:
            assert digest == meta[name]["sha1sum"], f"{path} is not the bucket's file"


def test_a_file_larger_than_the_job_may_write_is_a_disk_full_error(roman_bucket):
    """RLIMIT_FSIZE (``ulimit -f``): Python ignores SIGXFSZ, so the write fails with EFBIG."""
    import resource

    largest = largest_wfi_reference(roman_bucket)
    limit = roman_bucket.sample.reference_sizes[largest] // 2

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run([sys.executable, "-m", "crds_job", "roman", "ops"], env=roman_bucket.env(),
                          capture_output=True, text=True, timeout=300, preexec_fn=limited)
    logs, _ = parse_logs(done.stderr)
    run = Run(done.returncode, done.stdout, done.stderr, logs)
    assert run.returncode == ExitCode.DISK_FULL, run.stderr
    assert "grew larger than the job may write a file there" in only_error(run) and "ulimit -f" in only_error(run)
    meta = roman_bucket.sample.metadata()
    for path, size in cache_files(roman_bucket.cache).items():
        assert not os.path.basename(path).startswith("."), f"temp file left: {path}"
        if os.path.basename(path) in meta:
            assert size <= limit and size == int(meta[os.path.basename(path)]["size"]), path


@pytest.mark.parametrize("breakage", ["a file as a parent", "a name too long", "a folder for the layout file",
                                      "a folder for the config"])
def test_a_cache_that_cannot_be_read_is_a_cache_error(roman_bucket, tmp_path, breakage):
    """Not a traceback (70): the job's cache path or what it holds is unusable, 73."""
    cache = roman_bucket.cache
    if breakage == "a file as a parent":
        (tmp_path / "afile").write_text("")
        cache = str(tmp_path / "afile" / "cache")
    elif breakage == "a name too long":
        cache = str(tmp_path / ("x" * 300) / "cache")
    elif breakage == "a folder for the layout file":
        os.makedirs(os.path.join(cache, "config/roman/ref_cache_subdir_mode"))
    else:
        assert roman_bucket.run("roman", "ops").returncode == 0
        os.remove(os.path.join(cache, "config/roman/server_config"))
        os.makedirs(os.path.join(cache, "config/roman/server_config"))
    run = roman_bucket.run("roman", "ops", CRDS_PATH=cache)
    assert run.returncode == ExitCode.CACHE, run.stderr
    assert "in the cache: " in only_error(run)


def test_a_bug_is_exit_70_with_its_traceback_and_leaves_nothing_unverified(roman_bucket):
    """A failure crds-job does not understand is not passed off as S3's (69, which runners retry)."""
    assert roman_bucket.run("roman", "ops", "--context", "roman_0050.pmap").returncode == 0
    broken = ("import sys, s3fs\n"
              "async def broken(self, *args, **kwargs):\n"
              "    raise TypeError('a bug beneath the warm')\n"
              "s3fs.S3FileSystem._call_s3 = broken\n"  # the library's request method, not ours
              "sys.argv[0] = 'crds-job'\n"
              "from crds_job.cli import console_main\n"
              "console_main()\n")
    done = subprocess.run([sys.executable, "-c", broken, "roman", "ops"], env=roman_bucket.env(),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    run = Run(done.returncode, done.stdout, done.stderr, *parse_logs(done.stderr))
    assert run.returncode == ExitCode.INTERNAL, run.stderr
    assert run.stdout == "" and not run.foreign
    (error,) = run.errors
    assert error["event"] == "internal error" and error["error"] == "TypeError"
    assert "Traceback" in error["exception"] and "a bug beneath the warm" in error["exception"]
    assert_cache_verified(roman_bucket.cache, roman_bucket.sample)


#: A uid that owns nothing of the test's: the cache's owner, as a host folder's owner seen in a container.
OTHER_UID = 65534


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and util-linux's setpriv, to run the job without the power to write anywhere")
def test_a_cache_the_jobs_user_may_not_write_is_not_called_read_only(roman_bucket, tmp_path):
    """A bind mount owned by another user, as under a container's non-root user: not a read-only mount,
    and not fixed as one. The job runs as root stripped of its capabilities, so permissions bind it."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    os.chown(cache, OTHER_UID, OTHER_UID)
    powerless = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
    done = subprocess.run([*powerless, sys.executable, "-m", "crds_job", "roman", "ops"],
                          env=roman_bucket.env(CRDS_PATH=str(cache)), capture_output=True, text=True, timeout=120)
    errors = [line["event"] for line in parse_logs(done.stderr)[0] if line.get("level") == "error"]
    assert done.returncode == ExitCode.CACHE, done.stderr
    assert len(errors) == 1 and "is not writable by uid 0" in errors[0], errors
    assert "read-only" not in errors[0] and f"belongs to uid {OTHER_UID}" in errors[0] and "chown -R 0" in errors[0]
    assert os.listdir(cache) == []
