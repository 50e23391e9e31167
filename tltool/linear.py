"""The main job: cached CNN features -> linear head chosen by cross-validation -> validation report."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TltoolError
from .evaluation import TTA_MODES, Evaluation
from .features import FeatureSet, load_features
from .heads import FittedHead, get_head_spec, search
from .images import DEFAULT_MAX_PIXELS
from .progress import say
from .report import write_run_report
from .runs import new_run_dir
from .utils import write_json

CLASS_WEIGHTS = ("none", "balanced")


@dataclass
class LinearResult:
    run_dir: Path
    evaluation: Evaluation
    metrics: dict
    head: FittedHead


def train_linear(
    features: str | Path | FeatureSet,
    out: str | Path | None = None,
    head: str = "logreg",
    pool: str = "avg",
    standardize: bool = True,
    class_weight: str = "none",
    seed: int = 0,
    tta: str = "none",
    force: bool = False,
    cv: int = 0,
    repeats: int = 1,
    gradcam: bool = False,
) -> LinearResult:
    """Fit ``head`` on the training split's features (regularisation by stratified CV), report on val.

    With ``cv=K``: repeated stratified K-fold over train+val instead (nested: the search runs inside each
    training fold); the report is of the out-of-fold predictions and the saved head is fitted on all images.
    """
    spec = get_head_spec(head)
    if class_weight not in CLASS_WEIGHTS:
        raise TltoolError(f"--class-weight must be one of {CLASS_WEIGHTS}, got {class_weight!r}.")
    if tta not in TTA_MODES:
        raise TltoolError(f"--tta must be one of {TTA_MODES}, got {tta!r}.")
    if gradcam and not spec.linear:
        raise TltoolError(f"--gradcam needs a linear head; {head} has no weights to explain.")
    if cv and (tta != "none" or gradcam):
        raise TltoolError("--cv reports out-of-fold predictions of cached features: it cannot add --tta or "
                          "--gradcam. Run without --cv for those.")
    fs = features if isinstance(features, FeatureSet) else load_features(features)
    X = fs.features(pool)
    train, val = fs.mask("train"), fs.mask("val")
    if not train.any() or not val.any():
        raise TltoolError(f"{fs.directory}: need both a train and a val split (found {sorted(set(fs.splits))}).")
    if cv:
        labelled = fs.mask("train") | fs.mask("val")  # a held-out test split stays out of cross-validation
        return _train_linear_cv(fs, X, labelled, out, head, pool, standardize, class_weight, seed, cv, repeats,
                                force)
    start = time.perf_counter()
    gs = search(spec, X[train], fs.labels[train], standardize=standardize,
                class_weight=None if class_weight == "none" else class_weight, seed=seed)
    chosen = {k.replace("clf__", ""): v for k, v in gs.best_params_.items()}
    fitted = FittedHead.from_pipeline(head, gs.best_estimator_, fs.classes, chosen, X[train], fs.labels[train])
    fit_seconds = time.perf_counter() - start
    grid_scores = [{"value": p[f"clf__{spec.param}"], "cv_accuracy": float(s)}
                   for p, s in zip(gs.cv_results_["params"], gs.cv_results_["mean_test_score"])]
    say(f"{head}: {spec.param} chosen by {gs.n_splits_}-fold CV on the training split: "
        + ", ".join(f"{g['value']:g}->{g['cv_accuracy']:.3f}" for g in grid_scores) + f"; chosen {chosen[spec.param]:g}")
    val_paths = [p for p, m in zip(fs.paths, val) if m]
    evaluation = Evaluation(fs.classes, fs.labels[val], fitted.predict_proba(X[val]))
    train_eval = Evaluation(fs.classes, fs.labels[train], fitted.predict_proba(X[train]))

    run_dir, model_config = _save_head(fs, fitted, out, force, head=head, pool=pool, standardize=standardize,
                                       class_weight=class_weight, chosen=chosen, seed=seed)
    tta_evals = {}
    if tta != "none":
        from .models import load_run

        probs = load_run(run_dir).predict_paths(val_paths, tta=tta)
        tta_evals[tta] = Evaluation(fs.classes, fs.labels[val], probs)
    extra = {
        "train_accuracy": train_eval.accuracy().to_json(),
        "search": {"param": spec.param, "folds": int(gs.n_splits_), "grid": grid_scores, "chosen": chosen},
        "n_train": int(train.sum()), "n_val": int(val.sum()),
        "timing": {"fit_seconds": fit_seconds},
    }
    title = f"{fs.meta['dataset']['name']}: {fs.meta['backbone']} features + {head}"
    metrics = write_run_report(run_dir, evaluation, val_paths, kind="linear", title=title,
                               config=model_config, extra=extra, tta=tta_evals, gradcam=gradcam)
    return LinearResult(run_dir, evaluation, metrics, fitted)


def _save_head(fs: FeatureSet, fitted: FittedHead, out, force: bool, **settings) -> tuple[Path, dict]:
    meta = fs.meta
    run_dir = new_run_dir("linear", meta["dataset"]["name"], meta["backbone"], settings["head"], out=out, force=force)
    model_config = {"kind": "linear", "backbone": meta["backbone"], "weights": meta["weights"],
                    "image_size": meta["image_size"], "resize": meta["resize"], **settings, "classes": fs.classes,
                    "features": str(fs.directory), "max_pixels": meta.get("max_pixels", DEFAULT_MAX_PIXELS)}
    fitted.save(run_dir)
    write_json(run_dir / "model.json", model_config)
    return run_dir, model_config


def _train_linear_cv(fs: FeatureSet, X: np.ndarray, rows: np.ndarray, out, head: str, pool: str, standardize: bool,
                     class_weight: str, seed: int, k: int, repeats: int, force: bool) -> LinearResult:
    from .crossval import nested_cv, say_cv

    if repeats < 1:
        raise TltoolError(f"--repeats must be at least 1, got {repeats}.")
    spec = get_head_spec(head)
    cw = None if class_weight == "none" else class_weight
    X, y, paths = X[rows], fs.labels[rows], [p for p, keep in zip(fs.paths, rows) if keep]
    result = nested_cv(X, y, head, k, repeats, seed, standardize, cw, len(fs.classes))
    say_cv(result)
    gs = search(spec, X, y, standardize=standardize, class_weight=cw, seed=seed)
    chosen = {key.replace("clf__", ""): v for key, v in gs.best_params_.items()}
    fitted = FittedHead.from_pipeline(head, gs.best_estimator_, fs.classes, chosen, X, y)
    run_dir, model_config = _save_head(fs, fitted, out, force, head=head, pool=pool, standardize=standardize,
                                       class_weight=class_weight, chosen=chosen, seed=seed, cv=k, repeats=repeats)
    evaluation = Evaluation(fs.classes, y, result.oof_probs)
    title = (f"{fs.meta['dataset']['name']}: {fs.meta['backbone']} features + {head}, "
             f"{repeats}x{k}-fold cross-validation (out-of-fold predictions)")
    metrics = write_run_report(run_dir, evaluation, paths, kind="linear", title=title, config=model_config,
                               extra={"cv": result.to_json(), "n_images": len(y),
                                      "note": "val = out-of-fold predictions of the first repeat over train+val"})
    return LinearResult(run_dir, evaluation, metrics, fitted)


def default_features_dir(data: str, backbone: str, image_size: int | None, resize: str) -> Path:
    from .runs import DEFAULT_RUNS_ROOT, _slug

    name = Path(str(data).rstrip("/")).name or str(data)
    size = f"-{image_size}" if image_size else ""
    return DEFAULT_RUNS_ROOT / f"features-{_slug(name)}-{backbone}{size}-{resize}"


def probe(data: str, *, backbone: str = "efficientnet_lite0", weights: str = "imagenet", image_size: int | None = None,
          resize: str = "crop", batch_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
          max_pixels: int | None = None, head: str = "logreg", pool: str = "avg", standardize: bool = True,
          class_weight: str = "none", tta: str = "none", features_dir: str | Path | None = None,
          out: str | Path | None = None, force: bool = False, gradcam: bool = False) -> LinearResult:
    """Extract features (reusing a cached extraction) and fit a linear head: the README's main job."""
    from .features import extract_features
    from .images import DEFAULT_MAX_PIXELS

    get_head_spec(head)  # fail on a bad head name before the network runs
    features_dir = features_dir or default_features_dir(data, backbone, image_size, resize)
    result = extract_features(data, features_dir, backbone=backbone, weights=weights, image_size=image_size,
                              resize=resize, batch_size=batch_size, val_fraction=val_fraction, seed=seed,
                              max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    if not result.cached:
        say(f"extracted {len(result.features.paths)} images in {result.seconds:.1f} s -> {features_dir}")
    return train_linear(result.features, out=out, head=head, pool=pool, standardize=standardize,
                        class_weight=class_weight, seed=seed, tta=tta, force=force, gradcam=gradcam)
