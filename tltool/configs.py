"""The settings of every job as dataclasses: one place for every field and its default.

The CLI reads its option defaults from here (``default=FinetuneConfig.head_epochs``), so a default cannot differ
between the library and the command line, and every field has the name of its CLI option (recipes rely on that).
Legal values of enumerated fields are in :mod:`tltool.settings`. Settings that depend on the model (input size,
preprocessing) are resolved once by :func:`resolve_input` and carried as an :class:`InputConfig`.
This module imports nothing heavy: ``tltool --help`` imports it and must stay free of TensorFlow.
``tltool.training``, ``tltool.supervised``, ``tltool.finetune`` and ``tltool.scratch`` re-export these classes.
"""
from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Self

from .backbones.registry import get_backbone_spec
from .distribute import parse_shard
from .errors import TltoolError
from .images import DEFAULT_MAX_PIXELS
from .settings import DEFAULT_BACKBONE, DEFAULT_VAL_FRACTION, check_range, pinned_engine, shown_value, validate_choices
from .utils import is_whole, read_json_object


@dataclass
class TrainOptions:
    """Settings of one training stage; every field has the same name as its CLI option."""

    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float | None = None
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    step_epochs: int = 10
    gamma: float = 0.1
    label_smoothing: float = 0.0
    early_stopping: int = 0  # patience in epochs on val loss, per stage; 0 = off
    plateau_patience: int = 2
    plateau_factor: float = 0.3

    def validate(self) -> None:
        validate_choices(self)


NOTHING_TRAINED = ("no epoch to train: the model would be {what}, and its report the accuracy of a guess; give "
                   "--epochs (or --head-epochs) of at least 1.")
CV_OFF_OR_FOLDS = "--cv must be 0 (off) or a number of folds, at least 2; got {k}."


def check_folds(k: Any, off_allowed: bool = True) -> None:
    """``--cv``: 0 (off, where ``off_allowed``) or a whole number of folds of at least 2 (-1 was told "every class
    needs at least -1 images", 2.5 reached scikit-learn)."""
    if k is None and off_allowed:  # None was off before folds were checked
        return
    whole = isinstance(k, numbers.Integral) and not isinstance(k, bool)
    if not whole or not (k >= 2 or (off_allowed and k == 0)):
        raise TltoolError(CV_OFF_OR_FOLDS.format(k=shown_value(k)))

# what `--resume` says when a run folder belongs to another command
RESUME_COMMANDS = {"finetune": "tltool finetune --resume", "scratch": "tltool train --resume",
                   "finetune-cv": "tltool finetune --resume"}
KIND_NAMES = {"finetune": "fine-tuning", "scratch": "from-scratch", "finetune-cv": "cross-validated fine-tuning"}


@dataclass
class DataOptions:
    """How images are read, batched and split: the same for extraction and for every training run."""

    image_size: int | None = None
    resize: str = "crop"
    batch_size: int = 32
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    strict: bool = False  # a class left without usable images is an error, not a warning


@dataclass
class RunConfig(TrainOptions, DataOptions):
    """Settings shared by every supervised run: the training options of :class:`TrainOptions` (one stage's), the
    data options of :class:`DataOptions`, augmentation and devices. Saved as ``config.json`` (with the run's
    ``kind``) so ``--resume`` continues it."""

    KIND: ClassVar[str] = ""

    data: str = ""
    augment: str = "standard"
    schedule: str = "cosine"
    label_smoothing: float = 0.1
    class_weight: str = "none"
    mixed_precision: bool = False
    strategy: str = "auto"
    scale_lr: bool = False
    tta: str = "none"
    mixup: float = 0.0  # Beta(a, a) of mixup in the training batches; 0: off
    # after the val estimate, train the shipped model again on train+val for the same epochs; off by default:
    # benchmarks/results/defaults.md scored the default fine-tune refit at 0.882-0.894 on flowers-tune (3 seeds)
    # against 0.890-0.912 trained on train alone
    refit: bool = False

    def validate(self) -> None:
        super().validate()
        if self.refit and self.schedule == "plateau":
            raise TltoolError("--refit repeats the run's epochs on train+val, where there is no val loss for "
                              "--schedule plateau to lower the learning rate by; choose another --schedule.")
        if self.refit and self.strategy == "multiworker":
            raise TltoolError("--refit runs on one machine: use --strategy auto or mirrored, or refit without it.")

    def train_options(self) -> TrainOptions:
        return TrainOptions(**{f.name: getattr(self, f.name) for f in fields(TrainOptions)})

    def stage_options(self, epochs: int, lr: float) -> TrainOptions:
        """This run's training options for one stage of ``epochs`` epochs at learning rate ``lr``."""
        return replace(self.train_options(), epochs=epochs, lr=lr)

    @classmethod
    def from_run(cls, run_dir: Path, kind: str | None = None) -> Self:
        """The settings a run was started with; refuses a run folder of another kind than ``kind`` (default: the
        class's), and a config.json that was edited or damaged (a wrong type or an illegal value would fail later,
        as a traceback)."""
        stored = read_run_config(run_dir)
        expected, found = kind or cls.KIND, stored_run_kind(run_dir, stored)
        if expected and found != expected:
            what = KIND_NAMES.get(found, f"{found!r}")
            hint = (f"resume it with `{RESUME_COMMANDS[found]} {run_dir}`" if found in RESUME_COMMANDS
                    else "it cannot be resumed; start it again")
            raise TltoolError(f"--resume {run_dir}: this is a {what} run, not a {KIND_NAMES[expected]} run; {hint}.")
        known = {f.name: f.type for f in fields(cls)}
        settings = {k: v for k, v in stored.items() if k in known}
        for name, value in settings.items():
            if not _is_of_type(value, known[name]):
                _damaged_config(run_dir, f"{name} = {value!r} is not of type {known[name]}.")
        config = cls(**settings)
        try:
            config.validate()
        except TltoolError as error:
            _damaged_config(run_dir, str(error))
        return config


