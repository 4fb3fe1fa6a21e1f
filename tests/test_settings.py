"""The command line and its environment twins: precedence, grammar, refusals."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

from crds_job import settings
from crds_job.errors import ExitCode, UsageError


def parse(argv, **env):
    return settings.parse(argv, env)


def test_positionals_and_command_keep_the_commands_own_flags():
    s = parse(["--dry-run", "roman", "ops", "strun", "--verbose", "l1.asdf"])
    assert (s.observatory, s.environment) == ("roman", "ops")
    assert s.command == ("strun", "--verbose", "l1.asdf")
    assert s.dry_run is True


def test_options_may_follow_the_positionals_until_the_command():
    s = parse(["roman", "ops", "--concurrency", "7", "--", "strun", "--concurrency", "1"])
    assert s.concurrency == 7
    assert s.command == ("strun", "--concurrency", "1")


def test_observatory_and_environment_from_the_twins():
    s = parse(["strun", "x.asdf"], CRDS_JOB_OBSERVATORY="roman", CRDS_JOB_ENVIRONMENT="test")
    assert (s.observatory, s.environment, s.command) == ("roman", "test", ("strun", "x.asdf"))
    s = parse(["--", "hst", "x"], CRDS_JOB_OBSERVATORY="hst", CRDS_JOB_ENVIRONMENT="ops")
    assert s.command == ("hst", "x")


def test_argv_wins_over_the_twin_which_wins_over_crds_own_variable():
    env = {"CRDS_JOB_CONTEXT": "roman_0002.pmap", "CRDS_CONTEXT": "roman_0001.pmap"}
    assert parse(["roman", "ops"], **env).context == "roman_0002.pmap"
    assert parse(["roman", "ops", "--context", "roman_0003.pmap"], **env).context == "roman_0003.pmap"
    assert parse(["roman", "ops"], CRDS_CONTEXT="roman_0001.pmap").context == "roman_0001.pmap"
    s = parse(["roman", "ops"], CRDS_PATH="/somewhere/cache")
    assert s.cache == "/somewhere/cache" and s.sources["cache"] == "CRDS_PATH"
    assert parse(["roman", "ops"]).cache == settings.DEFAULT_CACHE


def test_every_option_has_a_twin_that_works():
    values = {
        "context": "roman_0001.pmap", "cache": "/c", "instruments": "wfi", "mappings_only": "1",
        "concurrency": "3", "part_size": "1MiB", "memory_budget": "64M", "retries": "2", "dry_run": "yes",
        "verify_existing": "true", "allow_fetch": "on", "ref_subdir_mode": "instrument", "bucket": "b",
        "prefix": "/p", "env_file": "/e", "fsync": "on", "fsync_each": "1", "progress_interval": "0.5",
        "log_format": "console", "log_level": "debug", "all_references": "0",  # (1 would clash with the others)
        "pickles": "off", "require_source": "yes", "source": "server", "server": "http://127.0.0.1:1/",
        "patience": "30", "lower": "/efs/crds:relative/baked",
        "prune": "1", "keep_contexts": "2", "keep": "roman_0050.pmap", "max_bytes": "500G",
    }
    # --datasets, --reftypes and --header exclude the whole-context options set here: their twins are
    # tested in test_datasets and test_candidates.
    assert set(values) | {"datasets", "reftypes", "header"} == {option.name for option in settings.OPTIONS}
    env = {settings.OPTION_BY_NAME[name].env: value for name, value in values.items()}
    s = parse(["roman", "ops"], **env)
    assert all(s.sources[name] == settings.OPTION_BY_NAME[name].env for name in values)
    assert s.part_size == 2**20 and s.memory_budget == 64 * 2**20 and s.fsync is True and s.fsync_each
    assert s.all_references is False and s.pickles is False and s.require_source is True
    assert parse(["roman", "ops"]).pickles is True and parse(["roman", "ops", "--no-pickles"]).pickles is False
    assert s.instruments == ("wfi",) and s.mappings_only and s.allow_fetch and s.progress_interval == 0.5
    assert s.source == "server" and s.server_url == "http://127.0.0.1:1"
    assert s.patience == 30.0
    assert s.lower == ("/efs/crds", os.path.abspath("relative/baked")), "in order, each made absolute"
    assert s.prune and (s.keep_contexts, s.keep, s.max_bytes) == (2, ("roman_0050.pmap",), 500 * 2**30)


def test_settings_fields_are_exactly_the_options():
    positional = {"observatory", "environment", "command", "sources"}
    names = {f.name for f in dataclasses.fields(settings.Settings)} - positional
    assert names == {option.name for option in settings.OPTIONS}


@pytest.mark.parametrize("argv, env, message", [
    (["jwst", "ops", "--source", "s3"], {}, "jwst has no CRDS cache on S3, and --source s3 asks for one"),
    (["jwst", "ops", "--server", "jwst-crds.stsci.edu"], {}, "expected an http:// or https:// URL"),
    (["jwst", "ops", "--server", "https://jwst-crds-serverless.stsci.edu"], {}, "is a 'serverless' URL"),
    (["roman", "prod"], {}, "unknown environment 'prod' for roman"),
    (["hst", "int"], {}, "unknown environment 'int' for hst"),
    (["strun", "x"], {}, "unknown observatory 'strun'"),
    ([], {}, "OBSERVATORY and ENVIRONMENT are missing"),
    (["roman"], {}, "ENVIRONMENT is missing"),
    (["roman", "ops", "--concurrency", "0"], {}, "bad value for --concurrency"),
    (["roman", "ops", "--log-format", "xml"], {}, "invalid choice"),
    (["roman", "ops"], {"CRDS_JOB_DRY_RUN": "maybe"}, "CRDS_JOB_DRY_RUN"),
    (["roman", "ops"], {"CRDS_JOB_PART_SIZE": "big"}, "byte count"),
    (["roman", "ops", "--no-such-option"], {}, "unrecognized arguments"),
    (["x"], {"CRDS_JOB_OBSERVATORY": "roman"}, "CRDS_JOB_ENVIRONMENT is missing"),
    # An unset shell variable on argv: never "the current folder", "no env file", "STScI's bucket"...
    (["roman", "ops", "--cache", ""], {"CRDS_PATH": "/cache"}, "--cache is given an empty value"),
    (["roman", "ops", "--context", " "], {"CRDS_CONTEXT": "roman_0050.pmap"}, "--context is given an empty value"),
    (["roman", "ops", "--bucket", ""], {"CRDS_S3_BUCKET": "my-mirror"}, "--bucket is given an empty value"),
    (["roman", "ops", "--env-file", ""], {}, "--env-file is given an empty value"),
    (["roman", "ops", "--", ""], {}, "the command to run is an empty word"),
    (["roman", "ops", " ", "x"], {}, "the command to run is an empty word"),
    # nan passes "<= 0"; inf spins the progress timer or overflows it, and neither is JSON in the logs
    (["roman", "ops", "--progress-interval", "nan"], {}, "expected a positive number up to 86400"),
    (["roman", "ops"], {"CRDS_JOB_PROGRESS_INTERVAL": "inf"}, "expected a positive number up to 86400"),
    (["roman", "ops", "--retries", "1" + "0" * 400], {}, "expected a positive number up to 100"),  # a traceback once
    (["roman", "ops"], {"CRDS_JOB_CONCURRENCY": "5000"}, "expected a positive number up to 4096"),
    (["roman", "ops", "--part-size", "2TiB"], {}, "expected a positive number up to 1TiB"),
    # Two settings that contradict each other: neither silently wins
    (["roman", "ops", "--fsync-each", "--no-fsync"], {}, "--fsync-each (from argv) cannot be combined with --no-fsync"),
    (["roman", "ops"], {"CRDS_JOB_FSYNC": "0", "CRDS_JOB_FSYNC_EACH": "1"},
     "--fsync-each (from CRDS_JOB_FSYNC_EACH) cannot be combined with --no-fsync (from CRDS_JOB_FSYNC)"),
    (["roman", "ops", "--mappings-only", "--all-references"], {}, "--mappings-only (from argv) cannot be combined"),
])
def test_bad_input_is_a_usage_error_with_exit_64(argv, env, message):
    with pytest.raises(UsageError) as caught:
        parse(argv, **env)
    assert message in str(caught.value)
    assert caught.value.exit_code == ExitCode.USAGE == 64


def test_slash_means_no_prefix_and_an_empty_one_on_argv_is_refused():
    assert parse(["roman", "ops", "--bucket", "my-mirror", "--prefix", "/"]).location.prefix == ""
    with pytest.raises(UsageError, match="--prefix is given an empty value"):  # '--prefix "$UNSET"'
        parse(["roman", "ops", "--bucket", "my-mirror", "--prefix", ""])
    assert parse(["roman", "ops"], CRDS_JOB_BUCKET="my-mirror", CRDS_JOB_PREFIX="/").location.prefix == ""
    assert parse(["roman", "ops"], CRDS_JOB_BUCKET="my-mirror", CRDS_JOB_PREFIX="").location.prefix == "/roman/crds"


def test_twins_are_read_without_the_blanks_around_them():
    """A ConfigMap's YAML block scalar (``|``) leaves a trailing newline."""
    s = parse(["roman"], CRDS_JOB_ENVIRONMENT="test\n")
    assert (s.observatory, s.environment) == ("roman", "test")
    s = parse([], CRDS_JOB_OBSERVATORY=" roman\n", CRDS_JOB_ENVIRONMENT="ops\n", CRDS_JOB_CONCURRENCY="7\n")
    assert (s.observatory, s.environment, s.concurrency) == ("roman", "ops", 7)


