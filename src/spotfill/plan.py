"""`spotfill plan SPEC`: what a backfill will cost and how long it will take, before anything is spent.

The spec is checked by Validate's own checks (`spotfill_control.setup.checks.check_spec`, with the stack's
configuration read from the function its state machine runs as Validate), so `plan` refuses exactly what
the state machine would. Then the shards are counted (the rows of up to `SAMPLE_SHARDS` shards, spread over
the list, stand for the rest), the model and a sample shard are downloaded and put through the worker's own
predictor, with the runtime the worker would choose, and that measured rate is scaled to each candidate
instance type and priced from the spot market (DescribeSpotPriceHistory) and the on-demand Price List.
Nothing is created or requested: every call reads.

On AWS the rate scales with vCPUs (an assumption the output states: a CPU-bound model, one worker per
instance using all its cores). On the local cloud (`local=True`) the emulated instances are worker processes
sharing this machine's cores, so the fleet's rate is this machine's, whatever the emulated type, and the
fixed overheads are the local cloud's (`LOCAL_OVERHEADS`). Either way the workers start as the fleet's
instances register, each paying its own start before its first output (`spotfill.ramp`), and the rate shown
is the run's average over its processing phase, as the report measures it.

One module of about 800 lines because it is the one command's five steps in order, each a section below
(checking, measuring, prices, projecting, the deadline and the table), sharing `Inputs`, `Measurement` and
`Plan`; the arithmetic of the workers' start, the part that grew, is already its own module (`spotfill.ramp`).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from spotfill_control import shards
from spotfill_control.config import Settings
from spotfill_control.fleet.fleet import fleet_target_capacity
from spotfill_control.instance_types import InstanceTypeFacts, describe_instance_types
from spotfill_control.monitoring import budget, cost, finish_by
from spotfill_control.setup.checks import check_spec
from spotfill_control.setup.inputs import list_shards, no_shards_error
from spotfill_control.setup.preflight import Preflight
from spotfill_control.setup.prices import price_list_client, priced
from spotfill_control.setup.triggers import read_manifest, spec_from_document
from spotfill_control.spec import BackfillSpec, Estimate, LimitsSpec

from spotfill import ramp

SAMPLE_SHARDS = 3  # shards whose rows are counted (and the first of them measured)
SUGGESTIONS = 5  # other instance types `--suggest` adds
# The timed predictions repeat until they took this long (at most MAX_TIMED_ROUNDS): a small model's shard
# takes milliseconds, and a few of them timed alone read whatever else the machine did in those milliseconds.
MIN_TIMED_SECONDS = 1.0
MAX_TIMED_ROUNDS = 1000
# A worker start shorter than this is timed twice and the faster kept: the digits CNN's 5 s start read 4.7 to
# 5.6 s between plans on a quiet machine, and at 4 instances the start is most of the run (plans up to 20 %
# long); a longer one varies less for its length and costs more to repeat.
REPEATED_START_SECONDS = 10.0
PRICE_HISTORY = timedelta(hours=24)
# A worker's per-shard cost besides predicting, in units of the sample shard's download: its round trips
# (receive the message, check for an existing output, download, upload, delete the message, extend the lease)
# and the hand-offs between its threads; 10 matches the local cloud's runs.
REQUESTS_PER_SHARD = 10

# What a run on AWS spends besides predicting, in seconds (assumptions the output states): the fleet
# launching, instances booting and joining the cluster, each worker's image pulled and its task started
# (before the worker's own start, which plan measures), and teardown (the fleet terminated, the cluster
# emptied).
AWS_OVERHEADS = {
    "validate_and_prepare": 15.0,
    "boot_and_register": 150.0,
    "image_pull": 60.0,
    "teardown": 60.0,
}
# EC2 Fleet launches a fleet's instances in one request and they boot in parallel, but they join the cluster
# some seconds apart (AWS documents no figure: an assumption the output states), and the monitor sees each
# registration on a poll: the first worker starts at the poll that sees the first instance (half a poll after
# it registered, on average), the others with it or at a later poll (`ramp.launch_offsets`).
AWS_REGISTRATION_INTERVAL = 5.0
# The local cloud's fixed costs (its physics and in-process control plane), as the report's phases measure
# them on its runs (`spotfill demo` at 2-4 instances, 2026-12-07: validate 0.6-0.7 s, fleet_fulfilled 1.1 s,
# teardown 0.1-0.3 s whatever the load): Validate and PrepareRun; the fleet request until it is fulfilled; the
# first instance's boot delay (`LocalCloudOptions.boot_delay`); the monitor's own time per poll besides the
# poll interval (its Lambda, the Wait, the Choice: the cycle at which later instances' tasks start and the
# last output is seen); teardown (fleet terminated, tasks stopped).
LOCAL_OVERHEADS = {
    "validate_and_prepare": 0.6,
    "fleet_request": 1.1,
    "boot": 2.0,
    "monitor_per_poll": 0.5,
    "teardown": 0.2,
}
# The local cloud boots a fleet's instances one by one, `LocalCloudOptions.boot_interval` apart, and its ECS
# agent registers each at once; the first poll sees the first registration half a poll cycle after it (on
# average).
LOCAL_BOOT_INTERVAL = 0.5
# While workers start, the local cloud keeps about a third of a core busy, however many start: its emulator
# server (S3, SQS, STS answering the workers' model downloads, role sessions and first receives) and the
# process running the state machine, the functions, the EC2 physics and the ECS agent, together. It mostly
# waits on requests, so the scheduler gives it what it asks for rather than a busy process's fair share.
# Measured: four MobileNetV2 workers starting for 70.6 s beside it, it used 21.0 CPU-seconds (0.30 of a core);
# the digits demo's starts, 0.25 of a core on a quiet machine and 0.53 beside other sessions' niced tests.
# Counted as a busy process's share instead (one, then half), it took less the more workers started (0.22 of
# a core beside four), and four MobileNetV2 workers' plans were 12-18 % short.
LOCAL_CLOUD_CORES = 0.3
# The memory a fresh process touches costs this machine CPU in the kernel (page faults: pages found, zeroed,
# mapped), and on some machines far more for memory nothing used lately: in a VM whose host takes freed memory
# back (a balloon's free page reporting), touching it again waits on the host. This one charged 2.25
# CPU-seconds per GiB touched fresh, 0.1 for memory freed a moment before (BENCHMARKS.md, "Plan against run:
# fresh memory"). A run's workers start seconds after anything the plan freed, each touching what a start
# touches (MobileNetV2's about 4 GiB), so `measure` times fresh memory in chunks held together, the last ones
# past whatever was just freed, and the local plan charges a start its touched memory at the costliest
# chunk's rate.
FRESH_MEMORY_CHUNK_MIB = 256
FRESH_MEMORY_CHUNKS = 4


class PlanError(Exception):
    """The spec cannot be planned (invalid: the sentence Validate gives)."""


@dataclass(frozen=True)
class Inputs:
    shards: int
    rows: int  # predictions the run makes (estimated unless `exact`)
    sampled: int  # shards whose rows were counted
    exact: bool


@dataclass(frozen=True)
class Measurement:
    """The worker's predictor on this machine: decode + predict of the sample rows after warm-up."""

    runtime: str
    precision: str
    device: str
    rows: int
    rows_per_second: float
    cpus: int
    shard_read_seconds: float  # downloading a sample shard: the fastest of the sampled shards' downloads
    worker_start_seconds: float  # TensorFlow import + model load + calibration, as a worker pays them
    worker_start_cores: float = 1.0  # its CPU seconds over those seconds: the cores it keeps busy (>= 1)
    # After its imports: the memory it touched (the model, its warm-up, its runtimes: minor page faults x the
    # page size; the imports' own are mostly the libraries' files, cheap to map) and its kernel CPU meanwhile
    worker_start_memory_gib: float = 0.0
    worker_start_memory_system_seconds: float = 0.0
    fresh_memory_seconds_per_gib: float = 0.0  # CPU a GiB of memory nothing used lately costs to touch here

    @property
    def rows_per_second_per_vcpu(self) -> float:
        return self.rows_per_second / self.cpus

    @property
    def local_worker_start_seconds(self) -> float:
        """A worker's start as a local run's worker pays it: the start measured, the memory it touched after
        its imports charged at this machine's fresh-memory rate where that costs more than the kernel CPU the
        measured start had meanwhile (a start that found memory just freed by the plan paid less for it than
        a run's workers will)."""
        cpu = self.worker_start_seconds * self.worker_start_cores
        fresh = self.worker_start_memory_gib * self.fresh_memory_seconds_per_gib
        extra = max(0.0, fresh - self.worker_start_memory_system_seconds)
        return self.worker_start_seconds * (cpu + extra) / cpu if cpu > 0 else self.worker_start_seconds