def stored_distribute(run_dir: Path) -> dict:
    """The ``distribute`` record of a run's config.json (the global batch and learning-rate factor it started
    with, which a resume keeps), checked: a damaged one would fail inside TF or as an AttributeError."""
    started = read_run_config(run_dir).get("distribute") or {}
    if not isinstance(started, dict):
        _damaged_config(run_dir, f"distribute is {started!r}, not a record of the run's devices.")
    batch, scale = started.get("global_batch_size"), started.get("lr_scale")
    if batch is not None and not is_whole(batch):
        _damaged_config(run_dir, f"distribute.global_batch_size is {batch!r}, not a whole number of images.")
    if scale is not None and not (isinstance(scale, (int, float)) and not isinstance(scale, bool)
                                  and math.isfinite(scale) and scale > 0):
        _damaged_config(run_dir, f"distribute.lr_scale is {scale!r}, not a positive factor.")
    return started


def stored_run_kind(run_dir: Path, stored: dict | None = None) -> str:
    """The kind of run in ``run_dir`` (``finetune``, ``finetune-cv``, ``scratch``), from its config.json."""
    stored = read_run_config(run_dir) if stored is None else stored
    kind = stored.get("kind") or stored_kind(stored)
    if not isinstance(kind, str):
        _damaged_config(run_dir, f"kind = {kind!r} is not a run kind.")
    return kind


def stored_folds(run_dir: Path) -> int:
    """The number of folds of a cross-validated run, from its config.json, checked."""
    folds = read_run_config(run_dir).get("cv")
    if not is_whole(folds, low=2):
        _damaged_config(run_dir, f"cv = {folds!r} is not a number of folds (at least 2).")
    return folds


def read_run_config(run_dir: Path) -> dict:
    path = run_dir / "config.json"
    if not os.path.lexists(path):
        raise TltoolError(f"--resume {run_dir}: not a training run folder (no config.json).")
    return read_json_object(path, lambda problem: _damaged_config(run_dir, f"{problem}."))


def _damaged_config(run_dir: Path, problem: str) -> NoReturn:
    raise TltoolError(f"--resume {run_dir}: config.json: {problem} The file was edited or damaged, so the run's "
                      "settings are unknown; start a new run instead.")


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "None": (type(None),)}


def _is_of_type(value, annotation: str) -> bool:
    """Whether a value read from JSON fits a field's annotation (``int``, ``float | None``, ...); True is no int."""
    allowed = tuple(t for name in annotation.split("|") for t in _TYPES.get(name.strip(), (object,)))
    return isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)


def stored_kind(stored: dict) -> str:
    """The kind of a run whose config.json predates the ``kind`` key."""
    if "cv" in stored:
        return "finetune-cv"
    return "scratch" if "arch" in stored else "finetune"


UNFREEZE = re.compile(r"none|all|[0-9]+|[A-Za-z][A-Za-z0-9_]*")  # a block name: the start of a layer's name


