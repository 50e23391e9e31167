"""User-facing errors and warnings.

Anything a user can cause (a bad path, a bad option, a corrupt file) raises :class:`TltoolError` with a message
that says what is wrong and what to do. The CLI prints the message, never a traceback.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class TltoolError(Exception):
    """An error caused by input or environment, explained in plain words."""


class BadImageError(TltoolError):
    """One image file cannot be used; ``reason`` is a short machine-readable tag."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


class TltoolWarning(UserWarning):
    """Base class of the warnings tltool emits, so users can filter them in one go."""


class ImbalanceWarning(TltoolWarning):
    """Class counts differ a lot: accuracy alone will mislead."""


class BadFilesWarning(TltoolWarning):
    """Some files were skipped; each is named in the message and in the report."""


class LeakageWarning(TltoolWarning):
    """The same image content appears in both the training and the validation split, or a run is scored on images
    it was trained on."""


class LabelConflictWarning(TltoolWarning):
    """The same image content is filed under two or more classes: the model is trained on contradictory labels."""


class IgnoredOptionsWarning(TltoolWarning):
    """Options given on the command line that the command does not use (``--resume`` keeps the run's settings)."""


class EmptyClassWarning(TltoolWarning):
    """A class the data declares has no usable image (an empty class folder, or every file bad): it is left out."""


class SameRunWarning(TltoolWarning):
    """``tltool compare`` was given one run twice: the runs agree on every image by construction."""


class TooFewClassesWarning(TltoolWarning):
    """Fewer than two classes have usable images: no classifier can be trained on the data."""


class SmallClassWarning(TltoolWarning):
    """A class has fewer training images than the linear heads need (2: their regularisation is chosen by
    cross-validation): probe, linear and finetune's default head refuse the split; train takes it."""


class NoValSplitWarning(TltoolWarning):
    """The data has train and test splits but no val split: its test images are the validation split a run scores
    (and, where it does, stops early and chooses its model on)."""


class ClassNameWarning(TltoolWarning):
    """Class folders whose names differ only in case or in how an accent is encoded (``Bengal`` and ``bengal``):
    kept as separate classes, though they likely name one (and are one folder on macOS and Windows)."""


class HeldOutWarning(TltoolWarning):
    """The data has a test split beside train and val: no run uses it, so it stays an honest final test; it says
    how to score it once (``tltool evaluate RUN DATA --split test``)."""


class AugmentationWarning(TltoolWarning):
    """What albumentations says of an augmentation file it builds (a deprecated argument), which Python's default
    filters would hide."""


def close_match_hint(name: str, choices: Iterable[str]) -> str:
    """``Did you mean 'logreg'?`` for the valid choices closest to ``name``, or ``""`` when none is close: one
    wording for the library, the command line and recipes."""
    close = difflib.get_close_matches(str(name), sorted(choices), n=3, cutoff=0.5)
    return f"Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def did_you_mean(name: str, choices: Iterable[str], what: str) -> TltoolError:
    """An 'unknown X' error naming the closest valid choices."""
    choices = sorted(choices)
    hint = close_match_hint(name, choices)
    return TltoolError(f"Unknown {what} {name!r}.{' ' + hint if hint else ''} Choices: {', '.join(choices)}.")
