"""GPU throughput of tltool's own training and inference paths, against PyTorch/timm figures from one H100.

Training: the fine-tuning classifier (``build_classifier``, every layer unfrozen except BatchNormalization, which
tltool keeps in inference mode) with ``compile_model``'s loss, one optimizer step per batch, through the loop tltool
runs (``model.fit`` on one device, the ``tf.distribute`` step under ``--strategy mirrored``). Inference: the
extraction step (``build_feature_extractor``: backbone + avg/max pooling). Both at batch 128 with mixed precision
(``mixed_float16``), on synthetic tensors and from JPEG files through ``tltool.pipeline.image_dataset``.

    python benchmarks/gpu_throughput.py --backbone resnet50
    python benchmarks/gpu_throughput.py --backbone efficientnet_lite0 --allow-cpu --steps 2 --batch-size 4

Reference (timm/PyTorch, bf16, batch 128, synthetic, one H100), train / infer images/s: resnet50 3713 / 12363,
efficientnet_lite0 4938 / 17520, vgg16 3014 / 7777, inception_v3 (299 px) 2165 / 6944. The goal is a ratio >= 1.0.
Weights do not change speed, so ``--weights none`` (the default) needs no download.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TLTOOL_NO_PROGRESS", "1")

from _common import emit, jpeg_corpus, machine  # noqa: E402

REFERENCE = {  # images/s: (train, infer), timm on one H100, bf16, batch 128, synthetic data
    "resnet50": (3713, 12363),
    "efficientnet_lite0": (4938, 17520),
    "vgg16": (3014, 7777),
    "inception_v3": (2165, 6944),
}
NUM_CLASSES = 1000  # timm's benchmark trains the ImageNet head


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def _synthetic(batch: int, size: int, labels: bool):
    import numpy as np

    from tltool._tf import tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    if not labels:
        return tf.data.Dataset.from_tensors(x).repeat()
    y = tf.one_hot(rng.integers(0, NUM_CLASSES, batch), NUM_CLASSES)
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def _jpegs(folder: Path, batch: int, size: int, labels: bool):
    import numpy as np

    from tltool.pipeline import image_dataset

    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    y = np.arange(len(paths)) % NUM_CLASSES if labels else None
    return image_dataset(paths, y, image_size=size, batch_size=batch, num_classes=NUM_CLASSES if labels else None,
                         repeat=True, drop_remainder=True)


def train_rate(args, strategy, info, size: int, data) -> float:
    """Images/s of training steps; ``warmup`` steps (tracing, autotuning) are run first and not counted."""
    from tltool.finetune import base_model, build_classifier, set_trainable
    from tltool.training import DistributedEpoch, TrainOptions, compile_model

    with strategy.scope() if info.distributed else contextlib.nullcontext():
        model = build_classifier(args.backbone, args.weights, size, NUM_CLASSES, dropout=0.2)
        set_trainable(base_model(model), "all")
        compile_model(model, TrainOptions(optimizer="nesterov", lr=1e-4), steps_per_epoch=1)
    if info.distributed:
        epoch = DistributedEpoch(model, strategy, TrainOptions(optimizer="nesterov", lr=1e-4), None)

        def run(steps: int) -> None:
            epoch.run(data.take(steps), None, _NoBar(), 1e-4)
    else:
        def run(steps: int) -> None:
            model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)

    run(args.warmup)
    start = time.perf_counter()
    run(args.steps)  # both paths return only after the last step's loss is on the host
    return args.steps * args.batch_size * info.replicas / (time.perf_counter() - start)


def infer_rate(args, strategy, info, size: int, data) -> float:
    from tltool.features import _distributed_step, build_feature_extractor

    if info.distributed:
        with strategy.scope():
            _, step = build_feature_extractor(args.backbone, args.weights, size)
        step, data = _distributed_step(step, strategy), strategy.experimental_distribute_dataset(data)
    else:
        _, step = build_feature_extractor(args.backbone, args.weights, size)
    iterator = iter(data)

    def run(steps: int) -> None:
        out = None
        for _ in range(steps):
            out = step(next(iterator))
        out[0].numpy()  # wait for the device

    run(args.warmup)
    start = time.perf_counter()
    run(args.steps)
    return args.steps * args.batch_size * info.replicas / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50", help=f"Any tltool backbone; reference figures exist for "
                                                               f"{', '.join(REFERENCE)}.")
    parser.add_argument("--image-size", type=int, default=None, help="[default: the backbone's; 299 for inception]")
    parser.add_argument("--batch-size", type=int, default=128, help="Per replica.")
    parser.add_argument("--steps", type=int, default=100, help="Timed steps per measurement.")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed steps first [default: min(10, steps)].")
    parser.add_argument("--weights", default="none", help="none (speed does not depend on the weights), imagenet.")
    parser.add_argument("--precision", choices=["mixed", "float32"], default="mixed")
    parser.add_argument("--strategy", choices=["auto", "none", "mirrored"], default="auto",
                        help="As tltool's --strategy (auto: every GPU when there are several).")
    parser.add_argument("--data", default=None, help="JPEG folder [default: --jpegs generated 320 px JPEGs].")
    parser.add_argument("--jpegs", type=int, default=1024, help="How many JPEGs to generate (read in a loop).")
    parser.add_argument("--only", choices=["train", "infer"], default=None, help="Measure one of the two.")
    parser.add_argument("--allow-cpu", action="store_true",
                        help="Run without a GPU to check the script's logic (float32; the figures mean nothing).")
    args = parser.parse_args()
    args.warmup = min(10, args.steps) if args.warmup is None else args.warmup
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be at least 1")

    from tltool._tf import keras, tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.allow_cpu:
        print("gpu_throughput: no GPU is visible to TensorFlow, so there is nothing to measure against the H100 "
              "reference. Run it on a GPU machine, or pass --allow-cpu (with e.g. --steps 2 --batch-size 4) to check "
              "the script's logic.", file=sys.stderr)
        sys.exit(2)
    from tltool.backbones import get_backbone_spec
    from tltool.distribute import resolve_strategy

    strategy, info = resolve_strategy(args.strategy)
    spec = get_backbone_spec(args.backbone)
    size = args.image_size or spec.default_size
    precision = args.precision if gpus else "float32"
    keras.mixed_precision.set_global_policy("mixed_float16" if precision == "mixed" else "float32")
    folder = Path(args.data) if args.data else jpeg_corpus(args.jpegs, Path(tempfile.gettempdir()) / "tltool-bench-jpegs")
    global_batch = args.batch_size * info.replicas
    result = {"backbone": spec.name, "image_size": size, "batch_size_per_replica": args.batch_size,
              "global_batch": global_batch, "precision": precision, "weights": args.weights,
              "strategy": info.to_json(), "steps": args.steps, "warmup": args.warmup, "jpeg_folder": str(folder),
              "device": [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
              or ["CPU (logic check only)"]}
    reference = REFERENCE.get(spec.name)
    for task, rate, ref in (("train", train_rate, reference[0] if reference else None),
                            ("infer", infer_rate, reference[1] if reference else None)):
        if args.only and task != args.only:
            continue
        for source, make in (("synthetic", lambda: _synthetic(global_batch, size, task == "train")),
                             ("jpeg", lambda: _jpegs(folder, global_batch, size, task == "train"))):
            value = rate(args, strategy, info, size, make())
            result[f"{task}_{source}_images_per_second"] = round(value, 1)
            if ref:
                result[f"{task}_{source}_ratio_to_reference"] = round(value / ref, 3)
            print(f"{spec.name} {task} {source}: {value:.1f} images/s"
                  + (f" ({value / ref:.2f}x the timm/H100 reference {ref})" if ref else ""), file=sys.stderr)
    if reference:
        result["reference_images_per_second"] = {"train": reference[0], "infer": reference[1],
                                                 "source": "timm/PyTorch, bf16, batch 128, synthetic, one H100"}
    result["goal"] = "ratio >= 1.0"
    if gpus:
        emit(f"gpu_throughput-{spec.name}", result)
    else:  # a logic check: printed, not stored with the real results
        print(json.dumps({"benchmark": f"gpu_throughput-{spec.name}", **result, "machine": machine()}))


if __name__ == "__main__":
    main()
