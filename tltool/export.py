"""Export a finished run as a folder other programs use as is: ``.keras``, a TF SavedModel, or a LiteRT ``.tflite``
(optionally quantized), with ``labels.txt``, ``input.json`` and a README holding a client example.

Exports contain only Keras' built-in layers, so the ``.keras`` file loads with ``safe_mode=True`` in a Python
that has Keras but not tltool. A linear run becomes a Keras model too: backbone -> pooling -> one Dense layer
holding the head's coefficients with the standardisation folded in, so every export takes raw RGB pixels (0..255)
and returns probabilities.

A ``.tflite`` export is measured after it is written: the file runs on the run's validation images, and
``export.json`` records its accuracy (Wilson interval), the paired difference to the float model (Newcombe interval,
exact McNemar: the ``tltool compare`` machinery), its size and its images/s on this CPU. A quantization that loses
more than ``max_drop`` points is reported with a :class:`QuantizationCostWarning` (the CLI then exits with status 3);
the file is still written, so it can be inspected.
"""
from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from .compare import compare_correct
from .engines import QUANTIZATIONS, LiteRTRunner, best_rates, probability_source, to_tflite, TFRunner
from .errors import TltoolError, TltoolWarning, did_you_mean
from .export_client import decode_graph, write_client_files
from .images import load_image
from .models import RunModel, load_finished_run, run_splits, trained_on_val
from .outputs import (MARKER, check_output_dir, claim_output_dir, holds_no_output, refuse_added_entries,
                      removed_if_unused, remove_killed_staging, staged_output)
from .progress import Bar, say
from .runs import EXPORT_FOLDER
from .settings import CHOICES
from .stats import Proportion
from .utils import atomic_path, write_json

if TYPE_CHECKING:
    import keras

FORMATS = CHOICES["export_format"]
MODEL_FILES = {"keras": "model.keras", "savedmodel": "saved_model", "tflite": "model.tflite"}
MAX_CALIBRATION_IMAGES = 300
EXIT_TOO_COSTLY = 3  # the CLI's exit status when a quantization costs more than --max-drop


class QuantizationCostWarning(TltoolWarning):
    """A quantized export loses more validation accuracy than ``--max-drop`` allows."""


@dataclass
class ExportResult:
    directory: Path
    model_path: Path
    measurement: dict | None = None  # what export.json holds (tflite exports)

    @property
    def within_max_drop(self) -> bool:
        return self.measurement is None or bool(self.measurement["within_max_drop"])


def portable_model(model: keras.Model) -> keras.Model:
    """``model`` with tltool's preprocessing layer swapped for built-in Keras layers (weights shared)."""
    from ._tf import keras
    from .backbones.layers import ImagePreprocessing, portable_preprocessing

    def swap(layer):
        return portable_preprocessing(layer.mode, layer.name) if isinstance(layer, ImagePreprocessing) else layer

    return keras.models.clone_model(model, clone_function=swap)


def default_export_out(run_dir: Path, fmt: str, quantize: str) -> Path:
    return run_dir / EXPORT_FOLDER / (fmt if quantize == "none" else f"{fmt}-{quantize}")


EXPORT_FILES = {MARKER, "labels.txt", "input.json", "README.md", "export.json", *MODEL_FILES.values()}


def _export_file(name: str) -> bool:
    """An export's own file, or the hidden temporary or staging name of one (``.model.keras.1a2b3c4d.keras``)."""
    return name in EXPORT_FILES or (name.startswith(".") and any(name[1:].startswith(f + ".") for f in EXPORT_FILES))


def _refuse_files_added_to(target: Path, force: bool) -> None:
    """The default folder inside the run is replaced by a new export with ``--force`` (as every export: exporting
    again without it replaced a measured export, its export.json too, without a word), but never while something
    there is not an export's own file: the user put it there, and replacing the folder would delete it. (An export's
    marker lists its files; this also covers one written before it did.)"""
    if not target.is_dir() or target.is_symlink():
        return
    added = sorted(p.name for p in target.iterdir() if not _export_file(p.name))
    refuse_added_entries(target, "export", force, added=added)


def _check_label_names(classes: list[str]) -> None:
    """labels.txt holds one class name a line, read back with ``splitlines()``: a name holding a line break (``\\n``,
    ``\\r``, or one of the others ``splitlines`` cuts at, such as U+2028) would shift every later name onto another
    class's output."""
    broken = [name for name in classes if name.splitlines() != [name]]
    if broken:
        raise TltoolError(f"the class name {broken[0]!r} holds a line break, which labels.txt (one class name a line) "
                          "cannot hold: a client would read the later classes' names for the wrong outputs. Rename "
                          "the class (its folder, or its label in the manifest) and train the run again.")


