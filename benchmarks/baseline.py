"""`tltool extract` vs a tutorial-style script, both as a user runs them: whole processes on the same real photos.

The tutorial script is what a course notebook does: import Keras, build the backbone, open each file with PIL,
resize, stack, ``model.predict`` per batch, pool. tltool's side is ``python -m tltool extract DATA --out NEW``
with its defaults (engine ``auto``, so LiteRT where it is faster; the converted model is cached before timing, as
after a user's first run). Both include their start-up (imports, model build), the way a user waits for them;
tltool's time also includes its check of every file (headers, hashes, an empty check cache) and the feature files
it writes. The two alternate, repeated; every run's ratio is reported. Goal (issue 15): >= 3x.

    python benchmarks/baseline.py                 # the 850 flower photos of ../shared/datasets
    python benchmarks/baseline.py --runs 5
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TLTOOL_NO_PROGRESS", "1")

from _common import REPO, emit  # noqa: E402
from pipeline_vs_compute import photo_folders  # noqa: E402

TUTORIAL = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
import keras
from tltool.backbones import create_backbone   # Lite0 with offline ImageNet weights (no download here)
size, batch = int(sys.argv[2]), int(sys.argv[3])
paths = sorted(Path(sys.argv[1]).rglob("*.jpg"))
model = keras.Sequential([create_backbone("efficientnet_lite0", "imagenet", size), keras.layers.GlobalAveragePooling2D()])
features = []
for i in range(0, len(paths), batch):
    images = [np.asarray(Image.open(p).convert("RGB").resize((size, size)), dtype=np.float32) for p in paths[i:i + batch]]
    features.append(model.predict(np.stack(images), verbose=0))
np.save(sys.argv[4], np.concatenate(features))
"""


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=288, help="The default input size of efficientnet_lite0.")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tltool-bench-baseline-"))
    cache = work / "cache"  # the benchmark's own: the converted model and engine choice stay, the check cache goes
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1", "TLTOOL_NO_PROGRESS": "1",
           "TLTOOL_CACHE": str(cache)}
    try:
        _, data, _, n = photo_folders(work, 1, None)
        size, batch = str(args.image_size), str(args.batch_size)
        extract = [sys.executable, "-m", "tltool", "extract", str(data), "--image-size", size, "--batch-size", batch]
        timed([*extract, "--out", str(work / "warm")], env)  # converts the LiteRT model once, as a first run would
        runs = []
        for run in range(args.runs):
            shutil.rmtree(cache / "files", ignore_errors=True)  # every header read, every photo decoded again
            tool = timed([*extract, "--out", str(work / f"out-{run}")], env)
            tutorial = timed([sys.executable, "-c", TUTORIAL, str(data), size, batch, str(work / f"t-{run}.npy")], env)
            runs.append({"tltool_s": round(tool, 2), "tutorial_s": round(tutorial, 2),
                         "tltool_images_per_second": round(n / tool, 1),
                         "tutorial_images_per_second": round(n / tutorial, 1), "speedup": round(tutorial / tool, 2)})
            print(runs[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    speedups = [r["speedup"] for r in runs]
    emit("baseline-efficientnet_lite0", {
        "backbone": "efficientnet_lite0", "image_size": args.image_size, "batch_size": args.batch_size, "images": n,
        "data": "the 850 flower photos of ../shared/datasets (flowers train+val, flowers-tune)",
        "runs": runs, "speedup_min": min(speedups), "speedup_median": statistics.median(speedups),
        "speedup_max": max(speedups),
        "note": "whole processes, start-up included, as a user waits for them; tltool with its defaults (engine auto) "
                "and an empty check cache; the tutorial script: PIL open+resize, model.predict per batch",
        "goal": ">= 3x"})


if __name__ == "__main__":
    main()
