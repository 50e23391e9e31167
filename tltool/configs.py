"""The settings of a training run as dataclasses: one place for every field and its default.

The CLI reads its option defaults from here (``default=FinetuneConfig.head_epochs``), so a default cannot differ
between the library and the command line, and every field has the name of its CLI option (recipes rely on that).
This module imports nothing heavy: ``tltool --help`` imports it and must stay free of TensorFlow.
``tltool.training``, ``tltool.supervised``, ``tltool.finetune`` and ``tltool.scratch`` re-export these classes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

from .errors import TltoolError, did_you_mean
from .images import DEFAULT_MAX_PIXELS
from .utils import read_json


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
        from .training import OPTIMIZERS, SCHEDULES

        if self.optimizer not in OPTIMIZERS:
            raise did_you_mean(self.optimizer, OPTIMIZERS, "optimizer")
        if self.schedule not in SCHEDULES:
            raise did_you_mean(self.schedule, SCHEDULES, "schedule")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise TltoolError(f"--lr must be a positive number, got {self.lr}.")
        if not 0 <= self.label_smoothing < 1:
            raise TltoolError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}.")


# what `--resume` says when a run folder belongs to another command
RESUME_COMMANDS = {"finetune": "tltool finetune --resume", "scratch": "tltool train --resume"}
KIND_NAMES = {"finetune": "fine-tuning", "scratch": "from-scratch", "finetune-cv": "cross-validated fine-tuning"}


@dataclass
class RunConfig(TrainOptions):
    """Settings shared by every supervised run: the training options of :class:`TrainOptions` (one stage's) and the
    data, pipeline and devices. Saved as ``config.json`` (with the run's ``kind``) so ``--resume`` continues it."""

    KIND: ClassVar[str] = ""

    data: str = ""
    image_size: int | None = None
    resize: str = "crop"
    batch_size: int = 32
    val_fraction: float = 0.2
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    augment: str = "standard"
    schedule: str = "cosine"
    label_smoothing: float = 0.1
    class_weight: str = "none"
    mixed_precision: bool = False
    strategy: str = "auto"
    scale_lr: bool = False
    tta: str = "none"

    def train_options(self) -> TrainOptions:
        return TrainOptions(**{f.name: getattr(self, f.name) for f in fields(TrainOptions)})

    def stage_options(self, epochs: int, lr: float) -> TrainOptions:
        """This run's training options for one stage of ``epochs`` epochs at learning rate ``lr``."""
        return replace(self.train_options(), epochs=epochs, lr=lr)

    @classmethod
    def from_run(cls, run_dir: Path):
        """The settings a run was started with; refuses a run folder of another kind."""
        if not (run_dir / "config.json").exists():
            raise TltoolError(f"--resume {run_dir}: not a training run folder (no config.json).")
        stored = read_json(run_dir / "config.json")
        kind = stored.get("kind") or stored_kind(stored)
        if cls.KIND and kind != cls.KIND:
            what = KIND_NAMES.get(kind, f"{kind!r}")
            hint = (f"resume it with `{RESUME_COMMANDS[kind]} {run_dir}`" if kind in RESUME_COMMANDS
                    else "it cannot be resumed; start it again")
            raise TltoolError(f"--resume {run_dir}: this is a {what} run, not a {KIND_NAMES[cls.KIND]} run; {hint}.")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in known})


def stored_kind(stored: dict) -> str:
    """The kind of a run whose config.json predates the ``kind`` key."""
    if "cv" in stored:
        return "finetune-cv"
    return "scratch" if "arch" in stored else "finetune"


@dataclass
class FinetuneConfig(RunConfig):
    """A fine-tuning run. The defaults were measured on the flowers photos (linear probe 0.89, this recipe 0.90):
    a short head stage from the probe, then the last 2 blocks unfrozen at 1e-4 with one epoch of warm-up."""

    KIND: ClassVar[str] = "finetune"

    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    dropout: float = 0.2
    head_init: str = "probe"
    head_epochs: int = 2
    head_lr: float = 1e-3
    unfreeze: str = "2"
    epochs: int = 12
    lr: float = 1e-4
    warmup_epochs: float = 1.0


@dataclass
class ScratchConfig(RunConfig):
    """A from-scratch run. ``None`` options take the architecture's (paper's) default."""

    KIND: ClassVar[str] = "scratch"

    arch: str = "lenet5"
    initializer: str | None = None
    batch_norm: bool | None = None
    dropout: float | None = None
    augment: str = "none"
    epochs: int = 20
    lr: float = 1e-3
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0
