"""Cheap probe ideas of issue 14, measured where defaults are chosen: trained on flowers train (250 photos), scored
on all 500 photos of flowers-tune, each variant paired with the default probe on the same photos (exact McNemar).

Variants (all keep a linear probe: standardised features, logistic regression, C by 5-fold CV on the training
photos, grouped by photo when a photo gives several views):
- the test view: the whole shorter side (tltool's ``crop``), the central 87.5 % (the classic ImageNet crop),
  ``stretch``, ``pad``; flip TTA;
- a head trained on augmented views of each training photo (mirror; mirror + central crops; + 4 corner crops);
- power-normalised features (signed square root, as in Fisher-vector practice), avg+max pooling;
- several input sizes at once (features of 256 and 320 px averaged or concatenated).

    python benchmarks/probe_variants.py            # about 5 minutes on 2 cores (LiteRT extraction of 10 views)

Writes ``benchmarks/results/probe_variants.{json,md}``.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, SHARED, emit  # noqa: E402

SIZES = (256, 288, 320)
GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def _square(pixels: np.ndarray, fraction: float, corner: str | None = None) -> np.ndarray:
    """The central (or a corner's) square of ``fraction`` of the shorter side."""
    h, w = pixels.shape[:2]
    side = min(h, w)
    s = int(round(side * fraction))
    top, left = (h - side) // 2, (w - side) // 2
    if corner is None:
        top, left = top + (side - s) // 2, left + (side - s) // 2
    else:
        top += 0 if corner in "01" else side - s
        left += 0 if corner in "02" else side - s
    return np.ascontiguousarray(pixels[top:top + s, left:left + s])


def views(size: int) -> dict:
    from tltool.images import resize_array

    return {
        "crop": lambda px: resize_array(px, size, "crop"),
        "flip": lambda px: resize_array(px, size, "crop")[:, ::-1],
        "c875": lambda px: resize_array(_square(px, 0.875), size, "stretch"),
        "c875f": lambda px: resize_array(_square(px, 0.875), size, "stretch")[:, ::-1],
        **{f"k{c}": (lambda px, c=c: resize_array(_square(px, 0.8, c), size, "stretch")) for c in "0123"},
        "pad": lambda px: resize_array(px, size, "pad"),
        "stretch": lambda px: resize_array(px, size, "stretch"),
    }


def load_photos() -> dict:
    from tltool.images import load_image

    classes = sorted(p.name for p in (SHARED / "flowers" / "train").iterdir() if p.is_dir())
    sets = {"train": SHARED / "flowers" / "train", "tune": SHARED / "flowers-tune"}
    out = {}
    for name, root in sets.items():
        files = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).glob("*.jpg"))]
        out[name] = ([load_image(p) for p, _ in files], np.array([y for _, y in files]))
    return out


def extract(photos: dict, size: int) -> dict:
    """``{(split, view): avg features (n, 1280)}`` and the same with max pooling under ``(split, view, "max")``."""
    from tltool.engines import create_runner, feature_source

    runner = create_runner(feature_source("efficientnet_lite0", "imagenet", size), "litert")
    out = {}
    for split, (images, _) in photos.items():
        for name, view in views(size).items():
            batch = np.stack([view(px) for px in images]).astype(np.float32)
            parts = [runner(batch[i:i + 32]) for i in range(0, len(batch), 32)]
            out[split, name] = np.concatenate([p["avg"] for p in parts])
            out[split, name, "max"] = np.concatenate([p["max"] for p in parts])
    return out


