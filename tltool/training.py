"""The training machinery shared by fine-tuning and training from scratch.

Optimizers and learning-rate schedules by name (registries, not if-chains), an epoch loop that checkpoints
after every epoch so ``--resume`` continues at the right epoch with the optimizer state, early stopping (per stage)
and reduce-on-plateau whose state survives a resume, and a NaN guard that stops at once.

Checkpoints are consistent with ``state.json`` at every instant: epoch N's model is written as
``checkpoint-epoch000N.keras`` (temp name + rename), then ``state.json`` (atomic) names it, and only then are older
checkpoints deleted. A kill at any point leaves a ``state.json`` whose named checkpoint exists and holds exactly the
epochs it counts, so a resumed run never repeats or skips an epoch.

Under a ``tf.distribute`` strategy (``--strategy mirrored|multiworker``) the model is built, loaded and compiled in
the strategy's scope and each epoch runs a distributed step (``strategy.run``) instead of ``model.fit``: Keras 3.15's
``fit`` fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585: it reduces whole batches and scalar
metrics with ``axis=0``), and under ``MirroredStrategy`` it iterates the first batch of a dataset to build itself
and then restarts the iterator, which reshuffles a seeded dataset. The step computes the same loss as ``fit`` (the
mean over the global batch, class weights included), so a 2-replica epoch matches a 1-device one.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from rich.markup import escape

from .configs import TrainOptions
from .errors import TltoolError
from .progress import Bar, say
from .utils import atomic_path, read_json, write_json, write_text_atomic

# ------------------------------------------------------------------------------------------------ optimizers


def _sgd(lr, wd, keras):
    return keras.optimizers.SGD(lr, weight_decay=wd)


def _momentum(lr, wd, keras):
    return keras.optimizers.SGD(lr, momentum=0.9, weight_decay=wd)


def _nesterov(lr, wd, keras):
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=wd)


def _adagrad(lr, wd, keras):
    return keras.optimizers.Adagrad(lr, weight_decay=wd)


def _adadelta(lr, wd, keras):
    return keras.optimizers.Adadelta(lr, weight_decay=wd)


def _rmsprop(lr, wd, keras):
    return keras.optimizers.RMSprop(lr, weight_decay=wd)


def _adam(lr, wd, keras):
    return keras.optimizers.Adam(lr, weight_decay=wd)


def _adamw(lr, wd, keras):
    return keras.optimizers.AdamW(lr, weight_decay=wd if wd is not None else 0.004)


OPTIMIZERS: dict[str, Callable] = {"sgd": _sgd, "momentum": _momentum, "nesterov": _nesterov, "adagrad": _adagrad,
                                   "adadelta": _adadelta, "rmsprop": _rmsprop, "adam": _adam, "adamw": _adamw}


# ------------------------------------------------------------------------------------------------- schedules
@dataclass
class ScheduleArgs:
    lr: float
    steps_per_epoch: int
    epochs: int
    warmup_epochs: float = 0.0
    step_epochs: int = 10  # step decay: every this many epochs ...
    gamma: float = 0.1  # ... multiply by gamma; exponential: gamma per epoch


def _constant(a: ScheduleArgs, keras):
    return a.lr


def _step(a: ScheduleArgs, keras):
    bounds = [a.steps_per_epoch * a.step_epochs * k for k in range(1, max(1, a.epochs // max(1, a.step_epochs)) + 1)]
    values = [a.lr * a.gamma ** k for k in range(len(bounds) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)


def _exponential(a: ScheduleArgs, keras):
    return keras.optimizers.schedules.ExponentialDecay(a.lr, decay_steps=a.steps_per_epoch, decay_rate=a.gamma)


def _cosine(a: ScheduleArgs, keras):
    warmup = int(round(a.warmup_epochs * a.steps_per_epoch))
    total = max(1, a.epochs * a.steps_per_epoch - warmup)
    if warmup:
        return keras.optimizers.schedules.CosineDecay(a.lr * 0.01, total, warmup_target=a.lr, warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(a.lr, total)


SCHEDULES: dict[str, Callable] = {"constant": _constant, "step": _step, "exponential": _exponential,
                                  "cosine": _cosine, "plateau": _constant}


def make_optimizer(options: TrainOptions, steps_per_epoch: int):
    from ._tf import keras

    options.validate()
    lr = SCHEDULES[options.schedule](ScheduleArgs(options.lr, steps_per_epoch, options.epochs, options.warmup_epochs,
                                                  options.step_epochs, options.gamma), keras)
    return OPTIMIZERS[options.optimizer](lr, options.weight_decay, keras)


def make_loss(options: TrainOptions, reduction: str | None = "sum_over_batch_size"):
    from ._tf import keras

    return keras.losses.CategoricalCrossentropy(label_smoothing=options.label_smoothing, reduction=reduction)


def compile_model(model, options: TrainOptions, steps_per_epoch: int) -> None:
    from ._tf import keras

    model.compile(optimizer=make_optimizer(options, steps_per_epoch), loss=make_loss(options),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])


# -------------------------------------------------------------------------------------------------- the loop
@dataclass
class Stage:
    """One phase of training: its options and how it prepares the model (which layers train)."""

    name: str
    options: TrainOptions
    prepare: Callable[[object], None] = field(default=lambda model: None)


CHECKPOINT_NAME = "checkpoint-epoch{:04d}.keras"  # the model (and optimizer) after that epoch
BEST_NAME = "best-epoch{:04d}.weights.h5"  # the weights of the current stage's best val loss so far
_STALE = ("checkpoint-epoch*.keras", "best-epoch*.weights.h5", ".checkpoint-epoch*", ".best-epoch*",
          "checkpoint.keras", "best.weights.h5")  # the last two: names of older tltool versions


@dataclass
class LoopState:
    """Everything needed to continue after a kill: ``state.json``, written after every epoch's checkpoint."""

    stage: int = 0
    stage_epoch: int = 0
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_val_loss: float = float("inf")  # of the current stage
    best_epoch: int = 0
    best_weights: str | None = None  # file name of the current stage's best weights
    wait: int = 0
    plateau_wait: int = 0
    lr_scale: float = 1.0
    stage_stopped: bool = False  # the current stage stopped early: a resume goes on with the next stage
    stopped_early: list[str] = field(default_factory=list)  # names of the stages that stopped early
    checkpoint: str = "checkpoint.keras"  # file name of the model after the last finished epoch

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "LoopState":
        stored = read_json(path)
        if isinstance(stored.get("stopped_early"), bool):  # older state.json: one flag that ended the run
            stored["stage_stopped"], stored["stopped_early"] = stored["stopped_early"], []
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in known})


