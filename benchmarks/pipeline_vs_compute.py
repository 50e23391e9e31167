"""What a user sees: the whole `tltool extract` command on real photos, against pure compute in the same run.

Headline: the marginal wall-clock rate of the whole process (`python -m tltool extract DATA --out NEW`), from two
data sizes so that start-up (imports, model build, LiteRT load) cancels: (n_large - n_small) / (t_large - t_small),
each t the mean of ``--pairs`` extractions of that size, alternating (small, large, small, large): a single pair
moved a run's ratio by up to 3 % with the start-up's own noise (0.1-0.2 s of 4 s between the sizes).
Beside it, measured in the same run and alternating with it: the same network's pure compute on in-memory tensors
of the same shape and batch, in TF and in LiteRT, half of it just before the two extractions and half just after.
Repeated; every run's ratio is reported (the spread), not only the best. Issue 15's goal: extraction with the
default engine >= 1.7x the pure TF compute in each of 5 runs.

    python benchmarks/pipeline_vs_compute.py                  # real photos of ../shared/datasets
    python benchmarks/pipeline_vs_compute.py --runs 5 --engine auto

The LiteRT model is converted once before timing (tltool converts once per setting and caches it); each timed run
starts with an empty check cache, so every photo's header is read and every photo decoded, as on a first run.
"""
from __future__ import annotations

import argparse
import functools
import itertools
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TLTOOL_NO_PROGRESS", "1")

from _common import REPO, SHARED, emit  # noqa: E402

SOURCES = ("flowers/train", "flowers/val", "flowers-tune", "pets/train", "pets/val")  # 1,060 distinct photos


def photo_folders(root: Path, small: int, large: int | None) -> tuple[Path, Path, int, int]:
    """Two class-per-folder copies of the real photos: the first ``small`` of them, and ``large`` (default all)."""
    photos = sorted(p for source in SOURCES for p in (SHARED / source).glob("*/*.jpg"))
    random.Random(0).shuffle(photos)  # every class in both sizes
    photos = photos[:large]
    if len(photos) <= small:
        raise SystemExit(f"need more than {small} photos under {SHARED}; found {len(photos)}")
    folders = []
    for name, chosen in (("small", photos[:small]), ("large", photos)):
        folder = root / name
        for i, photo in enumerate(chosen):
            target = folder / photo.parent.name / f"{i:05d}{photo.suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photo, target)
        folders.append(folder)
    return folders[0], folders[1], small, len(photos)


def extract_seconds(data: Path, cache: Path, engine: str, batch: int) -> float:
    """Wall seconds of one whole `tltool extract` process on ``data`` into a new folder (empty check cache)."""
    shutil.rmtree(cache / "files", ignore_errors=True)
    out = Path(tempfile.mkdtemp(prefix="tltool-bench-out-")) / "features"
    env = {**os.environ, "TLTOOL_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tltool", "extract", str(data), "--out", str(out), "--engine", engine,
                           "--batch-size", str(batch)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(out.parent, ignore_errors=True)
    if done.returncode:
        raise SystemExit(f"tltool extract failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def compute_rates(size: int, batch: int, images: int) -> dict[str, float]:
    """Pure compute images/s of the default backbone's feature network on in-memory batches of random pixels.

    TF at the command's batch and at batch 8 (TF's best on this machine: 110 vs 104 images/s at 288 px), the better
    of the two being the reference; LiteRT as extraction runs it, streamed (``runner.map``: its lanes take single
    images and never wait at a batch's end), which is the faster of its two ways.
    """
    import numpy as np

    rates = {}
    for engine, sizes in (("tf", sorted({8, batch})), ("litert", [batch])):
        runner = _runner(engine, size)
        for n in sizes:
            x = np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype(np.float32)
            runner(x)  # warm-up: graph tracing, LiteRT allocation
            count = max(1, images // n)
            start = time.perf_counter()
            for _ in runner.map(itertools.repeat(x, count)):  # the same pixels, never changed: safe to queue
                pass
            rates[f"{engine}_batch{n}"] = count * n / (time.perf_counter() - start)
        rates[engine] = max(rates[f"{engine}_batch{n}"] for n in sizes)
    return rates


@functools.cache
def _runner(engine: str, size: int):
    """The feature network on ``engine``, built once per process (each run measures it twice)."""
    from tltool.engines import create_runner, feature_source

    return create_runner(feature_source("efficientnet_lite0", "imagenet", size), engine)


def one_run(small: Path, large: Path, n_small: int, n_large: int, cache: Path, args) -> dict:
    """One ratio: the extractions (``args.pairs`` of each size, alternating), with half of the compute measured
    just before them and half just after (the mean of the two), so a machine that speeds up or slows down during
    the run moves both sides alike."""
    before = compute_rates(args.image_size, args.batch_size, (n_large - n_small) // 2)
    seconds = {small: [], large: []}
    for _ in range(args.pairs):  # small, large, small, large: each size's mean, the start-up noise averaged
        for data in (small, large):
            seconds[data].append(extract_seconds(data, cache, args.engine, args.batch_size))
    after = compute_rates(args.image_size, args.batch_size, (n_large - n_small) // 2)
    t_small, t_large = statistics.mean(seconds[small]), statistics.mean(seconds[large])
    marginal = (n_large - n_small) / (t_large - t_small)
    compute = {k: (before[k] + after[k]) / 2 for k in before}
    return {"extract_seconds": {"small": [round(t, 2) for t in seconds[small]],
                                "large": [round(t, 2) for t in seconds[large]]},
            "extract_marginal": round(marginal, 1),
            "tf_compute": round(compute["tf"], 1), "litert_compute": round(compute["litert"], 1),
            "compute_by_batch": {k: round(v, 1) for k, v in compute.items() if "_batch" in k},
            "ratio_vs_tf": round(marginal / compute["tf"], 3), "ratio_vs_litert": round(marginal / compute["litert"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--small", type=int, default=300, help="Photos in the smaller of the two data sizes.")
    parser.add_argument("--large", type=int, default=None, help="Photos in the larger size [default: all 1,060].")
    parser.add_argument("--pairs", type=int, default=2,
                        help="Extractions of each size per run, alternating; the ratio uses each size's mean.")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--image-size", type=int, default=288, help="The default input size of efficientnet_lite0.")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("TLTOOL_CACHE", tempfile.mkdtemp(prefix="tltool-bench-cache-"))
    cache = Path(os.environ["TLTOOL_CACHE"])
    with tempfile.TemporaryDirectory(prefix="tltool-bench-photos-") as tmp:
        small, large, n_small, n_large = photo_folders(Path(tmp), args.small, args.large)
        extract_seconds(small, cache, args.engine, args.batch_size)  # converts (and, for auto, measures) once
        runs = [one_run(small, large, n_small, n_large, cache, args) for _ in range(args.runs)]
    ratios = [r["ratio_vs_tf"] for r in runs]
    emit("pipeline_vs_compute-efficientnet_lite0", {
        "what": "marginal wall-clock images/s of the whole `tltool extract` process on real photos vs pure compute",
        "engine": args.engine, "image_size": args.image_size, "batch_size": args.batch_size,
        "photos": [n_small, n_large], "pairs": args.pairs, "runs": runs, "ratio_vs_tf": {"min": min(ratios), "median":
        statistics.median(ratios), "max": max(ratios)}, "goal": ">= 1.7 x pure TF compute in every run",
        "load_average_at_end": os.getloadavg()[0]})


if __name__ == "__main__":
    main()
