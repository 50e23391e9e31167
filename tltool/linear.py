"""The main job: cached CNN features -> linear head chosen by cross-validation -> validation report."""
from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .configs import ExtractConfig, LinearConfig, split_settings
from .crossval import nested_cv
from .dataset import Record, SkippedFile, write_manifest
from .errors import LeakageWarning, TltoolError
from .evaluation import Evaluation
from .features import FeatureSet, checked_settings, extract_features, load_features
from .heads import (FittedHead, HeadSearch, blas_threads, get_head_spec, make_pipeline,
                    require_cv_training_images, search_head)
from .images import DEFAULT_MAX_PIXELS
from .inspection import (CLASS_FINDINGS, held_out_warning, left_out_notes, prepare_dataset, same_content_groups,
                         split_warnings)
from .leakage import MAX_PAIRS, near_copies, near_copy_warning
from .models import load_run
from .progress import say
from .report import worst_mistakes, write_run_report
from .runs import DEFAULT_RUNS_ROOT, check_run_dir, new_run_dir, slug, writes_runs
from .settings import CHOICES
from .utils import sha256_text, write_json
from .viz.gradcam import gradcam_overlays

CLASS_WEIGHTS = CHOICES["class_weight"]


@dataclass
class LinearResult:
    run_dir: Path
    evaluation: Evaluation
    metrics: dict
    head: FittedHead


@writes_runs
def train_linear(features: str | Path | FeatureSet, config: LinearConfig | None = None, *,
                 out: str | Path | None = None, force: bool = False, class_notes: Sequence[str] = (),
                 **settings: Any) -> LinearResult:
    """Fit ``config.head`` on the training split's features (regularisation by stratified CV), report on val.

    ``config`` (or its fields as keywords, which replace those of ``config``): see :class:`LinearConfig`. With
    ``cv=K``: repeated stratified K-fold over train+val instead (nested: the search runs inside each training
    fold); the report is of the out-of-fold predictions and the saved head is fitted on all images.
    ``class_notes``: the check's class-level warnings (a class left out), which the features cannot show, for the
    report.
    """
    config = replace(config or LinearConfig(), **settings)
    config.validate()
    check_run_dir(out, force)  # before any work, not after the search
    spec = get_head_spec(config.head)
    if config.gradcam and not spec.linear:
        raise TltoolError(f"--gradcam needs a linear head; {config.head} has no weights to explain.")
    fs = features if isinstance(features, FeatureSet) else load_features(features)
    X = fs.features(config.pool)
    train, val = fs.mask("train"), fs.mask("val")
    if not train.any() or not val.any():
        found = sorted(set(map(str, fs.splits)))
        raise TltoolError(f"{fs.directory}: need both a train and a val split (found {found}).")
    if config.cv:
        labelled = train | val  # a held-out test split stays out of cross-validation
        return _train_linear_cv(fs, X, labelled, out, config, force, class_notes)
    require_cv_training_images([fs.classes[i] for i in fs.labels[train]], str(fs.directory))
    start = time.perf_counter()
    fitted, search_report = _search_and_say(fs, X[train], fs.labels[train], config)
    fit_seconds = time.perf_counter() - start
    val_paths = [p for p, m in zip(fs.paths, val) if m]
    evaluation = Evaluation(fs.classes, fs.labels[val], fitted.predict_proba(X[val]))
    train_eval = Evaluation(fs.classes, fs.labels[train], fitted.predict_proba(X[train]))
    run_dir, model_config = _save_head(fs, fitted, out, force, config, search_report["chosen"], int(train.sum()))
    extra = {
        "train_accuracy": train_eval.accuracy().to_json(), "search": search_report,
        "n_train": int(train.sum()), "n_val": int(val.sum()), "timing": {"fit_seconds": fit_seconds},
        "data_warnings": data_warnings(fs) + list(class_notes),
    }
    title = f"{fs.meta['dataset']['name']}: {fs.meta['backbone']} features + {config.head}"
    # Grad-CAM and TTA read the saved head: both run before a refit replaces it, on the head the val split scores
    overlays = _gradcam_of_mistakes(run_dir, evaluation, val_paths) if config.gradcam else None
    tta = _tta_evaluations(run_dir, fs, val_paths, val, config.tta)
    if config.refit:
        fitted, extra["refit"] = _refit_head(fs, X, train | val, config, search_report["chosen"], run_dir,
                                             model_config)  # its note is said after the accuracy it refers to
    metrics = write_run_report(run_dir, evaluation, val_paths, kind="linear", title=title, config=model_config,
                               extra=extra, tta=tta, overlays=overlays)
    return LinearResult(run_dir, evaluation, metrics, fitted)


