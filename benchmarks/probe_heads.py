"""More ways to get a better linear probe from the same network, measured where defaults are chosen.

Each variant keeps a linear classifier on features of efficientnet_lite0 (288 px unless named). It is trained on
flowers train (250 photos) and scored on all 500 photos of flowers-tune, and checked by 5-fold CV over the
labelled photos of flowers (350) and pets (210). Every score is paired with the default probe on the
same photos (gained/lost, exact McNemar p). Variants:
- the classifier: logistic regression (tltool's, C by 5-fold CV), LDA with shrinkage (chosen by Ledoit-Wolf, or
  by CV), ridge; features power-normalised (signed square root) and/or L2-normalised;
- intermediate layers (Head2Toe-style): the 1,280 pooled head features plus pooled outputs of earlier blocks;
- the view: the whole photo squeezed to a square (``--resize stretch``) for training and test, at 256/288/320.

    python benchmarks/probe_heads.py            # about 10 minutes on 2 cores

Writes ``benchmarks/results/probe_heads.{json,md}``.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, SHARED, emit  # noqa: E402
from probe_variants import paired  # noqa: E402

SETS = {"ftrain": "flowers/train", "fval": "flowers/val", "tune": "flowers-tune", "ptrain": "pets/train",
        "pval": "pets/val"}
TOP = "top_activation"
LAYERS = {  # variant name: the base's layers whose spatially averaged outputs are concatenated
    "head features (default)": [TOP],
    "+ block 7a (320)": [TOP, "block7a_project_bn"],
    "+ block 6d (192)": [TOP, "block6d_add"],
    "+ blocks 5c, 6d, 7a": [TOP, "block5c_add", "block6d_add", "block7a_project_bn"],
    "+ blocks 4c, 5c, 6d, 7a": [TOP, "block4c_add", "block5c_add", "block6d_add", "block7a_project_bn"],
}
VIEWS = {"288 stretched": (288, "stretch"), "256 stretched": (256, "stretch"), "320 stretched": (320, "stretch"),
         "256 crop": (256, "crop"), "320 crop": (320, "crop")}
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def signed_sqrt(X: np.ndarray) -> np.ndarray:
    return np.sign(X) * np.sqrt(np.abs(X))


def classifiers() -> dict:
    """Variant name: a function making a fresh scikit-learn estimator (scaling included)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler

    def searched(estimator, grid: dict, *pre):
        return GridSearchCV(make_pipeline(*pre, StandardScaler(), estimator), grid,
                            cv=StratifiedKFold(5, shuffle=True, random_state=0), n_jobs=2)

    logreg = {"logisticregression__C": C_GRID}
    sq = FunctionTransformer(signed_sqrt)
    return {
        "logistic regression (default)": lambda: searched(LogisticRegression(max_iter=3000), logreg),
        "logistic regression, signed sqrt": lambda: searched(LogisticRegression(max_iter=3000), logreg, sq),
        "logistic regression, L2-normalised": lambda: searched(LogisticRegression(max_iter=3000), logreg,
                                                               Normalizer()),
        "logistic regression, signed sqrt + L2": lambda: searched(LogisticRegression(max_iter=3000), logreg, sq,
                                                                  Normalizer()),
        "LDA, Ledoit-Wolf shrinkage": lambda: make_pipeline(StandardScaler(), LinearDiscriminantAnalysis(
            solver="lsqr", shrinkage="auto")),
        "LDA, signed sqrt, Ledoit-Wolf": lambda: make_pipeline(sq, StandardScaler(), LinearDiscriminantAnalysis(
            solver="lsqr", shrinkage="auto")),
        "ridge, signed sqrt": lambda: searched(RidgeClassifier(), {"ridgeclassifier__alpha": (1, 10, 100, 1e3, 1e4)},
                                               sq),
    }


def photos(size: int, resize: str) -> dict:
    """``{set: (pixels batch (n, size, size, 3) float32, labels)}`` of every photo, in tltool's resize."""
    from tltool.images import load_image, resize_array

    out = {}
    for name, folder in SETS.items():
        root = SHARED / folder
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        files = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).glob("*.jpg"))]
        pixels = np.stack([resize_array(load_image(p), size, resize) for p, _ in files]).astype(np.float32)
        out[name] = (pixels, np.array([y for _, y in files]))
    return out


