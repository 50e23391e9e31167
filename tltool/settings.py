"""The legal values of every enumerated setting, in one table, and the defaults that are not a config field.

Each setting (``pool``, ``tta``, ``resize``, ...) is listed once here: the CLI builds its ``click.Choice`` from
this table (``tltool.cli.options.choice``), the config dataclasses of :mod:`tltool.configs` validate against it
(:func:`validate_choices`, modelled on scikit-learn's ``_parameter_constraints``), and the library modules that
implement a setting as a registry (optimizers, schedules, heads, augmentation presets) are tested to register
exactly these names. This module imports nothing but :mod:`tltool.errors`: ``tltool --help`` reads it.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import fields, is_dataclass
from typing import Any, NamedTuple

from .errors import TltoolError, did_you_mean

DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_VAL_FRACTION = 0.2  # the share of each class drawn as val where the data has no split of its own
PREVIEW_DRAWS = 17  # `augment preview`: the original and 17 draws fill a 6 x 3 grid
PREVIEW_DRAWS_MAX = 119  # at most 20 rows of 6
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
    "split": ("train", "val", "test"),  # one split of a dataset (evaluate --split)
}



class Range(NamedTuple):
    """The legal numbers of a numeric setting: ``low`` to ``high`` (None: unbounded), each end included unless
    ``open_low`` / ``open_high``; ``meaning`` says what the values do where the range alone does not. ``whole``:
    only whole numbers (an int or a numpy integer from the library: 2.5 epochs or a 96.5 px input mean nothing)."""

    low: float | None
    high: float | None
    open_low: bool = False
    open_high: bool = False
    meaning: str = ""
    whole: bool = False


# numeric setting -> its Range. A value of None (a setting left to its default, such as a net's own dropout) is not
# checked; infinities and NaN never pass.
RANGES: dict[str, Range] = {
    "image_size": Range(8, 4096, meaning="leave it out for the backbone's default", whole=True),  # nin takes 8 px
    "batch_size": Range(1, None, whole=True),
    "chunk_size": Range(1, None, whole=True),
    "epochs": Range(0, None, whole=True),
    "head_epochs": Range(0, None, whole=True),
    "early_stopping": Range(0, None, whole=True),
    "step_epochs": Range(1, None, whole=True),
    "warmup_epochs": Range(0, None),
    "weight_decay": Range(0, None),
    # 1e300 trained 20 s, then Keras could not convert it (a traceback); Adadelta's customary 1.0 is the largest in use
    "lr": Range(0, 10, open_low=True),
    "head_lr": Range(0, 10, open_low=True),
    "gamma": Range(0, 1, open_low=True),
    "plateau_patience": Range(1, None, whole=True),
    "plateau_factor": Range(0, 1, open_low=True),
    "label_smoothing": Range(0, 1, open_high=True),
    "mixup": Range(0, 10, meaning="0 turns mixup off; above 0 it is the a of the Beta(a, a) mixing weights"),
    "dropout": Range(0, 0.99),
    "seed": Range(0, 2**32 - 1, whole=True),
    "val_fraction": Range(0, 1, open_low=True, open_high=True, meaning="a share of each class"),
    "max_pixels": Range(1, None, meaning="images with more pixels are refused as decompression bombs", whole=True),
    "per_class": Range(1, 10000, whole=True),
    "size": Range(32, 1024, meaning="the side of each image in pixels; tltool refuses images under 32 px", whole=True),
    "repeats": Range(1, None, whole=True),
    "seeds": Range(1, None, whole=True),  # learning-curve: random subsets averaged per point
    # `augment preview`: 3000 draws ran 5 minutes without a word and wrote an 11 MB PNG of 501 rows
    "draws": Range(1, PREVIEW_DRAWS_MAX, meaning="the grid shows the original and each draw, six to a row", whole=True),
    "top": Range(1, None, whole=True),  # label suspects: how many are written
    "top_k": Range(1, None, whole=True),  # predict: how many classes each image lists (-1 listed all but the last)
    "neighbours": Range(1, None, whole=True),  # label suspects: k of the nearest-neighbour check
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


ENGINE_ENV = "TLTOOL_ENGINE"


def pinned_engine() -> str:
    """What ``--engine auto`` means: ``$TLTOOL_ENGINE`` where set, else ``auto``. Read where the settings are
    checked, so a misspelt value is refused before any work, even by a command that then finds nothing to run."""
    pinned = os.environ.get(ENGINE_ENV, "auto").strip().lower() or "auto"
    if pinned not in CHOICES["engine"]:
        raise TltoolError(f"${ENGINE_ENV} must be one of {CHOICES['engine']}, got {pinned!r}.")
    return pinned


def check_range(setting: str, value: Any) -> None:
    """Raise a one-line :class:`TltoolError` when ``value`` is outside the range of ``setting`` (:data:`RANGES`)."""
    legal = RANGES[setting]
    if value is None:
        return
    kind = numbers.Integral if legal.whole else numbers.Real  # numpy's numbers too, from a library caller
    try:
        number = float(value) if isinstance(value, kind) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int of hundreds of digits (Click and YAML take them): out of every range
        number = math.inf
    below = legal.low is not None and (number <= legal.low if legal.open_low else number < legal.low)
    above = legal.high is not None and (number >= legal.high if legal.open_high else number > legal.high)
    if math.isfinite(number) and not (below or above):
        return
    if legal.high is None:
        words = f"{'above' if legal.open_low else 'at least'} {_bound(legal.low)}"
    elif legal.open_low and legal.open_high:  # "(0, 1)": a student read 0 as between 0 and 1
        words = f"above {_bound(legal.low)} and below {_bound(legal.high)}"
    else:
        words = (f"in {'(' if legal.open_low else '['}{_bound(legal.low)}, {_bound(legal.high)}"
                 f"{')' if legal.open_high else ']'}")
    meaning = f" ({legal.meaning})" if legal.meaning else ""
    what = "a whole number" if legal.whole else "a number"
    raise TltoolError(f"--{setting.replace('_', '-')} must be {what} {words}{meaning}, got {shown_value(value)}.")


def shown_value(value: Any) -> str:
    """``value`` as a user typed it: numpy's numbers without their type (``-1``, not ``np.int64(-1)``)."""
    if isinstance(value, numbers.Number) and not isinstance(value, (bool, int, float)):
        return str(value)
    return repr(value)


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
        elif f.type in ("bool", bool):
            check_flag(f.name, getattr(config, f.name))


def check_flag(setting: str, value: Any) -> None:
    """An on/off setting is True or False (numpy's too): a library caller's ``standardize="no"`` was true."""
    if not (isinstance(value, bool) or type(value).__name__ in ("bool_", "bool")):
        raise TltoolError(f"{setting} must be True or False, got {value!r}.")
