"""The local cloud fixture for end-to-end tests: moto server + physics + the deployed stack, per test,
and a small digits model with its shards and reference predictions, per test process."""

from __future__ import annotations

import os

import pytest
from rich.console import Console

from spotfill.localcloud import LocalCloud, LocalCloudOptions
from spotfill.localcloud.cloud import _forget_cached_clients

from .helpers import FAST_WORKERS, Digits, write_digits


@pytest.fixture(scope="module")
def shared_cloud(tmp_path_factory):
    """One local cloud for a module's tests (starting one deploys the stack, which takes seconds); tests keep
    apart by run ids and names. The handlers run in this process and need AWS_ENDPOINT_URL to stay set while
    the shared fixtures' per-test credential fixture runs, which SPOTFILL_KEEP_ENDPOINT asks for."""
    run_dir = tmp_path_factory.mktemp("local")
    keep = os.environ.get("SPOTFILL_KEEP_ENDPOINT")
    os.environ["SPOTFILL_KEEP_ENDPOINT"] = "1"
    try:
        options = LocalCloudOptions(
            boot_delay=1.0,
            run_dir=run_dir,
            worker_environment=FAST_WORKERS,
            extra_worker_modules=("spotfill_fake_worker",),  # test_physics.py's stand-in worker
        )
        with LocalCloud(options) as cloud:
            yield cloud
    finally:
        if keep is None:
            os.environ.pop("SPOTFILL_KEEP_ENDPOINT", None)
        else:
            os.environ["SPOTFILL_KEEP_ENDPOINT"] = keep


@pytest.fixture
def local_cloud(shared_cloud, aws_credentials, monkeypatch):
    """The module's local cloud, with this process's environment pointing at it for the test."""
    for key, value in shared_cloud.client_environment.items():
        monkeypatch.setenv(key, value)
    _forget_cached_clients()  # made with another test's credentials
    yield shared_cloud
    assert shared_cloud.wait_idle(), shared_cloud.leftovers()


@pytest.fixture
def quiet_console() -> Console:
    return Console(quiet=True)


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Digits:
    """Trained once per test process (tests read it, never change it)."""
    return write_digits(tmp_path_factory.mktemp("digits"), shards=8, rows=300)
