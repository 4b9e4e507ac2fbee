"""The user's folders in a local run: the input shards (`input_shards`), the output folder (checked, made),
each shard's output name, rows counted on either side (`shard_rows`, `output_rows`), and which shards the
run computes given what the output folder already holds (`plan_outputs`). `spotfill.localrun` runs the
backfill over them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from spotfill_control.spec import INPUT_EXTENSIONS, OUTPUT_EXTENSIONS, TFRECORD_GZIP_EXTENSIONS

from spotfill.model_record import LocalModel, recorded_models
from spotfill.runs import CliError


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


def check_output_dir(output_dir: Path, input_dir: Path) -> None:
    """Before any work: the outputs can neither overwrite nor mix with the inputs; the folder is writable."""
    outputs, inputs = output_dir.resolve(), input_dir.resolve()  # symlinks and `..` resolved
    if outputs == inputs or outputs.is_relative_to(inputs) or inputs.is_relative_to(outputs):
        inside = outputs.is_relative_to(inputs)
        relation = "is" if outputs == inputs else "is inside" if inside else "contains"
        raise CliError(
            f"--output {output_dir} {relation} --input {input_dir}: outputs would overwrite or mix with the "
            "input shards, so choose an output folder outside the input folder"
        )
    if output_dir.exists() and not output_dir.is_dir():
        raise CliError(f"--output {output_dir} is a file, not a folder")
    if not output_dir.exists():
        # Created only once the run starts (make_output_dir): a refused run creates nothing. Here the nearest
        # folder that exists must let it be made.
        existing = next(p for p in output_dir.absolute().parents if p.exists() or p == p.parent)
        why = (
            "Not a directory"
            if not existing.is_dir()
            else "Permission denied"
            if not os.access(existing, os.W_OK | os.X_OK)
            else None
        )
        if why:
            raise CliError(f"cannot create the output folder {output_dir}: {why}: {existing}")
        return
    probe = output_dir / f".spotfill-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CliError(f"cannot write in the output folder {output_dir}: {exc.strerror or exc}") from None


def make_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create the output folder {output_dir}: {exc.strerror or exc}") from None


def output_name(relative: str, input_format: str, output_format: str) -> str:
    """The output file of an input shard (its path under the input folder): the same name, the output's
    extension (as the control plane names output keys)."""
    stem = relative
    gzip = TFRECORD_GZIP_EXTENSIONS if input_format == "tfrecord" else ()
    for ext in (*gzip, *INPUT_EXTENSIONS[input_format]):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    return stem + OUTPUT_EXTENSIONS[output_format]


def shard_rows(path: Path, input_format: str) -> int | None:
    """Rows in an input shard as the worker decodes them, or None when it cannot be read."""
    import numpy as np

    try:
        if input_format == "npy":
            return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
        if input_format == "npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = [archive[n] for n in archive.files]
                named = archive["x"] if "x" in archive.files else None
            return int((named if named is not None else arrays[0]).shape[0]) if arrays else None
        if input_format == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        if input_format == "csv":
            import pyarrow.csv as pacsv

            return int(pacsv.read_csv(path).num_rows)
        if input_format == "jsonl":
            return sum(1 for line in path.read_text().splitlines() if line.strip())
        if input_format == "tfrecord":
            return tfrecord_count(path)
        if input_format == "images":
            import tarfile

            from spotfill_worker.formats import IMAGE_SUFFIXES

            with tarfile.open(path, mode="r:*") as archive:
                return sum(1 for m in archive if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES))
    except Exception:
        return None
    return None


def tfrecord_count(path: Path) -> int | None:
    """Records in a TFRecord file (gzip-compressed when named .gz), from its framing alone: each record is
    its length (8 bytes), a CRC (4), its bytes and another CRC (4). None when a record is cut short."""
    import gzip

    count = 0
    with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as stream:
        while header := stream.read(12):
            length = int.from_bytes(header[:8], "little")
            if len(header) < 12 or len(stream.read(length + 4)) < length + 4:
                return None
            count += 1
    return count


def output_rows(path: Path, output_format: str) -> int | None:
    """Rows in an output file, or None when it does not decode (missing, truncated, not an output)."""
    import numpy as np

    try:
        if output_format == "npy":
            return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
        if output_format == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        if output_format == "jsonl":
            text = path.read_text()
            if text and not text.endswith("\n"):
                return None  # cut short
            return sum(1 for line in text.splitlines() if line.strip() and json.loads(line) is not None)
    except Exception:
        return None
    return None


@dataclass
class OutputPlan:
    """Which shards a run computes, given what the output folder already holds."""

    to_run: list[Path]
    complete: dict[str, Path]  # input shard name -> its complete output, kept and skipped
    incomplete: list[str]  # outputs that exist but do not decode with the shard's row count: recomputed
    stale: list[Path]  # output files no input shard names: left alone


def plan_outputs(
    shards: list[Path],
    input_dir: Path,
    output_dir: Path,
    input_format: str,
    output_format: str,
    overwrite: bool = False,
    model: LocalModel | None = None,
) -> OutputPlan:
    """A shard whose output exists and decodes with the shard's row count is done (as on AWS, where a shard
    whose output object exists is skipped); with `overwrite` every shard is computed again. An output the
    folder's record says another model made (`spotfill.model_record`) is refused, naming both models, unless
    `overwrite`: keeping it would mix two models' predictions."""
    plan = OutputPlan([], {}, [], [])
    expected: set[Path] = set()
    made_by = recorded_models(output_dir) if model is not None and not overwrite else {}
    other_model: dict[str, LocalModel] = {}
    for shard in shards:
        relative = shard.relative_to(input_dir).as_posix()
        name = output_name(relative, input_format, output_format)
        target = output_dir / name
        expected.add(target)
        if overwrite or not target.exists():
            plan.to_run.append(shard)
            continue
        rows = output_rows(target, output_format)
        maker = made_by.get(name)
        if model is not None and maker is not None and maker.sha256 != model.sha256:
            other_model[name] = maker
        elif rows is not None and rows == shard_rows(shard, input_format):
            plan.complete[relative] = target
        else:
            plan.incomplete.append(target.relative_to(output_dir).as_posix())
            plan.to_run.append(shard)
    if output_dir.is_dir():
        extension = OUTPUT_EXTENSIONS[output_format]
        plan.stale = sorted(p for p in output_dir.rglob(f"*{extension}") if p.is_file() and p not in expected)
    if other_model and model is not None:
        makers = ", ".join(sorted({m.describe() for m in other_model.values()}))
        shown = ", ".join(sorted(other_model)[:3]) + (", ..." if len(other_model) > 3 else "")
        raise CliError(
            f"{len(other_model)} output(s) in {output_dir} ({shown}) were made by model {makers}, not by "
            f"{model.describe()} asked for now: --overwrite computes them again with this model, or choose "
            "another --output folder"
        )
    return plan