@dataclass(frozen=True)
class SpotPrices:
    now: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class Projection:
    instance_type: str
    in_spec: bool
    vcpus: int
    gpus: int
    instances: int
    spot: SpotPrices
    on_demand_usd: float | None
    on_demand_source: str
    # the run's average, as the report measures it: predictions / processing_seconds (workers' start included)
    predictions_per_second: float
    steady_predictions_per_second: float  # every worker started and predicting
    calibrated: bool  # False: a GPU type projected from a CPU measurement
    seconds: float  # the whole run, start to teardown (the report's phases_seconds.total)
    processing_seconds: float  # workers starting to the monitor seeing the last output (phases' processing)
    total_usd: float | None
    worker_launches: tuple[float, ...] = ()  # each worker's launch, seconds after the first's


@dataclass
class Plan:
    spec: BackfillSpec
    inputs: Inputs
    measurement: Measurement
    projections: list[Projection]  # best (cheapest per million predictions) first
    local: bool
    assumptions: list[str] = field(default_factory=list)
    made_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def per_million(self, row: Projection) -> float | None:
        if row.total_usd is None or not self.inputs.rows:
            return None
        return row.total_usd / self.inputs.rows * 1e6

    def estimate(self) -> dict[str, Any]:
        """The best row as the spec's `estimate` section."""
        best = self.projections[0]
        return {
            "made_at": self.made_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "instance_type": best.instance_type,
            "target_capacity": self.spec.fleet.target_capacity,
            "predictions": self.inputs.rows,
            # as the report measures it: over the processing phase, workers' start included
            "predictions_per_second": round(best.predictions_per_second, 3),
            "seconds": round(best.seconds, 3),
            "total_usd": round(best.total_usd or 0.0, 8),
        }

    def as_json(self) -> dict[str, Any]:
        m = self.measurement
        return {
            "spec": self.spec.name,
            "local": self.local,
            "inputs": vars(self.inputs),
            "measurement": {**vars(m), "rows_per_second_per_vcpu": m.rows_per_second_per_vcpu},
            "projections": [
                {
                    **{k: v for k, v in vars(p).items() if k != "spot"},
                    "spot_usd_per_hour": vars(p.spot),
                    "usd_per_million_predictions": self.per_million(p),
                }
                for p in self.projections
            ],
            "assumptions": self.assumptions,
            "estimate": self.estimate(),
        }


