"""The table of STScI's CRDS buckets (the seed document and crds_s3_set)."""

from __future__ import annotations

import pytest

from crds_job.environments import default_location, locate, server_url
from crds_job.errors import UsageError


@pytest.mark.parametrize("observatory, environment, bucket, prefix", [
    ("roman", "ops", "stpubdata", "/roman/crds"),
    ("roman", "test", "stpubdata-tst", "/roman/crds/test"),
    ("roman", "int", "stpubdata-tst", "/roman/crds/int"),
    ("roman", "dev", "stpubdata-tst", "/roman/crds/dev"),
    ("hst", "ops", "hst-crds-cache-ops", ""),
    ("hst", "test", "hst-crds-cache-test", ""),
])
def test_the_published_table(observatory, environment, bucket, prefix):
    where = locate(observatory, environment)
    assert (where.bucket, where.prefix) == (bucket, prefix)
    assert where.serverless_url == f"https://{observatory}-crds-serverless.stsci.edu"


def test_keys_and_uris_follow_the_crds_layout():
    roman = locate("roman", "ops")
    assert roman.key("config", "server_config") == "roman/crds/config/roman/server_config"
    assert roman.uri("mappings") == "s3://stpubdata/roman/crds/mappings/roman"
    assert roman.public
    hst = locate("HST", "OPS")
    assert hst.key("references", "x_bia.fits") == "references/hst/x_bia.fits"
    assert not hst.public


def test_private_mirror_overrides_bucket_and_prefix():
    where = locate("roman", "ops", bucket="my-mirror", prefix="crds/roman/")
    assert (where.bucket, where.prefix) == ("my-mirror", "/crds/roman")
    assert locate("hst", "ops", prefix="").prefix == ""


@pytest.mark.parametrize("asked, bucket, prefix, published", [
    (("roman", "test"), "stpubdata", "/roman/crds", "roman ops"),  # crds_s3_set roman ops, then roman test
    (("hst", "ops"), "stpubdata", "/roman/crds", "roman ops"),
    (("roman", "int"), "stpubdata-tst", "/roman/crds/test", "roman test"),
    (("hst", "test"), "hst-crds-cache-ops", "", "hst ops"),
])
def test_another_pairs_published_bucket_is_refused(asked, bucket, prefix, published):
    """What ``crds_s3_set`` left in the shell must not make crds-job warm another pair's files."""
    with pytest.raises(UsageError, match=f"is STScI's cache of {published}, not of {' '.join(asked)}"):
        locate(*asked, bucket, prefix)
    # The pair's own bucket, given explicitly, and a private mirror are fine.
    assert locate(*asked, *default_location(*asked)).bucket
    assert locate(*asked, "my-mirror", prefix).bucket == "my-mirror"


@pytest.mark.parametrize("bucket", ["s3://my-mirror", "my-mirror/crds", "my mirror", "x" * 256])
def test_a_bucket_that_is_not_a_bucket_name_is_a_usage_error(bucket):
    """Refused before any request: the SDK's own refusal would surface as a bug of ours (exit 70)."""
    with pytest.raises(UsageError, match="is not an S3 bucket name"):
        locate("roman", "ops", bucket)


def test_legacy_bucket_names_and_an_empty_override_are_accepted():
    assert locate("roman", "ops", "Legacy_Bucket.name-1").bucket == "Legacy_Bucket.name-1"
    assert locate("roman", "ops", "").bucket == "stpubdata"  # empty: the published bucket


def test_jwst_has_no_bucket_but_a_server():
    assert locate("jwst", "ops").bucket == ""
    assert locate("jwst", "ops", "my-jwst-mirror").bucket == "my-jwst-mirror"
    assert server_url("jwst", "ops") == "https://jwst-crds.stsci.edu"
    assert server_url("roman", "test") == "https://roman-crds-test.stsci.edu"