def _check_options(fmt: str, quantize: str, max_drop: float) -> None:
    if fmt not in FORMATS:
        raise did_you_mean(fmt, FORMATS, "export format")
    if quantize not in QUANTIZATIONS:
        raise did_you_mean(quantize, QUANTIZATIONS, "quantization")
    if quantize != "none" and fmt != "tflite":
        raise TltoolError(f"--quantize {quantize} applies to --format tflite only.")
    if not 0 <= max_drop <= 100:
        raise TltoolError(f"--max-drop is in accuracy points (0..100), got {max_drop}.")


def export_run(run_dir: str | Path, fmt: str = "keras", out: str | Path | None = None, force: bool = False,
               quantize: str = "none", max_drop: float = 1.0, measure: bool = True) -> ExportResult:
    """Write the run's model in ``fmt`` (and the client files) into the export folder ``out``.

    ``out`` defaults to ``RUN_DIR/export/FMT[-QUANTIZE]``. An existing ``out`` is used only if it is empty or an
    earlier tltool export (then ``force`` is needed, in the default folder inside the run too): a user's
    folder is never written into or deleted. ``measure`` (tflite): run the written file on the validation split.
    """
    _check_options(fmt, quantize, max_drop)
    run_dir = Path(run_dir)
    run = load_finished_run(run_dir)
    _check_label_names(list(run.classes))
    target = Path(os.path.abspath(out)) if out else default_export_out(run_dir, fmt, quantize)  # `--out .` has no name
    if out is None:
        _refuse_files_added_to(target, force)
    reuse = holds_no_output(target)  # one a killed export left empty; an earlier export, in the run too, needs force
    check_output_dir(target, "export", force=force, reuse=reuse, option="--out" if out else "--out (its default)")
    # every refusal before the folder is touched: an earlier export in it stays until this one can be written
    model = portable_model(run.as_keras())
    if model.output_shape[-1] != len(run.classes):  # labels.txt would name other outputs than the model's
        raise TltoolError(f"{run_dir}: the model gives {model.output_shape[-1]} class probabilities and model.json "
                          f"names {len(run.classes)} classes: one of them was edited or replaced.")
    splits = run_splits(run_dir, run) if fmt == "tflite" and (measure or quantize == "int8") else None
    made = not os.path.lexists(target)
    claim_output_dir(target, "export", force=force, reuse=reuse)
    for folder in dict.fromkeys([target.parent, Path(os.path.abspath(run_dir / EXPORT_FOLDER))]):
        remove_killed_staging(folder, "export")  # what killed exports left beside this one, or in the run
    # built whole beside the earlier export, which stays till then
    with removed_if_unused(target, made), staged_output(target, "export") as staging:
        WRITERS[fmt](model, staging / MODEL_FILES[fmt], run, quantize, splits)
        measurement = None
        if fmt == "tflite" and measure:
            measurement = measure_export(staging / MODEL_FILES[fmt], model, run, splits["val"], quantize, max_drop)
            write_json(staging / "export.json", measurement)
        write_client_files(staging, fmt, MODEL_FILES[fmt], list(run.classes), run.image_size, run.resize,
                           "\n".join(f"- {line}" for line in measurement_lines(measurement)) if measurement else "",
                           run.max_pixels)
    path = target / MODEL_FILES[fmt]
    result = ExportResult(target, path, measurement)
    if not result.within_max_drop:
        warnings.warn(QuantizationCostWarning(
            f"{quantize} quantization costs {measurement['drop_points']:.1f} points of validation accuracy, more "
            f"than --max-drop {max_drop:g}: the file is written to {path}, but prefer a milder --quantize."),
            stacklevel=2)
    return result


# ----------------------------------------------------------------------------------------------------- writers
def _write_keras(model, path: Path, run, quantize: str, splits) -> None:
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(str(tmp))


def _write_savedmodel(model, path: Path, run, quantize: str, splits) -> None:
    """``serve`` (pixels) and ``serve_image_bytes`` (encoded files, decoded and resized inside the graph)."""
    from ._tf import keras, tf

    decode = decode_graph(run.image_size, run.resize)
    size = run.image_size
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False),
                         input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
    archive.add_endpoint("serve_image_bytes", lambda data: model(tf.map_fn(
        decode, data, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32)), training=False),
        input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    archive.write_out(str(path), verbose=False)  # into the export's own staging folder: no marker of its own there
    _folders_as_umask_makes(path, like=path.parent)


def _folders_as_umask_makes(root: Path, like: Path) -> None:
    """Give ``root`` and the folders in it the mode of ``like`` (a folder tltool made: the umask decided it).
    TensorFlow makes a SavedModel's folders 0755 whatever the umask: under umask 002 they lacked group write."""
    mode = stat.S_IMODE(like.stat().st_mode)
    for folder, subfolders, _files in os.walk(root):
        os.chmod(folder, mode)


