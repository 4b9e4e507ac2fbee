"""botocore's service models parsed once per process (spotfill.service_models)."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
import boto3
from spotfill.service_models import share_service_models

def loaders():
    first, second = boto3.Session(region_name="us-east-1"), boto3.Session(region_name="eu-west-1")
    return [s._session.get_component("data_loader") for s in (first, second)]

before = loaders()
share_service_models()
share_service_models()
after = loaders()
sqs = boto3.Session(region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b").client("sqs")
print(before[0] is before[1], after[0] is after[1], sqs.meta.region_name)
"""


def test_sessions_made_after_sharing_use_one_loader_and_keep_their_own_region():
    # (in a fresh interpreter: this suite shares the models from its start, tests/conftest.py)
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "eu-west-1"]