def test_version_goes_to_stdout(capsys):
    with pytest.raises(SystemExit) as done:
        parse(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("crds-job ")


def test_empty_twins_count_as_unset():
    s = parse(["roman", "ops"], CRDS_JOB_CONCURRENCY="", CRDS_CONTEXT=" ")
    assert s.concurrency == settings.OPTION_BY_NAME["concurrency"].default
    assert s.context is None


def test_sizes_and_lists():
    assert settings.parse_size("8388608") == 8 * 2**20
    assert settings.parse_size("8MiB") == settings.parse_size("8m") == 8 * 2**20
    assert settings.parse_size("2G") == 2 * 2**30
    assert settings.parse_list("WFI, acs  cos") == ("wfi", "acs", "cos")
    with pytest.raises(ValueError):
        settings.parse_size("-1")


def test_env_names_lists_twins_and_crds_variables():
    names = settings.env_names()
    assert "CRDS_JOB_OBSERVATORY" in names and "CRDS_JOB_DRY_RUN" in names
    assert {"CRDS_CONTEXT", "CRDS_PATH", "CRDS_S3_BUCKET", "CRDS_S3_PREFIX", "CRDS_REF_SUBDIR_MODE"} <= set(names)


def test_datasets_have_their_variables_expanded_from_the_environment():
    """One job definition, each array child its own exposure, named strictly: no shell runs to expand it."""
    environ = {"CRDS_JOB_DATASETS": "/data/exposure-${AWS_BATCH_JOB_ARRAY_INDEX}.asdf,s3://b/$NAME.fits,a$$b.fits",
               "AWS_BATCH_JOB_ARRAY_INDEX": "7", "NAME": "ib1f23qtq_raw"}
    parsed = settings.parse(["hst", "ops"], environ)
    assert parsed.datasets == ("/data/exposure-7.asdf", "s3://b/ib1f23qtq_raw.fits", "a$b.fits")


@pytest.mark.parametrize("value, words", [
    ("/data/exposure-${JOB_COMPLETION_INDEX}.asdf", "names $JOB_COMPLETION_INDEX, which is not set"),
    ("/data/cost-$5.fits", "has a $ that starts no variable name"),
])
def test_a_dataset_variable_that_cannot_be_expanded_is_refused(value, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        settings.parse(["hst", "ops", "--datasets", value], {})


def test_a_size_most_likely_meant_in_mib_is_doubted_not_refused():
    s = parse(["roman", "ops", "--memory-budget", "64"])
    assert s.memory_budget == 64
    assert s.doubts() == ["--memory-budget is 64 bytes: a bare number counts bytes (write 64MiB for mebibytes)"]
    assert parse(["roman", "ops", "--part-size", "64KiB", "--memory-budget", "512KiB"]).doubts() == []


def test_the_crds_server_is_crds_own_variable_unless_serverless():
    assert parse(["jwst", "ops"]).server_url == "https://jwst-crds.stsci.edu"
    assert parse(["jwst", "test"]).server_url == "https://jwst-crds-test.stsci.edu"
    mine = parse(["jwst", "ops"], CRDS_SERVER_URL="http://127.0.0.1:8080/")
    assert mine.server_url == "http://127.0.0.1:8080" and mine.sources["server"] == "CRDS_SERVER_URL"
    # What crds-job (or crds_s3_set) exports for an offline crds names no server: STScI's is read.
    offline = parse(["roman", "ops"], CRDS_SERVER_URL="https://roman-crds-serverless.stsci.edu")
    assert offline.server_url == "https://roman-crds.stsci.edu" and offline.sources["server"] == "default"
    assert parse(["roman", "ops"]).source == "auto" and parse(["roman", "ops"], CRDS_JOB_SOURCE="server").source \
        == "server"


def test_crds_own_server_variable_stops_a_job_only_if_it_reads_a_server():
    roman = parse(["roman", "ops"], CRDS_SERVER_URL="jwst-crds.stsci.edu")  # no scheme: not a URL
    assert roman.server is None and any("CRDS_SERVER_URL is not a URL" in doubt for doubt in roman.doubts())
    with pytest.raises(UsageError, match="bad value for --server"):
        parse(["jwst", "ops"], CRDS_SERVER_URL="jwst-crds.stsci.edu")
    other = parse(["jwst", "test"], CRDS_SERVER_URL="https://jwst-crds.stsci.edu")
    assert any("is not STScI's for jwst test, https://jwst-crds-test.stsci.edu" in d for d in other.doubts())
    assert not parse(["jwst", "ops"], CRDS_SERVER_URL="https://jwst-crds.stsci.edu").doubts()
