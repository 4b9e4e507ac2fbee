"""The loaded model: what the loader makes of a model file (``LoadedModel``: its forward pass, input, kind
and source) and a ``.keras`` file read at a precision (``load_keras_model``), shared by the loader
(``model``) and the runtimes (``runtimes``) that convert or recompile it, so that neither imports the other
for them: ``model`` runs a runtime, and a runtime never needs the loader.

Keras is imported on first use only, so importing the package stays cheap.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a type only: the runtimes need not import the shard formats
    from spotfill_worker.formats import ModelInput


class ModelLoadError(RuntimeError):
    """The model object cannot be fetched or loaded, or has a form the worker cannot serve."""


@dataclass
class LoadedModel:
    forward: Callable[[Any], Any]
    model_input: ModelInput
    classifier: bool
    kind: str  # "keras" or "savedmodel"
    keras_model: Any = None
    # The .keras file or the extracted SavedModel directory: what other runtimes and precisions load from.
    source: Path | None = None
    # Per-process conversions and compilations of this model, by runtime and precision (``runtimes``).
    runtime_cache: dict[str, Any] = field(default_factory=dict)


def load_keras_model(path: Path, policy: str | None = None) -> Any:
    """The Keras model at ``path``, its layers computing in dtype ``policy`` when given ("mixed_float16")."""
    import keras

    if path.is_file() and not zipfile.is_zipfile(path):
        # Keras answers such a file with "File not found", though it exists.
        raise ModelLoadError(
            f"cannot load Keras model {path.name}: not a valid .keras file (a zip archive), though it exists"
        )
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise ModelLoadError(f"cannot load Keras model {path.name}: {exc}") from exc
    if policy is not None:
        # Saved layers pin their dtype policy, so the global policy alone does not reach a loaded model.
        for layer in model._flatten_layers(include_self=False):
            if not isinstance(layer, keras.layers.InputLayer):
                layer.dtype_policy = policy
    return model
