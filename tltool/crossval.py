"""Cross-validation where data is scarce, and learning curves ("should I label more photos?").

Nested properly: the regularisation search runs inside each outer training fold and never sees the outer test
fold. Intervals rest on the number of distinct images (repeats re-use the same images: they steady the mean,
they add no new evidence).
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Sequence

import numpy as np

from . import heads as heads_module
from .errors import TltoolError
from .features import FeatureSet, load_features
from .filecache import remembered
from .heads import FittedHead, get_head_spec
from .plotting import cached_figure, pyplot
from .progress import Bar, say
from .runs import check_run_dir, new_run_dir, writes_runs
from .settings import check_range
from .stats import format_proportion, wilson_interval
from .utils import sha256_array, write_json, write_text_atomic


@dataclass
class CVResult:
    k: int
    repeats: int
    fold_scores: list[float]
    fold_params: list[dict]
    test_indices: list[np.ndarray]
    oof_probs: np.ndarray  # out-of-fold probabilities of the first repeat
    correct_total: int = 0
    n_predictions: int = 0
    # what each fold ran (a fine-tune's folds search no regularisation: its terminal line said they did)
    procedure: str = "regularisation searched inside each training fold"

    @property
    def n_images(self) -> int:
        return len(self.oof_probs)

    def accuracy(self) -> dict:
        """Pooled out-of-fold accuracy; the interval uses n = distinct images (see module docstring)."""
        value = self.correct_total / self.n_predictions
        # the mean's own interval, as the learning curve's: rounded to a whole count first, 76 of 90 predictions
        # (3 repeats of 30 images, 0.844) showed the interval of 25/30 = 0.833
        lo, hi = wilson_interval(value * self.n_images, self.n_images)
        return {"value": value, "ci95": [lo, hi], "n": self.n_images, "method": "wilson on distinct images"}

    def to_json(self) -> dict:
        repeated = f"{self.repeats}x repeated " if self.repeats > 1 else ""
        return {"k": self.k, "repeats": self.repeats,
                "description": f"{repeated}stratified {self.k}-fold, {self.procedure}",
                "accuracy": self.accuracy(), "fold_scores": self.fold_scores,
                "fold_mean": float(np.mean(self.fold_scores)), "fold_std": float(np.std(self.fold_scores, ddof=1))
                if len(self.fold_scores) > 1 else 0.0, "fold_params": self.fold_params}


def check_fold_counts(counts: np.ndarray, k: int, inner_cv: bool = True) -> None:
    """Refuse ``--cv k`` on classes of ``counts`` images that leave a fold without what it needs: an image of each
    class held out, and with ``inner_cv`` (the regularisation chosen by CV inside each training fold) 2 of each class
    in each training fold, which 2 or 3 images split in halves are not."""
    def needed(folds: int) -> int:
        return 4 if inner_cv and folds == 2 else folds

    smallest = int(counts[counts > 0].min())
    if k >= 2 and smallest >= needed(k):
        return
    fits = [folds for folds in range(2, smallest + 1) if smallest >= needed(folds)]
    fix = (f"use --cv {fits[0]}" if len(fits) == 1 else f"use a K from {fits[0]} to {fits[-1]}") if fits else \
        f"add images ({needed(3) if inner_cv else 2} of each class at least)"
    if needed(k) > k:
        fix = (": each training fold keeps half of a class's images, and the regularisation is chosen by "
               f"cross-validation inside it, which needs 2 of each class. {fix[0].upper()}{fix[1:]}")
    else:
        fix = f"; {fix}"
    raise TltoolError(f"--cv {k}: every class needs at least {needed(k)} images (smallest has {smallest}){fix}.")


def nested_cv(X: np.ndarray, y: np.ndarray, head: str = "logreg", k: int = 5, repeats: int = 1, seed: int = 0,
              standardize: bool = True, class_weight: dict | str | None = None,
              n_classes: int | None = None) -> CVResult:
    """Repeated stratified K-fold; each outer training fold chooses its own regularisation by inner CV.

    Remembered by the content of ``(X, y)`` and every setting: the same question asked again is answered from
    the cache without importing scikit-learn (``tltool linear --cv`` on cached features in well under a second).
    """
    key = {"X": sha256_array(X), "y": sha256_array(y), "head": head, "grid": get_head_spec(head).grid, "k": k,
           "repeats": repeats, "seed": seed, "standardize": standardize, "class_weight": class_weight,
           "n_classes": n_classes, "scikit-learn": version("scikit-learn")}
    stored = remembered("nested-cv", key, lambda: asdict(_nested_cv(X, y, head, k, repeats, seed, standardize,
                                                                   class_weight, n_classes)))
    return CVResult(**{**stored, "test_indices": [np.asarray(t) for t in stored["test_indices"]],
                       "oof_probs": np.asarray(stored["oof_probs"])})


def _nested_cv(X: np.ndarray, y: np.ndarray, head: str, k: int, repeats: int, seed: int, standardize: bool,
               class_weight, n_classes: int | None) -> CVResult:
    from sklearn.model_selection import RepeatedStratifiedKFold

    spec = get_head_spec(head)
    check_fold_counts(np.bincount(y), k)
    n_classes = n_classes or int(y.max()) + 1
    splitter = RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed)
    scores, params, tests = [], [], []
    oof = np.zeros((len(y), n_classes))
    correct_total = 0
    with Bar(k * repeats, f"{k}-fold CV x{repeats}") as bar:
        for fold, (train, test) in enumerate(splitter.split(X, y)):
            gs = heads_module.search(spec, X[train], y[train], standardize=standardize, class_weight=class_weight,
                                     seed=derived_seed(seed, fold))
            fitted = FittedHead.from_pipeline(head, gs.best_estimator_, [str(i) for i in range(n_classes)],
                                              {}, X[train], y[train])
            probs = fitted.predict_proba(X[test])
            correct = probs.argmax(1) == y[test]
            correct_total += int(correct.sum())
            scores.append(float(correct.mean()))
            params.append({key.replace("clf__", ""): v for key, v in gs.best_params_.items()})
            tests.append(test)
            if fold < k:  # the first repeat covers every image exactly once
                oof[test] = probs
            bar.update()
    return CVResult(k, repeats, scores, params, tests, oof, correct_total, len(y) * repeats)


# --------------------------------------------------------------------------------------------- learning curve
@dataclass
class CurvePoint:
    fraction: float
    n_train: int
    accuracy: float  # mean over seeds
    low: float
    high: float
    spread: tuple[float, float]  # min and max over seeds
    per_class: dict[str, float] = field(default_factory=dict)
    # standard error of the paired gain from this point to the last (the same val photos, each photo's hit rate
    # averaged over seeds): how much of a difference between the two the val split can see
    se_to_last: float = 0.0


def _subset(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    chosen = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = max(1, int(round(len(idx) * fraction)))
        chosen.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(chosen))


def derived_seed(seed: int, offset: int) -> int:
    """``seed + offset`` within scikit-learn's and NumPy's seed range (``--seed 4294967295`` at fold 1 overflowed)."""
    return (seed + offset) % 2**32


def learning_curve(fs: FeatureSet, head: str = "logreg", pool: str = "avg",
                   fractions: Sequence[float] = tuple(np.round(np.arange(0.1, 1.01, 0.1), 2)), seeds: int = 5,
                   seed: int = 0, standardize: bool = True) -> tuple[list[CurvePoint], dict]:
    """Validation accuracy of the head trained on a growing share of each class's training images.

    The regularisation is chosen once by CV on the full training split and then fixed, so every point differs
    only in how many images the head saw.
    """
    check_range("seed", seed)  # -1 was numpy's ValueError
    check_range("seeds", seeds)
    fractions = _checked_fractions(fractions)
    X = fs.features(pool)
    train, val = fs.mask("train"), fs.mask("val")
    Xtr, ytr, Xval, yval = X[train], fs.labels[train], X[val], fs.labels[val]
    if not len(yval):
        raise TltoolError(f"{fs.directory}: no validation split to measure the curve on.")
    heads_module.require_cv_training_images([fs.classes[i] for i in ytr], str(fs.directory))
    key = {"train": [sha256_array(Xtr), sha256_array(ytr)], "val": [sha256_array(Xval), sha256_array(yval)],
           "classes": fs.classes, "head": head, "grid": get_head_spec(head).grid, "fractions": fractions,
           "seeds": seeds, "seed": seed, "standardize": standardize, "scikit-learn": version("scikit-learn"),
           "curve": 5}  # 2: points carry se_to_last; 3: intervals of the mean, not of it rounded to whole images;
    # 4: a class without val photos has recall None (was NaN, which is not JSON, and was named the weakest);
    # 5: se_to_last never below 1/n (gain_standard_error)
    points, params = remembered("learning-curve", key, lambda: _curve(
        (Xtr, ytr, Xval, yval), fs.classes, head, fractions, seeds, seed, standardize))
    return [CurvePoint(**{**p, "spread": tuple(p["spread"])}) for p in points], params


def _checked_fractions(fractions: Sequence[float]) -> list[float]:
    """Shares of the training split, each in (0, 1]: 2 was numpy's "Cannot take a larger sample than population"."""
    if isinstance(fractions, (str, numbers.Number)):
        values = [fractions]
    elif isinstance(fractions, np.ndarray):
        values = list(fractions.ravel())
    else:  # a list, a tuple, a generator
        values = list(fractions)
    bad = [f for f in values if not (isinstance(f, numbers.Real) and not isinstance(f, bool) and 0 < f <= 1)]
    if bad or not values:
        raise TltoolError(f"fractions must be shares of the training split, each above 0 and at most 1; got "
                          f"{bad or 'none'}.")
    return [float(f) for f in values]