def layer_features(data: dict, size: int, layers: list[str]) -> dict:
    """``{(set, layer): pooled features}``: one pass of the offline ImageNet network per photo (TF)."""
    from tltool._tf import keras, tf
    from tltool.backbones import create_backbone

    model = create_backbone("efficientnet_lite0", "imagenet", size)
    preprocess, base = model.layers[1], model.layers[-1]
    probe = keras.Model(base.input, [base.get_layer(name).output for name in layers])
    def pool_each(x):
        maps = probe(preprocess(x))
        return [tf.reduce_mean(m, axis=(1, 2)) for m in (maps if isinstance(maps, (list, tuple)) else [maps])]

    pooled = tf.function(pool_each)
    out = {}
    for name, (pixels, _) in data.items():
        parts = [pooled(pixels[i:i + 32]) for i in range(0, len(pixels), 32)]
        for k, layer in enumerate(layers):
            out[name, layer] = np.concatenate([np.asarray(p[k]) for p in parts])
    return out


def scores(make, X: dict, y: dict, repeats: int = 1) -> dict:
    """Right/wrong per photo: flowers train -> flowers-tune, pets train -> val, and CV over train+val."""
    from sklearn.model_selection import StratifiedKFold

    def right(train, test):
        return make().fit(X[train], y[train]).predict(X[test]) == y[test]

    out = {"tune": right("ftrain", "tune"), "pets val": right("ptrain", "pval")}
    for dataset, (a, b) in {"flowers cv": ("ftrain", "fval"), "pets cv": ("ptrain", "pval")}.items():
        XA, yA = np.concatenate([X[a], X[b]]), np.concatenate([y[a], y[b]])
        folds = []
        for seed in range(1, repeats + 1):
            ok = np.zeros(len(yA), bool)
            for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(XA, yA):
                ok[te] = make().fit(XA[tr], yA[tr]).predict(XA[te]) == yA[te]
            folds.append(ok)
        out[dataset] = np.concatenate(folds)
    return out


def said(name: str, right: dict) -> dict:
    print(f"{name}: " + "  ".join(f"{k} {r.mean():.3f}" for k, r in right.items()), flush=True)
    return right


def main() -> None:
    warnings.simplefilter("ignore")
    heads = classifiers()
    default = heads["logistic regression (default)"]
    data = photos(288, "crop")
    y = {name: labels for name, (_, labels) in data.items()}
    all_layers = sorted({layer for layers in LAYERS.values() for layer in layers})
    F = layer_features(data, 288, all_layers)
    rows = {}
    for name, make in heads.items():
        rows[f"classifier: {name}"] = said(name, scores(make, {s: F[s, TOP] for s in SETS}, y))
    for name, layers in list(LAYERS.items())[1:]:
        X = {s: np.concatenate([F[s, layer] for layer in layers], axis=1) for s in SETS}
        rows[f"features: {name}"] = said(name, scores(default, X, y))
    for name, (size, resize) in VIEWS.items():
        view = layer_features(photos(size, resize), size, [TOP])
        rows[f"view: {name}"] = said(name, scores(default, {s: view[s, TOP] for s in SETS}, y))
    reference = rows["classifier: logistic regression (default)"]
    results = {name: {k: {"accuracy": float(r.mean()), "n": len(r), "vs_default": paired(r, reference[k])}
                      for k, r in right.items()} for name, right in rows.items()}
    emit("probe_heads", {"image_size": 288, "results": results})
    write_markdown(results)


def write_markdown(results: dict) -> None:
    sets = ["tune", "flowers cv", "pets cv", "pets val"]
    lines = ["# Probe heads and features (`benchmarks/probe_heads.py`, efficientnet_lite0)", "",
             "Trained on flowers train, scored on flowers-tune (n=500); 5-fold CV over train+val "
             "(flowers n=350, pets n=210); pets train -> val (n=60). Beside each accuracy: paired with "
             "the default probe (gained −lost, exact McNemar p).", "",
             "| variant | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for name, by_set in results.items():
        cells = [f"{by_set[s]['accuracy']:.3f} (+{by_set[s]['vs_default']['gained']} "
                 f"−{by_set[s]['vs_default']['lost']}, p={by_set[s]['vs_default']['p_value']:.2g})" for s in sets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (RESULTS / "probe_heads.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
