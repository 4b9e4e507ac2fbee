"""Who may use the local cloud's endpoint: only clients signing with the credentials it was started with, and
no web page in a browser (cross-origin requests and CORS preflights are refused)."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from spotfill.localcloud import LocalCloud

pytestmark = pytest.mark.e2e


def _client(cloud, service: str, key_id: str, secret: str, **config: object):
    return boto3.client(
        service,
        endpoint_url=cloud.endpoint_url,
        region_name=cloud.region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=None,
        config=Config(retries={"max_attempts": 1}, **config),
    )


def _http(request: urllib.request.Request) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_every_local_cloud_has_its_own_random_credentials():
    # given two local clouds with default options (not started: the credentials are chosen up front)
    first, second = LocalCloud(), LocalCloud()

    # then each has its own access key, and its clients' environment carries it
    assert first.credentials != second.credentials
    assert first.credentials.access_key_id not in ("testing", second.credentials.access_key_id)
    assert first.client_environment["AWS_ACCESS_KEY_ID"] == first.credentials.access_key_id
    assert first.client_environment["AWS_SECRET_ACCESS_KEY"] == first.credentials.secret_access_key


def test_an_emulator_puts_back_moto_s_process_wide_configuration_when_it_stops():
    from moto.core.config import default_user_config

    from spotfill.localcloud.server import EmulatorServer

    # given moto's configuration as an in-process test of this process finds it
    before = {key: dict(value) for key, value in default_user_config.items()}
    server = EmulatorServer()

    # when an emulator runs (it switches Step Functions execution on) and stops
    server.start()
    try:
        assert default_user_config["stepfunctions"]["execute_state_machine"] is True
    finally:
        server.stop()

    # then a later mock_aws in this process runs with moto's configuration as it was
    assert {key: dict(value) for key, value in default_user_config.items()} == before


def test_a_cross_origin_request_from_a_web_page_is_refused_without_cors_headers(shared_cloud):
    # given a signed-looking request a web page on another origin sends
    request = urllib.request.Request(
        f"{shared_cloud.endpoint_url}/?Action=DescribeInstances&Version=2016-11-15",
        headers={"Origin": "http://evil.example"},
    )

    # when it reaches the endpoint
    status, headers, body = _http(request)

    # then it is refused, and nothing tells the browser it may read the answer
    assert status == 403
    assert not [h for h in headers if h.lower().startswith("access-control-")]
    assert b"cross-origin" in body


def test_a_cors_preflight_is_refused(shared_cloud):
    # given the preflight a browser sends before an AWS JSON call from another origin
    request = urllib.request.Request(
        f"{shared_cloud.endpoint_url}/",
        method="OPTIONS",
        headers={
            "Origin": "http://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,x-amz-target,content-type",
        },
    )

    # when it reaches the endpoint
    status, headers, _ = _http(request)

    # then it is refused without any Access-Control-Allow-* header
    assert status == 403
    assert not [h for h in headers if h.lower().startswith("access-control-")]


def test_an_unsigned_request_is_refused(shared_cloud):
    status, _, body = _http(
        urllib.request.Request(f"{shared_cloud.endpoint_url}/?Action=DescribeInstances&Version=2016-11-15")
    )

    assert status == 403
    assert b"<Code>InvalidClientTokenId</Code>" in body


def test_a_request_signed_with_another_access_key_id_is_refused(shared_cloud):
    for service, call in (("sqs", "list_queues"), ("ec2", "describe_instances"), ("s3", "list_buckets")):
        with pytest.raises(ClientError) as refused:
            getattr(_client(shared_cloud, service, "testing", "testing"), call)()
        assert refused.value.response["Error"]["Code"] == "InvalidClientTokenId", service
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_a_request_signed_with_the_access_key_id_but_another_secret_is_refused(shared_cloud):
    key_id = shared_cloud.credentials.access_key_id
    with pytest.raises(ClientError) as refused:
        _client(shared_cloud, "ecs", key_id, "not-the-secret").list_clusters()

    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_a_request_signed_an_hour_ago_is_refused(shared_cloud, monkeypatch):
    # given a ListClusters request signed with the cloud's credentials, but an hour ago (a replay)
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    keys = shared_cloud.credentials
    an_hour_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: an_hour_ago)
    signed = AWSRequest(
        method="POST",
        url=f"{shared_cloud.endpoint_url}/",
        data=b"{}",
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "AmazonEC2ContainerServiceV20141113.ListClusters",
        },
    )
    botocore.auth.SigV4Auth(
        Credentials(keys.access_key_id, keys.secret_access_key), "ecs", shared_cloud.region
    ).add_auth(signed)

    # when it reaches the endpoint
    status, _, body = _http(
        urllib.request.Request(signed.url, data=b"{}", headers=dict(signed.headers.items()), method="POST")
    )

    # then it is refused as too old
    assert status == 403
    assert b"RequestTimeTooSkewed" in body


@pytest.mark.parametrize("signature_version", ["s3v4", None])
def test_calls_and_presigned_urls_signed_with_the_local_clouds_credentials_are_accepted(
    shared_cloud, signature_version
):
    # given clients signing with the cloud's own credentials
    keys = shared_cloud.credentials
    config = {"signature_version": signature_version} if signature_version else {}
    s3 = _client(shared_cloud, "s3", keys.access_key_id, keys.secret_access_key, **config)
    sqs = _client(shared_cloud, "sqs", keys.access_key_id, keys.secret_access_key)
    bucket = f"security-{signature_version or 'default'}"

    # when they call S3 (a key that needs encoding, a body) and SQS (JSON), and presign an S3 GET
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="in put/a+b é.bin", Body=b"x" * 70_000)
    queue = sqs.create_queue(QueueName=bucket)["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="hello & <goodbye>")

    # then every call is answered
    assert s3.get_object(Bucket=bucket, Key="in put/a+b é.bin")["Body"].read() == b"x" * 70_000
    assert sqs.receive_message(QueueUrl=queue)["Messages"][0]["Body"] == "hello & <goodbye>"
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "in put/a+b é.bin"})
    status, _, body = _http(urllib.request.Request(url))
    assert (status, len(body)) == (200, 70_000)
    # and a URL presigned with another secret is not
    forged = _client(
        shared_cloud, "s3", keys.access_key_id, "not-the-secret", **config
    ).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "in put/a+b é.bin"})
    assert _http(urllib.request.Request(forged))[0] == 403
    s3.delete_object(Bucket=bucket, Key="in put/a+b é.bin")
    s3.delete_bucket(Bucket=bucket)
    sqs.delete_queue(QueueUrl=queue)
