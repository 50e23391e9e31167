"""scikit-learn's handwritten digits as a folder dataset: the LeNet-5 data set, made offline.

``load_digits()`` ships 1797 images of 8x8 pixels with 17 grey levels (0..16, ink bright on a dark background).
They are scaled to 0..255, upscaled to ``size x size`` and written as RGB PNGs (the three channels equal, so
every tltool path reads them without conversion) into ``out/{train,val}/<digit>/digit_NNNN.png``, where NNNN is
the index in ``load_digits()``. The split is tltool's stratified, seeded one.

The folder is built beside ``out`` under a hidden name and renamed into place when complete, so ``out`` is
either absent or whole: an interrupted export leaves no half dataset and can simply be run again.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import Dataset, Record, stratified_split
from .errors import TltoolError
from .outputs import claim_output_dir, holds_no_output, staged_output
from .settings import check_range

RESAMPLING = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
              "bicubic": Image.Resampling.BICUBIC}


def export_digits(out: str | os.PathLike, size: int = 32, val_fraction: float = 0.2, seed: int = 0,
                  resample: str = "bilinear", force: bool = False) -> dict[str, dict[str, int]]:
    """Write the digits dataset into ``out``; return ``{split: {digit: count}}``."""
    from sklearn.datasets import load_digits

    out = Path(os.path.abspath(out))  # `.` has no name to stage a folder beside
    for setting, value in (("size", size), ("seed", seed)):
        check_range(setting, value)  # --size 100000 filled 24 GB of memory before the kernel killed it
    if resample not in RESAMPLING:
        raise TltoolError(f"--resample must be one of {', '.join(RESAMPLING)}, got {resample!r}.")
    claim_output_dir(out, "digits", reuse=holds_no_output(out), force=force, option="OUT")  # reuse: killed
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 grey levels -> 0..255
    labels = [str(int(y)) for y in digits.target]
    index = {f"digit_{i:04d}.png": i for i in range(len(labels))}
    records = [Record(name, labels[i]) for name, i in index.items()]
    split = stratified_split(Dataset("digits", "sklearn:load_digits", records), val_fraction=val_fraction, seed=seed)

    with staged_output(out, "digits") as staging:
        for record in split.records:
            image = Image.fromarray(pixels[index[record.path]]).resize((size, size), RESAMPLING[resample])
            target = staging / record.split / record.label / record.path
            target.parent.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").save(target)
    counts: dict[str, Counter] = {}
    for record in split.records:
        counts.setdefault(record.split, Counter())[record.label] += 1
    return {s: dict(sorted(c.items(), key=lambda kv: int(kv[0]))) for s, c in counts.items()}
