"""Log lines: the level asked for, and never a credential, whoever logs it."""

from __future__ import annotations

import pytest

from crds_job.logs import REDACTED, redact_text

KEY_ID, SECRET, TOKEN = "AKIAKEYID1234567", "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRET", "IQoJb3JpZ2luX2VjEBSESSIONTOKEN"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJl"  # a service account's token


@pytest.mark.parametrize("line", [
    # botocore.endpoint's request, at debug
    f"Sending http request: <AWSPreparedRequest method=GET, headers={{'X-Amz-Date': b'20261127T024602Z', "
    f"'X-Amz-Security-Token': b'{TOKEN}', 'Authorization': b'AWS4-HMAC-SHA256 Credential={KEY_ID}/20261127/"
    f"us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=0123abcd'}}>",
    # botocore.auth's canonical request
    f"CanonicalRequest:\nGET\n/b/k\n\nhost:127.0.0.1\nx-amz-security-token:{TOKEN}\n\nhost;x-amz-security-token",
    # a presigned URL
    f"https://b.s3.amazonaws.com/k?X-Amz-Credential={KEY_ID}%2F2026&X-Amz-Security-Token={TOKEN}&X-Amz-Signature=ab",
    # STS's answer to AssumeRoleWithWebIdentity (IRSA), and a credential process's output
    f"Response body:\nb'<Credentials><AccessKeyId>{KEY_ID}</AccessKeyId><SecretAccessKey>{SECRET}</SecretAccessKey>"
    f"<SessionToken>{TOKEN}</SessionToken></Credentials>'",
    f'{{"Version": 1, "AccessKeyId": "{KEY_ID}", "SecretAccessKey": "{SECRET}", "SessionToken": "{TOKEN}"}}',
    # botocore.endpoint's AssumeRoleWithWebIdentity request (IRSA), at debug: the JWT assumes the role
    f"Making request for OperationModel(name=AssumeRoleWithWebIdentity) with params: {{'body': {{'Action': "
    f"'AssumeRoleWithWebIdentity', 'RoleArn': 'arn:aws:iam::1:role/r', 'WebIdentityToken': '{JWT}'}}}}; "
    f"as sent: Action=AssumeRoleWithWebIdentity&WebIdentityToken={JWT}&Version=2011-06-15",
    f"aws_secret_access_key = {SECRET}\naws_session_token={TOKEN}",
])
def test_credentials_are_redacted_from_any_line(line):
    redacted = redact_text(line)
    assert SECRET not in redacted and TOKEN not in redacted and JWT not in redacted and KEY_ID not in redacted
    assert REDACTED in redacted


def test_a_secret_that_begins_with_b_is_redacted_whole():
    """``b'...'`` is a bytes repr, whose b is not the secret's; a b with no quote after it is."""
    assert redact_text("x.fits?Signature=bDVkuDAdcQb7OyvbTSrOTbRvnMM%3D&Expires=1") == \
        f"x.fits?Signature={REDACTED}&Expires=1"
    assert redact_text(f"'X-Amz-Security-Token': b'{TOKEN}'") == f"'X-Amz-Security-Token': b'{REDACTED}'"


@pytest.mark.parametrize("line", [
    "no AWS credentials to read private bucket crds-x; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
    "access denied reading s3://b/k (credentials: env); grant s3:GetObject",
    "S3 refused the credentials (env) with ExpiredToken reading s3://b/k",
])
def test_our_own_messages_about_credentials_are_left_whole(line):
    assert redact_text(line) == line


def test_credentials_deep_in_a_log_lines_values_are_redacted():
    """A presigned URL given as a dataset is logged in lists (the settings, the command, the datasets)."""
    from crds_job.logs import redact

    url = f"https://b.s3.amazonaws.com/x_raw.fits?X-Amz-Credential={KEY_ID}%2F2026&X-Amz-Security-Token={TOKEN}"
    event = redact(None, "info", {"event": "starting", "settings": {"command": ["calwf3", url], "datasets": (url,)}})
    assert TOKEN not in str(event) and KEY_ID not in str(event)
    assert isinstance(event["settings"]["datasets"], tuple) and event["settings"]["command"][0] == "calwf3"


def test_debug_logs_carry_no_credential(roman_bucket):
    """At debug the AWS SDK logs every signed request: the job's key id, secret and token never appear."""
    run = roman_bucket.run("roman", "ops", "--log-level", "debug", AWS_ACCESS_KEY_ID=KEY_ID,
                           AWS_SECRET_ACCESS_KEY=SECRET, AWS_SESSION_TOKEN=TOKEN)
    assert run.returncode == 0, run.stderr[-2000:]
    requests = [line for line in run.logs if line.get("logger") == "botocore.endpoint"]
    assert requests, "the SDK's debug lines are there, so the check below checks something"
    for secret in (KEY_ID, SECRET, TOKEN):
        assert secret not in run.stderr and secret not in run.stdout


@pytest.mark.parametrize("level, shown", [
    ("warning", set()),
    ("info", {"info"}),
    ("debug", {"info", "debug"}),
])
def test_the_log_level_asked_for_is_the_least_severe_written(roman_bucket, level, shown):
    run = roman_bucket.run("roman", "ops", "--log-level", level)
    assert run.returncode == 0, run.stderr[-2000:]
    assert {line["level"] for line in run.logs} == shown and not run.foreign
