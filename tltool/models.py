"""Load a finished run (linear head or fine-tuned network) as a model: class probabilities for image files (with
optional TTA) and, for export, the equivalent Keras model. The tasks built on it are in :mod:`tltool.predict`.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, NoReturn

import numpy as np

from .backbones import create_backbone, get_backbone_spec
from .dataset import Record
from .engines import ModelSource, Runner, create_runner, feature_source, keras_file_source
from .errors import TltoolError
from .features import read_features_json, select_pool
from .heads import FittedHead
from .keras_files import load_keras_model
from .outputs import finished_state, listed_entries, output_kind
from .progress import Bar
from .images import DEFAULT_MAX_PIXELS
from .settings import CHOICES, RANGES, check_choice
from .tta import n_views, predict_with_tta
from .utils import is_whole, read_json, read_json_object, sha256_file

if TYPE_CHECKING:
    import keras


def trained_max_pixels(config: dict) -> int:
    """The decode limit a run was trained with (``--max-pixels``, in its model.json); older runs did not record
    it. Whatever decodes a photo for the run (predict, evaluate, viz) refuses what its training refused."""
    return int(config.get("max_pixels") or DEFAULT_MAX_PIXELS)


class RunModel:
    """What every run can do: give class probabilities for a batch of views and for files."""

    classes: list[str]
    image_size: int
    resize: str
    config: dict
    engine: str = "auto"  # tltool.engines: which engine runs the network for predict, evaluate and TTA

    @property
    def max_pixels(self) -> int:
        return trained_max_pixels(self.config)

    _runner = None

    def source(self) -> ModelSource:
        """What the engine runs for this run (pixels in)."""
        raise NotImplementedError

    def runner(self, images: int | None = None) -> Runner:
        """The network on its engine (``auto`` resolved for this run's network on this machine and, where known, for
        the first job's ``images``: a few hundred run on TF rather than wait for a conversion), made once."""
        if self._runner is None:
            self._runner = create_runner(self.source(), self.engine, images)
        return self._runner

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """Class probabilities from the network's outputs for a batch of views."""
        raise NotImplementedError

    def predict_views(self, batch: np.ndarray) -> np.ndarray:
        return self.probabilities(self.runner()(batch))  # a runner makes its own float32

    def predict_stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """:meth:`predict_views` over a stream of batches through the runner's ``map`` (LiteRT's lanes take the next
        batch's images while this one's finish); closed early (or failing here), it closes the runner's stream."""
        outputs = self.runner().map(batches)
        try:
            for out in outputs:
                yield self.probabilities(out)
        finally:
            getattr(outputs, "close", lambda: None)()

    def as_keras(self) -> keras.Model:
        """The run as one Keras model from raw pixels (0..255) to class probabilities."""
        raise NotImplementedError

    def predict_paths(self, paths: Sequence[str], tta: str = "none", batch_size: int = 32,
                      per_view: bool = False) -> np.ndarray:
        check_choice("tta", tta)
        engine = self.runner(len(paths) * n_views(tta)).engine
        return predict_with_tta(self.predict_views, paths, self.image_size, self.resize, tta, batch_size,
                                max_pixels=self.max_pixels, engine=engine,
                                predict_stream=self.predict_stream, per_view=per_view)

    def predict_plain_and_tta(self, paths: Sequence[str], tta: str,
                              batch_size: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
        """The plain probabilities of ``paths`` and those under ``tta`` (None for none), as a report shows them
        side by side. Flip's first view is the plain one: one pass gives both (two passes decoded every image
        twice and ran its plain view twice)."""
        passes = [tta] if tta in ("none", "flip") else ["none", tta]
        self.runner(len(paths) * sum(n_views(mode) for mode in passes))  # the engine for the whole job
        if tta == "none":
            return self.predict_paths(paths, batch_size=batch_size), None
        if tta == "flip":
            views = self.predict_paths(paths, "flip", batch_size, per_view=True)
            return views[:, 0], views.mean(axis=1)
        return self.predict_paths(paths, batch_size=batch_size), self.predict_paths(paths, tta, batch_size)


class LinearRunModel(RunModel):
    def __init__(self, run_dir: Path, config: dict, engine: str = "auto") -> None:
        self.run_dir, self.config, self.engine = run_dir, config, engine
        self.classes, self.image_size, self.resize = config["classes"], config["image_size"], config["resize"]
        self.head = FittedHead.load(run_dir)
        if self.head.classes != self.classes:
            raise TltoolError(f"{run_dir}: model.json names the classes {self.classes}, its head was fitted on "
                              f"{self.head.classes}: one of them was edited; fit the head again with `tltool linear`.")
        if self.head.pool is not None and self.head.pool != config["pool"]:  # same width for avg and max
            raise TltoolError(f"{run_dir}: model.json says pool {config['pool']!r}, its head was fitted on "
                              f"{self.head.pool!r}-pooled features: one of them was edited; fit the head again with "
                              "`tltool linear`.")

    def source(self) -> ModelSource:  # the same pooled features as extraction
        return feature_source(self.config["backbone"], self.config["weights"], self.image_size, self._weights_named)

    @property
    def _weights_named(self) -> str:
        """The weights are model.json's, not an option the user gave: a bad path was reported as ``--weights``."""
        return f"{self.run_dir / 'model.json'}: its weights"

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.head.predict_proba(select_pool(outputs["avg"], outputs["max"], self.config["pool"]))

    def as_keras(self) -> keras.Model:
        """The backbone, the run's pooling and the head folded into one Dense layer (k-NN heads have no such form)."""
        from ._tf import keras

        kernel, bias = self.head.dense_weights()
        extractor = create_backbone(self.config["backbone"], weights=self.config["weights"],
                                    image_size=self.image_size, weights_named=self._weights_named)
        fmap = extractor.output
        x = select_pool(keras.layers.GlobalAveragePooling2D(name="avg_pool")(fmap),
                        keras.layers.GlobalMaxPooling2D(name="max_pool")(fmap), self.config["pool"],
                        concat=lambda parts, axis: keras.layers.Concatenate(axis=axis, name="avgmax")(parts))
        self.head.check_width(np.empty((0, x.shape[-1])))  # a clear error, not Keras' at set_weights
        dense = keras.layers.Dense(len(self.head.classes), activation="softmax", dtype="float32", name="classifier")
        outputs = dense(x)
        dense.set_weights([kernel, bias])
        return keras.Model(extractor.input, outputs, name="tltool_linear")


class KerasRunModel(RunModel):
    """A fine-tuned or from-scratch run: ``model.keras`` takes raw pixels and returns probabilities."""

    def __init__(self, run_dir: Path, config: dict, engine: str = "auto") -> None:
        self.run_dir, self.config, self.engine = run_dir, config, engine
        self.classes, self.image_size, self.resize = config["classes"], config["image_size"], config["resize"]
        self.path = run_dir / "model.keras"
        if not self.path.exists():
            raise TltoolError(f"{run_dir}: no model.keras; the run did not finish (resume it with --resume {run_dir}).")
        if not self.path.is_file():  # its digest (the LiteRT cache key) was an OSError traceback
            raise TltoolError(f"{self.path}: not a regular file (a folder, a named pipe or a device), so not the model "
                              "the run wrote.")
        self._model = None

    @property
    def model(self) -> keras.Model:
        """The Keras model, loaded (with TensorFlow) only when asked for."""
        if self._model is None:
            self._model = load_keras_model(self.path, compile=False, image_size=self.image_size)
        return self._model

    def as_keras(self) -> keras.Model:
        return self.model

    def source(self) -> ModelSource:
        return keras_file_source(self.path, self.image_size, backbone=self.config.get("backbone"))

    def probabilities(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        probabilities = outputs["probabilities"]
        if probabilities.shape[-1] != len(self.classes):
            raise TltoolError(f"{self.run_dir}: model.keras gives {probabilities.shape[-1]} class probabilities and "
                              f"model.json names {len(self.classes)} classes: one of them was edited or replaced.")
        return probabilities


_LOADERS = {"linear": LinearRunModel, "finetune": KerasRunModel, "scratch": KerasRunModel}


def missing_file_message(folder: Path, name: str, hint: str = "") -> str:
    """Why ``folder`` given as a run lacks ``name`` (model.json, predictions.csv), and what to give instead. A run
    that wrote it and lost it since was told it "holds no model", and to pass the folder a linear command wrote."""
    if name in (listed_entries(folder) or ()) and output_kind(folder) == "run":
        return (f"{folder}: {name}, which this run wrote, is missing: restore it, or run the command that made "
                "the run again.")
    return (f"{folder}: {what_folder_is(folder)} (no {name}). Pass the folder a linear, finetune or train command "
            f"wrote{hint}.")


def what_folder_is(folder: Path) -> str:
    """What a folder given as a run holds no model of: an export, an evaluation's or compare's run, or not tltool's."""
    kind = output_kind(folder)
    if kind not in (None, "run"):
        return f"is a tltool {kind} folder, which holds no model"
    try:
        made_by = read_json(folder / "metrics.json").get("kind")
    except (OSError, ValueError, AttributeError, RecursionError):
        made_by = None
    if kind == "run" and made_by == "finetune-cv" and (folder / "fold-1" / "run" / "model.json").is_file():
        return ("is a fine-tune cross-validation, which ships no model of its own: each fold's model is in its "
                f"fold-N/run ({folder / 'fold-1' / 'run'} ...), or fine-tune again without --cv for one model")
    if kind == "run":
        return f"is the run of a tltool {made_by if isinstance(made_by, str) else 'command'}, which holds no model"
    return "not a tltool run"


def load_run(run_dir: str | Path, engine: str = "auto") -> RunModel:
    run_dir = Path(run_dir)
    config_path = run_dir / "model.json"
    if not run_dir.is_dir():
        raise TltoolError(f"{run_dir}: no such folder. Pass the folder a linear, finetune or train command wrote.")
    if not config_path.exists():
        raise TltoolError(missing_file_message(run_dir, "model.json",
                                               " (an export's model runs with the client in its README)"))
    config = _checked_model_json(config_path)
    _check_trained_preprocessing(run_dir, config)
    return _LOADERS[config["kind"]](run_dir, config, engine)


def load_finished_run(run_dir: str | Path, engine: str = "auto") -> RunModel:
    """:func:`load_run` for predict, evaluate, compare, export and viz: a run whose command did not return (killed,
    or running now) is refused; its model.json and weights were read as a whole run's without a word."""
    if finished_state(run_dir) is False:
        raise TltoolError(f"{run_dir}: its command did not finish (it was interrupted, or is running now), so its "
                          "model may not be the run's; run that command again (a fine-tune or train: with --resume "
                          f"{run_dir}) and use the run it finishes.")
    return load_run(run_dir, engine)


# where each kind of run records, beside model.json, the preprocessing its model was trained with: (file, the keys
# to that record in it, the settings checked). A linear run's report copies its features.json's (the features folder
# itself is a cache a later extract may fill with other settings); a network's config.json is what its training and
# --resume read (its image size is model.keras's own input, checked when it loads), with the classes its outputs
# were trained as (a linear run's head.json names its own): reordered in model.json, predict named them wrongly.
_TRAINED_WITH = {"linear": ("metrics.json", ("config",), ("image_size", "resize")),
                 "finetune": ("config.json", (), ("resize", "classes")),
                 "scratch": ("config.json", (), ("resize", "classes"))}


def _check_trained_preprocessing(run_dir: Path, config: dict) -> None:
    """Refuse a model.json whose preprocessing is not the one the run recorded at its training: an edited resize
    (or a linear run's image_size) made predict, evaluate and export feed the model other pixels without a word (a
    roses photo at 0.989 read as tulips at 0.947). A run without that record (an older tltool's, or a copy without
    the file) has nothing to check against."""
    name, keys, fields = _TRAINED_WITH[config["kind"]]
    try:
        record = read_json(run_dir / name)
        for key in keys:
            record = record[key]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return
    for field in fields:
        trained = record.get(field) if isinstance(record, dict) else None
        if trained is not None and trained != config[field]:
            raise TltoolError(f"{run_dir / 'model.json'}: {field} is {config[field]!r}, but the run's model was "
                              f"trained with {field} {trained!r} (its {name}): one of them was edited; set "
                              f"model.json's back to {trained!r}.")


MAX_IMAGE_SIZE = 4096  # no run of tltool's is trained above this; a larger model.json size is an edit


def _is_text(value) -> bool:
    return isinstance(value, str)


def _is_backbone(value) -> bool:
    """A name the registry knows: "../../etc" was "Unknown backbone" naming no file."""
    try:
        return isinstance(value, str) and get_backbone_spec(value) is not None
    except TltoolError:
        return False


def _is_size(value) -> bool:
    return is_whole(value, RANGES["image_size"].low, MAX_IMAGE_SIZE)


def _is_pixels(value) -> bool:
    return value is None or is_whole(value)


def _are_classes(value) -> bool:
    """At least two names, each given once: a name given twice made predict print two answers of one name and
    evaluate score that class against the one of its outputs it kept."""
    return (isinstance(value, list) and len(value) >= 2 and all(isinstance(c, str) and c for c in value)
            and len(set(value)) == len(value))


# what each kind of run reads from its model.json: the test its value must pass and what that is, in words
_COMMON_FIELDS = {
    "image_size": (_is_size, f"a size of {RANGES['image_size'].low:g}-{MAX_IMAGE_SIZE} px"),
    "resize": (lambda v: v in CHOICES["resize"], f"one of {CHOICES['resize']}"),
    "classes": (_are_classes, "a list of at least 2 class names, each non-empty and given once"),
    "max_pixels": (_is_pixels, "a whole number of pixels"),
}
_MODEL_FIELDS = {
    "linear": {"backbone": (_is_backbone, "a backbone tltool knows (tltool backbones)"),
               "weights": (_is_text, "a weights name or file"),
               "pool": (lambda v: v in CHOICES["pool"], f"one of {CHOICES['pool']}"),
               "features": (_is_text, "the features folder")},
    "finetune": {"backbone": (_is_text, "a backbone name")},
    "scratch": {},
}
_OPTIONAL = {"max_pixels": None, "features": None, "pool": "avg"}  # absent in runs of an older tltool: the default


def _checked_model_json(path: Path) -> dict:
    """``model.json`` with the fields its kind of run reads, of the types tltool writes them (it is read as possibly
    edited: an image size of 100000 made OpenCV ask for 120 GB, a missing pool was a KeyError)."""
    def damaged(problem: str) -> NoReturn:
        raise TltoolError(f"{path}: not a model.json tltool wrote ({problem}).")

    config = read_json_object(path, damaged)
    kind = config.get("kind")
    if not isinstance(kind, str) or kind not in _MODEL_FIELDS:  # a list or an object cannot even be looked up
        damaged(f"its kind {kind!r} is none of {sorted(_MODEL_FIELDS)}")
    for name, (ok, what) in {**_COMMON_FIELDS, **_MODEL_FIELDS[kind]}.items():
        if name not in config and name in _OPTIONAL:
            if _OPTIONAL[name] is not None:
                config[name] = _OPTIONAL[name]
            continue
        if not ok(config.get(name)):
            damaged(f"{name} is {config.get(name)!r}, not {what}")
    return config


def trained_on_val(run: RunModel) -> bool:
    """Whether the run's model was fitted on its validation images too (``--refit``, or a ``linear --cv`` head)."""
    return bool(run.config.get("refit") or run.config.get("cv"))


def run_splits(run_dir: Path, run: RunModel, need_val: bool = True) -> dict[str, tuple[list[str], np.ndarray]]:
    """``{"train": (paths, labels), "val": (...)}`` of the run: its ``split.csv`` (every run since linear runs write
    one too), else its features folder's file list (a linear run of an older tltool). ``need_val``: a run without
    validation images is an error."""
    if (run_dir / "split.csv").exists():
        records = _recorded_split(run_dir / "split.csv")
    elif (Path(run.config.get("features") or "") / "features.json").exists():  # a path, checked by load_run
        files = read_features_json(Path(run.config["features"]) / "features.json")["files"]
        records = [Record(f["path"], f["label"], f["split"]) for f in files]
    else:
        raise TltoolError(f"{run_dir}: neither split.csv nor the run's features folder is here, so its training and "
                          "validation images are unknown; export with --no-measure.")
    index = {c: i for i, c in enumerate(run.classes)}
    if any(r.label not in index for r in records):
        raise TltoolError(f"{run_dir}: its recorded split names classes the run does not have; it is not the run's.")
    out = {}
    for split in ("train", "val"):
        chosen = [r for r in records if r.split == split]
        out[split] = ([r.path for r in chosen], np.array([index[r.label] for r in chosen], dtype=np.int64))
    if need_val and not len(out["val"][0]):
        raise TltoolError(f"{run_dir}: the run has no validation images to measure the export on.")
    return out


def _recorded_split(path: Path) -> list[Record]:
    """The rows of a run's ``split.csv`` as written (the photos need not exist any more: the split is a record,
    not a dataset to check)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [Record(row["path"], row["label"], row["split"]) for row in rows]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError) as exc:
        raise TltoolError(f"{path}: not a split.csv tltool wrote ({exc.__class__.__name__}: {exc}).") from None


def overlap_with_training(run_dir: str | Path, run: RunModel, paths: Sequence[str]) -> list[str]:
    """Which of ``paths`` the run's model was trained on (its train split; its val split too after ``--refit``
    or for a ``linear --cv`` head), by resolved path or, for a file elsewhere, by content (a copy of a training
    photo was counted as unseen, and its accuracy reported as an estimate for new photos). A run whose record of
    its images is missing or damaged raises its :class:`TltoolError`: the caller says it cannot check, rather
    than reading that as none."""
    splits = run_splits(Path(run_dir), run, need_val=False)
    seen = splits["train"][0] + (splits["val"][0] if trained_on_val(run) else [])
    known = {os.path.realpath(p) for p in seen}
    elsewhere = [p for p in paths if os.path.realpath(p) not in known]
    copied = set(copies_of(elsewhere, seen))
    return [p for p in paths if os.path.realpath(p) in known or p in copied]


def copies_of(paths: Sequence[str], seen: Sequence[str]) -> list[str]:
    """Which of ``paths`` hold the same bytes as one of ``seen`` (the training photos, under another name: a
    dataset copied, or exported again with --copy). Only files of a size one of ``seen`` has are read; a photo of
    ``seen`` that is gone (the split is a record) is left out."""
    def size(path: str) -> int | None:
        try:
            return os.stat(path).st_size
        except OSError:
            return None

    def digest(path: str) -> str | None:
        try:
            return sha256_file(path)
        except OSError:
            return None

    sizes: dict[int, list[str]] = {}
    for path in seen:
        sizes.setdefault(size(path), []).append(path)
    candidates = [(path, bytes_) for path in paths if (bytes_ := size(path)) is not None and bytes_ in sizes]
    same_size = [path for wanted in {bytes_ for _, bytes_ in candidates} for path in sizes[wanted]]
    with Bar(len(same_size) + len(candidates), "looking for copies of the training photos") as bar:
        trained = set()  # every photo of a BMP/PPM dataset has one size: all of them are read, so a bar
        for path in same_size:
            trained.add(digest(path))
            bar.update()
        trained.discard(None)
        copies = []
        for path, _ in candidates:
            if digest(path) in trained:
                copies.append(path)
            bar.update()
    return copies
