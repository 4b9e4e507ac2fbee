"""Which model made each output of `spotfill run --local`: a record beside the outputs.

Local outputs are downloaded copies, so the object metadata the worker writes on S3 stays behind in the local
cloud, which is gone once the run ends. The record is `.spotfill-models.json` in the output folder:
`{"outputs": {"<output name>": {"model": "<model file name>", "sha256": "<hex>"}}}`, the SHA-256 of the model
file's bytes. It is hashed here, where the file is (one read of a file this machine uploads anyway), so the
same bytes are the same model whatever the file is called or however it was uploaded. An output the record
does not name (written before spotfill kept one, or by hand) has no known model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

RECORD_NAME = ".spotfill-models.json"


@dataclass(frozen=True)
class LocalModel:
    name: str  # the model file's name, to name it in messages
    sha256: str

    @classmethod
    def of(cls, path: Path) -> LocalModel:
        digest = hashlib.sha256()
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        return cls(path.name, digest.hexdigest())

    def describe(self) -> str:
        return f"{self.name} (sha256 {self.sha256[:12]})"


def recorded_models(output_dir: Path) -> dict[str, LocalModel]:
    """Output name -> the model that made it, for the outputs the folder's record names."""
    try:
        document = json.loads((output_dir / RECORD_NAME).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{output_dir / RECORD_NAME} cannot be read ({exc}): delete it, or use --overwrite"
        ) from None
    outputs = document.get("outputs") if isinstance(document, dict) else None
    if not isinstance(outputs, dict):
        raise ValueError(
            f"{output_dir / RECORD_NAME} is not a record of models: delete it, or use --overwrite"
        )
    return {
        name: LocalModel(str(entry.get("model", "")), str(entry.get("sha256", "")))
        for name, entry in outputs.items()
        if isinstance(entry, dict)
    }


def record_models(output_dir: Path, names: Iterable[str], model: LocalModel) -> None:
    """Record `model` as the maker of `names` (written whole to a temporary file, then renamed over the
    record: an interrupted write never leaves half a record)."""
    names = list(names)
    if not names:
        return
    recorded = {
        name: {"model": m.name, "sha256": m.sha256} for name, m in recorded_models(output_dir).items()
    }
    recorded.update({name: {"model": model.name, "sha256": model.sha256} for name in names})
    partial = output_dir / f"{RECORD_NAME}.partial"
    partial.write_text(json.dumps({"outputs": dict(sorted(recorded.items()))}, indent=1))
    os.replace(partial, output_dir / RECORD_NAME)
