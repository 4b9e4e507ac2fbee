"""Validate's checks of a parsed spec, creating nothing (`check_spec`): the subnets, the model object, a
bounded sample of the shards, then the account: the instance types as EC2 describes them and their on-demand
prices (`spotfill_control.instance_types`, `setup.prices`; kept on the run as `run.instance_types`), what the
cap and the deadline need of them, and the preflight (`setup.preflight`): Spot vCPU quotas, instance type
offerings in the subnets' zones, the worker image of the run's architecture in ECR.

Every problem is an `InvalidSpecError` naming the field path and the reason. `spotfill plan` runs the same
checks, so both refuse alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from spotfill_control import shards
from spotfill_control.aws import is_missing_key, is_transient
from spotfill_control.config import Settings
from spotfill_control.errors import InvalidSpecError, TransientAwsError
from spotfill_control.fleet.fleet import check_override_count, subnets_for
from spotfill_control.instance_types import InstanceTypeFacts, capacity_weights, check_fleet_kind
from spotfill_control.monitoring import budget, finish_by
from spotfill_control.run import FinishBy, SpotPrice
from spotfill_control.setup import inputs
from spotfill_control.setup.preflight import Preflight
from spotfill_control.spec import OUTPUT_EXTENSIONS, BackfillSpec

# Existing outputs whose model Validate reads before Prepare skips their shards: a sample from the first
# listing page, so a re-run costs one ListObjectsV2 and at most this many HeadObjects whatever its size.
MODEL_CHECK_SAMPLE = 8


MODEL_ETAG_METADATA = "spotfill-model-etag"  # written by the worker on every output


# Input keys Validate looks at (one ListObjectsV2 page, S3's largest); the whole input is PrepareRun's.
SHARD_SAMPLE_KEYS = 1000


def check_model_readable(spec: BackfillSpec, s3: Any) -> str:
    """The model object exists and is readable; returns its ETag (quotes stripped), the identity its outputs
    record."""
    bucket, key = shards.split_s3_uri(spec.model.uri)
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if is_transient(exc):
            raise TransientAwsError(f"model.uri: {exc}") from exc
        code = exc.response.get("Error", {}).get("Code", "")
        reason = "does not exist" if is_missing_key(exc) else f"is not readable ({code})"
        raise InvalidSpecError(f"model.uri: {spec.model.uri} {reason}.") from None
    return str(head.get("ETag", "")).strip('"')


def check_outputs_made_by_model(spec: BackfillSpec, model_etag: str, s3: Any) -> None:
    """Prepare skips a shard whose output exists: that is right only if this model made it. The worker records
    the model object's ETag on each output (`spotfill-model-etag`): an existing output that names another
    refuses the run, naming both, rather than keeping the other model's predictions. The ETag is what Validate
    (this HeadObject of the model) and the worker (its own, before it downloads the model) both know for
    free; it changes whenever the model's bytes do (equal bytes uploaded in other multipart part sizes get
    another ETag too: refused, on the safe side). Bounded: a sample of at most `MODEL_CHECK_SAMPLE` outputs
    from the first listing page, spread over it, so a wholesale change of model is always caught; an output
    without the metadata (written before it existed) names no model and is not judged."""
    bucket, prefix = shards.split_s3_uri(spec.output.uri)
    extension = OUTPUT_EXTENSIONS[spec.output.format]
    try:
        page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        keys = [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(extension)]
        step = max(1, len(keys) // MODEL_CHECK_SAMPLE)
        for key in keys[::step][:MODEL_CHECK_SAMPLE]:
            made_by = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get(MODEL_ETAG_METADATA)
            if made_by and made_by != model_etag:
                raise InvalidSpecError(
                    f"output.uri: s3://{bucket}/{key} was made by another model (ETag {made_by}) than "
                    f"model.uri {spec.model.uri} (ETag {model_etag}); this run would skip its shard and keep "
                    "the other model's predictions: choose another output.uri, or delete the existing "
                    "outputs to compute them again with this model."
                )
    except ClientError as exc:
        if is_transient(exc):
            raise TransientAwsError(f"output.uri: {exc}") from exc
        code = exc.response.get("Error", {}).get("Code", "")
        raise InvalidSpecError(f"output.uri: {spec.output.uri} cannot be read ({code}).") from None


def check_gpu_tasks(spec: BackfillSpec, facts: dict[str, InstanceTypeFacts]) -> None:
    """Each GPU task reserves a whole GPU, so more tasks per instance than GPUs would never place."""
    gpus = min(f.gpus for f in facts.values())
    if gpus and spec.service.tasks_per_instance > gpus:
        raise InvalidSpecError(
            f"service.tasks_per_instance: {spec.service.tasks_per_instance} tasks need a GPU each, "
            f"but the smallest GPU instance type has {gpus}."
        )


def check_task_memory(spec: BackfillSpec, facts: dict[str, InstanceTypeFacts]) -> None:
    """The ECS agent and the OS keep some memory; a task that does not fit never starts."""
    smallest = min(facts.values(), key=lambda f: f.memory_mib)
    needed = spec.service.memory * spec.service.tasks_per_instance
    if needed > smallest.memory_mib * 0.9:
        raise InvalidSpecError(
            f"service.memory: memory x tasks_per_instance = {needed} MiB does not fit the smallest instance "
            f"type ({smallest.name}, {smallest.memory_mib} MiB, ~90% usable)."
        )


def check_worker_image_for(facts: dict[str, InstanceTypeFacts], settings: Settings) -> None:
    """arm64 types run the arm64 worker image, which the stack must name."""
    arm = [f.name for f in facts.values() if f.architecture == "arm64"]
    if arm and not settings.worker_image_arm64:
        raise InvalidSpecError(
            f"fleet.instance_types: {', '.join(arm)} {'is' if len(arm) == 1 else 'are'} arm64 (Graviton), "
            "and the stack has no arm64 worker image: set the stack's WorkerImageArm64 parameter (build "
            "worker/Dockerfile for linux/arm64), or choose x86_64 types."
        )


def check_model_runtime(spec: BackfillSpec, facts: dict[str, InstanceTypeFacts]) -> None:
    """The runtime and precision must exist on the fleet's kind: GPU types serve TensorFlow with XLA, in FP32
    or mixed FP16; CPU types serve TensorFlow, OpenVINO or ONNX Runtime (FP32 only), in FP32 or bf16."""
    gpu = [f.name for f in facts.values() if f.is_gpu]
    cpu = [f.name for f in facts.values() if not f.is_gpu]
    model = spec.model
    if model.precision == "fp16" and cpu:
        raise InvalidSpecError(
            f"model.precision: fp16 is mixed precision on GPU, and {', '.join(cpu)} "
            f"{'has' if len(cpu) == 1 else 'have'} no GPU: use fp32, or bf16 on CPUs with bf16 instructions."
        )
    if model.precision == "bf16" and gpu:
        raise InvalidSpecError(
            f"model.precision: bf16 is for CPU types, and {', '.join(gpu)} "
            f"{'is a GPU type' if len(gpu) == 1 else 'are GPU types'}: use fp16 on GPU."
        )
    if model.runtime in ("openvino", "onnxruntime") and gpu:
        raise InvalidSpecError(
            f"model.runtime: {model.runtime} serves CPU types, and {', '.join(gpu)} "
            f"{'is a GPU type' if len(gpu) == 1 else 'are GPU types'} (served by TensorFlow with XLA): "
            "use auto or tensorflow."
        )


def check_fleet_types(spec: BackfillSpec, facts: dict[str, InstanceTypeFacts], settings: Settings) -> None:
    """What the run's instance types, as EC2 described them, must satisfy before anything is created."""
    check_fleet_kind(facts)
    check_worker_image_for(facts, settings)
    check_model_runtime(spec, facts)
    check_gpu_tasks(spec, facts)
    check_task_memory(spec, facts)
    check_priced_for_cap(spec, facts)


