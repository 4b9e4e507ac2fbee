"""AWS scaffolding shared by every test tier: fake credentials, a Lambda context, moto.

Tiers keep their own fixtures in their own folders (tests/control, tests/sfn, tests/worker, tests/e2e);
this file holds only what all of them need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def aws_credentials(monkeypatch):
    """Fake credentials so no test can ever reach a real account."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SECURITY_TOKEN", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    if "AWS_ENDPOINT_URL" in os.environ and not os.environ.get("SPOTFILL_KEEP_ENDPOINT"):
        monkeypatch.delenv("AWS_ENDPOINT_URL")


@dataclass
class FakeLambdaContext:
    function_name: str = "spotfill-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:spotfill-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    log_group_name: str = "/aws/lambda/spotfill-test"
    log_stream_name: str = "2026/11/27/[$LATEST]test"

    def get_remaining_time_in_millis(self) -> int:
        return 300_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()
