"""The moto server as AWS answers a worker: every S3 and SQS request waits its service's latency, and object
bodies cross at a per-connection and a per-instance bandwidth.

``python -m bench.latency --port P [--s3-latency-ms ...]`` runs moto's own WSGI application (what
``python -m moto.server`` runs) wrapped in ``Latency``, a WSGI middleware. The wait is a sleep in the
request's own server thread: concurrent requests wait side by side, as requests on separate connections do,
and the emulator spends no CPU on it. A request waits ``latency + bytes / connection bandwidth``, and no less
than the instance's network link, shared by all requests (one running reservation of
``bytes / instance bandwidth`` each), lets it finish.

Default figures (``LatencyModel()``; BENCHMARKS.md cites the pages):

- SQS 20 ms per request: AWS's own example of the latency from an EC2 client to SQS in the same region
  ("Increasing throughput using horizontal scaling and action batching with Amazon SQS").
- S3 30 ms to the first byte of a small request: an assumption inside AWS's "tens of milliseconds" median
  for requests under 512 KB ("Timeouts and Retries for Latency-Sensitive Applications", S3 performance
  whitepaper).
- 85 MB/s per connection for object bodies: an assumption (the figure commonly quoted for one S3 connection).
- 1,562 MB/s per instance (12.5 Gbit/s, the "up to" figure of 2-vCPU current-generation instances): an
  assumption; such an instance's baseline is far lower, so a long backfill of small rows may be link-bound.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

MB = 1_000_000


@dataclass(frozen=True)
class LatencyModel:
    s3_ms: float = 30.0
    sqs_ms: float = 20.0
    connection_mb_per_s: float = 85.0
    instance_mb_per_s: float = 1562.5

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def arguments(self) -> list[str]:
        """The command-line arguments that give ``main`` this model."""
        return [
            f"--s3-latency-ms={self.s3_ms}",
            f"--sqs-latency-ms={self.sqs_ms}",
            f"--connection-mb-per-s={self.connection_mb_per_s}",
            f"--instance-mb-per-s={self.instance_mb_per_s}",
        ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = LatencyModel()
    parser.add_argument("--s3-latency-ms", type=float, default=default.s3_ms, help="S3 first-byte latency")
    parser.add_argument("--sqs-latency-ms", type=float, default=default.sqs_ms, help="SQS request latency")
    parser.add_argument(
        "--connection-mb-per-s",
        type=float,
        default=default.connection_mb_per_s,
        help="bandwidth of one connection for request and response bodies (MB/s)",
    )
    parser.add_argument(
        "--instance-mb-per-s",
        type=float,
        default=default.instance_mb_per_s,
        help="the instance's network bandwidth, shared by all connections (MB/s)",
    )


def model_from(args: argparse.Namespace) -> LatencyModel:
    return LatencyModel(
        args.s3_latency_ms, args.sqs_latency_ms, args.connection_mb_per_s, args.instance_mb_per_s
    )


class Latency:
    """WSGI middleware: each request waits as ``LatencyModel`` says before its response leaves. moto's own
    API (``/moto-api``) answers at once."""

    def __init__(
        self, app: Callable, model: LatencyModel, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._app = app
        self._model = model
        self._clock = clock
        self._link_free = 0.0  # when the instance's link has sent every byte reserved so far
        self._lock = threading.Lock()

    def seconds(self, service: str, body_bytes: int, now: float) -> float:
        """How long a request of ``service`` (``"s3"`` or ``"sqs"``) moving ``body_bytes`` takes from
        ``now``, reserving its bytes on the instance's link."""
        model = self._model
        latency = (model.sqs_ms if service == "sqs" else model.s3_ms) / 1000
        transfer = body_bytes / (model.connection_mb_per_s * MB)
        with self._lock:
            start = max(now, self._link_free)
            self._link_free = start + body_bytes / (model.instance_mb_per_s * MB)
            link_done = self._link_free
        return max(latency + transfer, link_done - now)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return self._app(environ, start_response)
        arrived = self._clock()
        # boto3 speaks SQS's JSON protocol (X-Amz-Target: AmazonSQS.<Action>); everything else here is S3.
        service = "sqs" if environ.get("HTTP_X_AMZ_TARGET", "").startswith("AmazonSQS") else "s3"
        sent = int(environ.get("CONTENT_LENGTH") or 0)
        body = list(self._app(environ, start_response))
        received = sum(len(chunk) for chunk in body)
        wait = self.seconds(service, sent + received, arrived) - (self._clock() - arrived)
        if wait > 0:
            time.sleep(wait)
        return body


def main(argv: list[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    add_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        args.host,
        args.port,
        Latency(app, model_from(args)),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