def check_priced_for_cap(spec: BackfillSpec, facts: dict[str, InstanceTypeFacts]) -> None:
    """A dollar cap bounds spend only if every type has a price: the budget prices on-demand instances, and
    spot capacity not yet launched, at the on-demand price."""
    if spec.limits.max_total_usd is None:
        return
    unpriced = sorted(name for name, f in facts.items() if f.on_demand_hourly_usd is None)
    if unpriced:
        raise InvalidSpecError(
            f"limits.max_total_usd: no on-demand price for {', '.join(unpriced)} (neither the Price List nor "
            "the static table lists it), so the cap cannot bound what it costs: choose other types or drop "
            "the cap."
        )


def check_cap_covers_least_cost(
    spec: BackfillSpec, facts: dict[str, InstanceTypeFacts], spot_prices: list[SpotPrice]
) -> None:
    """A cap below the least the run can cost (`budget.least_cost_usd`: one instance of the fleet's cheapest
    price through its boot and one poll) bounds nothing: the run would spend past it before the first poll
    could drain it. Priced as the budget prices at run time: the spot prices in effect now, on demand for an
    on-demand-only fleet or a type with no spot price."""
    cap = spec.limits.max_total_usd
    if cap is None:
        return
    on_demand = {n: f.on_demand_hourly_usd for n, f in facts.items() if f.on_demand_hourly_usd is not None}
    name, hourly, option = budget.cheapest_instance(
        spec.fleet.instance_types,
        {(p.instance_type, p.availability_zone): p.usd_per_hour for p in spot_prices},
        on_demand,
        spot=spec.fleet.on_demand_base < spec.fleet.target_capacity,
    )
    poll = spec.limits.poll_interval_seconds
    least = budget.least_cost_usd(hourly, poll)
    if cap < least:
        raise InvalidSpecError(
            f"limits.max_total_usd: ${budget.format_usd(cap)} is below the least this run can cost, so it "
            f"cannot bound the spend; the least cap that could is ${budget.format_usd_up(least)}: one {name} "
            f"(the fleet's cheapest, {option} at ${budget.format_usd(hourly)}/h) billed for "
            f"{budget.BOOT_ALLOWANCE_SECONDS} s of boot and registration plus one poll interval "
            f"(limits.poll_interval_seconds = {poll})."
        )


