"""Export a finished run as a file other programs load: ``.keras``, a TF SavedModel, or a LiteRT ``.tflite``.

Exports contain only Keras' built-in layers, so the ``.keras`` file loads with ``safe_mode=True`` in a Python
that has Keras but not tltool.

A linear run becomes a Keras model too: backbone -> pooling -> one Dense layer holding the head's coefficients
with the standardisation folded in, so every export takes raw RGB pixels (0..255) and returns probabilities.
"""
from __future__ import annotations

from pathlib import Path

from .errors import TltoolError, did_you_mean
from .models import load_run
from .outputs import claim_output_dir, replace_output_dir, staging_dir
from .settings import CHOICES
from .utils import atomic_path

FORMATS = CHOICES["export_format"]


def portable_model(model):
    """``model`` with tltool's preprocessing layer swapped for built-in Keras layers (weights shared)."""
    from ._tf import keras
    from .backbones.layers import ImagePreprocessing, portable_preprocessing

    def swap(layer):
        return portable_preprocessing(layer.mode, layer.name) if isinstance(layer, ImagePreprocessing) else layer

    return keras.models.clone_model(model, clone_function=swap)


MODEL_FILES = {"keras": "model.keras", "savedmodel": "saved_model", "tflite": "model.tflite"}


def export_run(run_dir: str | Path, fmt: str = "keras", out: str | Path | None = None, force: bool = False) -> Path:
    """Write the run's model in ``fmt`` into the export folder ``out``; returns the model's path inside it.

    ``out`` defaults to ``RUN_DIR/export/FMT``. An existing ``out`` is used only if it is empty or an earlier
    tltool export (then ``force`` is needed unless it is the default folder inside the run): a user's folder is
    never written into or deleted.
    """
    if fmt not in FORMATS:
        raise did_you_mean(fmt, FORMATS, "export format")
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    target = claim_output_dir(Path(out) if out else run_dir / "export" / fmt, "export", force=force,
                              reuse=out is None)
    model = portable_model(run.as_keras())
    path = target / MODEL_FILES[fmt]
    if fmt == "keras":
        with atomic_path(path, suffix=".keras") as tmp:
            model.save(str(tmp))
    elif fmt == "savedmodel":
        staging = staging_dir(path, "savedmodel")
        model.export(str(staging), format="tf_saved_model", verbose=False)
        replace_output_dir(staging, path, "savedmodel")
    else:
        with atomic_path(path, suffix=".tflite") as tmp:
            try:
                model.export(str(tmp), format="litert", verbose=False)
            except Exception as exc:
                raise TltoolError(f"LiteRT export failed ({exc.__class__.__name__}: {str(exc)[:300]}).") from None
    return path