def _search_and_say(fs: FeatureSet, X: np.ndarray, y: np.ndarray, config: LinearConfig) -> tuple[FittedHead, dict]:
    """The head fitted on (X, y) with its regularisation chosen by CV there, and the search's record (said too)."""
    found = _fit_head(fs, X, y, config)
    edge = _grid_edge(found)
    say(f"{config.head}: {found.param} chosen by {found.folds}-fold CV on the training split: "
        + ", ".join(f"{g['value']:g}->{g['cv_accuracy']:.3f}" for g in found.grid)
        + f"; chosen {found.chosen[found.param]:g}"
        + (f" (the {edge} value tried: one beyond the grid might score better)" if edge else ""))
    return found.fitted, {**found.record(), "at_grid_edge": edge}


def _grid_edge(found: HeadSearch) -> str | None:
    """``smallest`` or ``largest`` when the chosen value is at an end of its grid, where a search says nothing of
    the values beyond (linsvm chose C 0.0001, sgd alpha 0.1 without a word); None otherwise."""
    values = [g["value"] for g in found.grid]
    chosen = found.chosen[found.param]
    if len(values) < 2 or chosen not in (min(values), max(values)):
        return None
    return "smallest" if chosen == min(values) else "largest"


def refit_head(fs: FeatureSet, X: np.ndarray, y: np.ndarray, config: LinearConfig, chosen: dict) -> FittedHead:
    """``config.head`` fitted on (X, y) with the regularisation ``chosen`` elsewhere: no search."""
    from sklearn.exceptions import ConvergenceWarning

    cw = None if config.class_weight == "none" else config.class_weight
    pipeline = make_pipeline(get_head_spec(config.head), config.standardize, cw, config.seed)
    pipeline.set_params(**{f"clf__{name}": value for name, value in chosen.items()})
    with warnings.catch_warnings(), blas_threads(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(X, y)
    return FittedHead.from_pipeline(config.head, pipeline, fs.classes, chosen, X, y)


def _refit_head(fs: FeatureSet, X: np.ndarray, rows: np.ndarray, config: LinearConfig, chosen: dict,
                run_dir: Path, model_config: dict) -> tuple[FittedHead, dict]:
    """Replace the saved head by one refit on ``rows`` (train+val) with the same settings; returns it and the
    record of what was done, whose note says that the accuracy estimate is the one measured before."""
    fitted = replace(refit_head(fs, X[rows], fs.labels[rows], config, chosen), pool=config.pool)
    n = int(rows.sum())
    fitted.save(run_dir)
    model_config.update(refit=True, n_trained_on=n)
    write_json(run_dir / "model.json", model_config)
    settings = ", ".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}" for k, v in chosen.items())
    note = (f"refit: the saved head was refit on train+val ({n} images) with the chosen {settings}; the accuracy "
            "above was measured on val before the refit and is its estimate (the refit head has seen those images)")
    return fitted, {"n_images": n, "chosen": chosen, "note": note}


def _fit_head(fs: FeatureSet, X: np.ndarray, y: np.ndarray, config: LinearConfig) -> HeadSearch:
    """The head with its regularisation chosen by CV on (X, y) (remembered by content: see :func:`search_head`)."""
    cw = None if config.class_weight == "none" else config.class_weight
    return search_head(get_head_spec(config.head), X, y, fs.classes, standardize=config.standardize,
                       class_weight=cw, seed=config.seed)


def _gradcam_of_mistakes(run_dir: Path, evaluation: Evaluation, paths: list[str]) -> list[np.ndarray]:
    """Grad-CAM of the predicted class for the mistakes the report shows, in its order (the head is saved)."""
    wrong = worst_mistakes(evaluation)
    return gradcam_overlays(run_dir, [paths[i] for i in wrong], size=128) if len(wrong) else []


def _tta_evaluations(run_dir: Path, fs: FeatureSet, val_paths: list[str], val: np.ndarray,
                     tta: str) -> dict[str, Evaluation]:
    """The saved run re-run on the val images with test-time augmentation (none: nothing to add)."""
    if tta == "none":
        return {}
    probs = load_run(run_dir).predict_paths(val_paths, tta=tta)
    return {tta: Evaluation(fs.classes, fs.labels[val], probs)}