def check_finish_by(
    spec: BackfillSpec,
    facts: dict[str, InstanceTypeFacts],
    started_at: datetime,
    now: datetime,
    ec2: Any | None,
) -> FinishBy | None:
    """`limits.finish_by` resolved against the run's start (None without one), refused when it is not in the
    future or lies past the maximum runtime; with the plan's estimate (`spec.estimate`) and the types' facts,
    also when the cap cannot pay for it or it needs more than `fleet.target_capacity`
    (`finish_by.check`; priced at the spot prices in effect now, read with `ec2`). Without an estimate the
    first Monitor poll with a measured rate checks it (docs/contracts/deadline.md, "The deadline")."""
    try:
        at = finish_by.resolve(spec.limits, started_at, now)
    except ValueError as exc:
        raise InvalidSpecError(str(exc)) from None
    if at is None:
        return None
    unit_rate = finish_by.estimate_unit_rate(spec)
    if unit_rate is None or spec.estimate is None or not facts or ec2 is None:
        return FinishBy(at=at)
    types = spec.fleet.instance_types
    on_demand = {n: f.on_demand_hourly_usd for n, f in facts.items() if f.on_demand_hourly_usd is not None}
    spot = budget.current_spot_prices(types, now, ec2)
    missing = [n for n in types if n not in on_demand and not any(p.instance_type == n for p in spot)]
    if missing:
        return FinishBy(at=at)  # unpriced: the Monitor checks the deadline, the cap its own way
    poll = spec.limits.poll_interval_seconds
    try:
        feasible = finish_by.check(
            deadline=at,
            now=now,
            predictions=spec.estimate.predictions,
            unit_rate=unit_rate,
            unit_usd_per_hour=finish_by.cheapest_unit_usd_per_hour(
                types,
                {(p.instance_type, p.availability_zone): p.usd_per_hour for p in spot},
                on_demand,
                capacity_weights(facts),
            ),
            ceiling=spec.fleet.target_capacity,
            cap_usd=spec.limits.max_total_usd,
            lead_seconds=finish_by.validate_lead_seconds(poll),
            overhead_seconds=finish_by.validate_overhead_seconds(poll),
        )
    except finish_by.InfeasibleDeadline as exc:
        raise InvalidSpecError(str(exc)) from None
    start = max(feasible.units, spec.fleet.on_demand_base)
    return FinishBy(at=at, checked=True, start_units=start, needed_units=feasible.units)