def _write_tflite(model, path: Path, run, quantize: str, splits) -> None:
    calibration = None
    if quantize == "int8":
        paths = splits["train"][0][:MAX_CALIBRATION_IMAGES]
        say(f"int8: calibrating activation ranges on {len(paths)} training images")

        def calibration():
            for batch in pixel_batches(paths, run, batch_size=1):
                yield [batch]

    data = to_tflite(model, quantize, calibration)
    with atomic_path(path, suffix=".tflite.tmp") as tmp:
        tmp.write_bytes(data)


WRITERS = {"keras": _write_keras, "savedmodel": _write_savedmodel, "tflite": _write_tflite}


# ------------------------------------------------------------------------------------------------- measuring
def pixel_batches(paths: list[str], run: RunModel, batch_size: int = 32) -> Iterator[np.ndarray]:
    """float32 pixel batches of ``paths``, decoded as the run decodes them."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        yield np.stack([load_image(p, run.image_size, run.resize, max_pixels=run.max_pixels)
                        for p in chunk]).astype(np.float32)


def _predict_both(float_runner, export_runner, paths: list[str], run) -> tuple[np.ndarray, np.ndarray]:
    float_probs, export_probs = [], []
    with Bar(len(paths), "scoring the export on the validation images") as bar:
        for batch in pixel_batches(paths, run):
            float_probs.append(float_runner(batch)["probabilities"])
            export_probs.append(next(iter(export_runner(batch).values())))
            bar.update(len(batch))
    return np.concatenate(float_probs), np.concatenate(export_probs)


def measure_export(path: Path, model: keras.Model, run: RunModel, val: tuple[list[str], np.ndarray], quantize: str,
                   max_drop: float) -> dict:
    """Accuracy, paired difference to the float model, size and speed of the written ``.tflite``."""
    paths, y = val
    float_runner = TFRunner(probability_source(model, run.image_size, {"run": str(getattr(run, "run_dir", ""))}))
    export_runner = LiteRTRunner(path)
    float_probs, export_probs = _predict_both(float_runner, export_runner, paths, run)
    float_ok, export_ok = float_probs.argmax(1) == y, export_probs.argmax(1) == y
    paired = compare_correct(float_ok, export_ok, "float model (TF)", f"{path.name} ({quantize})",
                             "the run's validation split")
    speed_batch = next(pixel_batches(paths, run, batch_size=32))
    rates = best_rates({"export": lambda b: export_runner(b), "float_tf": float_runner}, speed_batch, rounds=3)
    drop = round(-paired.difference * 100, 2) + 0.0  # points; + 0.0 turns -0.0 into 0.0
    return {
        "format": "tflite", "quantize": quantize, "model": path.name, "size_bytes": path.stat().st_size,
        "image_size": run.image_size, "resize": run.resize, "classes": list(run.classes),
        "accuracy": Proportion(int(export_ok.sum()), len(y)).to_json(),
        "float_accuracy": Proportion(int(float_ok.sum()), len(y)).to_json(),
        "paired_difference": paired.to_json(), "drop_points": drop, "max_drop_points": max_drop,
        "within_max_drop": drop <= max_drop,
        "agreement_with_float": float(np.mean(float_probs.argmax(1) == export_probs.argmax(1))),
        "max_probability_difference": float(np.abs(float_probs - export_probs).max()),
        "images_per_second": {k: round(v, 1) for k, v in rates.items()}, "speed_batch": len(speed_batch),
        "threads": export_runner.lanes, "engine": "ai-edge-litert (XNNPACK)",
        "val_seen_in_training": trained_on_val(run),
    }


def measurement_lines(m: dict) -> list[str]:
    acc, ref, paired = m["accuracy"], m["float_accuracy"], m["paired_difference"]
    lo, hi = paired["ci95"]
    drop = m["drop_points"]
    cost = f"loses {drop:.1f} points" if drop > 0 else f"loses nothing ({(-drop or 0.0):+.1f} points)"  # not -0.0
    verdict = "within" if m["within_max_drop"] else "MORE THAN"
    return [
        f"{m['model']} ({m['quantize']}): {m['size_bytes'] / 1e6:.2f} MB",
        f"validation accuracy {acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] (n={acc['n']}); "
        f"float model {ref['value']:.3f} [{ref['ci95'][0]:.3f}, {ref['ci95'][1]:.3f}]",
        f"difference to the float model {paired['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired, 95 %), "
        f"McNemar p = {paired['p_value']:.3g}; same top-1 on {m['agreement_with_float']:.1%} of the images",
        f"against the float model it {cost}: {verdict} --max-drop {m['max_drop_points']:g}",
        f"speed on this CPU ({m['threads']} threads, batch {m['speed_batch']}): {m['images_per_second']['export']:.0f} "
        f"images/s (float model in TF: {m['images_per_second']['float_tf']:.0f} images/s)",
    ] + (["the model was trained on these validation images too (--refit, or a linear --cv head): both accuracies "
          "are optimistic; the difference between them is still what the quantization costs"]
         if m.get("val_seen_in_training") else [])
