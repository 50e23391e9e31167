"""What survives a kill: ``state.json`` (the loop state) and the checkpoint it names.

Checkpoints are consistent with ``state.json`` at every instant: epoch N's model is written as
``checkpoint-epoch000N.keras`` (temp name + rename), then ``state.json`` (atomic) names it, and only then are older
checkpoints deleted. A kill at any point leaves a ``state.json`` whose named checkpoint exists and holds exactly the
epochs it counts, so a resumed run never repeats or skips an epoch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..utils import atomic_path, read_json, write_json
from .history import write_history
from .randomness import seed_states

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


def epochs_done(run_dir: str | Path) -> int:
    """How many epochs the checkpoint of ``run_dir`` holds: where a resume of it starts (0 without one)."""
    return LoopState.load(Path(run_dir) / "state.json").epoch if checkpoint_path(run_dir) is not None else 0


def save_checkpoint(model, state: LoopState, run_dir: Path) -> None:
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
