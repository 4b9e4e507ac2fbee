"""Fixtures of the Step Functions tier: one deployed stack per test module (deploying takes seconds; runs on
it are isolated by run id, as in a real account). IAM is enforced on every call the handlers make (each acts
as its function's role, `spotfill.iam`); a call denied in a test fails it, even one a handler swallowed."""

from __future__ import annotations

import pytest

from spotfill import iam

from .harness import Cloud, deployed_cloud


@pytest.fixture(scope="module")
def cloud() -> Cloud:
    with deployed_cloud() as deployed:
        yield deployed
        denied = iam.describe(deployed.lambdas.iam.denied)
        assert not denied, "calls IAM denied:\n" + "\n".join(denied)


@pytest.fixture
def lambdas(cloud: Cloud):
    """The dispatcher, with no failure left injected by an earlier test."""
    cloud.lambdas.clear_failures()
    earlier = len(cloud.lambdas.iam.denied)
    yield cloud.lambdas
    cloud.lambdas.clear_failures()
    denied = iam.describe(cloud.lambdas.iam.denied[earlier:])
    assert not denied, "calls IAM denied:\n" + "\n".join(denied)
