"""Worker tier scaffolding: tiny Keras models (built once per session), moto buckets and queues, a runner."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DATA = "data-bucket"
CONTROL = "control-bucket"
RUN_ID = "run-test"


@dataclass
class TinyModel:
    path: Path
    model: Any  # the keras.Model, for model.predict comparisons

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x, verbose=0, batch_size=64)


def _save(model: Any, directory: Path, name: str) -> TinyModel:
    path = directory / f"{name}.keras"
    model.save(path)
    return TinyModel(path, model)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tabular_classifier(models_dir) -> TinyModel:
    """5 features -> 3 classes (softmax)."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((5,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    return _save(keras.Model(inputs, outputs), models_dir, "tabular")


@pytest.fixture(scope="session")
def digits_cnn(models_dir) -> TinyModel:
    """8x8x1 digit images -> 10 classes."""
    import keras

    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    return _save(model, models_dir, "digits")


@pytest.fixture(scope="session")
def image_classifier(models_dir) -> TinyModel:
    """16x16 RGB images -> 4 classes."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )
    return _save(model, models_dir, "images")


@pytest.fixture(scope="session")
def lookup_model(models_dir) -> TinyModel:
    """3 token ids (as float32) -> 2 classes through an Embedding of 10 ids: a row holding an id of 10 or more
    fails in the forward pass itself (TensorFlow's multi-line InvalidArgumentError), whatever runs it."""
    import keras

    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Embedding(10, 2),
            keras.layers.Flatten(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    return _save(model, models_dir, "lookup")


@pytest.fixture(scope="session")
def regressor_savedmodel(models_dir) -> tuple[Path, Any]:
    """A 4 -> 2 linear regressor exported as a SavedModel and packed as .tar.gz."""
    import keras

    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(2)]
    )
    export_dir = models_dir / "regressor_savedmodel"
    model.export(str(export_dir), verbose=False)
    archive = models_dir / "regressor.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(export_dir, arcname="regressor")
    return archive, model


# ----------------------------------------------------------------------------------------- AWS (in process)


@dataclass
class Cloud:
    s3: Any
    sqs: Any
    queue_url: str
    dlq_url: str

    def put(self, uri_key: str, body: bytes, bucket: str = DATA) -> str:
        self.s3.put_object(Bucket=bucket, Key=uri_key, Body=body)
        return f"s3://{bucket}/{uri_key}"

    def get(self, uri: str) -> bytes:
        bucket, key = uri[len("s3://") :].split("/", 1)
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def exists(self, uri: str) -> bool:
        bucket, key = uri[len("s3://") :].split("/", 1)
        return self.s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) > 0

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]

    def send_shard(self, shard_key: str, output_ext: str, run_id: str = RUN_ID) -> dict[str, str]:
        stem = shard_key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        body = {
            "run_id": run_id,
            "shard": f"s3://{DATA}/{shard_key}",
            "output": f"s3://{DATA}/outputs/{stem}.{output_ext}",
            "error": f"s3://{CONTROL}/runs/{run_id}/errors/{shard_key.rsplit('/', 1)[-1]}.json",
        }
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(body))
        return body

    def visible_messages(self, queue_url: str | None = None) -> list[dict]:
        got = self.sqs.receive_message(
            QueueUrl=queue_url or self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            VisibilityTimeout=0,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return got.get("Messages", [])

    def queue_counts(self, queue_url: str | None = None) -> tuple[int, int]:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=queue_url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )


def create_cloud(s3: Any, sqs: Any, name: str = "shards", max_receive_count: int = 2) -> Cloud:
    for bucket in (DATA, CONTROL):
        s3.create_bucket(Bucket=bucket)
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "VisibilityTimeout": "30",
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}
            ),
        },
    )["QueueUrl"]
    return Cloud(s3, sqs, queue_url, dlq_url)


