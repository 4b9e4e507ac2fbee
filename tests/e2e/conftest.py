"""The local cloud fixture for end-to-end tests: moto server + physics + the deployed stack, per test."""

from __future__ import annotations

import pytest

from spotfill.localcloud import LocalCloud, LocalCloudOptions


@pytest.fixture
def local_cloud(tmp_path, aws_credentials):
    with LocalCloud(LocalCloudOptions(boot_delay=1.0, run_dir=tmp_path / "local")) as cloud:
        yield cloud
