"""The probe variants that gained on flowers-tune (`probe_variants.py`), checked by repeated cross-validation over
the labelled photos of each dataset (flowers train+val, 350 photos; pets train+val, 210): a default chosen on
flowers-tune alone could be tuned to those 500 photos.

Each repeat splits the photos into 5 stratified folds; every variant is trained on 4 folds (all its views of
those photos, C chosen by an inner CV grouped by photo) and predicts the held-out fold's ``crop`` view. The
out-of-fold predictions of a variant and of the default probe are paired on the same photos (exact McNemar).

    python benchmarks/probe_variants_cv.py                   # 288 px, 2 repeats; about 10 minutes on 2 cores
    python benchmarks/probe_variants_cv.py --size 320 --repeats 1

Writes ``benchmarks/results/probe_variants_cv-SIZE.{json,md}``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, SHARED, emit  # noqa: E402
from probe_variants import extract, fit, paired, sqrt  # noqa: E402

EIGHT_VIEWS = ["crop", "flip", "c875", "c875f", "k0", "k1", "k2", "k3"]
VARIANTS = {  # name: (training views, transform of the features)
    "default probe": (["crop"], None),
    "train on crop + mirror": (["crop", "flip"], None),
    "train on 8 views": (EIGHT_VIEWS, None),
    "signed square root": (["crop"], sqrt),
    "signed square root, 8 views": (EIGHT_VIEWS, sqrt),
}


def labelled_photos(dataset: str) -> dict:
    """Every photo of train and val of ``dataset``, decoded once, with its class index."""
    from tltool.images import load_image

    root = SHARED / dataset
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    files = [(p, i) for split in ("train", "val") for i, c in enumerate(classes)
             for p in sorted((root / split / c).glob("*.jpg"))]
    return {"all": ([load_image(p) for p, _ in files], np.array([y for _, y in files]))}


def out_of_fold(F: dict, y: np.ndarray, views: list[str], transform, seed: int) -> np.ndarray:
    """Out-of-fold class predictions of one variant (the held-out photos' ``crop`` view)."""
    from sklearn.model_selection import StratifiedKFold

    def features(view, rows):
        X = F["all", view][rows]
        return transform(X) if transform else X

    pred = np.empty(len(y), int)
    for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        X = np.concatenate([features(v, train) for v in views])
        predict, _ = fit(X, np.tile(y[train], len(views)), np.tile(train, len(views)))
        pred[test] = predict(features("crop", test)).argmax(1)
    return pred


def main() -> None:
    from tltool.stats import wilson_interval

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--datasets", nargs="+", default=["flowers", "pets"])
    args = parser.parse_args()
    results = {}
    for dataset in args.datasets:
        photos = labelled_photos(dataset)
        y = photos["all"][1]
        F = extract(photos, args.size)
        for seed in range(args.repeats):
            preds = {name: out_of_fold(F, y, views, transform, seed) for name, (views, transform) in VARIANTS.items()}
            reference = preds["default probe"] == y
            for name, pred in preds.items():
                right = pred == y
                lo, hi = wilson_interval(int(right.sum()), len(right))
                results.setdefault(dataset, {"n": len(y), "variants": {}})["variants"].setdefault(name, []).append(
                    {"seed": seed, "accuracy": float(right.mean()), "ci95": [lo, hi],
                     "vs_default": paired(right, reference)})
    emit(f"probe_variants_cv-{args.size}", {"image_size": args.size, "repeats": args.repeats, "results": results})
    lines = [f"# Probe variants by repeated 5-fold CV over train+val (`benchmarks/probe_variants_cv.py`, "
             f"{args.size} px)", "",
             "Out-of-fold accuracy per repeat; paired with the default probe on the same photos (gained/lost, "
             "exact McNemar p).", "",
             "| dataset | variant | accuracy per repeat | vs default per repeat |", "|---|---|---|---|"]
    for dataset, result in results.items():
        for name, runs in result["variants"].items():
            accs = ", ".join(f"{r['accuracy']:.3f}" for r in runs)
            diffs = ", ".join(f"{r['vs_default']['difference']:+.3f} (+{r['vs_default']['gained']} "
                              f"−{r['vs_default']['lost']}, p={r['vs_default']['p_value']:.2g})" for r in runs)
            lines.append(f"| {dataset} (n={result['n']}) | {name} | {accs} | {diffs} |")
    (RESULTS / f"probe_variants_cv-{args.size}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
