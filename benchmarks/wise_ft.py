"""WiSE-FT for the default fine-tune: average its weights with those it started from, scored where defaults are
chosen.

Issue 14 lists WiSE-FT (Wortsman et al. 2022) among the fine-tune recipes worth measuring. tltool's fine-tune
starts from the pretrained network with the linear probe folded into its classifier (LP-FT), so the start is that
network: for each mixing weight ``a`` the model ``a * fine-tuned + (1 - a) * start`` (every weight, BatchNorm
statistics are frozen and equal in both) is scored on every photo of flowers-tune, and paired with the
fine-tuned model itself (a = 1). ``a = 0`` is the probe-initialised start, i.e. a probe.

It reads the fine-tuned runs that ``benchmarks/defaults.py`` trained (the default recipe at seeds 0, 1, 2 on
flowers train, seed 0 on pets train) from its work folder, and rebuilds each start exactly as the run built it.

    python benchmarks/defaults.py --only finetune-288 finetune-288-s1 finetune-288-s2   # if not run yet
    python benchmarks/wise_ft.py            # about 4 minutes on 2 cores

Writes ``benchmarks/results/wise_ft.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED, emit  # noqa: E402
from probe_variants import paired  # noqa: E402

MIXES = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
RUNS = {"flowers": ("finetune-288", "finetune-288-s1", "finetune-288-s2"), "pets": ("finetune-288",)}


def score_set(dataset: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """flowers: every photo of flowers-tune; pets: pets/val (what defaults.py scores pets on)."""
    root = SHARED / "flowers-tune" if dataset == "flowers" else SHARED / "pets" / "val"
    paths = sorted(str(p) for c in classes for p in (root / c).glob("*.jpg"))
    return paths, np.array([classes.index(Path(p).parent.name) for p in paths])


def start_of(run: Path, classes: list[str]):
    """The network the run's fine-tuning started from: pretrained base, classifier = the probe on its train split."""
    from tltool._tf import keras
    from tltool.configs import resolve_input
    from tltool.dataset import label_indices, load_dataset
    from tltool.finetune import build_classifier, init_head_from_probe

    config = json.loads((run / "config.json").read_text())
    train = load_dataset(str(run / "split.csv")).subset("train")
    keras.utils.set_random_seed(config["seed"])
    inputs = resolve_input(config["backbone"], config["image_size"], config["resize"])
    model = build_classifier(config["backbone"], config["weights"], inputs.image_size, len(classes),
                             config["dropout"], seed=config["seed"])
    init_head_from_probe(model, [r.path for r in train], label_indices(train, classes), inputs,
                         config["batch_size"], config["seed"])
    return model, inputs


def mixes_of(run: Path, dataset: str) -> dict[float, np.ndarray]:
    """Which score-set photos each mix gets right."""
    from tltool.keras_files import load_keras_model
    from tltool.pipeline import image_dataset

    classes = json.loads((run / "classes.json").read_text())
    tuned = load_keras_model(run / "model.keras", compile=False).get_weights()
    model, inputs = start_of(run, classes)
    start = model.get_weights()
    paths, y = score_set(dataset, classes)
    right = {}
    for a in MIXES:
        model.set_weights([a * t + (1 - a) * s for s, t in zip(start, tuned)])
        probs = np.concatenate([np.asarray(model(x, training=False)) for x in image_dataset(
            paths, image_size=inputs.image_size, resize=inputs.resize, batch_size=32)])
        right[a] = probs.argmax(1) == y
        print(f"{dataset} {run.name} a={a}: {right[a].mean():.3f}", flush=True)
    return right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tltool-bench-defaults"),
                        help="benchmarks/defaults.py's work folder (its --work)")
    parser.add_argument("--markdown", action="store_true", help="rewrite wise_ft.md from the JSON and stop")
    args = parser.parse_args()
    if args.markdown:
        return write_markdown(json.loads((RESULTS / "wise_ft.json").read_text())["results"])
    results = {}
    for dataset, names in RUNS.items():
        for name in names:
            run = Path(args.work) / dataset / "runs" / name
            if not (run / "model.keras").exists():
                sys.exit(f"{run}: not trained yet; run benchmarks/defaults.py --only {name} --data {dataset}")
            right = mixes_of(run, dataset)
            results[f"{dataset} {name}"] = {str(a): {"accuracy": float(r.mean()), "n": len(r),
                                                     "vs_fine_tuned": paired(r, right[1.0])}
                                            for a, r in right.items()}
    emit("wise_ft", {"mixes": list(MIXES), "results": results})
    write_markdown(results)


def write_markdown(results: dict) -> None:
    lines = ["# WiSE-FT of the default fine-tune (`benchmarks/wise_ft.py`, efficientnet_lite0, 288 px)", "",
             "Weights `a * fine-tuned + (1 - a) * start` (start: the pretrained network with the probe as its "
             "classifier, where tltool's fine-tune begins). Scored on flowers-tune (n=500) and pets/val (n=60); "
             "beside each accuracy, paired with the fine-tuned model (a = 1): gained −lost, exact McNemar p.", "",
             "| run | " + " | ".join(f"a = {a:g}" for a in MIXES) + " |", "|---|" + "---|" * len(MIXES)]
    for name, row in results.items():
        cells = [f"{row[str(a)]['accuracy']:.3f}" + ("" if a == 1.0 else
                 f" (+{row[str(a)]['vs_fine_tuned']['gained']} −{row[str(a)]['vs_fine_tuned']['lost']}, "
                 f"p={row[str(a)]['vs_fine_tuned']['p_value']:.2g})") for a in MIXES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeds = [row for name, row in results.items() if name.startswith("flowers")]
    means = [np.mean([row[str(a)]["accuracy"] for row in seeds]) for a in MIXES]
    lines.append(f"| flowers, mean of {len(seeds)} seeds | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    (RESULTS / "wise_ft.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