def checkpoint_path(run_dir: str | Path) -> Path | None:
    """The checkpoint ``state.json`` of ``run_dir`` names (the model after its last finished epoch), or None."""
    state_path = Path(run_dir) / "state.json"
    if not state_path.exists():
        return None
    path = Path(run_dir) / LoopState.load(state_path).checkpoint
    return path if path.exists() else None


def _remove_stale(run_dir: Path, keep: set[str | None]) -> None:
    """Delete the checkpoints and best weights that ``state.json`` no longer names (and leftover temp files)."""
    for pattern in _STALE:
        for path in run_dir.glob(pattern):
            if path.name not in keep:
                path.unlink(missing_ok=True)


class NonFiniteLoss(TltoolError):
    pass


def check_finite(loss: float | None, batch: int, lr: float) -> None:
    """Stop at once on a NaN/inf loss; ``batch`` counts from 0."""
    if loss is not None and not math.isfinite(float(loss)):
        raise NonFiniteLoss(
            f"the training loss became {float(loss)} at batch {batch + 1}: the learning rate is too high "
            f"for this model. Divide it by 10 (--lr {lr / 10:g}) and run again.")


def _callback_class():
    from ._tf import keras

    class LoopCallback(keras.callbacks.Callback):
        """Advances the progress bar; stops at once on a NaN/inf loss."""

        def __init__(self, bar: Bar, lr: float) -> None:
            super().__init__()
            self.bar, self.lr = bar, lr

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)
            check_finite((logs or {}).get("loss"), batch, self.lr)

    return LoopCallback


def current_lr(model) -> float:
    from ._tf import keras

    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


