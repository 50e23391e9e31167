"""The non-finite guard: a NaN/inf training loss stops the run at once with what to do about it."""
from __future__ import annotations

import math

from ..errors import TltoolError
from ..progress import Bar


class NonFiniteLoss(TltoolError):
    pass


def check_finite(loss: float | None, batch: int, lr: float) -> None:
    """Stop at once on a NaN/inf loss; ``batch`` counts from 0."""
    if loss is not None and not math.isfinite(float(loss)):
        raise NonFiniteLoss(
            f"the training loss became {float(loss)} at batch {batch + 1}: the learning rate is too high "
            f"for this model. Divide it by 10 (--lr {lr / 10:g}) and run again.")


def guard_callback(bar: Bar, lr: float):
    """A Keras callback for ``model.fit`` that advances ``bar`` and checks every batch's loss."""
    from .._tf import keras

    class GuardCallback(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            bar.update(1)
            check_finite((logs or {}).get("loss"), batch, lr)

    return GuardCallback()