# --- reading the spec and the stack ---------------------------------------------------------------------


def read_spec(source: str, s3: Any) -> tuple[dict[str, Any], BackfillSpec]:
    """The spec document and its parsed form, from a local JSON file or an s3:// manifest; an invalid one is
    a `PlanError` with the sentence Validate gives."""
    import json

    from spotfill_control.errors import InvalidSpecError

    try:
        if source.startswith("s3://"):
            document = read_manifest(source, s3)
            return document, spec_from_document(document, f"manifest {source}")
        try:
            document = json.loads(Path(source).read_text())
        except OSError as exc:
            raise PlanError(f"cannot read {source}: {exc.strerror}") from None
        except ValueError as exc:
            raise PlanError(f"{source} is not valid JSON: {exc}") from None
        return document, spec_from_document(document)
    except InvalidSpecError as exc:
        raise PlanError(f"invalid input: {exc}") from None


def stack_settings(stepfunctions: Any, lambda_: Any, state_machine_arn: str) -> Settings:
    """The control functions' configuration, as the function the state machine runs as Validate has it."""
    import json

    definition = json.loads(
        stepfunctions.describe_state_machine(stateMachineArn=state_machine_arn)["definition"]
    )
    function = definition["States"]["Validate"]["Resource"]
    environment = lambda_.get_function_configuration(FunctionName=function).get("Environment", {})
    return Settings.from_environment(environment.get("Variables", {}))


def confirm_permissions(spec: BackfillSpec, client: Callable[..., Any], state_machine_arn: str) -> str:
    """Ask the stack's RequestFleet function to DryRun the fleet request a run of `spec` would make, as its
    own role (`spotfill_control.fleet.permissions`): what EC2 confirmed, or `PlanError` with the function's
    sentence. Two calls besides the instance types' description: the state machine's definition and one
    invocation."""
    import json

    from spotfill_control.run import RunState
    from spotfill_control.setup.triggers import new_run_id

    definition = json.loads(
        client("stepfunctions").describe_state_machine(stateMachineArn=state_machine_arn)["definition"]
    )
    function = definition["States"]["RequestFleet"]["Resource"]
    facts = Preflight.of(client).instance_types(spec)
    run = RunState(run_id=new_run_id(spec.name, datetime.now(UTC)), spec=spec, instance_types=facts)
    response = client("lambda").invoke(
        FunctionName=function,
        Payload=json.dumps({"run": run.model_dump(mode="json"), "confirm_permissions": True}).encode(),
    )
    answer = json.loads(response["Payload"].read() or b"null")
    if response.get("FunctionError"):
        error = answer if isinstance(answer, dict) else {}
        raise PlanError(
            f"the fleet request's permissions are not confirmed: {error.get('errorType', 'error')}: "
            f"{error.get('errorMessage', answer)}"
        )
    return str(answer["confirmed"])


def check(
    spec: BackfillSpec, client: Callable[..., Any], settings: Settings
) -> tuple[list[str], dict[str, InstanceTypeFacts]]:
    """Validate's checks (the preflight included), with the caller's clients, then the checks PrepareRun makes
    over the whole input (plan lists it all: it counts the shards): the shards and the types."""
    from spotfill_control.errors import InvalidSpecError

    preflight = Preflight.of(client)
    try:
        sample, facts = check_spec(spec, client("s3"), settings, datetime.now(UTC), preflight=preflight)
        if sample.complete:
            return sample.shards, facts
        found = list_shards(spec.input, client("s3"))
        if not found:
            raise no_shards_error(spec.input)
        shards.output_uris(spec, found)  # raises when two shards would write the same output
        return found, facts
    except InvalidSpecError as exc:
        raise PlanError(f"invalid input: {exc}") from None


# --- counting and measuring ----------------------------------------------------------------------------


