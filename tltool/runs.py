"""Run directories: where every command writes its report, model and settings."""
from __future__ import annotations

import functools
import os
import re
import time
from pathlib import Path
from typing import Callable, ParamSpec, Sequence, TypeVar

from .errors import TltoolError
from .outputs import (MARKER, check_not_in_use, check_output_dir, check_output_name, claim_output_dir,
                      emptied_output_dir, finished_state, held_output_dirs, hold_output_dir, hold_scope, mark_finished,
                      output_kind, refuse_added_entries, release_output_dirs, remove_killed_staging)
from .utils import remove_temp_leftovers

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_RUNS_ROOT = Path("runs")
EXPORT_FOLDER = "export"  # RUN/export/FMT: where `tltool export RUN` writes by default
# what a killed fit leaves for --resume to go on from (a cross-validation: a finished or a started fold)
RESUMABLE = ("state.json", "refit/state.json", "fold-*/held_out.json", "fold-*/run/state.json")


def slug(text: str, max_length: int = 60, fallback: str = "run") -> str:
    """``text`` as a safe file-name part: letters, digits, ``.``, ``_`` and ``-``; other runs become ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")[:max_length] or fallback


def _replaceable_unforced(out: str | Path, force: bool) -> bool:
    """Whether an earlier run in ``out`` may be replaced without ``--force``: only an unfinished one (its command
    did not return; for a run of a tltool that did not mark that at the claim, no ``metrics.json``) that
    ``--resume`` could not finish; one it could (its checkpoints are
    minutes or hours of training) is refused unless ``force``. (A finished compare, learning curve or inspect
    of an older tltool wrote no metrics.json: they were replaced without --force.)"""
    out = Path(out)
    check_output_name(out)
    if _finished(out):
        return False
    if not force and resumable_run(out):
        raise TltoolError(f"--out {out}: holds an unfinished run with checkpoints that `--resume {out}` can finish; "
                          "resume it, choose another folder, or pass --force to replace it.")
    return True


def _finished(out: Path) -> bool:
    finished = finished_state(out)  # None: an older tltool's run, finished if it has its metrics.json
    return bool(finished or (finished is None and (out / "metrics.json").exists()))


def resumable_run(out: str | Path) -> bool:
    """Whether ``out`` holds an unfinished run that ``--resume`` can finish (its split and checkpoints: minutes or
    hours of training; older runs have no split.csv)."""
    out = Path(out)
    return (output_kind(out) == "run" and not _finished(out) and (out / "split.csv").exists()
            and any(_found(out, pattern) for pattern in RESUMABLE))


def _replaceable(out: str | Path, force: bool) -> bool:
    """Whether ``out`` may be taken without ``force`` (:func:`_replaceable_unforced`); a run that holds exports is
    refused here already without ``force``, naming them: finished, or not (an export of a killed run was deleted
    with it by a plain re-run)."""
    reuse = _replaceable_unforced(out, force)
    if not force:
        _refuse_replacing_exports(out)
    return reuse


def _refuse_replacing_exports(out: str | Path) -> None:
    """The refusal to replace a finished run without ``--force``, naming the exports inside it (``RUN/export/FMT``):
    ``--force`` deletes them with the run. Files the user added there (a ``client.py``) are named first."""
    out = Path(out)
    if output_kind(out) == "run":
        refuse_added_entries(out, "run", force=False)  # the user's files first: --force would not delete them
    exports = sorted(p.name for p in (out / EXPORT_FOLDER).iterdir()) if (out / EXPORT_FOLDER).is_dir() else []
    if exports and output_kind(out) == "run":
        named = ", ".join(f"{EXPORT_FOLDER}/{name}" for name in exports[:3]) + (" ..." if len(exports) > 3 else "")
        raise TltoolError(f"--out {out}: already holds an earlier tltool run with its exports inside ({named}), "
                          "which --force deletes with it; choose another folder, or move what you keep out of it "
                          "and pass --force to replace it.")


def _found(folder: Path, pattern: str) -> bool:
    return next(folder.glob(pattern), None) is not None if "*" in pattern else os.path.lexists(folder / pattern)


def check_run_dir(out: str | Path | None, force: bool = False, reads: Sequence[object] = (),
                  kind: str | None = None) -> None:
    """What :func:`new_run_dir` would refuse, refused now, before a command's work (nothing is created).
    ``reads``: the folders the command reads (a run it evaluates or compares); ``out`` may not be one of them.
    ``kind``: the run's, as :func:`new_run_dir` is given it (a report's may not replace a trained model)."""
    if out is not None:
        check_out_not_read(out, reads)
        check_not_in_use(out)  # first: a run in training is not one to resume or replace
        if kind is not None and force:
            _refuse_replacing_a_model(out, kind)
        check_output_dir(out, "run", reuse=_replaceable(out, force), force=force)


TRAINING_KINDS = ("linear", "finetune", "scratch", "finetune-cv")  # the runs that may replace a trained model


def _refuse_replacing_a_model(out: str | Path, kind: str) -> None:
    """``viz filters --out PROBE_RUN --force`` (or learning-curve, compare, an evaluation...) deleted the trained
    model of the run there for a report: --force replaces a trained run only with another training."""
    out = Path(out)
    if kind in TRAINING_KINDS or output_kind(out) != "run":
        return
    if (out / "model.json").is_file() or _found(out, "fold-*/run/model.json") or resumable_run(out):
        raise TltoolError(f"--out {out}: holds a trained model (model.json, a cross-validation's fold models or a "
                          f"training's checkpoints), which --force would delete for this {kind} report (only a "
                          "training replaces a trained run); choose another folder.")


def check_out_not_read(out: str | Path, reads: Sequence[object]) -> None:
    """Refuse an ``--out`` that is, or holds, a folder the command reads: `evaluate RUN DATA --out RUN --force`
    replaced the model it had just evaluated with the evaluation's report (and `compare A B --out A --force` run A
    with the comparison), so the run was gone. Entries of ``reads`` that are not paths (a Dataset) are skipped."""
    target = os.path.realpath(out)
    for source in reads:
        if not isinstance(source, (str, os.PathLike)):
            continue
        real = os.path.realpath(source)
        if real == target or real.startswith(target.rstrip(os.sep) + os.sep):
            raise TltoolError(f"--out {out}: holds {source}, which this command reads; its report would replace "
                              "it (--force or not): choose another folder.")


def new_run_dir(kind: str, *parts: str, out: str | Path | None = None, force: bool = False) -> Path:
    """``out`` if given (refusing to overwrite an earlier run unless ``force``), else ``runs/KIND-PARTS-TIME``.

    The folder is held (:func:`hold_run_dir`): a run another command is writing is refused, ``force`` or not. Before,
    a run in its first epoch (no ``metrics.json`` or ``state.json`` yet) looked abandoned and was replaced under it."""
    if out is not None:  # an unfinished run that cannot be resumed may be replaced; any other needs force
        if force:
            _refuse_replacing_a_model(out, kind)
        claimed = claim_output_dir(out, "run", reuse=_replaceable(out, force), force=force)
        hold_output_dir(claimed)
        return emptied_output_dir(claimed, "run", hold=True)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = DEFAULT_RUNS_ROOT / "-".join(slug(p) for p in (kind, *parts, stamp) if p)
        n = 1
        while path.exists():
            n += 1
            path = path.with_name(f"{path.name.rsplit('_', 1)[0] if n > 2 else path.name}_{n}")
    return hold_run_dir(claim_output_dir(path, "run"))


def hold_run_dir(run_dir: Path) -> Path:
    """``run_dir``, locked against other tltool commands while this one writes it (a resume too), until the
    function marked :func:`writes_runs` that made it returns, or this process ends. Held, it is written by no other
    process: the temporary files a killed command left there (``--resume`` after a kill mid-checkpoint) are removed,
    and the staging folders of killed exports into the run (each under its own lock, so a live export keeps its)."""
    hold_output_dir(run_dir)
    if os.path.realpath(run_dir) in held_output_dirs():  # locked (not on a file system without locks)
        remove_temp_leftovers(run_dir, recursive=True, enter=_part_of_the_run)
        for folder in (run_dir, run_dir / EXPORT_FOLDER):
            remove_killed_staging(folder, "export")
    return run_dir


def _part_of_the_run(folder: Path) -> bool:
    """A sub-folder the run's own command writes (refit/, a cross-validation's fold-N/), not an output claimed on
    its own (marked: an export in RUN/export/FMT or its staging folder, a fold's run, a viz --out inside the run):
    another command may be writing that one now, and its own command clears what a kill left there."""
    return not os.path.lexists(folder / MARKER)


def writes_runs(function: Callable[P, R] | None = None, *,
                finished: bool = True) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a library function that makes or resumes run folders: the ones it holds are marked finished when it
    returns (``finished=False``: a picture drawn again in place without ``--force``, the augmentation preview), and
    let go when it returns or fails, so a notebook that ran it can resume the run from a terminal."""
    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def holding(*args: P.args, **kwargs: P.kwargs) -> R:
            with hold_scope() as taken:
                try:
                    result = function(*args, **kwargs)
                    for run_dir in taken if finished else ():
                        mark_finished(run_dir)
                    return result
                finally:  # failed, interrupted or a picture: its files were listed as it wrote them
                    release_output_dirs(only=taken)
        return holding
    return decorate if function is None else decorate(function)
