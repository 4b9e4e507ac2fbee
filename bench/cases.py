"""The benchmark cases: their models (random weights, nothing downloaded) and their shards."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Case:
    name: str
    title: str
    model_path: Path
    input_format: str
    image_scale: str
    batch_size: int
    shards: list[bytes]  # encoded shard objects, as uploaded
    shard_rows: int
    sample: np.ndarray  # decoded rows (model input) for the raw and naive measurements
    naive_rows: int  # rows timed one model.predict call at a time, then extrapolated
    shard_suffix: str


def _smooth_image(rng: np.random.Generator, size: int = 224, height: int | None = None, grain: float = 0.0):
    """A photo-like image (gradients and a few blobs, ``grain``: sensor-like noise): JPEG sizes like real
    photos, unlike pure noise. ``size`` is the width, and the height too unless ``height`` is given."""
    height = size if height is None else height
    yy, xx = np.mgrid[0:height, 0:size].astype(np.float32)
    yy /= height
    xx /= size
    channels = []
    for _ in range(3):
        a, b, c = rng.uniform(-1, 1, size=3)
        plane = 128 + 60 * np.sin(6 * a * xx + 5 * b * yy + c * 3)
        for _ in range(3):
            cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.2)
            plane += 50 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (r * r))
        channels.append(plane)
    pixels = np.stack(channels, -1)
    if grain:
        pixels += rng.normal(0.0, grain, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _tar_shards(jpegs: list[bytes], shards: int, shard_rows: int) -> list[bytes]:
    encoded = []
    for s in range(shards):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for i in range(shard_rows):
                data = jpegs[(s * shard_rows + i) % len(jpegs)]
                info = tarfile.TarInfo(f"shard-{s:03d}/img-{i:05d}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        encoded.append(buffer.getvalue())
    return encoded


def _mobilenet(directory: Path) -> Path:
    """MobileNetV2 with random weights (seed 0), saved once and shared by the two MobileNetV2 cases."""
    path = directory / "mobilenetv2.keras"
    if not path.exists():
        import keras

        keras.utils.set_random_seed(0)
        keras.applications.MobileNetV2(weights=None).save(path)
    return path


def mobilenet_case(directory: Path, shards: int, shard_rows: int, batch_size: int) -> Case:
    path = _mobilenet(directory)
    rng = np.random.default_rng(0)
    pool = [_smooth_image(rng) for _ in range(64)]
    sample = np.stack(pool).astype(np.float32) / 127.5 - 1.0
    return Case(
        name="mobilenetv2",
        title="(a) MobileNetV2, 224x224 JPEG in .tar shards",
        model_path=path,
        input_format="images",
        image_scale="symmetric",
        batch_size=batch_size,
        shards=_tar_shards([_jpeg(pixels) for pixels in pool], shards, shard_rows),
        shard_rows=shard_rows,
        sample=sample,
        naive_rows=24,
        shard_suffix="tar",
    )


def mobilenet_photo_case(directory: Path, shards: int, shard_rows: int, batch_size: int) -> Case:
    """The model and shard sizes of (a), fed 640x480 photo-like JPEGs that the worker resizes to 224x224."""
    from spotfill_worker.config import ImageScale, InputFormat
    from spotfill_worker.formats import ModelInput, decode

    path = _mobilenet(directory)
    rng = np.random.default_rng(1)
    jpegs = [_jpeg(_smooth_image(rng, 640, 480, grain=6.0)) for _ in range(64)]
    model_input = ModelInput((224, 224, 3), np.dtype(np.float32))
    # the raw measurements see exactly the rows the worker's decoder makes of these JPEGs
    sample = decode(_tar_shards(jpegs, 1, 64)[0], InputFormat.IMAGES, model_input, None, ImageScale.SYMMETRIC)
    return Case(
        name="mobilenetv2_photo",
        title="(c) MobileNetV2, 640x480 JPEG resized to 224x224, in .tar shards",
        model_path=path,
        input_format="images",
        image_scale="symmetric",
        batch_size=batch_size,
        shards=_tar_shards(jpegs, shards, shard_rows),
        shard_rows=shard_rows,
        sample=sample.features,
        naive_rows=24,
        shard_suffix="tar",
    )


def digits_case(directory: Path, shards: int, shard_rows: int, batch_size: int) -> Case:
    import keras
    from sklearn.datasets import load_digits

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    path = directory / "digits_cnn.keras"
    model.save(path)
    digits = (load_digits().images / 16.0).astype(np.float32)[..., None]  # 1797 x 8 x 8 x 1
    encoded = []
    for s in range(shards):
        rows = np.take(digits, np.arange(s * shard_rows, (s + 1) * shard_rows) % len(digits), axis=0)
        buffer = io.BytesIO()
        np.save(buffer, rows)
        encoded.append(buffer.getvalue())
    return Case(
        name="digits_cnn",
        title="(b) small CNN, 8x8 digits in .npy shards",
        model_path=path,
        input_format="npy",
        image_scale="none",
        batch_size=batch_size,
        shards=encoded,
        shard_rows=shard_rows,
        sample=digits,
        naive_rows=60,
        shard_suffix="npy",
    )
