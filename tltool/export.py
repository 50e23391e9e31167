"""Export a finished run as a file other programs load: ``.keras``, a TF SavedModel, or a LiteRT ``.tflite``.

Exports contain only Keras' built-in layers, so the ``.keras`` file loads with ``safe_mode=True`` in a Python
that has Keras but not tltool.

A linear run becomes a Keras model too: backbone -> pooling -> one Dense layer holding the head's coefficients
with the standardisation folded in, so every export takes raw RGB pixels (0..255) and returns probabilities.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .errors import TltoolError, did_you_mean
from .models import load_run
from .utils import atomic_path

FORMATS = ("keras", "savedmodel", "tflite")


def linear_run_as_keras(run) -> object:
    """The Keras model equivalent to a linear run (k-NN heads have no such form)."""
    from ._tf import keras
    from .backbones import create_backbone

    head = run.head
    kernel, bias = head.dense_weights()
    config = run.config
    extractor = create_backbone(config["backbone"], weights=config["weights"], image_size=config["image_size"])
    fmap = extractor.output
    pooled = {"avg": keras.layers.GlobalAveragePooling2D(name="avg_pool")(fmap),
              "max": keras.layers.GlobalMaxPooling2D(name="max_pool")(fmap)}
    pool = config["pool"]
    x = keras.layers.Concatenate(name="avgmax")([pooled["avg"], pooled["max"]]) if pool == "avgmax" else pooled[pool]
    dense = keras.layers.Dense(len(head.classes), activation="softmax", dtype="float32", name="classifier")
    outputs = dense(x)
    dense.set_weights([kernel, bias])
    return keras.Model(extractor.input, outputs, name="tltool_linear")


def portable_model(model):
    """``model`` with tltool's preprocessing layer swapped for built-in Keras layers (weights shared)."""
    from ._tf import keras
    from .backbones.layers import ImagePreprocessing, portable_preprocessing

    def swap(layer):
        return portable_preprocessing(layer.mode, layer.name) if isinstance(layer, ImagePreprocessing) else layer

    return keras.models.clone_model(model, clone_function=swap)


def export_run(run_dir: str | Path, fmt: str = "keras", out: str | Path | None = None) -> Path:
    """Write the run's model in ``fmt`` (``keras``, ``savedmodel`` or ``tflite``); returns the written path."""
    if fmt not in FORMATS:
        raise did_you_mean(fmt, FORMATS, "export format")
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    model = portable_model(run.model if hasattr(run, "model") else linear_run_as_keras(run))
    suffix = {"keras": ".keras", "savedmodel": "", "tflite": ".tflite"}[fmt]
    target = Path(out) if out else run_dir / "export" / f"model{suffix or '_savedmodel'}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "keras":
        with atomic_path(target, suffix=".keras") as tmp:
            model.save(str(tmp))
    elif fmt == "savedmodel":
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.export(str(tmp), format="tf_saved_model", verbose=False)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    else:
        with atomic_path(target, suffix=".tflite") as tmp:
            try:
                model.export(str(tmp), format="litert", verbose=False)
            except Exception as exc:
                raise TltoolError(f"LiteRT export failed ({exc.__class__.__name__}: {str(exc)[:300]}).") from None
    return target