def _curve(data: tuple, classes: list[str], head: str, fractions: list[float], seeds: int, seed: int,
           standardize: bool) -> tuple[list[dict], dict]:
    spec = get_head_spec(head)
    Xtr, ytr, Xval, yval = data
    gs = heads_module.search(spec, Xtr, ytr, standardize=standardize, seed=seed)
    best = {key: v for key, v in gs.best_params_.items()}
    points: list[CurvePoint] = []
    hits = []  # per point: each val photo's share of seeds that got it right
    with Bar(len(fractions) * seeds, "learning curve") as bar, heads_module.blas_threads(1):
        for fraction in fractions:
            accs, per_class, correct = [], [], []
            for s in range(seeds):
                rng = np.random.default_rng(seed * 1000 + s)
                idx = _subset(ytr, float(fraction), rng)
                pipeline = heads_module.make_pipeline(spec, standardize, None, derived_seed(seed, s)).set_params(**best)
                if spec.name == "knn":
                    pipeline.set_params(clf__n_neighbors=min(best["clf__n_neighbors"], len(idx)))
                pipeline.fit(Xtr[idx], ytr[idx])
                pred = pipeline.predict(Xval)
                accs.append(float((pred == yval).mean()))
                correct.append(pred == yval)
                per_class.append([float((pred[yval == c] == c).mean()) if (yval == c).any() else np.nan
                                  for c in range(len(classes))])  # a class without val photos has no recall
                bar.update()
                if fraction == 1.0 and spec.name != "sgd":
                    break  # the full training set is the same set for every seed
            mean = float(np.mean(accs))
            lo, hi = wilson_interval(mean * len(yval), len(yval))  # the mean's own interval: rounded to a whole
            # count first, means 0.827, 0.833 and 0.840 of 30 images all showed [0.664, 0.927]
            points.append(CurvePoint(float(fraction), int(len(_subset(ytr, float(fraction), np.random.default_rng(0)))),
                                     mean, lo, hi, (min(accs), max(accs)),
                                     {c: None if np.isnan(r) else r
                                      for c, r in zip(classes, np.mean(per_class, axis=0).round(4).tolist())}))
            hits.append(np.mean(correct, axis=0))
    for point, hit in zip(points[:-1], hits[:-1]):
        point.se_to_last = gain_standard_error(hits[-1], hit)
    return [asdict(p) for p in points], {key.replace("clf__", ""): v for key, v in best.items()}