@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto server on loopback: what a worker process reaches through AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def server_cloud(moto_endpoint, request):
    """A cloud of its own on the module's moto server, for workers run as processes."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint)
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name[:40])  # what SQS allows in a queue name
    return create_cloud(s3, sqs, name=f"shards-{name}-{time.monotonic_ns()}")


@pytest.fixture
def cloud() -> Cloud:
    import boto3
    from moto import mock_aws

    with mock_aws():
        yield create_cloud(boto3.client("s3"), boto3.client("sqs"))


@dataclass
class WorkerRun:
    worker: Any
    exit_code: int
    lines: list[dict]

    def events(self, name: str) -> list[dict]:
        return [line for line in self.lines if line.get("event") == name]


@pytest.fixture
def run_worker(cloud):
    """Run the real worker loop in this process until the queue has been idle for a moment."""
    from spotfill_worker.clients import Clients
    from spotfill_worker.config import WorkerConfig
    from spotfill_worker.telemetry import Telemetry
    from spotfill_worker.worker import Worker

    def run(model_uri: str, input_format: str, **settings: Any) -> WorkerRun:
        values = {
            "run_id": RUN_ID,
            "queue_url": cloud.queue_url,
            "model_uri": model_uri,
            "input_format": input_format,
            "batch_size": 16,
            "receive_wait_seconds": 1,
            "exit_when_idle_seconds": 0.5,
            "spot_notice": False,
            "instance_metadata": False,
            **settings,
        }
        stream = io.StringIO()
        worker = Worker(
            WorkerConfig.model_validate(values),
            Clients(s3=cloud.s3, sqs=cloud.sqs),
            Telemetry(RUN_ID, stream),
        )
        code = worker.run(install_signals=False)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        return WorkerRun(worker, code, lines)

    return run


# ----------------------------------------------------------------------------------- AWS calls, in order


@dataclass
class AwsCall:
    service: str  # botocore's service name: "s3", "sqs"
    operation: str  # "PutObject", "DeleteMessage", ...
    params: dict  # the API parameters the caller passed
    status: int  # the HTTP status of the answer
    parsed: dict  # the parsed answer (an error answer holds "Error")
    started: float  # time.monotonic() when the call began and ended
    ended: float


class AwsCalls:
    """Every call the watched clients complete, in the order they complete (botocore event hooks, so the
    worker's code is not touched); `on_call` hooks see each call as it completes."""

    def __init__(self) -> None:
        self.calls: list[AwsCall] = []
        self.on_call: list[Any] = []
        self._lock = threading.Lock()
        self._watched: list[tuple[Any, str, Any]] = []

    def watch(self, client: Any) -> None:
        for event, handler in (("before-parameter-build", self._began), ("after-call", self._ended)):
            client.meta.events.register(event, handler)
            self._watched.append((client, event, handler))

    def close(self) -> None:
        for client, event, handler in self._watched:
            client.meta.events.unregister(event, handler)

    def _began(self, params: dict, context: dict, **_: Any) -> None:
        context["aws_calls_params"] = dict(params)
        context["aws_calls_started"] = time.monotonic()

    def _ended(self, http_response: Any, parsed: dict, model: Any, context: dict, **_: Any) -> None:
        call = AwsCall(
            model.service_model.service_name,
            model.name,
            context.get("aws_calls_params", {}),
            http_response.status_code,
            parsed,
            context.get("aws_calls_started", 0.0),
            time.monotonic(),
        )
        with self._lock:
            self.calls.append(call)
            hooks = list(self.on_call)
        for hook in hooks:
            hook(call)

    def of(self, operation: str) -> list[AwsCall]:
        with self._lock:
            return [c for c in self.calls if c.operation == operation]


@pytest.fixture
def aws_calls(cloud):
    """The calls made through the test cloud's S3 and SQS clients (the ones `run_worker` gives the worker)."""
    calls = AwsCalls()
    calls.watch(cloud.s3)
    calls.watch(cloud.sqs)
    yield calls
    calls.close()


@pytest.fixture
def s3_conflicts():
    """S3's 409 ConditionalRequestConflict on demand: `s3_conflicts.arm(writes, per_key)` (the local
    cloud's patch of moto)."""
    from spotfill.localcloud.patches.s3 import (
        CONDITIONAL_WRITE_CONFLICTS,
        install_conditional_write_conflicts,
    )

    install_conditional_write_conflicts()
    yield CONDITIONAL_WRITE_CONFLICTS
    CONDITIONAL_WRITE_CONFLICTS.disarm()
