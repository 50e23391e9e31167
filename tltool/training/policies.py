"""What happens after an epoch, as small objects that share one "is this a new best val loss?" tracker.

:class:`BestWeights` keeps the weights of the stage's best epoch, :class:`EarlyStopping` ends a stage that stopped
improving (with those weights), :class:`ReduceLROnPlateau` lowers the learning rate when it stalls (the models:
Keras' callbacks of the same names and fastai's ``TrackerCallback``). Their counters are fields of
:class:`~tltool.training.state.LoopState` (named in ``STORED``), so a resumed run goes on with them exactly.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

from ..errors import TltoolError
from ..declared_sizes import check_declared_sizes
from ..utils import atomic_path
from .state import BEST_NAME, LoopState

if TYPE_CHECKING:
    import keras

MIN_DELTA = 1e-4  # a val loss counts as better only when it is lower by more than this


class Policy:
    """A rule applied around every epoch of a stage; its counters are the LoopState fields named in ``STORED``."""

    STORED: ClassVar[tuple[str, ...]] = ()
    stop = False  # True once the policy ends the stage

    def load(self, state: LoopState) -> "Policy":
        for name in self.STORED:
            setattr(self, name, getattr(state, name))
        return self

    def store(self, state: LoopState) -> None:
        for name in self.STORED:
            setattr(state, name, getattr(self, name))

    def before_epoch(self, model: keras.Model) -> None:
        pass

    def after_epoch(self, model: keras.Model) -> str | None:
        """Act on the epoch just finished; returns a line to show the user, or None."""
        return None


class BestTracker(Policy):
    """Is this epoch's val loss the best of the stage so far? Every other policy reads ``improved``."""

    STORED = ("best_val_loss", "best_epoch")

    def __init__(self) -> None:
        self.best_val_loss, self.best_epoch, self.improved = float("inf"), 0, False

    def update(self, val_loss: float | None, epoch: int) -> bool:
        self.improved = val_loss is not None and val_loss < self.best_val_loss - MIN_DELTA
        if self.improved:
            self.best_val_loss, self.best_epoch = float(val_loss), epoch
        return self.improved


class BestWeights(Policy):
    """Saves the weights of every new best epoch (``best-epochNNNN.weights.h5``); :meth:`restore` loads them."""

    STORED = ("best_weights",)

    def __init__(self, tracker: BestTracker, run_dir: Path, source: Path | None = None) -> None:
        self.tracker, self.run_dir, self.source = tracker, run_dir, source or run_dir
        self.best_weights: str | None = None

    def after_epoch(self, model: keras.Model) -> None:
        if self.tracker.improved:
            name = BEST_NAME.format(self.tracker.best_epoch)
            with atomic_path(self.run_dir / name, suffix=".weights.h5", durable=True) as tmp:
                model.save_weights(str(tmp))
            self.best_weights = name

    def path(self) -> Path | None:
        """The best weights: written by this process, or by the run it resumed (``source``)."""
        for folder in (self.run_dir, self.source):
            if self.best_weights and (folder / self.best_weights).exists():
                return folder / self.best_weights
        return None

    def restore(self, model: keras.Model) -> bool:
        best = self.path()
        if best is not None:
            try:
                check_declared_sizes(best)  # a resumed run's folder is input: Keras reads what a tensor declares
                model.load_weights(str(best))
            except Exception as exc:  # Keras raises several kinds for a damaged or truncated .h5
                raise TltoolError(f"{best}: the best epoch's weights cannot be loaded; the file is damaged or "
                                  f"truncated ({exc.__class__.__name__}). Delete the run's state.json to start it "
                                  "over (or start a new run).") from None
        return best is not None


class EarlyStopping(Policy):
    """Ends the stage after ``patience`` epochs without a new best (0: never), with the best epoch's weights."""

    STORED = ("wait",)

    def __init__(self, tracker: BestTracker, best: BestWeights, patience: int) -> None:
        self.tracker, self.best, self.patience, self.wait = tracker, best, patience, 0

    def after_epoch(self, model: keras.Model) -> str | None:
        self.wait = 0 if self.tracker.improved else self.wait + 1
        self.stop = bool(self.patience) and self.wait >= self.patience
        if not self.stop:
            return None
        kept = self.best.restore(model)  # the stage ends with its best weights, not its last epoch's
        return (f"early stopping: val loss did not improve for {self.patience} epochs"
                + (f"; keeping the weights of epoch {self.tracker.best_epoch}" if kept else ""))


class ReduceLROnPlateau(Policy):
    """Multiplies the learning rate by ``factor`` after ``patience`` epochs without a new best (``--schedule
    plateau``)."""

    STORED = ("plateau_wait", "lr_scale")

    def __init__(self, tracker: BestTracker, lr: float, patience: int, factor: float,
                 scope: Callable = contextlib.nullcontext) -> None:
        self.tracker, self.lr, self.patience, self.factor, self.scope = tracker, lr, patience, factor, scope
        self.plateau_wait, self.lr_scale = 0, 1.0

    def before_epoch(self, model: keras.Model) -> None:
        with self.scope():
            model.optimizer.learning_rate = self.lr * self.lr_scale

    def after_epoch(self, model: keras.Model) -> str | None:
        self.plateau_wait = 0 if self.tracker.improved else self.plateau_wait + 1
        if self.plateau_wait < self.patience:
            return None
        self.lr_scale *= self.factor
        self.plateau_wait = 0
        return f"val loss has not improved for {self.patience} epochs: lr -> {self.lr * self.lr_scale:g}"


POLICY_FIELDS = tuple(name for cls in (BestTracker, BestWeights, EarlyStopping, ReduceLROnPlateau)
                      for name in cls.STORED)


def reset_policies(state: LoopState) -> None:
    """A new stage starts with fresh counters (its own best, patience and learning-rate scale)."""
    fresh = LoopState()
    for name in POLICY_FIELDS:
        setattr(state, name, getattr(fresh, name))