# -------------------------------------------------------------------------------- the distributed epoch
class DistributedEpoch:
    """One stage's compiled train and eval steps under a ``tf.distribute`` strategy (traced once per stage).

    Every replica computes ``sum(loss_i * class_weight_i) / global_batch`` on its share of the global batch; the
    optimizer sums the replicas' gradients, so the update is the one ``model.fit`` makes on the whole batch.
    """

    def __init__(self, model, strategy, options: TrainOptions, class_weight: dict | None) -> None:
        from ._tf import tf

        self.model, self.strategy = model, strategy
        loss_fn = make_loss(options, reduction=None)
        classes = int(model.output_shape[-1])
        weights = None if not class_weight else tf.constant(
            [float(class_weight.get(i, 1.0)) for i in range(classes)], tf.float32)
        with strategy.scope():
            if not model.optimizer.built:  # its slots must exist before the first step (created in scope)
                model.optimizer.build(model.trainable_variables)

        def sums(y, probs, per_example):
            correct = tf.cast(tf.equal(tf.argmax(probs, -1), tf.argmax(y, -1)), tf.float32)
            return tf.reduce_sum(per_example), tf.reduce_sum(correct), tf.cast(tf.shape(y)[0], tf.float32)

        def train_replica(x, y):
            context = tf.distribute.get_replica_context()
            global_n = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.shape(y)[0], tf.float32))
            with tf.GradientTape() as tape:
                probs = model(x, training=True)
                per_example = loss_fn(y, probs)
                if weights is not None:
                    per_example = per_example * tf.gather(weights, tf.argmax(y, -1))
                loss = tf.reduce_sum(per_example) / tf.maximum(global_n, 1.0)
                scaled = model.optimizer.scale_loss(loss)
            variables = model.trainable_variables
            model.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
            return sums(y, probs, per_example)

        def eval_replica(x, y):
            probs = model(x, training=False)
            return sums(y, probs, loss_fn(y, probs))

        def reduced(replica_fn):
            @tf.function(reduce_retracing=True)
            def step(batch):
                out = strategy.run(replica_fn, args=batch)
                return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in out]

            return step

        self.train_step, self.eval_step = reduced(train_replica), reduced(eval_replica)

    def run(self, train, val, bar: Bar, lr: float) -> dict:
        """Train one epoch on ``train`` and evaluate on ``val`` (batched by the global batch); Keras-style logs."""
        totals = np.zeros(3)
        for batch, data in enumerate(self.strategy.experimental_distribute_dataset(train)):
            step = np.array([float(v) for v in self.train_step(data)])
            check_finite(step[0] / max(step[2], 1.0), batch, lr)
            totals += step
            bar.update(1)
        logs = {"loss": totals[0] / max(totals[2], 1.0), "accuracy": totals[1] / max(totals[2], 1.0)}
        if val is not None:
            totals = np.zeros(3)
            for data in self.strategy.experimental_distribute_dataset(val):
                totals += np.array([float(v) for v in self.eval_step(data)])
            logs.update(val_loss=totals[0] / max(totals[2], 1.0), val_accuracy=totals[1] / max(totals[2], 1.0))
        return {k: [v] for k, v in logs.items()}


