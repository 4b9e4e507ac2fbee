"""`spotfill demo`: a whole backfill on the local cloud, checked against the model's own predictions.

A small Keras CNN is trained on scikit-learn's bundled digits (no download), the digits are tiled and
augmented (shifts, noise) into at least 50 `.npy` shards and 100,000 predictions, and the run goes through
the real stack: manifest upload → EventBridge → Step Functions → handlers → EC2 Fleet → ECS → workers.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from spotfill.localcloud import ChaosSpec, LocalCloud
from spotfill.localrun import LocalRunResult, run_local

DEMO_SHARDS = 50
DEMO_ROWS_PER_SHARD = 2_000


@dataclass
class DemoData:
    model_path: Path
    input_dir: Path
    reference: dict[str, np.ndarray]  # shard file name -> model.predict of its rows


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def train_digits_model(path: Path, epochs: int = 4, seed: int = 0):
    """A small CNN on the 8x8 digits, saved as a .keras file; returns the model."""
    _quiet_tensorflow()
    import keras
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(seed)
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, digits.target, epochs=epochs, batch_size=64, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def augmented_digits(rows: int, seed: int) -> np.ndarray:
    """`rows` digit images drawn from the 1,797 bundled ones, shifted by up to a pixel and with noise."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    images = (load_digits().images / 16.0).astype("float32")
    picked = images[rng.integers(0, len(images), rows)]
    shifts = rng.integers(-1, 2, size=(rows, 2))
    out = np.empty_like(picked)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            mask = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            out[mask] = np.roll(picked[mask], (dy, dx), axis=(1, 2))
    out += rng.normal(0.0, 0.05, out.shape).astype("float32")
    return np.clip(out, 0.0, 1.0)[..., None]


def write_demo_data(
    work_dir: Path, shards: int = DEMO_SHARDS, rows_per_shard: int = DEMO_ROWS_PER_SHARD
) -> DemoData:
    model_path = work_dir / "model" / "digits.keras"
    model = train_digits_model(model_path)
    input_dir = work_dir / "inputs"
    input_dir.mkdir(parents=True, exist_ok=True)
    batches = [augmented_digits(rows_per_shard, seed=1000 + i) for i in range(shards)]
    predicted = model.predict(np.concatenate(batches), batch_size=8192, verbose=0)
    reference: dict[str, np.ndarray] = {}
    for i, rows in enumerate(batches):
        name = f"part-{i:05d}.npy"
        np.save(input_dir / name, rows)
        reference[name] = predicted[i * rows_per_shard : (i + 1) * rows_per_shard]
    return DemoData(model_path, input_dir, reference)


def check_outputs(result: LocalRunResult, reference: dict[str, np.ndarray], atol: float = 1e-5) -> list[str]:
    """Every shard has exactly its output, equal to the model's own predictions; the problems found."""
    problems = []
    for name, expected in sorted(reference.items()):
        path = result.outputs.get(name)
        if path is None:
            problems.append(f"{name}: no output")
            continue
        actual = np.load(path)
        if actual.shape != expected.shape:
            problems.append(f"{name}: output shape {actual.shape}, expected {expected.shape}")
        elif not np.allclose(actual, expected, atol=atol, rtol=0):
            problems.append(f"{name}: predictions differ by up to {np.abs(actual - expected).max():.2e}")
        elif not np.array_equal(actual.argmax(axis=1), expected.argmax(axis=1)):
            problems.append(f"{name}: top classes differ")
    return problems


def plan_run(
    cloud: LocalCloud, spec: dict[str, Any], path: Path, console: Console, planned: dict[str, Any]
) -> dict[str, Any]:
    """`spotfill plan --local --write-estimate` on the run's manifest, in the local cloud the run uses: print
    the table and return the manifest with its estimate (the report compares it with what happened)."""
    from spotfill.plan import make_plan, stack_settings, table, write_estimate
    from spotfill.runs import Session

    path.write_text(json.dumps(spec, indent=2) + "\n")
    session = Session(cloud.endpoint_url, cloud.region)
    stack = session.stack(cloud.options.stack_name)
    settings = stack_settings(
        session.client("stepfunctions"), session.client("lambda"), stack.state_machine_arn
    )
    plan = make_plan(str(path), session.client, settings, local=True)
    console.print(table(plan))
    for line in plan.assumptions:
        console.print(f"- {line}", markup=False, highlight=False)
    write_estimate(path, spec, plan)
    planned["estimate"] = plan.estimate()
    planned["measurement"] = vars(plan.measurement)
    console.print(f"the plan's estimate is in the run's manifest ({path})")
    return {"estimate": planned["estimate"]}


