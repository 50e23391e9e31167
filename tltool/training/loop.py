"""The epoch loop: stages, one epoch through ``model.fit`` or the distributed step, the policies after it, and a
checkpoint after every epoch so ``--resume`` continues at the right epoch with the optimizer state."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..configs import TrainOptions
from ..progress import Bar, say
from .distributed import DistributedEpoch
from .guard import check_not_diverged, guard_callback
from .optim import compile_model, current_lr, last_batch_lr
from .policies import BestTracker, BestWeights, EarlyStopping, Policy, ReduceLROnPlateau, reset_policies
from .state import LoopState, checkpoint_path, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


@dataclass
class Stage:
    """One phase of training: its options and how it prepares the model (which layers train).

    ``stop_after``: end the stage after this many of its ``options.epochs`` (its schedule still spans all of them):
    a refit repeats a stage that early stopping ended at its best epoch.
    """

    name: str
    options: TrainOptions
    prepare: Callable[[object], None] = field(default=lambda model: None)
    stop_after: int | None = None

    @property
    def epochs_to_run(self) -> int:
        return self.options.epochs if self.stop_after is None else min(self.stop_after, self.options.epochs)


class FitEpoch:
    """One epoch through ``model.fit`` (the default strategy), with the progress bar and the non-finite guard."""

    def __init__(self, model, class_weight: dict | None) -> None:
        self.model, self.class_weight = model, class_weight

    def run(self, train: tf.data.Dataset, val: tf.data.Dataset | None, bar: Bar, lr: float) -> dict:
        return self.model.fit(train, validation_data=val, epochs=1, verbose=0, class_weight=self.class_weight,
                              shuffle=False, callbacks=[guard_callback(bar, lr)]).history


def stage_policies(options: TrainOptions, state: LoopState, run_dir: Path, source: Path,
                   scope: Callable) -> tuple[BestTracker, list[Policy]]:
    """The tracker and the policies of a stage, with the counters ``state`` holds."""
    tracker = BestTracker()
    best = BestWeights(tracker, run_dir, source)
    policies: list[Policy] = [best, EarlyStopping(tracker, best, options.early_stopping)]
    if options.schedule == "plateau":
        policies.append(ReduceLROnPlateau(tracker, options.lr, options.plateau_patience, options.plateau_factor,
                                          scope))
    for policy in (tracker, *policies):
        policy.load(state)
    return tracker, policies


def _start(build_model: Callable[[], object], stages: list[Stage], source: Path, scope: Callable,
           resume: bool) -> tuple[object, LoopState]:
    """The model and state to go on from: the last checkpoint of ``source`` when resuming, else a new model."""
    plan = [stage.epochs_to_run for stage in stages]  # what state.json's counters are checked against
    found = checkpoint_path(source, plan) if resume else None
    if found is None:
        if resume:
            say("no checkpoint found: starting from the beginning")
        with scope():
            return build_model(), LoopState()
    state = LoopState.load(source / "state.json", plan)
    with scope():  # the .keras file does not depend on the replica count: it loads under any strategy
        model = load_checkpoint(found, state, source / "state.json")  # with the dropout RNGs it had
    stage = stages[state.stage]
    say(f"resuming after epoch {state.epoch} (stage {stage.name}, {state.stage_epoch}/{stage.epochs_to_run} done"
        + (", stopped early" if state.stage_stopped else "") + ")")
    return model, state


def _enter_stage(model, state: LoopState, index: int, stage: Stage, scope: Callable, steps_per_epoch: int) -> None:
    """A new stage: fresh policy counters, its trainable layers, a new optimizer."""
    state.stage, state.stage_epoch, state.stage_stopped = index, 0, False
    reset_policies(state)
    stage.prepare(model)
    with scope():
        compile_model(model, stage.options, steps_per_epoch)


def _epoch_line(row: dict, total_epochs: int, stop: bool) -> str:
    val = (f" val_loss {row['val_loss']:.4f} val_acc {row.get('val_accuracy', float('nan')):.3f}"
           if "val_loss" in row else "")  # a refit has no val split
    end = row.get("lr_end", row["lr"])  # a warm-up or a decay moves the lr within the epoch: both ends shown
    lr = f"{row['lr']:.2g}" + (f"→{end:.2g}" if abs(end - row["lr"]) > 0.01 * row["lr"] else "")
    return (f"epoch {row['epoch']}/{total_epochs} ({row['stage']}) loss {row['loss']:.4f} acc "
            f"{row.get('accuracy', float('nan')):.3f}{val} lr {lr} ({row['seconds']:.1f} s)"
            + (" - early stop" if stop else ""))


def run_stages(build_model: Callable[[], object], stages: list[Stage], train_data: Callable[[int], object],
               val_data: object, steps_per_epoch: int, run_dir: Path, class_weight: dict | None = None,
               resume: bool = False, strategy: tf.distribute.Strategy | None = None,
               resume_from: Path | None = None) -> tuple[keras.Model, LoopState]:
    """Train through ``stages``; ``train_data(epoch)`` gives that epoch's dataset (seeded by epoch, so a resumed
    run sees the same data order and augmentation as an uninterrupted one). Returns (model, LoopState).

    Early stopping is per stage: when a stage's val loss has not improved for ``early_stopping`` epochs, that stage
    ends with its best weights restored and the next stage starts (``state.stopped_early`` names the stages).
    ``strategy``: a ``tf.distribute`` strategy (None: the default one, through ``model.fit``); the datasets are then
    batched by the global batch and the strategy splits them. ``resume_from``: where the checkpoint to resume is,
    when it is not ``run_dir`` (a worker that reads the chief's run folder and writes its own scratch folder).
    """
    source = resume_from or run_dir
    scope = strategy.scope if strategy is not None else contextlib.nullcontext
    model, state = _start(build_model, stages, source, scope, resume)
    total_epochs = sum(s.epochs_to_run for s in stages)
    for index, stage in enumerate(stages):
        if index < state.stage or (index == state.stage and state.stage_stopped):
            continue  # finished before the resume
        if index > state.stage or state.stage_epoch == 0:
            _enter_stage(model, state, index, stage, scope, steps_per_epoch)
        if stage.epochs_to_run == 0:
            continue
        tracker, policies = stage_policies(stage.options, state, run_dir, source, scope)
        epoch = (DistributedEpoch(model, strategy, stage.options, class_weight) if strategy is not None
                 else FitEpoch(model, class_weight))
        with Bar((stage.epochs_to_run - state.stage_epoch) * steps_per_epoch, stage.name) as bar:
            while state.stage_epoch < stage.epochs_to_run:
                for policy in policies:
                    policy.before_epoch(model)
                lr, start = current_lr(model), time.perf_counter()
                logs = epoch.run(train_data(state.epoch), val_data, bar, lr)
                state.epoch, state.stage_epoch = state.epoch + 1, state.stage_epoch + 1
                row = {"epoch": state.epoch, "stage": stage.name, "lr": lr, "lr_end": last_batch_lr(model),
                       **{k: float(v[-1]) for k, v in logs.items()}, "seconds": time.perf_counter() - start}
                state.history.append(row)
                tracker.update(row.get("val_loss"), state.epoch)
                notes = [note for policy in policies if (note := policy.after_epoch(model))]
                stop = any(policy.stop for policy in policies)
                for line in [_epoch_line(row, total_epochs, stop), *notes]:
                    say(line)
                if len(model.outputs) == 1:  # several outputs (auxiliary heads) sum losses beyond log C
                    check_not_diverged(state.history, int(model.outputs[0].shape[-1]), stage.name, stage.options.lr)
                for policy in (tracker, *policies):
                    policy.store(state)
                if stop:
                    state.stage_stopped = True
                    state.stopped_early.append(stage.name)
                    if index + 1 < len(stages):
                        say(f"stage {stage.name} ends; going on with stage {stages[index + 1].name}")
                save_checkpoint(model, state, run_dir)  # from here on a resume starts after this epoch
                if stop:
                    break
    return model, state


def refit_stages(stages: list[Stage], state: LoopState) -> list[Stage]:
    """The stages of a refit on train+val, which has no val loss to watch: each stage runs the epochs the val run
    kept (all of them, or up to its best epoch where early stopping ended it), on the same schedule, and
    without early stopping."""
    refit = []
    for stage in stages:
        rows = [row for row in state.history if row["stage"] == stage.name]
        kept = (_lowest_val_loss(rows) or len(rows)) if stage.name in state.stopped_early else len(rows)
        refit.append(replace(stage, options=replace(stage.options, early_stopping=0), stop_after=kept))
    return refit


def _lowest_val_loss(rows: list[dict]) -> int:
    """The position (from 1) among a stage's history ``rows`` of its best val loss, as early stopping judged it
    (:class:`BestTracker`); 0 where no row has one."""
    tracker = BestTracker()
    for position, row in enumerate(rows, start=1):
        tracker.update(row.get("val_loss"), position)
    return tracker.best_epoch


def shipped_weights(state: LoopState) -> dict:
    """Which epoch's weights the run's model holds: the last epoch's, or where early stopping ended the last stage,
    its lowest val loss's. ``lowest_val_loss_epoch``: the epoch of the run's last stage a best-epoch file names
    (kept for early stopping and --resume), which a user took for the model's."""
    if not state.history:
        return {}
    stage = state.history[-1]["stage"]
    rows = [row for row in state.history if row["stage"] == stage]
    lowest = _lowest_val_loss(rows)
    early = stage in state.stopped_early and lowest
    return {"epoch": rows[lowest - 1 if early else -1]["epoch"], "epochs": state.history[-1]["epoch"], "stage": stage,
            "chosen_by": "early stopping" if early else "last epoch",
            "lowest_val_loss_epoch": rows[lowest - 1]["epoch"] if lowest else None}