def data_warnings(fs: FeatureSet, pooled: bool = False) -> list[str]:
    """The check's warnings about these features' split (imbalance, identical images in two splits), for the
    report: the terminal's warning scrolls away, the report is what is read later."""
    counts: dict[str, Counter] = {}
    for split, label in zip(fs.splits, fs.labels):
        counts.setdefault(str(split), Counter())[fs.classes[label]] += 1
    rows, digest = range(len(fs.paths)), fs.hashes.__getitem__
    leaks = [[fs.paths[i] for i in group] for group in same_content_groups(rows, digest, lambda i: str(fs.splits[i]))]
    conflicts = [[fs.paths[i] for i in group]
                 for group in same_content_groups(rows, digest, lambda i: int(fs.labels[i]))]
    notes = (fs.meta.get("dataset") or {}).get("notes") or []
    by_split = {s: dict(c) for s, c in counts.items()}
    found = [message for message, _ in split_warnings(by_split, leaks, conflicts, pooled=pooled, notes=notes)
             + held_out_warning(by_split)]
    copied, found_copies = _near_copy_note(fs, pooled)
    if found_copies:  # the check before extraction compares bytes only: said here, on the terminal too
        warnings.warn(copied, LeakageWarning, stacklevel=3)
    return found + ([copied] if copied else []) + _left_out(fs.meta)


def _left_out(meta: dict) -> list[str]:
    """:func:`left_out_notes` from a features folder's record (features.json: the check's and the decode's
    unusable files, and the photos the walk could not take)."""
    def rows(value: Any) -> list[dict]:
        return [row for row in value if isinstance(row, dict)] if isinstance(value, list) else []

    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    bad = [(str(s.get("path")), str(s.get("reason")), str(s.get("detail") or "")) for s in rows(meta.get("skipped"))]
    return left_out_notes(bad, [SkippedFile(str(s.get("path")), str(s.get("reason")))
                                for s in rows(dataset.get("not_read"))])


def _near_copy_note(fs: FeatureSet, pooled: bool) -> tuple[str | None, bool]:
    """What the report says of val images that are copies of training images saved again (other bytes, the same
    photo; see :mod:`tltool.leakage`), and whether there are any. Pooled (``--cv``): any two labelled images."""
    if str(fs.meta.get("weights", "")).lower() == "none":  # every pair of random-weight features looked alike
        return ("near copies across the split were not looked for: features of random weights (--weights none) "
                "cannot tell one photo from another", False)
    rows = np.flatnonzero(np.isin(np.asarray(fs.splits, str), ["train", "val"]))
    queries, references = ((rows, rows) if pooled
                           else (np.flatnonzero(fs.mask("val")), np.flatnonzero(fs.mask("train"))))
    if len(queries) * len(references) > MAX_PAIRS:
        return (f"near copies across the split were not looked for: {len(queries)} x {len(references)} images "
                f"is more than the {MAX_PAIRS:,} pairs the check compares", False)
    copies = near_copies(fs.features("avg"), queries, references, fs.hashes)
    return near_copy_warning(fs.paths, copies, pooled), bool(copies)


def _save_head(fs: FeatureSet, fitted: FittedHead, out, force: bool, config: LinearConfig,
               chosen: dict, n_trained_on: int) -> tuple[Path, dict]:
    meta = fs.meta
    settings = {"head": config.head, "pool": config.pool, "standardize": config.standardize,
                "class_weight": config.class_weight, "chosen": chosen, "seed": config.seed}
    if config.cv:
        settings.update(cv=config.cv, repeats=config.repeats)
    run_dir = new_run_dir("linear", meta["dataset"]["name"], meta["backbone"], config.head, out=out, force=force)
    model_config = {"kind": "linear", "backbone": meta["backbone"], "weights": meta["weights"],
                    "image_size": meta["image_size"], "resize": meta["resize"], **settings, "classes": fs.classes,
                    # absolute, as split.csv's paths are: export and evaluate find the run's images from any folder
                    "features": str(Path(fs.directory).resolve()),
                    "max_pixels": meta.get("max_pixels", DEFAULT_MAX_PIXELS), "refit": False,
                    "n_trained_on": n_trained_on}
    replace(fitted, pool=config.pool).save(run_dir)
    # the run's own record of its images: the features folder may later be extracted again from other photos
    write_manifest([Record(path, fs.classes[label], str(split)) for path, label, split
                    in zip(fs.paths, fs.labels, fs.splits)], run_dir / "split.csv")
    write_json(run_dir / "model.json", model_config)
    return run_dir, model_config


