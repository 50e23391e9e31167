"""TF vs LiteRT: images/s of the same feature extractor (avg+max pooled) in the same process, the engines
alternating, best of 3 rounds; and the largest difference of their features.

    python benchmarks/engines.py                       # efficientnet_lite0, mobilenet_v2, resnet50, vgg16
    python benchmarks/engines.py --backbones mobilenet_v2 --batch-size 16

Weights: ImageNet where they are on this machine (always for efficientnet_lite0), else ``none`` (random weights
run at the same speed). Pure compute on in-memory pixels: no decoding. On a machine shared with other work the
numbers are noisy; the alternation keeps both engines under the same load.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TLTOOL_NO_PROGRESS", "1")

from _common import RESULTS, emit  # noqa: E402

DEFAULT_BACKBONES = ("efficientnet_lite0", "mobilenet_v2", "resnet50", "vgg16")


def available_weights(backbone: str) -> str:
    from tltool.backbones import get_backbone_spec

    return "imagenet" if get_backbone_spec(backbone).weights_cached() else "none"


def seeded(source):
    """``source`` whose every build draws the same random weights (``--weights none``), so both engines run the
    same network and their features can be compared."""
    from dataclasses import replace

    def build():
        from tltool._tf import keras

        keras.utils.set_random_seed(0)
        return source.build()

    return replace(source, build=build)


def timed_rounds(runners: dict, batch, batches: int, rounds: int) -> dict[str, float]:
    """Best images/s of each runner over ``rounds``, each round ``batches`` calls, the runners alternating."""
    best = {name: 0.0 for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(batches):
                run(batch)
            best[name] = max(best[name], batches * len(batch) / (time.perf_counter() - start))
    return best


def bench_backbone(backbone: str, size: int, batch_size: int, batches: int, rounds: int) -> dict:
    import numpy as np

    from tltool import engines

    weights = available_weights(backbone)
    source = seeded(engines.feature_source(backbone, weights, size))
    start = time.perf_counter()
    lite = engines.create_runner(source, "litert")
    convert_seconds = time.perf_counter() - start
    tf_runner = engines.create_runner(source, "tf")
    batch = np.random.default_rng(0).uniform(0, 255, (batch_size, size, size, 3)).astype(np.float32)
    tf_out, lite_out = tf_runner(batch), lite(batch)  # also the warm-up
    diff = max(float(np.abs(tf_out[k] - lite_out[k]).max()) for k in tf_out)
    scale = max(float(np.abs(tf_out[k]).max()) for k in tf_out)
    load_before = os.getloadavg()[0]
    rates = timed_rounds({"tf": tf_runner, "litert": lite}, batch, batches, rounds)
    return {"load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],"backbone": backbone, "weights": weights, "image_size": size, "batch_size": batch_size,
            "images_per_round": batches * batch_size, "rounds": rounds,
            "tf_images_per_second": round(rates["tf"], 1), "litert_images_per_second": round(rates["litert"], 1),
            "litert_over_tf": round(rates["litert"] / rates["tf"], 2), "max_abs_feature_difference": diff,
            "max_relative_feature_difference": diff / scale if scale else 0.0,
            "first_conversion_seconds_or_cache_load": round(convert_seconds, 1)}


def markdown(rows: list[dict], machine: dict) -> str:
    lines = ["# TF vs LiteRT feature extraction (pure compute, same process, alternating, best of "
             f"{rows[0]['rounds']})", "",
             f"{machine['cpus']} CPUs, TensorFlow {machine['tensorflow']}, {machine['date']}; the machine was shared "
             "with other jobs (1-minute load average before/after each row below), so the rates are noisy.", "",
             "| backbone | weights | size | batch | TF images/s | LiteRT images/s | LiteRT / TF | max abs diff | "
             "max rel diff | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['weights']} | {r['image_size']} | {r['batch_size']} | "
                     f"{r['tf_images_per_second']:.1f} | {r['litert_images_per_second']:.1f} | "
                     f"{r['litert_over_tf']:.2f} | {r['max_abs_feature_difference']:.1e} | "
                     f"{r['max_relative_feature_difference']:.1e} | "
                     + "/".join(str(v) for v in r.get("load_average_1min", ["?"])) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3, help="batches per engine in each round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for backbone in args.backbones:
        rows.append(bench_backbone(backbone, args.image_size, args.batch_size, args.batches, args.rounds))
        print(rows[-1], flush=True)
    result = emit("engines", {"rows": rows})
    (RESULTS / "engines.md").write_text(markdown(rows, result["machine"]))


if __name__ == "__main__":
    main()
