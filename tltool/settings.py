"""The legal values of every enumerated setting, in one table, and the defaults that are not a config field.

Each setting (``pool``, ``tta``, ``resize``, ...) is listed once here: the CLI builds its ``click.Choice`` from
this table (``tltool.cli.options.choice``), the config dataclasses of :mod:`tltool.configs` validate against it
(:func:`validate_choices`, modelled on scikit-learn's ``_parameter_constraints``), and the library modules that
implement a setting as a registry (optimizers, schedules, heads, augmentation presets) are tested to register
exactly these names. This module imports nothing but :mod:`tltool.errors`: ``tltool --help`` reads it.
"""
from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any

from .errors import TltoolError, did_you_mean

DEFAULT_BACKBONE = "efficientnet_lite0"
PREVIEW_DRAWS = 17  # `augment preview`: the original and 17 draws fill a 6 x 3 grid
PREVIEW_SIZE = 224

# setting name (the config field and CLI option, with `_`) -> its legal values, the default first where it has one
CHOICES: dict[str, tuple[str, ...]] = {
    "pool": ("avg", "max", "avgmax"),
    "tta": ("none", "flip", "10crop"),
    "resize": ("crop", "pad", "stretch"),
    "class_weight": ("none", "balanced"),
    "head_init": ("probe", "random"),
    "optimizer": ("sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "adamw"),
    "schedule": ("constant", "step", "exponential", "cosine", "plateau"),
    "head": ("logreg", "linsvm", "ridge", "sgd", "knn"),
    "augment": ("none", "light", "standard", "heavy"),
    "strategy": ("auto", "none", "mirrored", "multiworker"),
    "export_format": ("keras", "savedmodel", "tflite"),
    "resample": ("nearest", "bilinear", "bicubic"),
    "engine": ("auto", "tf", "litert"),
    "quantize": ("none", "float16", "dynamic", "int8"),
}

# numeric setting -> (lowest, highest, whether the lowest itself is excluded); None: no bound. A value of None
# (a setting left to its default, such as a net's own dropout) is not checked.
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "batch_size": (1, None, False),
    "chunk_size": (1, None, False),
    "epochs": (0, None, False),
    "head_epochs": (0, None, False),
    "early_stopping": (0, None, False),
    "step_epochs": (1, None, False),
    "warmup_epochs": (0, None, False),
    "weight_decay": (0, None, False),
    "head_lr": (0, None, True),
    "gamma": (0, 1, True),
    "plateau_patience": (1, None, False),
    "plateau_factor": (0, 1, True),
    "dropout": (0, 0.99, False),
    "seed": (0, 2**32 - 1, False),
}

# settings that also accept a file instead of a named value (an albumentations pipeline for --augment)
FILE_SUFFIXES: dict[str, tuple[str, ...]] = {"augment": (".yaml", ".yml", ".json")}

# settings whose unknown values get a "did you mean" (open registries) rather than "must be one of"
_DID_YOU_MEAN = {"optimizer": "optimizer", "schedule": "schedule", "head": "head",
                 "augment": "augmentation preset"}


def choices(setting: str) -> tuple[str, ...]:
    """The legal values of ``setting``."""
    return CHOICES[setting]


def check_choice(setting: str, value: Any) -> None:
    """Raise a one-line :class:`TltoolError` when ``value`` is not a legal value of ``setting``."""
    legal = CHOICES[setting]
    if value in legal:
        return
    suffixes = FILE_SUFFIXES.get(setting)
    if suffixes and isinstance(value, str) and value.lower().endswith(suffixes):
        return  # a file: whoever reads it says when it is missing or malformed
    if setting in _DID_YOU_MEAN:
        raise did_you_mean(str(value), legal, _DID_YOU_MEAN[setting])
    option = "--" + setting.replace("_", "-")
    raise TltoolError(f"{option} must be one of {legal}, got {value!r}.")


def check_range(setting: str, value: Any) -> None:
    """Raise a one-line :class:`TltoolError` when ``value`` is outside the range of ``setting`` (:data:`RANGES`)."""
    low, high, open_low = RANGES[setting]
    if value is None:
        return
    number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    below = low is not None and (number <= low if open_low else number < low)
    above = high is not None and number > high
    if not (math.isnan(number) or below or above):
        return
    if high is None:
        legal = f"{'above' if open_low else 'at least'} {_bound(low)}"
    else:
        legal = f"in {'(' if open_low else '['}{_bound(low)}, {_bound(high)}]"
    raise TltoolError(f"--{setting.replace('_', '-')} must be a number {legal}, got {value!r}.")


def _bound(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def validate_choices(config: Any) -> None:
    """Check every field of the dataclass ``config`` that names a setting of :data:`CHOICES` or :data:`RANGES`."""
    if not is_dataclass(config):
        raise TypeError(f"{config!r} is not a dataclass instance")
    for f in fields(config):
        if f.name in CHOICES:
            check_choice(f.name, getattr(config, f.name))
        elif f.name in RANGES:
            check_range(f.name, getattr(config, f.name))