def _train_linear_cv(fs: FeatureSet, X: np.ndarray, rows: np.ndarray, out, config: LinearConfig,
                     force: bool, class_notes: Sequence[str]) -> LinearResult:
    k, repeats = config.cv, config.repeats
    cw = None if config.class_weight == "none" else config.class_weight
    X, y, paths = X[rows], fs.labels[rows], [p for p, keep in zip(fs.paths, rows) if keep]
    result = nested_cv(X, y, config.head, k, repeats, config.seed, config.standardize, cw, len(fs.classes))
    found = _fit_head(fs, X, y, config)
    fitted = found.fitted
    run_dir, model_config = _save_head(fs, fitted, out, force, config, found.chosen, len(y))
    evaluation = Evaluation(fs.classes, y, result.oof_probs)
    title = (f"{fs.meta['dataset']['name']}: {fs.meta['backbone']} features + {config.head}, "
             f"{repeats}x{k}-fold cross-validation (out-of-fold predictions)")
    metrics = write_run_report(run_dir, evaluation, paths, kind="linear", title=title, config=model_config,
                               extra={"cv": result.to_json(), "n_images": len(y),
                                      "data_warnings": data_warnings(fs, pooled=True) + list(class_notes),
                                      "note": "val = out-of-fold predictions of the first repeat over train+val"},
                               scored_on="out-of-fold" + (" (first repeat)" if repeats > 1 else ""))
    return LinearResult(run_dir, evaluation, metrics, fitted)


def default_features_dir(data: str, backbone: str, image_size: int | None, resize: str,
                         weights: str = "imagenet") -> Path:
    """probe's (and suspects') features folder without ``--features``: one per data and setting, so that another
    setting does not replace the features an earlier run names. ``weights`` other than ImageNet's are in the name
    (``-w-none``; a file's name and a digest of its path): a ``--weights none`` baseline replaced the ImageNet
    features of the same data, and ``linear`` on the folder an earlier probe recorded then fitted random ones."""
    name = Path(str(data).rstrip("/")).name or str(data)
    if name in (".", ".."):  # `tltool probe .` in the photos folder: features-.-efficientnet_lite0-crop
        name = Path(os.path.abspath(data)).name or "data"
    size = f"-{image_size}" if image_size else ""
    weights = str(weights)
    if weights.lower() == "imagenet":
        tag = ""
    elif weights.lower() == "none":
        tag = "-w-none"
    else:
        tag = f"-w-{slug(Path(weights).stem, 30)}-{sha256_text(os.path.abspath(weights))[:8]}"
    return DEFAULT_RUNS_ROOT / f"features-{slug(name)}-{backbone}{size}-{resize}{tag}"


def probe(data: str, extract: ExtractConfig | None = None, linear: LinearConfig | None = None, *,
          features_dir: str | Path | None = None, out: str | Path | None = None, force: bool = False,
          **settings: Any) -> LinearResult:
    """Extract features (reusing a cached extraction) and fit a linear head: the README's main job.

    Keywords name fields of :class:`ExtractConfig` or :class:`LinearConfig` (``seed`` sets both).
    """
    extract_settings, linear_settings = split_settings(settings, ExtractConfig, LinearConfig)
    extract = replace(extract or ExtractConfig(), **extract_settings)
    linear = replace(linear or LinearConfig(), **linear_settings)
    checked_settings(extract)  # bad settings are refused before the data check, as extract refuses them
    linear.validate()
    get_head_spec(linear.head)  # fail on a bad head name before the network runs
    check_run_dir(out, force)  # and on an --out it would refuse
    features_dir = features_dir or default_features_dir(data, extract.backbone, extract.image_size, extract.resize,
                                                        extract.weights)
    checked = prepare_dataset(data, extract.val_fraction, extract.seed, extract.max_pixels, strict=extract.strict,
                              decode=False)
    if not linear.cv:  # refused before the network runs, not after it
        require_cv_training_images([r.label for r in checked.dataset.subset("train")], checked.dataset.name)
    result = extract_features(data, features_dir, extract, checked=checked, option="--features", force=force)
    if not result.cached:
        say(f"extracted {len(result.features.paths)} images in {result.seconds:.1f} s -> {features_dir}")
    class_notes = [message for message, category in checked.issues if category in CLASS_FINDINGS]
    return train_linear(result.features, linear, out=out, force=force, class_notes=class_notes)