def check_subnets(spec: BackfillSpec, settings: Settings) -> None:
    """Subnets to launch into, and no more type x subnet pools than a fleet request takes."""
    if not spec.fleet.subnets and not settings.default_subnets:
        raise InvalidSpecError("fleet.subnets: empty, and the stack sets no default subnets.")
    check_override_count(spec.fleet, subnets_for(spec.fleet, settings))


@dataclass(frozen=True)
class ShardSample:
    """The shards Validate saw: the first listing page of a prefix (`complete` when that page is the whole
    listing), or every entry of a manifest (bounded by `inputs.MAX_SHARD_MANIFEST_BYTES`)."""

    shards: list[str]
    complete: bool


def check_shards_sample(spec: BackfillSpec, s3: Any) -> ShardSample:
    """The shard checks Validate can make in bounded time: the input exists and is listable, its first
    listing page has shards (a page holding none, with more pages after it, is left to PrepareRun), and no two
    shards seen would write one output. PrepareRun, before anything costs money, makes the same checks over
    the whole input with the same sentences (`prepare.queue_and_store_shards`)."""
    if not spec.input.is_prefix:
        found = inputs.list_shards(spec.input, s3)
        sample = ShardSample(found, complete=True)
    else:
        bucket, prefix = shards.split_s3_uri(spec.input.uri)
        page = inputs.list_page(bucket, prefix, s3, "input.uri", MaxKeys=SHARD_SAMPLE_KEYS)
        keys = [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        extensions = spec.input.extensions
        found = [f"s3://{bucket}/{k}" for k in keys if k.lower().endswith(extensions)]
        sample = ShardSample(found, complete=not page.get("IsTruncated"))
    if not sample.shards and sample.complete:
        raise inputs.no_shards_error(spec.input)
    shards.output_uris(spec, sample.shards)  # raises when two shards would write the same output
    return sample


def check_spec(
    spec: BackfillSpec, s3: Any, settings: Settings, now: datetime, *, preflight: Preflight | None
) -> tuple[ShardSample, dict[str, InstanceTypeFacts]]:
    """Every check of a parsed spec, creating nothing: subnets, the model object, a bounded sample of the
    shards (returned: `check_shards_sample`), then the account (`preflight`; None only where a caller checks
    the spec alone) and the instance types' facts (returned). Validate runs it, and so does `spotfill plan`,
    so both refuse alike."""
    check_subnets(spec, settings)
    model_etag = check_model_readable(spec, s3)
    sample = check_shards_sample(spec, s3)
    check_outputs_made_by_model(spec, model_etag, s3)
    facts: dict[str, InstanceTypeFacts] = {}
    if preflight is not None:
        facts = preflight.instance_types(spec)
        check_fleet_types(spec, facts, settings)
        if spec.limits.max_total_usd is not None:
            spot_prices = budget.current_spot_prices(spec.fleet.instance_types, now, preflight.ec2)
            check_cap_covers_least_cost(spec, facts, spot_prices)
        preflight.check(spec, facts, subnets_for(spec.fleet, settings), settings.worker_image_for(facts), now)
    return sample, facts
