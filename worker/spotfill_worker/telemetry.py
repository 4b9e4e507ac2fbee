"""What the worker says: JSON log lines on stdout and CloudWatch embedded-metric-format (EMF) records.

ECS ships stdout to CloudWatch Logs; EMF records there become the ``spotfill`` metrics (dimension ``RunId``)
that the dashboard and the run report read.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, TextIO

NAMESPACE = "spotfill"


class Telemetry:
    def __init__(self, run_id: str, stream: TextIO | None = None) -> None:
        self.run_id = run_id
        self._stream = stream
        self._lock = threading.Lock()

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=str, separators=(",", ":"))
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def log(self, event: str, level: str = "INFO", **fields: Any) -> None:
        self._write(
            {"time": round(time.time(), 3), "level": level, "event": event, "run_id": self.run_id, **fields}
        )

    def metrics(self, *, predictions: int, shards: int, shard_seconds: float, shard_errors: int = 0) -> None:
        self._write(
            {
                "_aws": {
                    "Timestamp": int(time.time() * 1000),
                    "CloudWatchMetrics": [
                        {
                            "Namespace": NAMESPACE,
                            "Dimensions": [["RunId"]],
                            "Metrics": [
                                {"Name": "Predictions", "Unit": "Count"},
                                {"Name": "Shards", "Unit": "Count"},
                                {"Name": "ShardSeconds", "Unit": "Seconds"},
                                {"Name": "ShardErrors", "Unit": "Count"},
                            ],
                        }
                    ],
                },
                "RunId": self.run_id,
                "Predictions": predictions,
                "Shards": shards,
                "ShardSeconds": round(shard_seconds, 6),
                "ShardErrors": shard_errors,
            }
        )
