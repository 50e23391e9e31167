"""Drawing helpers shared by the viz commands: tile mosaics, heat-map overlays, thumbnails."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadImageError
from ..images import load_image
from ..plotting import pyplot, save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["pyplot", "save_figure", "grid_shape", "mosaic", "rescale_to_unit", "overlay_heat", "show_tiles",
           "thumbnail"]


def grid_shape(n: int, max_cols: int = 16) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for ``n`` tiles, at most ``max_cols`` wide."""
    cols = max(1, min(max_cols, math.ceil(math.sqrt(n))))
    return max(1, math.ceil(n / cols)), cols


BACKGROUND = (0.82, 0.88, 0.94)  # between tiles: light blue-grey, so white and black tiles both stand out


def rescale_to_unit(a: np.ndarray, axis: int | tuple[int, ...] | None = None, constant: float = 0.5) -> np.ndarray:
    """Scale to 0..1 (over ``axis``); a constant array (a dead activation map) becomes ``constant``."""
    a = np.asarray(a, dtype=np.float32)
    lo, hi = a.min(axis=axis, keepdims=True), a.max(axis=axis, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (a - lo) / np.where(span > 0, span, 1), constant).astype(np.float32)


def mosaic(tiles: np.ndarray, cols: int, pad: int = 1, fill: float = np.nan) -> np.ndarray:
    """Lay ``tiles`` ``(N, h, w[, 3])`` out row by row, ``cols`` wide, ``pad`` pixels of ``fill`` between them."""
    tiles = np.asarray(tiles, dtype=np.float32)
    n, h, w = tiles.shape[:3]
    rows = max(1, math.ceil(n / cols))
    shape = (rows * (h + pad) + pad, cols * (w + pad) + pad) + tiles.shape[3:]
    canvas = np.full(shape, fill, dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top:top + h, left:left + w] = tile
    return canvas


def show_tiles(ax: Axes, picture: np.ndarray, cmap: str | None = None) -> None:
    """Draw a :func:`mosaic` (NaN between tiles) on ``ax``, the gaps in :data:`BACKGROUND`."""
    plt = pyplot()
    if picture.ndim == 3:
        picture = np.where(np.isnan(picture), np.asarray(BACKGROUND, np.float32), picture)
        ax.imshow(picture, interpolation="nearest", vmin=0, vmax=1)
    else:
        colours = plt.get_cmap(cmap or "gray").copy()
        colours.set_bad(BACKGROUND)
        ax.imshow(picture, cmap=colours, interpolation="nearest", vmin=0, vmax=1)
    ax.set_axis_off()


def overlay_heat(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """Blend a 0..1 heat map (any size; resized bilinearly) over an RGB uint8 image."""
    from PIL import Image

    plt = pyplot()
    h, w = image.shape[:2]
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))
    colours = plt.get_cmap(cmap)(np.clip(heat, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * colours, 0, 255).astype(np.uint8)


def thumbnail(path: str | Path, size: int) -> np.ndarray | None:
    """A ``size`` px centre crop of an image file through the shared decode function, or None if unreadable."""
    try:
        return load_image(path, size)
    except BadImageError:
        return None
