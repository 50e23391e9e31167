"""Load a finished run (linear head or fine-tuned network) and predict on image files, with optional TTA."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .dataset import Dataset, load_dataset
from .errors import TltoolError
from .evaluation import Evaluation, TTA_MODES, predict_with_tta
from .images import DEFAULT_MAX_PIXELS
from .utils import read_json


class RunModel:
    """What every run can do: give class probabilities for a batch of views and for files."""

    classes: list[str]
    image_size: int
    resize: str
    config: dict

    @property
    def max_pixels(self) -> int:
        """The decode limit the run was trained with (``--max-pixels``); older runs did not record it."""
        return int(self.config.get("max_pixels") or DEFAULT_MAX_PIXELS)

    def predict_views(self, batch) -> np.ndarray:
        raise NotImplementedError

    def predict_paths(self, paths: Sequence[str], tta: str = "none", batch_size: int = 32) -> np.ndarray:
        if tta not in TTA_MODES:
            raise TltoolError(f"--tta must be one of {TTA_MODES}, got {tta!r}.")
        return predict_with_tta(self.predict_views, paths, self.image_size, self.resize, tta, batch_size,
                                max_pixels=self.max_pixels)


class LinearRunModel(RunModel):
    def __init__(self, run_dir: Path, config: dict) -> None:
        from .heads import FittedHead

        self.run_dir, self.config = run_dir, config
        self.classes, self.image_size, self.resize = config["classes"], config["image_size"], config["resize"]
        self.head = FittedHead.load(run_dir)
        self._step = None

    def predict_views(self, batch) -> np.ndarray:
        if self._step is None:
            from .features import build_feature_extractor

            _, self._step = build_feature_extractor(self.config["backbone"], self.config["weights"], self.image_size)
        avg, mx = self._step(batch)
        pooled = {"avg": avg.numpy(), "max": mx.numpy()}
        pool = self.config["pool"]
        X = np.concatenate([pooled["avg"], pooled["max"]], axis=1) if pool == "avgmax" else pooled[pool]
        return self.head.predict_proba(X)


def load_keras_model(path: str | Path, compile: bool = True):
    """Load a ``.keras`` file tltool wrote, with safe_mode on; tltool's own layers are registered first."""
    from ._tf import keras

    from .arch import layers as _arch_layers  # noqa: F401  (registration happens on import)
    from .backbones import layers as _backbone_layers  # noqa: F401

    return keras.models.load_model(path, safe_mode=True, compile=compile)


class KerasRunModel(RunModel):
    """A fine-tuned or from-scratch run: ``model.keras`` takes raw pixels and returns probabilities."""

    def __init__(self, run_dir: Path, config: dict) -> None:
        self.run_dir, self.config = run_dir, config
        self.classes, self.image_size, self.resize = config["classes"], config["image_size"], config["resize"]
        path = run_dir / "model.keras"
        if not path.exists():
            raise TltoolError(f"{run_dir}: no model.keras; the run did not finish (resume it with --resume {run_dir}).")
        self.model = load_keras_model(path, compile=False)
        self._predict = None

    def predict_views(self, batch) -> np.ndarray:
        if self._predict is None:
            from ._tf import tf

            size = self.image_size  # one graph for every batch size (a shorter last batch must not retrace)
            self._predict = tf.function(lambda x: self.model(x, training=False),
                                        input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        return np.asarray(self._predict(batch))


_LOADERS = {"linear": LinearRunModel, "finetune": KerasRunModel, "scratch": KerasRunModel}


def load_run(run_dir: str | Path) -> RunModel:
    run_dir = Path(run_dir)
    config_path = run_dir / "model.json"
    if not config_path.exists():
        raise TltoolError(f"{run_dir}: not a tltool run (no model.json). Pass the folder a linear, finetune or "
                          "train command wrote.")
    config = read_json(config_path)
    loader = _LOADERS.get(config.get("kind"))
    if loader is None:
        raise TltoolError(f"{run_dir}: unknown run kind {config.get('kind')!r}.")
    return loader(run_dir, config)


def no_usable_images(name: str, n_files: int) -> str:
    return (f"{name}: no usable images: none of its {n_files} file(s) could be read as an image (see the warning "
            "above for each file's reason). Point DATA at a folder of class sub-folders with photos in them.")


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]


def predict_images(run_dir: str | Path, images: Sequence[str], top_k: int = 3, tta: str = "none") -> list[Prediction]:
    from .images import check_image

    model = load_run(run_dir)
    for path in images:
        check_image(path, max_pixels=model.max_pixels)  # a bad file is a clear error naming it
    probs = model.predict_paths(list(images), tta=tta)
    out = []
    for path, p in zip(images, probs):
        order = np.argsort(-p)[:top_k]
        out.append(Prediction(path, [(model.classes[i], float(p[i])) for i in order]))
    return out


def labelled_images(data: str | Dataset, classes: list[str], max_pixels: int) -> tuple[Dataset, list[str], np.ndarray]:
    """Every usable image of ``data`` (all splits) with its label index in ``classes``; clear errors otherwise."""
    from .inspection import check_dataset

    dataset = load_dataset(data) if not isinstance(data, Dataset) else data
    checked = check_dataset(dataset, max_pixels=max_pixels)
    records = checked.dataset.records
    if not records:
        raise TltoolError(no_usable_images(dataset.name, len(checked.files)))
    unknown = sorted({r.label for r in records} - set(classes))
    if unknown:
        raise TltoolError(f"{dataset.name}: labels {unknown} are not classes of the model {classes}.")
    index = {c: i for i, c in enumerate(classes)}
    return dataset, [r.path for r in records], np.array([index[r.label] for r in records])


def evaluate_run(run_dir: str | Path, data: str | Dataset, out: str | Path | None = None, tta: str = "none",
                 force: bool = False):
    """Evaluate a finished run on a labelled dataset it never saw (all its splits); write a report."""
    from .report import write_run_report
    from .runs import new_run_dir

    model = load_run(run_dir)
    dataset, paths, y = labelled_images(data, model.classes, model.max_pixels)
    probs = model.predict_paths(paths, tta=tta)
    evaluation = Evaluation(model.classes, y, probs)
    target = new_run_dir("eval", Path(run_dir).name, dataset.name, out=out, force=force)
    title = f"{Path(run_dir).name} evaluated on {dataset.name}" + (f" (TTA {tta})" if tta != "none" else "")
    metrics = write_run_report(target, evaluation, paths, kind="evaluation", title=title,
                               config={"run": str(run_dir), "data": dataset.source, "tta": tta, **model.config})
    return target, evaluation, metrics
