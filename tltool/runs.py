"""Run directories: where every command writes its report, model and settings."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

from .errors import TltoolError
from .outputs import check_output_dir, check_output_name, claim_output_dir, emptied_output_dir, output_kind

DEFAULT_RUNS_ROOT = Path("runs")
RESUMABLE = ("state.json", "refit/state.json")  # what a killed fit leaves for --resume to go on from


def slug(text: str, max_length: int = 60, fallback: str = "run") -> str:
    """``text`` as a safe file-name part: letters, digits, ``.``, ``_`` and ``-``; other runs become ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")[:max_length] or fallback


def _replaceable_unforced(out: str | Path, force: bool) -> bool:
    """Whether an earlier run in ``out`` may be replaced without ``--force``: only an unfinished one (no
    ``metrics.json``) that ``--resume`` could not finish; one it could (its checkpoints are minutes or hours of
    training) is refused unless ``force``."""
    out = Path(out)
    check_output_name(out)
    if (out / "metrics.json").exists():
        return False
    if not force and output_kind(out) == "run" and any(os.path.lexists(out / name) for name in RESUMABLE):
        raise TltoolError(f"--out {out}: holds an unfinished run with checkpoints that `--resume {out}` can finish; "
                          "resume it, choose another folder, or pass --force to replace it.")
    return True


def check_run_dir(out: str | Path | None, force: bool = False) -> None:
    """What :func:`new_run_dir` would refuse, refused now, before a command's work (nothing is created)."""
    if out is not None:
        check_output_dir(out, "run", reuse=_replaceable_unforced(out, force), force=force)


def new_run_dir(kind: str, *parts: str, out: str | Path | None = None, force: bool = False) -> Path:
    """``out`` if given (refusing to overwrite an earlier run unless ``force``), else ``runs/KIND-PARTS-TIME``."""
    if out is not None:  # an unfinished run that cannot be resumed may be replaced; any other needs force
        claimed = claim_output_dir(out, "run", reuse=_replaceable_unforced(out, force), force=force)
        return emptied_output_dir(claimed, "run")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = DEFAULT_RUNS_ROOT / "-".join(slug(p) for p in (kind, *parts, stamp) if p)
        n = 1
        while path.exists():
            n += 1
            path = path.with_name(f"{path.name.rsplit('_', 1)[0] if n > 2 else path.name}_{n}")
    return claim_output_dir(path, "run")