def run_stages(
    build_model: Callable[[], object],
    stages: list[Stage],
    train_data: Callable[[int], object],
    val_data: object,
    steps_per_epoch: int,
    run_dir: Path,
    class_weight: dict | None = None,
    resume: bool = False,
    strategy=None,
    resume_from: Path | None = None,
):
    """Train through ``stages``; ``train_data(epoch)`` gives that epoch's dataset (seeded by epoch, so a resumed
    run sees the same data order and augmentation as an uninterrupted one). Returns (model, LoopState).

    Early stopping is per stage: when a stage's val loss has not improved for ``early_stopping`` epochs, that stage
    ends with its best weights restored and the next stage starts (``state.stopped_early`` names the stages).

    ``strategy``: a ``tf.distribute`` strategy (None: the default one, through ``model.fit``); the datasets are then
    batched by the global batch and the strategy splits them. ``resume_from``: where the checkpoint to resume is,
    when it is not ``run_dir`` (a worker that reads the chief's run folder and writes its own scratch folder).
    """
    state_path = run_dir / "state.json"
    source = resume_from or run_dir
    scope = strategy.scope if strategy is not None else contextlib.nullcontext
    state = LoopState()
    model = None
    found = checkpoint_path(source) if resume else None
    if found is not None:
        from .models import load_keras_model

        state = LoopState.load(source / "state.json")
        with scope():  # the .keras file does not depend on the replica count: it loads under any strategy
            model = load_keras_model(found)
        say(f"resuming after epoch {state.epoch} (stage {stages[state.stage].name}, "
            f"{state.stage_epoch}/{stages[state.stage].options.epochs} done"
            + (", stopped early" if state.stage_stopped else "") + ")")
    elif resume:
        say("no checkpoint found: starting from the beginning")
    if model is None:
        with scope():
            model = build_model()

    def best_file() -> Path | None:  # this stage's best weights: written here, or by the run resumed from
        for folder in (run_dir, source):
            if state.best_weights and (folder / state.best_weights).exists():
                return folder / state.best_weights
        return None

    total_epochs = sum(s.options.epochs for s in stages)
    LoopCallback = _callback_class()
    distributed = None
    for index, stage in enumerate(stages):
        if index < state.stage or (index == state.stage and state.stage_stopped):
            continue
        options = stage.options
        if index > state.stage or state.stage_epoch == 0:  # entering a stage: set trainable layers, new optimizer
            state.stage, state.stage_epoch, state.wait, state.plateau_wait, state.lr_scale = index, 0, 0, 0, 1.0
            state.best_val_loss, state.best_epoch, state.best_weights = float("inf"), 0, None
            state.stage_stopped = False
            stage.prepare(model)
            with scope():
                compile_model(model, options, steps_per_epoch)
        if options.epochs == 0:
            continue
        if strategy is not None:
            distributed = DistributedEpoch(model, strategy, options, class_weight)
        remaining = options.epochs - state.stage_epoch
        with Bar(remaining * steps_per_epoch, f"{stage.name}") as bar:
            while state.stage_epoch < options.epochs:
                start = time.perf_counter()
                if options.schedule == "plateau":
                    with scope():
                        model.optimizer.learning_rate = options.lr * state.lr_scale
                lr = current_lr(model)
                if distributed is not None:
                    logs = distributed.run(train_data(state.epoch), val_data, bar, lr)
                else:
                    logs = model.fit(train_data(state.epoch), validation_data=val_data, epochs=1, verbose=0,
                                     class_weight=class_weight, shuffle=False,
                                     callbacks=[LoopCallback(bar, lr)]).history
                row = {"epoch": state.epoch + 1, "stage": stage.name, "lr": lr,
                       **{k: float(v[-1]) for k, v in logs.items()}, "seconds": time.perf_counter() - start}
                state.history.append(row)
                state.epoch += 1
                state.stage_epoch += 1
                improved = row.get("val_loss", float("inf")) < state.best_val_loss - 1e-4
                if improved:
                    state.best_val_loss, state.best_epoch = row["val_loss"], state.epoch
                    state.wait = state.plateau_wait = 0
                    name = BEST_NAME.format(state.epoch)
                    with atomic_path(run_dir / name, suffix=".weights.h5") as tmp:
                        model.save_weights(str(tmp))
                    state.best_weights = name
                else:
                    state.wait += 1
                    state.plateau_wait += 1
                if options.schedule == "plateau" and state.plateau_wait >= options.plateau_patience:
                    state.lr_scale *= options.plateau_factor
                    state.plateau_wait = 0
                    say(f"val loss has not improved for {options.plateau_patience} epochs: lr -> "
                        f"{options.lr * state.lr_scale:g}")
                stop = bool(options.early_stopping) and state.wait >= options.early_stopping
                say(f"epoch {state.epoch}/{total_epochs} ({escape(stage.name)}) loss {row['loss']:.4f} acc "
                    f"{row.get('accuracy', float('nan')):.3f} val_loss {row.get('val_loss', float('nan')):.4f} "
                    f"val_acc {row.get('val_accuracy', float('nan')):.3f} lr {lr:.2g} ({row['seconds']:.1f} s)"
                    + (" - early stop" if stop else ""))
                if stop:
                    state.stage_stopped = True
                    state.stopped_early.append(stage.name)
                    best = best_file()
                    if best is not None:  # the stage ends with its best weights, not its last epoch's
                        model.load_weights(str(best))
                    following = (f"; going on with stage {escape(stages[index + 1].name)}"
                                 if index + 1 < len(stages) else "")
                    say(f"early stopping in stage {escape(stage.name)}: val loss did not improve for "
                        f"{options.early_stopping} epochs"
                        + (f"; keeping the weights of epoch {state.best_epoch}" if best is not None else "")
                        + following)
                name = CHECKPOINT_NAME.format(state.epoch)
                with atomic_path(run_dir / name, suffix=".keras") as tmp:
                    model.save(str(tmp))
                state.checkpoint = name
                state.save(state_path)  # from here on a resume starts from this checkpoint
                write_history(state.history, run_dir / "history.csv")
                _remove_stale(run_dir, {state.checkpoint, state.best_weights})
                if stop:
                    break
    return model, state


def write_history(history: list[dict], target: Path) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(target, buf.getvalue())


def plot_history(history: list[dict], target: Path, title: str) -> None:
    from .plotting import pyplot, save_figure

    plt = pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, ax, label in (("loss", ax_loss, "train"), ("val_loss", ax_loss, "val"),
                           ("accuracy", ax_acc, "train"), ("val_accuracy", ax_acc, "val")):
        values = [r.get(key, np.nan) for r in history]
        ax.plot(epochs, values, marker="o", ms=3, label=label)
    stage_changes = [r["epoch"] - 0.5 for prev, r in zip(history, history[1:]) if r["stage"] != prev["stage"]]
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        for x in stage_changes:
            ax.axvline(x, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, target)
