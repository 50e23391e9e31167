"""The bundled demo dataset: photos-like renderings of simple shapes, made by code so the repo ships no one
else's images. ``tltool data make-sample OUT --per-class 40 --seed 0`` renders ``data/shapes`` again from its seed
(the same images) into OUT, a new or empty folder.

The output folder is claimed as tltool's ``sample`` (see :mod:`tltool.outputs`): a folder tltool did not make is
never written into, and an earlier sample is replaced only with ``force``, whole, so no image of it is left over.
The sample is built beside the folder under a hidden name and renamed into place when complete."""
from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .outputs import claim_output_dir, holds_no_output, staged_output
from .settings import check_range

SHAPES = ("circle", "square", "triangle", "star")
KIND = "sample"  # the output kind of tltool.outputs that a made sample's folder is marked with


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        corners, radii = 4, [r]
    elif kind == "triangle":
        corners, radii = 3, [r]
    else:  # star
        corners, radii = 10, [r, r * 0.45]
    return [(cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / corners),
             cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / corners)) for i in range(corners)]


def render_shape(kind: str, rng: random.Random, size: int = 128) -> Image.Image:
    """One image: a textured background (gradient + noise + clutter) and one filled, rotated shape."""
    nprng = np.random.default_rng(rng.randrange(2**32))
    c0, c1 = nprng.integers(0, 256, 3), nprng.integers(0, 256, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    background = (c0 * (1 - t) + c1 * t) * np.ones((size, size, 3))
    background += nprng.normal(0, rng.uniform(5, 25), (size, size, 3))
    im = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.randint(0, 4)):  # clutter lines so the shape is not the only edge
        draw.line([(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(2)],
                  fill=tuple(int(v) for v in nprng.integers(0, 256, 3)), width=rng.randint(1, 3))
    r = rng.uniform(0.18, 0.38) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    colour = tuple(int(v) for v in nprng.integers(0, 256, 3))
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, rng.uniform(0, 2 * math.pi)), fill=colour)
    return im.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))


def make_shapes_dataset(out: str | Path, per_class: int = 40, size: int = 128, seed: int = 0,
                        force: bool = False) -> Path:
    """Write ``out/<shape>/<shape>_NNN.jpg``; the same seed gives the same images.

    ``out`` must be new, empty, or (with ``force``) an earlier sample, which is replaced whole; any other folder is
    refused with a :class:`~tltool.errors.TltoolError` before anything is written.
    """
    for setting, value in (("per_class", per_class), ("size", size), ("seed", seed)):
        check_range(setting, value)  # --per-class 0 wrote empty class folders; 10**11 ran for ever
    out = Path(os.path.abspath(out))  # `.` has no name to stage a folder beside
    claim_output_dir(out, KIND, reuse=holds_no_output(out), force=force, option="OUT")  # reuse: killed before done
    rng = random.Random(seed)
    with staged_output(out, KIND) as staging:
        for kind in SHAPES:
            (staging / kind).mkdir()
            for i in range(per_class):
                render_shape(kind, rng, size).save(staging / kind / f"{kind}_{i:03d}.jpg", quality=85)
    return out
