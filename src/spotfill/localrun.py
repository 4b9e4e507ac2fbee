"""A whole backfill on the local cloud: upload model and shards, trigger the run by uploading a manifest under
`backfills/`, follow it, fetch the outputs. Shared by `spotfill run --local` and `spotfill demo`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from spotfill_control.spec import INPUT_EXTENSIONS, OUTPUT_EXTENSIONS

from spotfill.localcloud import ChaosSpec, LocalCloud, LocalCloudOptions
from spotfill.progress_display import follow
from spotfill.runs import (
    CliError,
    RunWatcher,
    Session,
    Snapshot,
    execution_arns,
    read_report,
    report_from_execution_output,
    wait_for_execution_started_after,
)


@dataclass
class LocalRunResult:
    execution_arn: str
    snapshot: Snapshot
    report: dict[str, Any] | None
    outputs: dict[str, Path] = field(default_factory=dict)  # input shard name -> downloaded output
    wall_seconds: float = 0.0
    last_output_at: float | None = None  # epoch seconds the last output was written (worker logs)
    fleet_gone_at: float | None = None  # epoch seconds the run's last instance was terminated
    interruptions_done: int = 0
    kills_done: int = 0
    leftovers: list[str] = field(default_factory=list)

    @property
    def orchestration_overhead_seconds(self) -> float | None:
        """From the last output written to the fleet terminated: what the control plane adds at the end."""
        if self.last_output_at is None or self.fleet_gone_at is None:
            return None
        return self.fleet_gone_at - self.last_output_at

    @property
    def status(self) -> str:
        return (self.report or {}).get("status") or self.snapshot.status.lower()

    @property
    def succeeded(self) -> bool:
        return self.snapshot.status == "SUCCEEDED" and self.status == "succeeded"


def input_shards(input_dir: Path, input_format: str) -> list[Path]:
    if not input_dir.is_dir():
        raise CliError(f"input directory {input_dir} does not exist")
    extensions = INPUT_EXTENSIONS.get(input_format)
    if extensions is None:
        raise CliError(f"unknown input format {input_format!r}; use one of {', '.join(INPUT_EXTENSIONS)}")
    shards = sorted(p for p in input_dir.rglob("*") if p.is_file() and p.name.endswith(extensions))
    if not shards:
        raise CliError(f"no {input_format} shards ({', '.join(extensions)}) under {input_dir}")
    return shards


def manifest(
    name: str,
    data_bucket: str,
    model_key: str,
    input_format: str,
    output_format: str,
    instances: int,
    tasks_per_instance: int = 1,
    poll_interval: int = 1,
) -> dict[str, Any]:
    return {
        "name": name,
        "input": {"uri": f"s3://{data_bucket}/inputs/{name}/", "format": input_format},
        "output": {"uri": f"s3://{data_bucket}/outputs/{name}/", "format": output_format},
        "model": {"uri": f"s3://{data_bucket}/{model_key}"},
        "fleet": {"instance_types": ["c5.xlarge"], "target_capacity": instances},
        "service": {"tasks_per_instance": tasks_per_instance, "cpu": 1024, "memory": 2048},
        "limits": {
            "max_runtime_seconds": 3600,
            "registration_timeout_seconds": 120,
            "stall_timeout_seconds": 180,
            "poll_interval_seconds": poll_interval,
        },
    }


def local_counts(cloud: LocalCloud):
    """Instances and tasks of a run as the local cloud's physics see them."""

    def counts(run_id: str) -> tuple[int, int]:
        cluster = f"spotfill-{run_id}"
        agent, fleet = cloud.agent, cloud.fleet
        if agent is None or fleet is None:
            return 0, 0
        registered = {
            r.machine.instance_id for r in list(agent.registrations.values()) if r.cluster == cluster
        }
        tasks = [t for t in agent.running_tasks() if t.cluster == cluster]
        return len([m for m in fleet.running_machines() if m.instance_id in registered]), len(tasks)

    return counts


def upload_and_trigger(
    cloud: LocalCloud, spec: dict[str, Any], model_path: Path, shards: list[Path], input_dir: Path
) -> str:
    """Upload model and shards, then the manifest; returns the execution the upload started."""
    s3 = cloud.client("s3")
    bucket, prefix = spec["input"]["uri"][len("s3://") :].split("/", 1)
    model_key = spec["model"]["uri"].split("/", 3)[3]
    s3.upload_file(str(model_path), bucket, model_key)
    for shard in shards:
        s3.upload_file(str(shard), bucket, prefix + shard.relative_to(input_dir).as_posix())
    session = Session(cloud.endpoint_url, cloud.region)
    stack = session.stack(cloud.options.stack_name)
    known = execution_arns(session, stack)
    before = datetime.now(UTC).replace(microsecond=0)
    s3.put_object(
        Bucket=cloud.outputs.control_bucket,
        Key=f"backfills/{spec['name']}-{before.strftime('%Y%m%dT%H%M%S')}.json",
        Body=json.dumps(spec, indent=2).encode(),
        ContentType="application/json",
    )
    return wait_for_execution_started_after(session, stack, before, known=known)


