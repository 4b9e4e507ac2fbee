"""Fixtures of the Step Functions tier: one deployed stack per test module (deploying takes seconds; runs on
it are isolated by run id, as in a real account)."""

from __future__ import annotations

import pytest

from .harness import Cloud, deployed_cloud


@pytest.fixture(scope="module")
def cloud() -> Cloud:
    with deployed_cloud() as deployed:
        yield deployed


@pytest.fixture
def lambdas(cloud: Cloud):
    """The dispatcher, with no failure left injected by an earlier test."""
    cloud.lambdas.clear_failures()
    yield cloud.lambdas
    cloud.lambdas.clear_failures()
