"""Interrupting a training run in-process, as a kill right after a checkpoint would."""
from __future__ import annotations

import contextlib
from typing import Iterator

from tltool.training import LoopState


class Killed(Exception):
    """Raised by :func:`killed_after_epoch` in place of a SIGKILL."""


@contextlib.contextmanager
def killed_after_epoch(epoch: int) -> Iterator[None]:
    """Inside the block, the training loop raises :class:`Killed` right after ``state.json`` records ``epoch``: the
    run folder is left as a kill at that instant leaves it."""
    save = LoopState.save

    def save_then_die(state: LoopState, path) -> None:
        save(state, path)
        if state.epoch == epoch:
            raise Killed

    LoopState.save = save_then_die
    try:
        yield
    finally:
        LoopState.save = save
