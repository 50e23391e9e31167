"""Optimizers and learning-rate schedules by name (registries keyed by the ``--optimizer``/``--schedule`` values),
the loss, and compiling a model with them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..configs import TrainOptions

if TYPE_CHECKING:
    import keras


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
    # the rate at a step is values[i] while step <= bounds[i], and the first batch of an epoch is step
    # steps_per_epoch * epoch: a bound at that step kept the old rate for one more batch
    bounds = [a.steps_per_epoch * a.step_epochs * k - 1
              for k in range(1, max(1, a.epochs // max(1, a.step_epochs)) + 1)]
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


# "plateau" starts constant; the ReduceLROnPlateau policy lowers it (tltool.training.policies)
SCHEDULES: dict[str, Callable] = {"constant": _constant, "step": _step, "exponential": _exponential,
                                  "cosine": _cosine, "plateau": _constant}


def make_optimizer(options: TrainOptions, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    from .._tf import keras

    options.validate()
    lr = SCHEDULES[options.schedule](ScheduleArgs(options.lr, steps_per_epoch, options.epochs, options.warmup_epochs,
                                                  options.step_epochs, options.gamma), keras)
    return OPTIMIZERS[options.optimizer](lr, options.weight_decay, keras)


def make_loss(options: TrainOptions,
              reduction: str | None = "sum_over_batch_size") -> keras.losses.CategoricalCrossentropy:
    from .._tf import keras

    return keras.losses.CategoricalCrossentropy(label_smoothing=options.label_smoothing, reduction=reduction)


def compile_model(model: keras.Model, options: TrainOptions, steps_per_epoch: int) -> None:
    from .._tf import keras

    model.compile(optimizer=make_optimizer(options, steps_per_epoch), loss=make_loss(options),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])


def current_lr(model: keras.Model) -> float:
    """The rate the next batch trains at."""
    from .._tf import keras

    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def last_batch_lr(model: keras.Model) -> float:
    """The rate the last batch trained at: a schedule read at the optimizer's step count gives the next batch's,
    which after a step schedule's last batch of a period is already the lowered one (an epoch said it ended at a
    rate none of its batches used)."""
    from .._tf import keras

    optimizer = model.optimizer
    schedule = getattr(optimizer, "_learning_rate", None)
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        return current_lr(model)
    step = max(int(keras.ops.convert_to_numpy(optimizer.iterations)) - 1, 0)
    return float(keras.ops.convert_to_numpy(schedule(step)))
