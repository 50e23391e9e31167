"""The training machinery shared by fine-tuning and training from scratch, one concern per module.

- :mod:`.optim` — optimizers and learning-rate schedules by name (registries), the loss, compiling;
- :mod:`.state` — ``state.json`` (:class:`LoopState`) and the checkpoint it names, consistent at every instant;
- :mod:`.randomness` — the dropout RNG states a ``.keras`` file does not keep, so a resume is exact;
- :mod:`.guard` — a NaN/inf loss stops the run at once;
- :mod:`.distributed` — one epoch under a ``tf.distribute`` strategy;
- :mod:`.policies` — best weights, early stopping and reduce-on-plateau on one "new best?" tracker;
- :mod:`.loop` — the epoch loop through the stages (:func:`run_stages`);
- :mod:`.history` — ``history.csv`` and the training curves.
"""
from __future__ import annotations

from ..configs import TrainOptions
from .distributed import DistributedEpoch
from .guard import DivergedLoss, NonFiniteLoss, check_finite, check_not_diverged
from .history import plot_history, write_history
from .loop import FitEpoch, Stage, refit_stages, run_stages, shipped_weights
from .optim import OPTIMIZERS, SCHEDULES, ScheduleArgs, compile_model, current_lr, make_loss, make_optimizer
from .policies import BestTracker, BestWeights, EarlyStopping, ReduceLROnPlateau
from .state import BEST_NAME, CHECKPOINT_NAME, LoopState, checkpoint_path, epochs_done

__all__ = ["BEST_NAME", "CHECKPOINT_NAME", "OPTIMIZERS", "SCHEDULES", "BestTracker", "BestWeights",
           "DistributedEpoch", "DivergedLoss", "EarlyStopping", "FitEpoch", "LoopState", "NonFiniteLoss",
           "ReduceLROnPlateau", "ScheduleArgs", "Stage", "TrainOptions", "check_finite", "check_not_diverged",
           "checkpoint_path", "compile_model", "current_lr", "epochs_done", "make_loss", "make_optimizer",
           "plot_history", "refit_stages", "run_stages", "shipped_weights", "write_history"]
