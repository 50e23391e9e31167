"""Matplotlib for every figure tltool writes: the Agg backend (no display needed) and atomic PNG writes.

A leaf module: reports, training curves, visualisations and the augmentation preview all draw through it.
"""
from __future__ import annotations

import contextlib
import shutil
import zlib
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from .utils import atomic_path, cache_dir, open_regular, sha256_json

if TYPE_CHECKING:
    from types import ModuleType

    from matplotlib.figure import Figure

FIGURE_CACHE_FORMAT = 1


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Figure, target: Path) -> None:
    """Write ``fig`` as a PNG (to a temporary name, then renamed) and close it."""
    plt = pyplot()
    with atomic_path(target, suffix=".png.tmp") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_intact(data: bytes) -> bool:
    """``data`` is a whole PNG: its signature, then chunks whose checksums hold, up to ``IEND`` at its very end."""
    at = len(PNG_SIGNATURE)
    if not data.startswith(PNG_SIGNATURE):
        return False
    while at + 12 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        end = at + 12 + length
        if end > len(data) or zlib.crc32(data[at + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return False
        if data[at + 4:at + 8] == b"IEND":
            return end == len(data)
        at = end
    return False


def figure_cache_path(key: dict) -> Path:
    """Where the PNG drawn from ``key`` (everything the picture shows) is kept, with matplotlib's version."""
    digest = sha256_json({**key, "matplotlib": version("matplotlib"), "format": FIGURE_CACHE_FORMAT})
    return cache_dir() / "figures" / f"v{FIGURE_CACHE_FORMAT}" / digest[:2] / f"{digest}.png"


def cached_figure(target: Path, key: dict, draw: Callable[[], object]) -> bool:
    """Write the figure ``draw()`` returns to ``target``, or copy the PNG drawn from the same ``key`` before.

    A report repeated on cached features (``tltool probe`` again) shows the same pictures: importing matplotlib
    and drawing its two figures cost about 1 s of a 2.6 s run (measured on 2 cores), a copy costs milliseconds.
    ``key`` must hold everything the picture depends on. Returns whether the cache answered. A cache that
    cannot be read or written costs speed, never a figure.
    """
    stored = figure_cache_path(key)
    with contextlib.suppress(OSError), open_regular(stored, follow_links=False) as f:
        drawn = f.read()
        if png_intact(drawn):  # a damaged one (a cut copy, a full disk) was copied into reports as it was
            with atomic_path(target, suffix=".png.tmp") as tmp:
                tmp.write_bytes(drawn)
            return True
    save_figure(draw(), target)
    with contextlib.suppress(OSError), atomic_path(stored, suffix=".png.tmp") as tmp:
        shutil.copyfile(target, tmp)
    return False
