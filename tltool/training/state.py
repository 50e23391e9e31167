"""What survives a kill: ``state.json`` (the loop state) and the checkpoint it names.

Checkpoints are consistent with ``state.json`` at every instant: epoch N's model is written as
``checkpoint-epoch000N.keras`` (temp name + rename), then ``state.json`` (atomic) names it, and only then are older
checkpoints deleted. A kill at any point leaves a ``state.json`` whose named checkpoint exists and holds exactly the
epochs it counts, so a resumed run never repeats or skips an epoch.
"""
from __future__ import annotations

import math
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..errors import TltoolError
from ..utils import atomic_path, read_json_object, write_json
from .history import write_history
from .randomness import restore_seed_states, seed_states

if TYPE_CHECKING:
    import keras

CHECKPOINT_NAME = "checkpoint-epoch{:04d}.keras"  # the model (and optimizer) after that epoch
BEST_NAME = "best-epoch{:04d}.weights.h5"  # the weights of the current stage's best val loss so far
_STALE = ("checkpoint-epoch*.keras", "best-epoch*.weights.h5", ".checkpoint-epoch*", ".best-epoch*",
          "checkpoint.keras", "best.weights.h5")  # the last two: names of older tltool versions


@dataclass
class LoopState:
    """Everything needed to continue after a kill: ``state.json``, written after every epoch's checkpoint.

    The policies' counters (tltool.training.policies) are stored here under the names they have always had, so a
    run killed by an older tltool resumes with this one.
    """

    stage: int = 0
    stage_epoch: int = 0
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_val_loss: float = float("inf")  # of the current stage (BestTracker)
    best_epoch: int = 0
    best_weights: str | None = None  # file name of the current stage's best weights (BestWeights)
    wait: int = 0  # EarlyStopping
    plateau_wait: int = 0  # ReduceLROnPlateau
    lr_scale: float = 1.0
    stage_stopped: bool = False  # the current stage stopped early: a resume goes on with the next stage
    stopped_early: list[str] = field(default_factory=list)  # names of the stages that stopped early
    checkpoint: str = "checkpoint.keras"  # file name of the model after the last finished epoch
    seed_states: list[list[int]] = field(default_factory=list)  # the dropout RNGs after that epoch (randomness.py)

    def save(self, path: Path) -> None:
        write_json(path, asdict(self), durable=True)

    @classmethod
    def load(cls, path: Path, plan: Sequence[int] | None = None) -> "LoopState":
        """Read and check ``state.json`` (it may be damaged or hostile): any wrong type or value is a
        :class:`TltoolError` naming the file. ``plan``: the epochs of each stage of the run, to check the counters
        against (a resume)."""
        path = Path(path)
        stored = read_json_object(path, lambda problem: _bad_state(path, problem))
        if isinstance(stored.get("stopped_early"), bool):  # older state.json: one flag that ended the run
            stored["stage_stopped"], stored["stopped_early"] = stored["stopped_early"], []
        known = {f.name for f in fields(cls)}
        stored = {k: v for k, v in stored.items() if k in known}
        for name, value in stored.items():
            problem = _CHECKS[name](value)
            if problem:
                _bad_state(path, f'"{name}" {problem} (it is {_short(value)})')
        state = cls(**stored)
        state._check_counters(path)
        if plan is not None:
            state._check_plan(path, list(plan))
        return state

    def _check_counters(self, path: Path) -> None:
        """What the fields must agree on whatever the run: one history row per epoch, counters within the epochs."""
        if len(self.history) != self.epoch:
            _bad_state(path, f'has {len(self.history)} history rows for "epoch" {self.epoch} (one per epoch)')
        if [row["epoch"] for row in self.history] != list(range(1, self.epoch + 1)):
            _bad_state(path, "has history rows that are not epochs 1, 2, ... in order")
        for name in ("stage_epoch", "best_epoch"):
            if getattr(self, name) > self.epoch:
                _bad_state(path, f'"{name}" is {getattr(self, name)}, more than "epoch" ({self.epoch})')

    def _check_plan(self, path: Path, plan: list[int]) -> None:
        """The counters against the run's stages (``plan``: each stage's epochs): a state.json naming epochs the run
        does not have would train the wrong ones, or report nonsense."""
        if self.stage >= len(plan):
            _bad_state(path, f'"stage" is {self.stage}, but the run has {len(plan)} stage(s) (0 to {len(plan) - 1})')
        if self.stage_epoch > plan[self.stage]:
            _bad_state(path, f'"stage_epoch" is {self.stage_epoch}, but stage {self.stage} of the run has '
                             f"{plan[self.stage]} epoch(s)")
        most = sum(plan[:self.stage]) + self.stage_epoch
        if self.epoch > most:
            _bad_state(path, f'"epoch" is {self.epoch}, but the run plans {sum(plan)} epoch(s) in all, at most {most} '
                             f"by stage {self.stage} epoch {self.stage_epoch}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bad_state(path: Path, problem: str):
    raise TltoolError(f"{path} {problem}: it is damaged or was not written by tltool. Start a new run, or delete "
                      f"the state.json to start this one over.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value) -> str | None:
    return None if _is_int(value) and value >= 0 else "must be a whole number of at least 0"


def plain_name(value: object) -> bool:
    """A file name alone: no folder part, not ``.``/``..``, not absolute (so it can only name a file in the run)."""
    return (isinstance(value, str) and value not in ("", ".", "..") and "/" not in value and "\\" not in value
            and "\0" not in value and not os.path.isabs(value)
            and not any(sep and sep in value for sep in (os.sep, os.altsep)))


def _history(value) -> str | None:
    if not isinstance(value, list):
        return "must be a list of epochs"
    for row in value:
        if not (isinstance(row, dict) and _is_int(row.get("epoch")) and isinstance(row.get("stage"), str)
                and all(isinstance(v, str) or _is_number(v) for v in row.values())):
            return 'must be a list of objects with an "epoch", a "stage" and numbers'
    return None


_CHECKS = {
    "stage": _count, "stage_epoch": _count, "epoch": _count, "best_epoch": _count, "wait": _count,
    "plateau_wait": _count,
    "history": _history,
    "best_val_loss": lambda v: None if _is_number(v) and not math.isnan(v) else "must be a number",
    "lr_scale": lambda v: None if _is_number(v) and math.isfinite(v) and v > 0 else "must be a number above 0",
    "best_weights": lambda v: None if v is None or plain_name(v) else "must be a file name in the run folder",
    "stage_stopped": lambda v: None if isinstance(v, bool) else "must be true or false",
    "stopped_early": lambda v: (None if isinstance(v, list) and all(isinstance(x, str) for x in v)
                                else "must be a list of stage names"),
    "checkpoint": lambda v: None if plain_name(v) else "must be a file name in the run folder",
    "seed_states": lambda v: (None if isinstance(v, list) and all(
        isinstance(s, list) and len(s) == 2 and all(_is_int(x) and -2 ** 63 <= x < 2 ** 64 for x in s) for s in v)
        else "must be a list of pairs of whole numbers"),
}


def _run_file(run_dir: Path, name: str, what: str, state_path: Path) -> Path | None:
    """``run_dir / name`` when it is a regular file of the run folder, None when there is none; a link or anything
    that is not a regular file is a TltoolError (a resume reads nothing outside the run folder)."""
    path = run_dir / name
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TltoolError(f"{path} (the {what} {state_path} names) cannot be read: {e.strerror}. Start a new run, "
                          "or delete the state.json to start this one over.") from None
    if not stat.S_ISREG(mode):
        raise TltoolError(f"{path} (the {what} {state_path} names) is not a regular file (a link, a folder or a "
                          "device): a resume loads only the run's own files. Start a new run, or delete the "
                          "state.json to start this one over.")
    return path


def checkpoint_path(run_dir: str | Path, plan: Sequence[int] | None = None) -> Path | None:
    """The checkpoint ``state.json`` of ``run_dir`` names (the model after its last finished epoch), or None.

    Only a regular file of ``run_dir`` itself (named by a plain file name, not a link) is a checkpoint; a
    ``state.json`` naming anything else is a TltoolError, as is one that is damaged (``plan``: see
    :meth:`LoopState.load`).
    """
    run_dir = Path(run_dir)
    state_path = run_dir / "state.json"
    if not os.path.lexists(state_path):
        return None
    state = LoopState.load(state_path, plan)
    if state.best_weights:
        _run_file(run_dir, state.best_weights, "best weights", state_path)
    return _run_file(run_dir, state.checkpoint, "checkpoint", state_path)


def load_checkpoint(path: Path, state: LoopState, state_path: Path) -> keras.Model:
    """The model of checkpoint ``path`` with the random state ``state`` stored for it; a file that does not load
    (truncated, damaged) is a TltoolError that names it."""
    from ..keras_files import load_keras_model

    try:
        model = load_keras_model(path)
    except Exception as e:  # Keras says "File not found" for a truncated zip, which misleads
        raise TltoolError(f"{path}: the checkpoint {state_path} names cannot be loaded; it is damaged or truncated "
                          f"({type(e).__name__}). Delete the state.json to start this run over (or start a new run)."
                          ) from None
    try:
        restore_seed_states(model, state.seed_states)
    except Exception as e:
        raise TltoolError(f'{state_path}: its "seed_states" do not fit the checkpoint {path.name} '
                          f"({type(e).__name__}): it is damaged. Start a new run, or delete the state.json to start "
                          "this one over.") from None
    return model


def epochs_done(run_dir: str | Path) -> int:
    """How many epochs the checkpoint of ``run_dir`` holds: where a resume of it starts (0 without one)."""
    return LoopState.load(Path(run_dir) / "state.json").epoch if checkpoint_path(run_dir) is not None else 0


def save_checkpoint(model: keras.Model, state: LoopState, run_dir: Path) -> None:
    """Write the model after ``state.epoch``, then the state that names it (with the random state the model file
    does not keep), then drop what it no longer names."""
    name = CHECKPOINT_NAME.format(state.epoch)
    with atomic_path(run_dir / name, suffix=".keras", durable=True) as tmp:
        model.save(str(tmp))
    state.checkpoint, state.seed_states = name, seed_states(model)
    state.save(run_dir / "state.json")  # from here on a resume starts from this checkpoint
    write_history(state.history, run_dir / "history.csv")
    _remove_stale(run_dir, {state.checkpoint, state.best_weights})


def _remove_stale(run_dir: Path, keep: set[str | None]) -> None:
    """Delete the checkpoints and best weights that ``state.json`` no longer names (and leftover temp files)."""
    for pattern in _STALE:
        for path in run_dir.glob(pattern):
            if path.name not in keep:
                path.unlink(missing_ok=True)
