"""Helpers shared by the end-to-end tests: a digits model with shards and reference predictions, waiting."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Short SQS leases so a poison shard reaches the dead-letter queue in seconds (the worker's heartbeat keeps
# healthy shards leased however short this is).
FAST_WORKERS = {"SPOTFILL_VISIBILITY_TIMEOUT": "4"}
# The fields of every worker log record (spotfill_worker.telemetry.Telemetry.log).
WORKER_LOG_FIELDS = frozenset({"time", "level", "event", "run_id"})


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


def worker_records(log_path: Path) -> list[dict]:
    """The worker's own records in a task log: its JSON log lines (`time`, `level`, `event`, `run_id`) and
    its EMF metric records (`_aws`, `RunId`). The log is the container's stdout and stderr together, as ECS
    ships them; native libraries (TensorFlow's absl logging) write plain-text lines to stderr, not ours."""
    records = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.keys() >= WORKER_LOG_FIELDS or "_aws" in record:
            records.append(record)
    return records


def eventually(predicate, timeout: float = 30.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
