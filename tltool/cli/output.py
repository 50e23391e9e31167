"""What the commands that train print at the end of a run, written once."""
from __future__ import annotations

import click

from ..stats import format_proportion


def echo_tta(metrics: dict, split: str = "val") -> None:
    """One line per test-time augmentation in a run's metrics (``metrics.json``'s ``tta``), after the plain
    accuracy's line of the same ``split``."""
    for name, tta in (metrics.get("tta") or {}).items():
        click.echo(f"{split} accuracy with TTA {name} {format_proportion(tta['accuracy'])}")