def sample_indices(count: int, wanted: int = SAMPLE_SHARDS) -> list[int]:
    """Up to `wanted` positions spread over a list of `count`: first, last and evenly between."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def _decode(spec: BackfillSpec, data: bytes, model_input: Any) -> Any:
    from spotfill_worker.config import ImageScale, InputFormat, TFRecordOptions
    from spotfill_worker.formats import decode

    source = spec.input
    tfrecord = TFRecordOptions.model_validate(source.tfrecord.model_dump()) if source.tfrecord else None
    return decode(
        data,
        InputFormat(source.format),
        model_input,
        source.id_column,
        ImageScale(source.image.scale),
        tfrecord=tfrecord,
    )


# A worker's start in a fresh Python, as `python -m spotfill_worker` pays it before its first shard: the
# worker's imports (TensorFlow among them), the model loaded and warmed up, the runtime chosen on the rows.
_WORKER_START = """
import resource
import sys
from pathlib import Path
import numpy as np
import spotfill_worker.worker
from spotfill_worker.model import configure_devices, load_model
from spotfill_worker.runtimes import choose_runtime, tensorflow_runtime
path, rows_path, runtime, precision, batch, imports_path = sys.argv[1:7]
batch = int(batch)
device = configure_devices()
imported = resource.getrusage(resource.RUSAGE_SELF)
Path(imports_path).write_text(f"{imported.ru_minflt} {imported.ru_stime}")
model = load_model(Path(path))
tensorflow_runtime(model)(np.zeros((batch, *model.model_input.row_shape), model.model_input.dtype))
choose_runtime(model, runtime, precision, np.load(rows_path), batch_size=batch, device=device)
"""


@dataclass(frozen=True, order=True)
class WorkerStart:
    seconds: float  # a fresh worker process from launch to its runtime chosen, alone on this machine
    cores: float  # its CPU seconds over `seconds`, at least 1 and at most this machine's CPUs
    # After its imports: the memory it touched (minor page faults x the page size), its kernel CPU meanwhile
    memory_gib: float = 0.0
    memory_system_seconds: float = 0.0


def worker_start(spec: BackfillSpec, model_path: Path, rows: Any, batch_size: int) -> WorkerStart:
    """How long a fresh worker process takes here from launch to its runtime chosen (`_WORKER_START`), and
    how many cores it kept busy meanwhile (a large model's runtime calibration computes on several threads:
    MobileNetV2's start took 17 CPU-seconds in 13.3 s here, the digits CNN's 5.0 in 4.8)."""
    import resource

    with tempfile.TemporaryDirectory(prefix="spotfill-plan-start-") as directory:
        imports = Path(directory) / "imports"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = worker_start_seconds(spec, model_path, rows, batch_size, imports)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        # the child's faults and kernel CPU once imported (`_WORKER_START`); none written: all its own
        written = imports.read_text().split() if imports.exists() else ["0", "0"]
    system = after.ru_stime - before.ru_stime
    cpu = (after.ru_utime - before.ru_utime) + system
    cores = min(float(os.cpu_count() or 1), max(1.0, cpu / max(seconds, 1e-9)))
    faults = after.ru_minflt - before.ru_minflt - int(written[0])
    memory_gib = max(0, faults) * resource.getpagesize() / 2**30
    return WorkerStart(seconds, cores, memory_gib, max(0.0, system - float(written[1])))


# Fresh memory's cost, in a fresh Python: chunks allocated as the worker's arrays are (numpy, which asks the
# kernel for huge pages for large arrays) and written, every chunk kept so that the next takes other pages;
# the kernel CPU of each chunk, per GiB, one line per chunk.
_FRESH_MEMORY = """
import resource, sys
import numpy as np
size, chunks = int(sys.argv[1]) << 20, int(sys.argv[2])
held = []
for _ in range(chunks):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    held.append(np.ones(size, dtype=np.uint8))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_stime - before) * (1 << 30) / size)
"""


def fresh_memory_seconds_per_gib(
    chunk_mib: int = FRESH_MEMORY_CHUNK_MIB, chunks: int = FRESH_MEMORY_CHUNKS
) -> float:
    """The kernel CPU seconds a GiB of fresh memory costs a new process here: the costliest of `chunks` chunks
    of `chunk_mib` touched one after the other (the first ones may find memory freed a moment ago, which costs
    less than what a run's workers will find). 0.0 when the child cannot say."""
    command = [sys.executable, "-c", _FRESH_MEMORY, str(chunk_mib), str(chunks)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return 0.0
    return max((float(line) for line in done.stdout.split()), default=0.0)


def worker_start_seconds(
    spec: BackfillSpec, model_path: Path, rows: Any, batch_size: int, imports: Path
) -> float:
    """How long a fresh worker process takes here from launch to its runtime chosen (`_WORKER_START`); it
    writes its minor faults and kernel CPU seconds once imported to `imports`."""
    import numpy as np

    rows_path = model_path.parent / "calibration-rows.npy"
    np.save(rows_path, rows)
    command = [sys.executable, "-c", _WORKER_START, str(model_path), str(rows_path)]
    command += [spec.model.runtime, spec.model.precision, str(batch_size), str(imports)]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join(sys.path)}
    started = time.perf_counter()
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PlanError(f"a fresh worker process could not load the model and choose its runtime: {last}")
    return time.perf_counter() - started


def timed_start(measure_once: Callable[[], WorkerStart]) -> WorkerStart:
    """The worker's start (`measure_once`): a start under REPEATED_START_SECONDS is timed again and the faster
    of the two kept."""
    start = measure_once()
    if start.seconds < REPEATED_START_SECONDS:
        start = min(start, measure_once())
    return start


def timed_rate(predict_shard: Callable[[], int], clock: Callable[[], float] = time.perf_counter) -> float:
    """Rows per second of `predict_shard` (one round: decode and predict the sample shard, returning its
    rows), repeated until the rounds took MIN_TIMED_SECONDS in all (at most MAX_TIMED_ROUNDS)."""
    timed, rounds, rows = 0.0, 0, 0
    while rounds < MAX_TIMED_ROUNDS and (timed < MIN_TIMED_SECONDS or rounds == 0):
        started = clock()
        rows += predict_shard()
        timed += clock() - started
        rounds += 1
    return rows / max(timed, 1e-9)


def measure(spec: BackfillSpec, shard_uris: list[str], s3: Any) -> tuple[Inputs, Measurement]:
    """Count rows on the sampled shards and time the worker's predictor on the first of them; the model's
    download and the sample rows live in a temporary folder, removed when done."""
    with tempfile.TemporaryDirectory(prefix="spotfill-plan-") as directory:
        return _measure_in(Path(directory), spec, shard_uris, s3)


def _measure_in(
    directory: Path, spec: BackfillSpec, shard_uris: list[str], s3: Any
) -> tuple[Inputs, Measurement]:
    import numpy as np
    from spotfill_worker.model import (
        DEFAULT_BATCH_SIZE,
        Predictor,
        configure_devices,
        download_model,
        load_model,
    )
    from spotfill_worker.runtimes import choose_runtime, tensorflow_runtime

    picked = [shard_uris[i] for i in sample_indices(len(shard_uris))]
    device = configure_devices()
    model_path = download_model(s3, spec.model.uri, directory)
    model = load_model(model_path)
    batch_size = spec.service.batch_size or DEFAULT_BATCH_SIZE[device]
    tensorflow_runtime(model)(np.zeros((batch_size, *model.model_input.row_shape), model.model_input.dtype))

    # The shard read is the fastest of the sampled shards' downloads: one download of a small shard reads
    # whatever else the machine did in its milliseconds (4.2 to 9.4 ms between plans of the digits demo),
    # and a worker pays REQUESTS_PER_SHARD of it per shard.
    counts, sample, reads = [], None, []
    for uri in picked:
        bucket, key = shards.split_s3_uri(uri)
        read_started = time.perf_counter()
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        reads.append(time.perf_counter() - read_started)
        if sample is None:
            sample = data
        counts.append(len(_decode(spec, data, model.model_input).features))
    read_seconds = min(reads, default=0.0)
    rows = _decode(spec, sample, model.model_input).features

    runtime, calibration = choose_runtime(
        model,
        spec.model.runtime,
        spec.model.precision,
        rows[: 2 * batch_size],
        batch_size=batch_size,
        device=device,
    )
    predictor = Predictor(model, batch_size, runtime=runtime)
    predictor.predict(rows[:batch_size])  # warm-up: the partial batch's shape too

    def predict_sample() -> int:
        features = _decode(spec, sample, model.model_input).features
        predictor.predict(features)
        return len(features)

    rate = timed_rate(predict_sample)
    # What fresh memory costs now (past what this process just freed), then the start that touches it.
    fresh_memory = fresh_memory_seconds_per_gib()
    start = timed_start(lambda: worker_start(spec, model_path, rows[: 2 * batch_size], batch_size))
    inputs = Inputs(
        shards=len(shard_uris),
        rows=sum(counts) if len(picked) == len(shard_uris) else round(np.mean(counts) * len(shard_uris)),
        sampled=len(picked),
        exact=len(picked) == len(shard_uris),
    )
    measurement = Measurement(
        runtime=calibration.runtime,
        precision=calibration.precision,
        device=device,
        rows=len(rows),
        rows_per_second=rate,
        cpus=os.cpu_count() or 1,
        shard_read_seconds=read_seconds,
        worker_start_seconds=start.seconds,
        worker_start_cores=start.cores,
        worker_start_memory_gib=start.memory_gib,
        worker_start_memory_system_seconds=start.memory_system_seconds,
        fresh_memory_seconds_per_gib=fresh_memory,
    )
    return inputs, measurement


# --- prices -------------------------------------------------------------------------------------------


def spot_prices(names: list[str], ec2: Any, now: datetime) -> dict[str, SpotPrices]:
    """Per type: the cheapest zone's price in effect now, and the lowest and highest of the last 24 hours."""
    current: dict[str, float] = {}
    for price in budget.current_spot_prices(names, now, ec2):
        current[price.instance_type] = min(current.get(price.instance_type, math.inf), price.usd_per_hour)
    seen: dict[str, list[float]] = {}
    pages = ec2.get_paginator("describe_spot_price_history").paginate(
        InstanceTypes=sorted(set(names)),
        ProductDescriptions=[cost.PRODUCT_DESCRIPTION],
        StartTime=now - PRICE_HISTORY,
        EndTime=now,
    )
    for page in pages:
        for entry in page.get("SpotPriceHistory", []):
            seen.setdefault(entry["InstanceType"], []).append(float(entry["SpotPrice"]))
    result = {}
    for name in names:
        history = seen.get(name, []) + ([current[name]] if name in current else [])
        result[name] = SpotPrices(
            current.get(name), min(history) if history else None, max(history) if history else None
        )
    return result


def suggested_types(facts: dict[str, InstanceTypeFacts], ec2: Any, count: int = SUGGESTIONS) -> list[str]:
    """A few current-generation spot types of the spec's architecture and kind (CPU or GPU) that the
    region offers, near the spec's sizes: the smallest `count` not already in the spec by vCPUs above the
    spec's smallest."""
    first = next(iter(facts.values()))
    filters = [
        {"Name": "current-generation", "Values": ["true"]},
        {"Name": "processor-info.supported-architecture", "Values": [first.architecture]},
        {"Name": "supported-usage-class", "Values": ["spot"]},
    ]
    smallest = min(f.vcpus for f in facts.values())
    candidates: list[tuple[int, str]] = []
    for page in ec2.get_paginator("describe_instance_types").paginate(Filters=filters):
        for info in page.get("InstanceTypes", []):
            name = info["InstanceType"]
            gpus = bool((info.get("GpuInfo") or {}).get("Gpus"))
            vcpus = int(info["VCpuInfo"]["DefaultVCpus"])
            if name not in facts and gpus == first.is_gpu and vcpus >= smallest and ".metal" not in name:
                candidates.append((vcpus, name))
    return [name for _, name in sorted(candidates)[:count]]


# --- projecting ----------------------------------------------------------------------------------------


def instances_at(spec: BackfillSpec, facts: InstanceTypeFacts, smallest: int, shard_count: int) -> int:
    """Instances of one type that fill the requested capacity: capacity is weighted (vCPUs, or GPUs, over the
    spec's smallest type, `instance_types.capacity_weights`), and never more than the shards keep busy."""
    target = fleet_target_capacity(spec.fleet.target_capacity, shard_count, spec.service.tasks_per_instance)
    weight = (facts.gpus if facts.is_gpu else facts.vcpus) / smallest
    return max(1, math.ceil(target / weight))


def worker_launches(
    instances: int, tasks: int, tasks_per_instance: int, poll: int, *, local: bool
) -> tuple[float, ...]:
    """Each worker's launch, seconds after the first's: an instance's tasks start together, the instances'
    as the monitor sees them register (`ramp.launch_offsets`)."""
    if local:
        cycle = poll + LOCAL_OVERHEADS["monitor_per_poll"]
        offsets = ramp.launch_offsets(instances, LOCAL_BOOT_INTERVAL, cycle, seen_after=cycle / 2)
    else:
        offsets = ramp.launch_offsets(instances, AWS_REGISTRATION_INTERVAL, float(poll), seen_after=poll / 2)
    return tuple(offset for offset in offsets for _ in range(tasks_per_instance))[: max(1, tasks)]


def project(
    spec: BackfillSpec,
    inputs: Inputs,
    m: Measurement,
    facts: dict[str, InstanceTypeFacts],
    prices: dict[str, SpotPrices],
    in_spec: set[str],
    *,
    local: bool,
) -> list[Projection]:
    """One projection per type, best (cheapest per million predictions, then fastest) first.

    The processing phase integrates the capacity working over time (`ramp.processing`): the workers arrive
    as their instances register, each pays its own start (on the local cloud, sharing this machine's cores
    with the others and with the workers already predicting), and predicts from then on."""
    spec_facts = [f for name, f in facts.items() if name in in_spec]
    smallest = min((f.gpus if f.is_gpu else f.vcpus) for f in spec_facts)
    poll = spec.limits.poll_interval_seconds
    per_task = spec.service.tasks_per_instance
    shard_rows = inputs.rows / max(1, inputs.shards)
    shard_overhead = REQUESTS_PER_SHARD * m.shard_read_seconds
    rows = []
    for name, f in facts.items():
        instances = instances_at(spec, f, smallest, inputs.shards)
        tasks = min(inputs.shards, instances * per_task)
        launches = worker_launches(instances, tasks, per_task, poll, local=local)
        if local:
            # Every emulated instance's worker is a process on this machine: they share its cores.
            workers = ramp.Workers(
                launches,
                m.local_worker_start_seconds,
                m.rows_per_second,
                shared_cores=m.cpus,
                cloud_cores=LOCAL_CLOUD_CORES,
                start_cores=m.worker_start_cores,
            )
            boot = LOCAL_OVERHEADS["boot"]
            before = LOCAL_OVERHEADS["validate_and_prepare"] + LOCAL_OVERHEADS["fleet_request"]
            after = LOCAL_OVERHEADS["teardown"]
            calibrated = True
        else:
            start = AWS_OVERHEADS["image_pull"] + m.worker_start_seconds
            per_worker = m.rows_per_second_per_vcpu * f.vcpus / per_task
            workers = ramp.Workers(launches, start, per_worker)
            boot = AWS_OVERHEADS["boot_and_register"]
            before = AWS_OVERHEADS["validate_and_prepare"]
            after = AWS_OVERHEADS["teardown"]
            calibrated = not f.is_gpu or m.device == "GPU"
        done = ramp.processing(workers, inputs.rows, shard_rows, shard_overhead)
        steady = ramp.steady_rate(workers, len(launches), shard_rows, shard_overhead)
        # The first worker starts at the poll that sees registration; the end is seen half a poll cycle (on
        # average) after the last output.
        monitored = done.seconds + (poll + (LOCAL_OVERHEADS["monitor_per_poll"] if local else 0.0)) / 2
        lifetime = boot + poll + monitored + after
        seconds = before + lifetime
        price = prices.get(name, SpotPrices(None, None, None)).now
        total = None if price is None else price * instances * lifetime / 3600
        rows.append(
            Projection(
                instance_type=name,
                in_spec=name in in_spec,
                vcpus=f.vcpus,
                gpus=f.gpus,
                instances=instances,
                spot=prices.get(name, SpotPrices(None, None, None)),
                on_demand_usd=f.on_demand_hourly_usd,
                on_demand_source=f.price_source,
                predictions_per_second=inputs.rows / monitored,
                steady_predictions_per_second=steady,
                calibrated=calibrated,
                seconds=seconds,
                processing_seconds=monitored,
                total_usd=total,
                worker_launches=launches,
            )
        )
    return sorted(rows, key=lambda r: (r.total_usd is None, r.total_usd or 0.0, r.seconds))


def assumptions_of(plan: Plan) -> list[str]:
    m, inputs = plan.measurement, plan.inputs
    counted = (
        f"{inputs.rows:,} predictions counted on all {inputs.shards} shards"
        if inputs.exact
        else f"{inputs.rows:,} predictions estimated from {inputs.sampled} sampled shards of "
        f"{inputs.shards:,}"
    )
    lines = [
        counted,
        f"measured here: {m.rows_per_second:,.0f} rows/s ({m.runtime} {m.precision} on {m.device}, "
        f"{m.cpus} CPUs: {m.rows_per_second_per_vcpu:,.0f} rows/s per vCPU), decode + predict of "
        f"{m.rows:,} sample rows after warm-up",
        f"worker start {m.worker_start_seconds:.1f}s on {m.worker_start_cores:.2f} cores (a fresh process "
        f"here: the worker's imports, model load, runtime calibration), touching "
        f"{m.worker_start_memory_gib:.1f} GiB of memory after its imports; sample shard read "
        f"{m.shard_read_seconds * 1000:.0f} ms, counted {REQUESTS_PER_SHARD} times per shard (the worker's "
        "round trips)",
    ]
    poll = plan.spec.limits.poll_interval_seconds
    if plan.local:
        lines.append(
            "local cloud: the emulated instances are worker processes sharing this machine's cores, so the "
            "fleet's rate is this machine's whatever the type; fixed overheads: "
            + ", ".join(f"{k.replace('_', ' ')} {v:g}s" for k, v in LOCAL_OVERHEADS.items())
            + f", plus poll intervals of {poll}s; instances boot {LOCAL_BOOT_INTERVAL:g}s apart, the first "
            "poll sees one half a poll cycle after it registered, and a later worker starts at the next "
            f"poll ({poll + LOCAL_OVERHEADS['monitor_per_poll']:g}s cycles); "
            "a starting worker needs its start's CPU on the cores it kept busy, sharing the cores with the "
            f"other workers beside the local cloud ({LOCAL_CLOUD_CORES:g} of a core while workers start), "
            f"its memory touched fresh at {m.fresh_memory_seconds_per_gib:.2f} CPU-seconds per GiB (measured "
            f"here: a start of {m.local_worker_start_seconds:.1f}s)"
        )
    else:
        lines += [
            "throughput = rows/s per vCPU measured here x the type's vCPUs x instances (a CPU-bound model, "
            "one worker using an instance's cores; other CPUs differ)",
            "fixed overheads assumed: "
            + ", ".join(f"{k.replace('_', ' ')} {v:g}s" for k, v in AWS_OVERHEADS.items())
            + f", plus poll intervals of {poll}s; instances register {AWS_REGISTRATION_INTERVAL:g}s apart, "
            "the first poll sees one half a poll after it registered, and a later one's worker starts at the "
            "next poll",
        ]
        if any(not p.calibrated for p in plan.projections):
            lines.append(
                "GPU types are not calibrated: this machine has no GPU, so their figures are CPU-scaled"
            )
    best = plan.projections[0]
    lines.append(
        "predictions/s is the run's average over its processing phase (the report's mean: predictions / the "
        "time from the first worker's launch to the last output seen, each worker's start included; workers "
        f"start {_launch_text(best.worker_launches)} on the best row); once every worker predicts: "
        f"{best.steady_predictions_per_second:,.0f}/s"
    )
    lines.append("cost = spot price now x instances x their lifetime (boot to teardown); on-demand not used")
    return lines


def _launch_text(launches: tuple[float, ...]) -> str:
    """`1 at +0s, 3 at +2s`: how many workers launch when, after the first."""
    counts: dict[float, int] = {}
    for t in launches:
        counts[t] = counts.get(t, 0) + 1
    return ", ".join(f"{n} at +{t:g}s" for t, n in sorted(counts.items()))


def make_plan(
    source: str,
    client: Callable[..., Any],
    settings: Settings,
    *,
    local: bool = False,
    suggest: bool = False,
    progress: Callable[[str], None] = lambda _: None,
    spec: BackfillSpec | None = None,
) -> Plan:
    """The whole plan of a spec (a local file or an s3:// manifest; `spec`: already read from it);
    `client(service, region=None)` gives the caller's boto3 clients. Raises `PlanError` for an invalid
    spec."""
    if spec is None:
        _, spec = read_spec(source, client("s3"))
    progress("checking the spec as Validate does")
    shard_uris, facts = check(spec, client, settings)
    progress(
        f"downloading the model and sample shards, timing the worker's predictor ({len(shard_uris)} shards)"
    )
    inputs, measurement = measure(spec, shard_uris, client("s3"))
    ec2 = client("ec2")
    in_spec = set(facts)
    if suggest:
        progress("looking for other instance types")
        others = suggested_types(facts, ec2)
        if others:
            extra = describe_instance_types(others, ec2)
            facts = {
                **facts,
                **priced(extra, ec2.meta.region_name, price_list_client(ec2.meta.region_name, client)),
            }
    progress("reading spot prices")
    prices = spot_prices(list(facts), ec2, datetime.now(UTC))
    rows = project(spec, inputs, measurement, facts, prices, in_spec, local=local)
    plan = Plan(spec, inputs, measurement, rows, local)
    plan.assumptions = assumptions_of(plan)
    return plan


@dataclass(frozen=True)
class DeadlinePlan:
    """The fleet a deadline starts with, as Validate will size it from the plan's estimate."""

    at: datetime
    units: int  # the capacity RequestFleet asks for (the spec's fleet.target_capacity is the ceiling)
    ceiling: int
    projected_usd: float  # at the cheapest spot price per unit now (a lower bound: the fleet may pay more)
    finish_at: datetime

    def sentence(self) -> str:
        return (
            f"deadline {finish_by.iso(self.at)}: starts with {finish_by.units_text(self.units)} "
            f"(fleet.target_capacity = {self.ceiling} is the most the monitor may add), finishing about "
            f"{finish_by.iso(self.finish_at)} for about ${budget.format_usd(self.projected_usd)} at today's "
            "cheapest spot price per unit"
        )


def plan_deadline(plan: Plan, finish_by_text: str, now: datetime) -> DeadlinePlan:
    """`spotfill plan --finish-by T`: the capacity that finishes the plan's predictions by T and what it
    costs, as Validate computes it from the spec's estimate (`setup.checks.check_finish_by`); PlanError with
    Validate's sentence for a deadline that is malformed, past, beyond the maximum runtime, above the ceiling
    or more than limits.max_total_usd pays for (naming the least cap and the earliest deadline)."""
    spec = plan.spec
    try:
        limits = LimitsSpec.model_validate({**spec.limits.model_dump(), "finish_by": finish_by_text})
        at = finish_by.resolve(limits, now, now)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise PlanError(f"invalid input: {exc}") from None
    assert at is not None
    unit_rate = finish_by.estimate_unit_rate(
        spec.model_copy(update={"estimate": Estimate.model_validate(plan.estimate())})
    )
    assert unit_rate is not None
    rows = [r for r in plan.projections if r.in_spec]
    smallest = min((r.gpus if r.gpus else r.vcpus) for r in rows)
    weights = {r.instance_type: (r.gpus if r.gpus else r.vcpus) / smallest for r in rows}
    spot = {(r.instance_type, ""): r.spot.now for r in rows if r.spot.now is not None}
    on_demand = {r.instance_type: r.on_demand_usd for r in rows if r.on_demand_usd is not None}
    priced = [name for name in weights if (name, "") in spot or name in on_demand]
    if not priced:
        raise PlanError(f"invalid input: no price for {', '.join(weights)}: the deadline cannot be costed")
    poll = limits.poll_interval_seconds
    try:
        feasible = finish_by.check(
            deadline=at,
            now=now,
            predictions=plan.inputs.rows,
            unit_rate=unit_rate,
            unit_usd_per_hour=finish_by.cheapest_unit_usd_per_hour(priced, spot, on_demand, weights),
            ceiling=spec.fleet.target_capacity,
            cap_usd=limits.max_total_usd,
            lead_seconds=finish_by.validate_lead_seconds(poll),
            overhead_seconds=finish_by.validate_overhead_seconds(poll),
        )
    except finish_by.InfeasibleDeadline as exc:
        raise PlanError(f"infeasible: {exc}") from None
    return DeadlinePlan(
        at=at,
        units=max(feasible.units, spec.fleet.on_demand_base),
        ceiling=spec.fleet.target_capacity,
        projected_usd=feasible.projected_usd,
        finish_at=feasible.finish_at,
    )


def write_estimate(path: Path, document: dict[str, Any], plan: Plan) -> None:
    """Put the plan's best row into the spec file as its `estimate` section (replacing any earlier one)."""
    import json

    path.write_text(json.dumps({**document, "estimate": plan.estimate()}, indent=2) + "\n")


def table(plan: Plan) -> Any:
    """The plan as a rich table, best first."""
    from rich.table import Table

    def usd(value: float | None, digits: int = 4) -> str:
        return "-" if value is None else f"${value:,.{digits}f}"

    t = Table(
        title=f"plan for {plan.spec.name}: {plan.inputs.rows:,} predictions, {plan.inputs.shards:,} shards"
    )
    for column in (
        "instance type",
        "instances",
        "spot $/h now",
        "24 h range",
        "on-demand $/h",
        "predictions/s",
        "duration",
        "cost",
        "$ per million",
    ):
        t.add_column(column, justify="left" if column == "instance type" else "right")
    for p in plan.projections:
        name = p.instance_type + ("" if p.in_spec else " (suggested)")
        rate = f"{p.predictions_per_second:,.0f}" + ("" if p.calibrated else " (not calibrated)")
        span = "-" if p.spot.low is None else f"{usd(p.spot.low)}-{usd(p.spot.high)}"
        on_demand = usd(p.on_demand_usd) + (" (static table)" if p.on_demand_source == "static-table" else "")
        t.add_row(
            name,
            str(p.instances),
            usd(p.spot.now),
            span,
            on_demand,
            rate,
            _duration(p.seconds),
            usd(p.total_usd, 6),
            usd(plan.per_million(p), 6),
        )
    return t


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
