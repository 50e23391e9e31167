"""Matplotlib for every figure tltool writes: the Agg backend (no display needed) and atomic PNG writes.

A leaf module: reports, training curves, visualisations and the augmentation preview all draw through it.
"""
from __future__ import annotations

from pathlib import Path

from .utils import atomic_path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, target: Path) -> None:
    """Write ``fig`` as a PNG (to a temporary name, then renamed) and close it."""
    plt = pyplot()
    with atomic_path(target, suffix=".png.tmp") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
