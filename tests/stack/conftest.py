"""The stack tier: template.yaml deployed into moto (in process) by `spotfill.deploy.deploy_stack`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto import mock_aws

from spotfill.deploy import StackOutputs, deploy_stack, load_template, translate_template

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region for one test's moto, and no endpoint or profile of the machine's."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, FAKE_CREDENTIALS[name])
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="module")
def moto_module() -> Iterator[None]:
    """One moto for the whole module: deploying the stack takes seconds, reading it takes none."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FAKE_CREDENTIALS.items():
            patch.setenv(name, value)
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        patch.delenv("AWS_PROFILE", raising=False)
        with mock_aws():
            yield


@pytest.fixture(scope="module")
def stack(moto_module: None) -> StackOutputs:
    """The template deployed with its default parameters."""
    return deploy_stack("spotfill")


@pytest.fixture(scope="module")
def translated() -> dict:
    """template.yaml translated to plain CloudFormation (what `sam deploy` hands to CloudFormation)."""
    return translate_template(load_template(), region="us-east-1")
