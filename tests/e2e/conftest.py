"""The local cloud fixture for end-to-end tests: moto server + physics + the deployed stack, per test,
and a small digits model with its shards and reference predictions, per module."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from spotfill.localcloud import LocalCloud, LocalCloudOptions

# Short SQS leases so a poison shard reaches the dead-letter queue in seconds (the worker's heartbeat keeps
# healthy shards leased however short this is).
FAST_WORKERS = {"SPOTFILL_VISIBILITY_TIMEOUT": "4"}


@pytest.fixture(scope="module")
def shared_cloud(tmp_path_factory):
    """One local cloud for a module's tests (starting one deploys the stack, which takes seconds); tests keep
    apart by run ids and names. The handlers run in this process and need AWS_ENDPOINT_URL to stay set while
    the shared fixtures' per-test credential fixture runs, which SPOTFILL_KEEP_ENDPOINT asks for."""
    run_dir = tmp_path_factory.mktemp("local")
    keep = os.environ.get("SPOTFILL_KEEP_ENDPOINT")
    os.environ["SPOTFILL_KEEP_ENDPOINT"] = "1"
    try:
        options = LocalCloudOptions(boot_delay=1.0, run_dir=run_dir, worker_environment=FAST_WORKERS)
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
    yield shared_cloud
    assert shared_cloud.wait_idle(timeout=30), shared_cloud.leftovers()


@pytest.fixture
def quiet_console() -> Console:
    return Console(quiet=True)


@dataclass
class Digits:
    model_path: Path
    input_dir: Path
    reference: dict[str, np.ndarray]

    def shards(self) -> list[Path]:
        return sorted(self.input_dir.glob("*.npy"))


def write_digits(directory: Path, shards: int, rows: int, model_path: Path | None = None) -> Digits:
    from spotfill.demo import augmented_digits, train_digits_model

    if model_path is None:
        model_path = directory / "model" / "digits.keras"
        model = train_digits_model(model_path, epochs=1)
    else:
        import keras

        model = keras.models.load_model(model_path)
    input_dir = directory / "inputs"
    input_dir.mkdir(parents=True)
    reference = {}
    all_rows = [augmented_digits(rows, seed=i) for i in range(shards)]
    predicted = model.predict(np.concatenate(all_rows), batch_size=8192, verbose=0)
    for i, shard_rows in enumerate(all_rows):
        name = f"part-{i:05d}.npy"
        np.save(input_dir / name, shard_rows)
        reference[name] = predicted[i * rows : (i + 1) * rows]
    return Digits(model_path, input_dir, reference)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Digits:
    return write_digits(tmp_path_factory.mktemp("digits"), shards=8, rows=300)


def eventually(predicate, timeout: float = 30.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