def fit(X: np.ndarray, y: np.ndarray, groups: np.ndarray):
    """Standardise, logistic regression with C by 5-fold CV grouped by photo; returns predict_proba."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)),
                          {"logisticregression__C": GRID}, cv=StratifiedGroupKFold(5, shuffle=True, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(X, y, groups=groups)
    return search.predict_proba, search.best_params_["logisticregression__C"]


def sqrt(X: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(X, 0))


def variant(F: dict, y: np.ndarray, train_views, test_views, transform=lambda X: X, pool: str = "avg"):
    def features(split, view):
        parts = [F[split, view]] if pool == "avg" else [F[split, view], F[split, view, "max"]]
        return transform(np.concatenate(parts, axis=1))

    X = np.concatenate([features("train", v) for v in train_views])
    predict, c = fit(X, np.tile(y, len(train_views)), np.tile(np.arange(len(y)), len(train_views)))
    proba = np.mean([predict(features("tune", v)) for v in test_views], axis=0)
    return proba.argmax(1), c


def scale_variant(all_features: dict, y: np.ndarray, sizes, combine: str, transform=lambda X: X):
    def features(split):
        parts = [transform(all_features[s][split, "crop"]) for s in sizes]
        return np.mean(parts, axis=0) if combine == "mean" else np.concatenate(parts, axis=1)

    predict, c = fit(features("train"), y, np.arange(len(y)))
    return predict(features("tune")).argmax(1), c


def paired(right: np.ndarray, reference: np.ndarray) -> dict:
    from tltool.stats import mcnemar_exact

    b, c = int(np.sum(right & ~reference)), int(np.sum(~right & reference))
    return {"gained": b, "lost": c, "difference": (b - c) / len(right), "p_value": mcnemar_exact(b, c)}


def main() -> None:
    from tltool.stats import wilson_interval

    photos = load_photos()
    y_train, y_tune = photos["train"][1], photos["tune"][1]
    features = {size: extract(photos, size) for size in SIZES}
    rows = {}
    for size in SIZES:
        F = features[size]
        plans = {
            "default probe (crop view)": (["crop"], ["crop"]),
            "test on the central 87.5 %": (["crop"], ["c875"]),
            "test stretched": (["crop"], ["stretch"]),
            "test padded": (["crop"], ["pad"]),
            "flip TTA": (["crop"], ["crop", "flip"]),
            "train on crop + mirror": (["crop", "flip"], ["crop"]),
            "train on 8 views (mirror, 87.5 %, 4 corners)": (["crop", "flip", "c875", "c875f", "k0", "k1", "k2", "k3"],
                                                             ["crop"]),
            "train on 8 views + flip TTA": (["crop", "flip", "c875", "c875f", "k0", "k1", "k2", "k3"],
                                            ["crop", "flip"]),
        }
        for name, (train_views, test_views) in plans.items():
            rows[f"{size} px: {name}"] = variant(F, y_train, train_views, test_views)
        rows[f"{size} px: signed square root"] = variant(F, y_train, ["crop"], ["crop"], sqrt)
        rows[f"{size} px: signed square root, train on crop + mirror"] = variant(F, y_train, ["crop", "flip"],
                                                                                  ["crop"], sqrt)
        rows[f"{size} px: avg+max pooling"] = variant(F, y_train, ["crop"], ["crop"], pool="avgmax")
    for sizes in ((256, 320), (256, 288, 320)):
        for combine in ("mean", "concat"):
            for name, transform in (("", lambda X: X), (", signed square root", sqrt)):
                rows[f"{'+'.join(map(str, sizes))} px {combine}{name}"] = scale_variant(
                    features, y_train, sizes, combine, transform)
    reference = rows["288 px: default probe (crop view)"][0] == y_tune
    results = {}
    for name, (pred, c) in rows.items():
        right = pred == y_tune
        lo, hi = wilson_interval(int(right.sum()), len(right))
        results[name] = {"accuracy": float(right.mean()), "ci95": [lo, hi], "C": c,
                         "vs_default_288": paired(right, reference)}
    emit("probe_variants", {"n_train": len(y_train), "n_scored": len(y_tune), "variants": results})
    lines = ["# Probe variants on flowers-tune (`benchmarks/probe_variants.py`)", "",
             "Trained on flowers train (250), scored on flowers-tune (500); paired with the 288 px default probe.", "",
             "| variant | accuracy [95 % CI] | C | vs default (gained/lost, p) |", "|---|---|---|---|"]
    for name, r in results.items():
        v = r["vs_default_288"]
        lines.append(f"| {name} | {r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {r['C']:g} | "
                     f"+{v['gained']} −{v['lost']}, p={v['p_value']:.2g} |")
    (RESULTS / "probe_variants.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
