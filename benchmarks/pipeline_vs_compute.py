"""Is the input pipeline hidden behind compute? `tltool extract` from JPEG files on disk vs the same backbone on
in-memory tensors of the same shape and batch size, in the same run. Goal: ratio >= 0.9.

    python benchmarks/pipeline_vs_compute.py --backbone efficientnet_lite0
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TLTOOL_NO_PROGRESS", "1")

from _common import emit, jpeg_corpus  # noqa: E402


def compute_only(backbone: str, size: int, batch: int, images: int, repeats: int) -> float:
    import numpy as np

    from tltool._tf import tf
    from tltool.features import build_feature_extractor

    _, step = build_feature_extractor(backbone, "imagenet", size)
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    step(x)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(images // batch):
            avg, mx = step(x)
            avg.numpy(), mx.numpy()
        best = max(best, (images // batch) * batch / (time.perf_counter() - start))
    return best


def from_files(data: Path, backbone: str, size: int, batch: int, repeats: int) -> float:
    from tltool.features import extract_features

    best = 0.0
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(prefix="tltool-bench-"))
        try:
            result = extract_features(str(data), out, backbone=backbone, image_size=size, batch_size=batch)
            best = max(best, result.images_per_second)
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", default=None, help="JPEG folder [default: 700 generated 320 px JPEGs, the size "
                                                    "of the photos in ../shared/datasets]")
    parser.add_argument("--repeats", type=int, default=3, help="Alternating runs of each; the best of each counts.")
    args = parser.parse_args()
    from tltool.backbones import get_backbone_spec

    size = args.image_size or get_backbone_spec(args.backbone).default_size
    data = Path(args.data) if args.data else jpeg_corpus(700, Path(tempfile.gettempdir()) / "tltool-bench-jpegs")
    n_files = sum(1 for _ in data.rglob("*.jpg"))
    pipeline = compute = 0.0
    for _ in range(args.repeats):  # alternate, so drift on a shared machine hits both alike
        pipeline = max(pipeline, from_files(data, args.backbone, size, args.batch_size, 1))
        compute = max(compute, compute_only(args.backbone, size, args.batch_size, n_files, 1))
    emit(f"pipeline_vs_compute-{args.backbone}", {
        "backbone": args.backbone, "image_size": size, "batch_size": args.batch_size, "images": n_files,
        "data": str(data), "extract_images_per_second": round(pipeline, 1),
        "compute_images_per_second": round(compute, 1), "ratio": round(pipeline / compute, 3), "goal": ">= 0.9"})


if __name__ == "__main__":
    main()