@dataclass
class FinetuneConfig(RunConfig):
    """A fine-tuning run: a short head stage from the probe, then the last 2 blocks unfrozen at 1e-4 with one epoch
    of warm-up. Chosen by benchmarks/defaults.py on 500 flower photos no run sees (at 288 px: 0.902, the probe
    0.874, paired +0.028, p = 0.009); longer head-first schedules, more blocks and refits were not better there."""

    KIND: ClassVar[str] = "finetune"

    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    dropout: float = 0.2
    head_init: str = "probe"
    head_epochs: int = 2
    head_lr: float = 1e-3
    unfreeze: str = "2"
    epochs: int = 12
    lr: float = 1e-4
    warmup_epochs: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.unfreeze, numbers.Integral) and not isinstance(self.unfreeze, bool):
            self.unfreeze = str(int(self.unfreeze))  # a library caller's unfreeze=2 is the CLI's "2"

    def validate(self) -> None:
        super().validate()
        if self.head_epochs == self.epochs == 0 and self.head_init == "random":
            raise TltoolError(NOTHING_TRAINED.format(what="a random head on the pretrained network"))
        if not UNFREEZE.fullmatch(str(self.unfreeze)):  # -1 was taken for a layer name, refused after the head
            raise TltoolError(f"--unfreeze must be none, all, a number N (the last N blocks; layers where the "
                              f"backbone names none) or a block name such as block6a, got {self.unfreeze!r}.")


@dataclass
class ScratchConfig(RunConfig):
    """A from-scratch run. ``None`` options take the architecture's (paper's) default."""

    KIND: ClassVar[str] = "scratch"

    def validate(self) -> None:
        super().validate()
        if self.epochs == 0:
            raise TltoolError(NOTHING_TRAINED.format(what="the network's random initialisation"))

    arch: str = "lenet5"
    initializer: str | None = None
    batch_norm: bool | None = None
    dropout: float | None = None
    augment: str = "none"
    epochs: int = 20
    lr: float = 1e-3
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0


@dataclass
class ExtractConfig(DataOptions):
    """Settings of ``tltool extract`` (and the extraction half of ``probe``); fields are the CLI option names."""

    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    chunk_size: int = 1024
    strategy: str = "auto"
    shard: str | None = None
    engine: str = "auto"  # tltool.engines; the features are the same numbers on every engine (cache key too)

    def validate(self) -> None:
        validate_choices(self)
        pinned_engine()
        parse_shard(self.shard)  # a recipe's `shard: 3/2` passed --check and was refused when its step was reached

    def resolve_input(self) -> "InputConfig":
        return resolve_input(self.backbone, self.image_size, self.resize, self.max_pixels)


@dataclass
class LinearConfig:
    """Settings of ``tltool linear`` (and the head half of ``probe``); fields are the CLI option names."""

    head: str = "logreg"
    pool: str = "avg"
    standardize: bool = True
    class_weight: str = "none"
    gradcam: bool = False
    seed: int = 0
    tta: str = "none"
    cv: int = 0
    repeats: int = 1
    # after the val estimate, ship a head refit on train+val with the chosen regularisation; off by default:
    # benchmarks/results/defaults.md measured a refit at -0.004 (p = 0.85) for the probe and +0.010 (p = 0.42)
    # for the fine-tune on flowers-tune, not enough to make it the default
    refit: bool = False

    def validate(self) -> None:
        validate_choices(self)
        if self.cv and (self.tta != "none" or self.gradcam):
            raise TltoolError("--cv reports out-of-fold predictions of cached features: it cannot add --tta or "
                              "--gradcam. Run without --cv for those.")
        check_folds(self.cv)
        if self.cv and self.refit:
            raise TltoolError("--refit has nothing to do with --cv: the head --cv saves is already fitted on "
                              "train+val. Drop one of them.")


def split_settings(settings: dict, *configs: type) -> list[dict]:
    """``settings`` (keyword arguments) divided among the dataclasses ``configs`` by field name; a name that
    several have (``seed``) goes to each; an unknown name is a ``TypeError``, as for a function."""
    names = [{f.name for f in fields(c)} for c in configs]
    unknown = set(settings) - set().union(*names)
    if unknown:
        raise TypeError(f"unexpected setting(s) {sorted(unknown)}")
    return [{k: v for k, v in settings.items() if k in known} for known in names]


@dataclass(frozen=True)
class InputConfig:
    """What the network's input needs, resolved once from the backbone and the user's settings (the role of
    timm's ``resolve_data_config``): every step of a job reads images through the same one."""

    backbone: str
    image_size: int
    resize: str
    preprocess: str
    max_pixels: int = DEFAULT_MAX_PIXELS

    def to_json(self) -> dict:
        return {"backbone": self.backbone, "image_size": self.image_size, "resize": self.resize,
                "preprocess": self.preprocess, "max_pixels": self.max_pixels}


def resolve_input(backbone: str, image_size: int | None = None, resize: str = "crop",
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> InputConfig:
    """The input settings of ``backbone``: ``image_size`` defaults to the backbone's own size."""
    check_range("max_pixels", max_pixels)  # 0 called every image a decompression bomb
    spec = get_backbone_spec(backbone)
    return InputConfig(spec.name, spec.input_size(image_size), resize, spec.preprocess,
                       int(max_pixels or DEFAULT_MAX_PIXELS))