def actual_figures(report: dict[str, Any]) -> dict[str, float | None]:
    """The report's figures an estimate names (`Plan.estimate`): duration, cost, predictions/s."""
    return {
        "seconds": (report.get("phases_seconds") or {}).get("total"),
        "total_usd": (report.get("cost_usd") or {}).get("total"),
        "predictions_per_second": (report.get("throughput") or {}).get("mean_predictions_per_second"),
    }


def estimate_vs_actual(estimate: dict[str, Any], report: dict[str, Any]) -> str:
    """The plan's estimate beside the run's report (duration, cost, predictions/s) and actual / estimate."""
    actual = actual_figures(report)
    parts = []
    for key, label, shown in (
        ("seconds", "duration", lambda v: f"{v:.1f}s"),
        ("total_usd", "cost", lambda v: f"${v:.6f}"),
        ("predictions_per_second", "predictions/s over processing", lambda v: f"{v:,.0f}"),
    ):
        planned, happened = estimate.get(key), actual[key]
        if planned and happened is not None:
            parts.append(
                f"{label} planned {shown(planned)}, actual {shown(happened)} (x{happened / planned:.2f})"
            )
    return "plan vs run: " + "; ".join(parts)


def run_demo(
    console: Console,
    work_dir: Path | None = None,
    shards: int = DEMO_SHARDS,
    rows_per_shard: int = DEMO_ROWS_PER_SHARD,
    instances: int = 2,
    chaos: ChaosSpec | None = None,
    port: int | None = None,
    planned: dict[str, Any] | None = None,
) -> tuple[bool, LocalRunResult]:
    """The demo: data written, planned (`planned`, when given, receives the plan's estimate and measurement),
    run on the local cloud and checked against `model.predict`; (every check passed, the run)."""
    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="spotfill-demo-"))
    started = time.monotonic()
    with console.status(f"training a small CNN on the bundled digits; writing {shards} shards"):
        data = write_demo_data(work_dir, shards, rows_per_shard)
    console.print(
        f"model {data.model_path}, {shards} shards x {rows_per_shard:,} rows = "
        f"{shards * rows_per_shard:,} predictions ({time.monotonic() - started:.1f}s)"
    )
    planned = {} if planned is None else planned
    result = run_local(
        data.model_path,
        data.input_dir,
        work_dir / "outputs",
        input_format="npy",
        output_format="npy",
        instances=instances,
        chaos=chaos,
        console=console,
        name="digits-demo",
        run_dir=work_dir / "local",
        overwrite=True,  # fresh shards each time: earlier outputs in work_dir are never reused
        port=port,
        before_trigger=lambda cloud, spec: plan_run(cloud, spec, work_dir / "spec.json", console, planned),
    )
    if result.report:
        console.print(result.report_table())
    if planned.get("estimate") and result.report:
        console.print(estimate_vs_actual(planned["estimate"], result.report))
    problems = check_outputs(result, data.reference)
    counted = ((result.report or {}).get("predictions") or {}).get("total")
    if result.succeeded and counted != shards * rows_per_shard:
        problems.append(f"the report counts {counted} predictions, expected {shards * rows_per_shard}")
    ok = result.succeeded and not problems and not result.leftovers
    if problems:
        console.print(f"[red]{len(problems)} output problem(s):[/red] " + "; ".join(problems[:5]))
    if result.leftovers:
        console.print("[red]left running after the run:[/red] " + ", ".join(result.leftovers))
    if ok:
        console.print(
            f"[green]demo passed[/green]: {len(data.reference)} outputs equal model.predict "
            f"(atol 1e-5); {time.monotonic() - started:.1f}s in all, "
            f"{result.wall_seconds:.1f}s from local cloud start to outputs"
        )
    elif not result.succeeded:
        reason = (result.report or {}).get("reason") or result.snapshot.error
        console.print(f"[red]the run ended {result.status}[/red]: {reason}")
    if result.report_page and result.snapshot.run_id:
        page = work_dir / "reports" / f"{result.snapshot.run_id}.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(result.report_page, encoding="utf-8")
        console.print(f"HTML report: {page}", markup=False)
    return ok, result
