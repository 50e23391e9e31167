"""What the commands that train print at the end of a run, written once."""
from __future__ import annotations

import click


def echo_tta(metrics: dict) -> None:
    """One line per test-time augmentation in a run's metrics (``metrics.json``'s ``tta``)."""
    for name, tta in (metrics.get("tta") or {}).items():
        acc = tta["accuracy"]
        click.echo(f"val accuracy with TTA {name} {acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] "
                   f"(n={acc['n']})")
