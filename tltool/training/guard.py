"""The guards: a NaN/inf training loss stops the run at once, and so does a training loss that has gone back to
worse than guessing, each with what to do about it."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..errors import TltoolError
from ..progress import Bar

if TYPE_CHECKING:
    import keras


class NonFiniteLoss(TltoolError):
    pass


class DivergedLoss(TltoolError):
    pass


def check_finite(loss: float | None, batch: int, lr: float) -> None:
    """Stop at once on a NaN/inf loss; ``batch`` counts from 0."""
    if loss is not None and not math.isfinite(float(loss)):
        raise NonFiniteLoss(
            f"the training loss became {float(loss)} at batch {batch + 1}: the learning rate is too high "
            f"for this model. Divide it by 10 (--lr {lr / 10:g}) and run again.")


def guard_callback(bar: Bar, lr: float) -> keras.callbacks.Callback:
    """A Keras callback for ``model.fit`` that advances ``bar`` and checks every batch's loss."""
    from .._tf import keras

    class GuardCallback(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            bar.update(1)
            check_finite((logs or {}).get("loss"), batch, lr)

    return GuardCallback()


def check_not_diverged(history: list[dict], num_classes: int, stage: str, lr: float) -> None:
    """Stop when two epochs in a row have a training loss above a uniform guess's (log C) after the run had learned
    (a loss below half of that): the model now predicts worse than chance, and training on does not bring it back.
    One such epoch alone may be noise (a tiny run takes one or two steps an epoch).

    No NaN need appear: on flowers, SGD with momentum at 0.01 took the unfrozen blocks from a loss of 0.60 to 1.74
    and 1.72 (log 5 = 1.61) and ended at chance (0.210 on flowers-tune) eight epochs later.
    """
    losses = [row["loss"] for row in history if "loss" in row]
    if num_classes < 2 or len(losses) < 3:
        return
    chance, best = math.log(num_classes), min(losses[:-2])
    if best < chance / 2 and min(losses[-2:]) > chance:
        epoch = history[-1]["epoch"]
        raise DivergedLoss(
            f"training diverged (stage {stage}): the training loss was {losses[-2]:.3f} and {losses[-1]:.3f} in "
            f"epochs {epoch - 1} and {epoch}, after {best:.3f} earlier, above the {chance:.3f} of a uniform guess "
            f"over {num_classes} classes: the model now predicts worse than chance. The learning rate of this "
            f"stage ({lr:g}) is too high for it: divide it by 10 and run again.")