def paired_standard_error(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of mean(a - b) over the same photos (0 for one photo or identical hits)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def gain_standard_error(last: np.ndarray, before: np.ndarray) -> float:
    """The paired standard error of a curve's gain, never below one photo's worth (1/n): on 8 val photos that the
    two points predicted alike it was 0, and a curve read "flat" from evidence of 8 photos."""
    return max(paired_standard_error(last, before), 1 / len(last))


FLAT_AT_MOST = 0.02  # "flat": the gain over the last points is at most 2 points, noise included


def read_curve(points: list[CurvePoint], classes: list[str]) -> str:
    """A plain reading of the slope: is accuracy still rising, and which class would gain most from more photos?

    Each verdict must hold against the noise of the paired gain on the same val photos (1.96 standard errors):
    "still rising" needs a gain of more than a point beyond it, "flat" a gain whose upper bound is at most
    :data:`FLAT_AT_MOST`; anything between reads "unclear".
    """
    if len(points) < 3:
        return "too few points to read a slope"
    last, before = points[-1], points[-3]
    gain = last.accuracy - before.accuracy
    noise = 1.96 * before.se_to_last
    share = last.fraction - before.fraction
    over = f"{gain * 100:+.1f} points over the last {share * 100:.0f} % of the images"
    classes = [c for c in classes if last.per_class.get(c) is not None]  # a class without val photos: no recall
    rising = {c: last.per_class[c] - before.per_class[c] for c in classes}
    weakest = min(classes, key=lambda c: last.per_class[c])
    # the class that would gain most: still improving and furthest from perfect recall
    improving = [c for c in classes if rising[c] > 0.005 and last.per_class[c] < 0.99]
    target = min(improving, key=lambda c: last.per_class[c]) if improving else weakest
    if gain > 0.01 and gain > noise:
        return (f"still rising ({over}, beyond the val split's noise of ±{noise * 100:.1f}): more images would help; "
                f"more images of `{target}` would help most (recall {before.per_class[target]:.2f} -> "
                f"{last.per_class[target]:.2f}, the lowest of the classes still improving).")
    if gain + noise <= FLAT_AT_MOST:
        return (f"flat ({over}, noise ±{noise * 100:.1f}): more images of the same kind would help little; the weakest "
                f"class is `{weakest}` (recall {last.per_class[weakest]:.2f}): look at its errors, or collect more "
                "varied images of it.")
    return (f"unclear ({over}, inside the val split's noise of ±{noise * 100:.1f}): this val split cannot tell a "
            f"rising curve from a flat one; `tltool linear --cv` measures on every labelled photo. The weakest class "
            f"is `{weakest}` (recall {last.per_class[weakest]:.2f}).")


def plot_curve(points: list[CurvePoint], classes: list[str], target: Path, title: str) -> None:
    key = {"figure": "learning-curve", "points": [asdict(p) for p in points], "classes": classes, "title": title}
    cached_figure(target, key, lambda: _curve_figure(points, classes, title))


def _curve_figure(points: list[CurvePoint], classes: list[str], title: str):
    plt = pyplot()
    x = [p.n_train for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(x, [p.accuracy for p in points], marker="o", label="val accuracy (mean over seeds)")
    left.fill_between(x, [p.low for p in points], [p.high for p in points], alpha=0.2, label="95 % Wilson interval")
    left.set_xlabel("training images")
    left.set_ylabel("validation accuracy")
    left.legend(loc="lower right")
    for c in classes:
        if points[-1].per_class.get(c) is not None:  # a class without val photos has no recall to draw
            right.plot(x, [p.per_class[c] for p in points], marker=".", label=c)
    right.set_xlabel("training images")
    right.set_ylabel("recall per class")
    right.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return fig


@writes_runs
def run_learning_curve(features: str | Path, head: str = "logreg", pool: str = "avg", seeds: int = 5,
                       seed: int = 0, out: str | Path | None = None,
                       fractions: Sequence[float] | None = None, force: bool = False
                       ) -> tuple[list[CurvePoint], str, Path]:
    check_run_dir(out, force, reads=(features,), kind="learning-curve")
    fs = load_features(features)
    kwargs = {"fractions": fractions} if fractions is not None else {}  # a numpy array has no truth value
    points, params = learning_curve(fs, head, pool, seeds=seeds, seed=seed, **kwargs)
    reading = read_curve(points, fs.classes)
    target = new_run_dir("learning-curve", fs.meta["dataset"]["name"], head, out=out, force=force)
    n_val = int(fs.mask("val").sum())
    title = f"{fs.meta['dataset']['name']}: {fs.meta['backbone']} + {head}, val n={n_val}"
    plot_curve(points, fs.classes, target / "learning_curve.png", title)
    rows = [{"fraction": p.fraction, "n_train": p.n_train, "accuracy": p.accuracy, "ci95": [p.low, p.high],
             "seed_spread": list(p.spread), "per_class_recall": p.per_class,
             "gain_to_last_se": p.se_to_last} for p in points]
    write_json(target / "metrics.json", {"points": rows, "reading": reading, "params": params, "n_val": n_val,
                                         "seeds": seeds, "interval_method": "wilson on the val images"})
    table = ["| train images | share | val accuracy [95 % CI] | seeds min-max |", "|---|---|---|---|"]
    table += [f"| {p.n_train} | {p.fraction:.0%} | {p.accuracy:.3f} [{p.low:.3f}, {p.high:.3f}] | "
              f"{p.spread[0]:.3f}-{p.spread[1]:.3f} |" for p in points]
    write_text_atomic(target / "report.md", f"# {title}\n\n" + "\n".join(table) +
                      f"\n\n**Reading:** {reading}\n\n![learning curve](learning_curve.png)\n")
    return points, reading, target


def say_cv(result: CVResult) -> None:
    acc = result.accuracy()
    js = result.to_json()
    say(f"{js['description']}: accuracy {format_proportion(acc)}, folds {js['fold_mean']:.3f} ± {js['fold_std']:.3f}")