def follow_run(
    cloud: LocalCloud, execution_arn: str, console: Console, timeout: float | None = None
) -> LocalRunResult:
    session = Session(cloud.endpoint_url, cloud.region)
    stack = session.stack(cloud.options.stack_name)
    watcher = RunWatcher(session, stack, execution_arn, counts=local_counts(cloud))
    started = time.monotonic()
    snap = follow(watcher, console, timeout=timeout)
    report = report_from_execution_output(snap.output)
    if snap.run_id:
        report = read_report(session, stack, snap.run_id) or report
    result = LocalRunResult(execution_arn, snap, report, wall_seconds=time.monotonic() - started)
    if snap.run_id:
        result.last_output_at, result.fleet_gone_at = _end_times(cloud, snap.run_id)
    if cloud.chaos is not None:
        result.kills_done, result.interruptions_done = cloud.chaos.kills, cloud.chaos.interruptions
    return result


def _end_times(cloud: LocalCloud, run_id: str) -> tuple[float | None, float | None]:
    """When the run's last output was written (its workers' logs) and its last instance terminated."""
    cluster = f"spotfill-{run_id}"
    last_output = None
    for log_path in (cloud.run_dir / "logs" / cluster).glob("*.log"):
        for line in log_path.read_text(errors="replace").splitlines():
            if '"shard_done"' not in line:
                continue
            try:
                stamp = float(json.loads(line)["time"])
            except (ValueError, KeyError, TypeError):
                continue
            last_output = stamp if last_output is None else max(last_output, stamp)
    cloud.wait_idle(timeout=15)
    clusters = cloud.agent.instance_clusters if cloud.agent else {}
    ended = [
        m.terminated_at
        for m in (cloud.fleet.machines.values() if cloud.fleet else [])
        if clusters.get(m.instance_id) == cluster and m.terminated_at is not None
    ]
    return last_output, (max(ended) if ended else None)


def download_outputs(
    cloud: LocalCloud, spec: dict[str, Any], shards: list[Path], input_dir: Path, output_dir: Path
):
    """One output file per input shard, named after it, under output_dir."""
    s3 = cloud.client("s3")
    bucket, prefix = spec["output"]["uri"][len("s3://") :].split("/", 1)
    extension = OUTPUT_EXTENSIONS[spec["output"]["format"]]
    outputs: dict[str, Path] = {}
    for shard in shards:
        relative = shard.relative_to(input_dir).as_posix()
        stem = relative
        for ext in INPUT_EXTENSIONS[spec["input"]["format"]]:
            if stem.endswith(ext):
                stem = stem[: -len(ext)]
        key = prefix + stem + extension
        target = output_dir / (stem + extension)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            s3.download_file(bucket, key, str(target))
        except Exception:
            continue
        outputs[relative] = target
    return outputs


def run_local(
    model_path: Path,
    input_dir: Path,
    output_dir: Path,
    *,
    input_format: str,
    output_format: str,
    instances: int,
    chaos: ChaosSpec | None,
    console: Console,
    name: str = "local",
    run_dir: Path | None = None,
    port: int | None = None,
    timeout: float | None = None,
) -> LocalRunResult:
    if not model_path.is_file():
        raise CliError(f"model file {model_path} does not exist")
    if not model_path.name.endswith((".keras", ".tar.gz", ".tgz")):
        raise CliError(f"model {model_path} must be a .keras file or a SavedModel .tar.gz archive")
    if output_format not in OUTPUT_EXTENSIONS:
        raise CliError(f"unknown output format {output_format!r}; use one of {', '.join(OUTPUT_EXTENSIONS)}")
    if instances < 1:
        raise CliError("--instances must be at least 1")
    shards = input_shards(input_dir, input_format)
    started = time.monotonic()
    options = LocalCloudOptions(port=port, chaos=chaos, run_dir=run_dir)
    with console.status("starting the local cloud (moto, the stack, the EC2/ECS physics)"):
        cloud = LocalCloud(options).__enter__()
    try:
        console.print(f"local cloud at {cloud.endpoint_url}; worker logs in {cloud.run_dir / 'logs'}")
        model_name = "model.tar.gz" if model_path.name.endswith((".tar.gz", ".tgz")) else "model.keras"
        spec = manifest(
            name,
            cloud.outputs.data_bucket,
            f"models/{name}/{model_name}",
            input_format,
            output_format,
            instances,
        )
        with console.status(f"uploading the model and {len(shards)} shards, then the manifest"):
            execution_arn = upload_and_trigger(cloud, spec, model_path, shards, input_dir)
        console.print(f"execution {execution_arn.rsplit(':', 1)[-1]} started by the manifest upload")
        result = follow_run(cloud, execution_arn, console, timeout=timeout)
        result.outputs = download_outputs(cloud, spec, shards, input_dir, output_dir)
        cloud.wait_idle(timeout=10)
        result.leftovers = cloud.leftovers()
        result.wall_seconds = time.monotonic() - started
        return result
    finally:
        cloud.__exit__(None, None, None)
