"""Linear heads on CNN features, scikit-learn style: a registry of estimators with their regularisation grids.

A fitted head is stored as plain arrays (``head.npz``: scaler mean/scale, coefficients, intercepts; or the
training set for k-NN), not a pickle, so it loads across scikit-learn versions and can become a Keras Dense layer.
"""
from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import TltoolError, did_you_mean
from .utils import (atomic_path, cache_dir, check_zip_members, open_regular, read_json, sha256_array, sha256_json,
                    write_json)

if TYPE_CHECKING:
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline
    from threadpoolctl import threadpool_limits

SEARCH_CACHE_FORMAT = 2  # 2: scales floored (floored_scaler)


@dataclass(frozen=True)
class HeadSpec:
    name: str
    make: Callable[[dict | str | None, int], object]  # (class_weight, seed) -> unfitted estimator
    param: str  # the regularisation parameter searched by cross-validation
    grid: tuple
    description: str
    linear: bool = True


def _logreg(class_weight, seed):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=3000, class_weight=class_weight, random_state=seed)


def _linsvm(class_weight, seed):
    from sklearn.svm import LinearSVC

    return LinearSVC(max_iter=20000, class_weight=class_weight, random_state=seed)


def _ridge(class_weight, seed):
    from sklearn.linear_model import RidgeClassifier

    return RidgeClassifier(class_weight=class_weight)


def _sgd(class_weight, seed):
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(loss="log_loss", max_iter=1000, tol=1e-4, class_weight=class_weight, random_state=seed)


def _knn(class_weight, seed):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(weights="distance")


HEADS: dict[str, HeadSpec] = {spec.name: spec for spec in (
    HeadSpec("logreg", _logreg, "C", (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0),
             "multinomial logistic regression (probabilities)"),
    HeadSpec("linsvm", _linsvm, "C", (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
             "linear SVM (one-vs-rest; scores softmaxed)"),
    HeadSpec("ridge", _ridge, "alpha", (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0),
             "ridge regression classifier (scores softmaxed)"),
    HeadSpec("sgd", _sgd, "alpha", (1e-5, 1e-4, 1e-3, 1e-2, 1e-1), "logistic loss by stochastic gradient descent"),
    HeadSpec("knn", _knn, "n_neighbors", (1, 3, 5, 7, 11, 15), "k nearest neighbours (distance weighted)",
             linear=False),
)}


def get_head_spec(name: str) -> HeadSpec:
    if name not in HEADS:
        raise did_you_mean(name, HEADS, "head")
    return HEADS[name]


def make_pipeline(spec: HeadSpec, standardize: bool, class_weight: dict | str | None, seed: int) -> Pipeline:
    from sklearn.pipeline import Pipeline

    steps = [("scale", floored_scaler()() if standardize else "passthrough"), ("clf", spec.make(class_weight, seed))]
    return Pipeline(steps)


SCALE_FLOOR = 0.01  # of the median feature's standard deviation


@functools.cache
def floored_scaler() -> type:
    """scikit-learn's StandardScaler, with every feature's scale at least :data:`SCALE_FLOOR` of the median one's.

    A feature that hardly varies on the training photos (a unit that almost never fires: 50 of 1280 on the 64 px
    demo) would be multiplied by up to 1e5. Harmless in float, but an exported model folds the scaling into its
    Dense kernel, which then has a few weights 1e5 times the others, and int8 (or dynamic-range) quantization
    keeps only those: the demo's exports fell to chance. On real photos no feature is near the floor (flowers and
    pets at 288 px: the smallest is 8 % of the median), so their heads are the same.
    """
    from sklearn.preprocessing import StandardScaler

    class FlooredScaler(StandardScaler):
        def fit(self, X, y=None, sample_weight=None):
            super().fit(X, y, sample_weight)
            if self.scale_ is not None:
                self.scale_ = np.maximum(self.scale_, SCALE_FLOOR * np.median(self.scale_))
            return self

    return FlooredScaler


def cv_folds(y: np.ndarray, max_folds: int = 5) -> int:
    smallest = int(np.bincount(y)[np.bincount(y) > 0].min())
    if smallest < 2:
        raise TltoolError("every class needs at least 2 training images to choose the regularisation by "
                          "cross-validation.")
    return min(max_folds, smallest)


def require_cv_training_images(train_labels: Sequence[str], name: str, also: str = "") -> None:
    """The regularisation is chosen by stratified CV on the training split: every class needs 2 images there.
    ``also``: one more way out, said after the others."""
    few = {c: n for c, n in sorted(Counter(train_labels).items()) if n < 2}
    if few:
        raise TltoolError(
            f"{name}: class(es) {few} have fewer than 2 training images; the head's regularisation is chosen by "
            "cross-validation on the training split, which needs at least 2 of each class (3 photos of a class in "
            f"all when tltool draws the split). Add images or remove the class{also}.")


def blas_threads(n: int = 1) -> threadpool_limits:
    """Limit BLAS threads around small scikit-learn fits. Measured on 2 cores: a logistic regression on
    200 x 1280 features took 0.9-1.4 s with OpenBLAS' 2 threads and 0.012-0.03 s with one (threads spin and
    fight TensorFlow's pools); small problems gain nothing from BLAS threads anyway."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")


def search(spec: HeadSpec, X: np.ndarray, y: np.ndarray, *, standardize: bool = True,
           class_weight: dict | str | None = None, seed: int = 0, max_folds: int = 5) -> GridSearchCV:
    """Choose ``spec.param`` by stratified K-fold cross-validation on (X, y); return the refitted GridSearchCV."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    grid = list(spec.grid)
    if spec.name == "knn":
        grid = [k for k in grid if k <= len(y) * (cv_folds(y, max_folds) - 1) / cv_folds(y, max_folds)] or [1]
    folds = StratifiedKFold(n_splits=cv_folds(y, max_folds), shuffle=True, random_state=seed)
    gs = GridSearchCV(make_pipeline(spec, standardize, class_weight, seed), {f"clf__{spec.param}": grid},
                      cv=folds, scoring="accuracy", refit=True, n_jobs=1)
    with warnings.catch_warnings(), blas_threads(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        gs.fit(X, y)
    return gs


HEAD_ARRAYS = ("mean", "scale", "coef", "intercept", "train_x", "train_y")


@dataclass
class FittedHead:
    """A fitted head as arrays. ``predict_proba`` needs no scikit-learn estimator object."""

    name: str
    classes: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray | None = None  # (C, d)
    intercept: np.ndarray | None = None  # (C,)
    train_x: np.ndarray | None = None  # k-NN only: standardised training features
    train_y: np.ndarray | None = None
    params: dict = field(default_factory=dict)
    pool: str | None = None  # the pooling of the features it was fitted on, where its run knows it (head.json)

    @classmethod
    def from_pipeline(cls, name: str, pipeline: Pipeline, classes: list[str], params: dict,
                      X_train: np.ndarray | None = None, y_train: np.ndarray | None = None) -> FittedHead:
        scaler, clf = pipeline.named_steps["scale"], pipeline.named_steps["clf"]
        d = X_train.shape[1] if X_train is not None else clf.coef_.shape[1]
        mean = getattr(scaler, "mean_", np.zeros(d))
        scale = getattr(scaler, "scale_", np.ones(d))
        if not get_head_spec(name).linear:
            return cls(name, classes, mean, scale, train_x=(X_train - mean) / scale, train_y=y_train,
                       params={**params, "n_neighbors": clf.n_neighbors})
        coef, intercept = np.atleast_2d(clf.coef_), np.atleast_1d(clf.intercept_)
        if coef.shape[0] == 1:  # binary: softmax([-z/2, z/2]) == sigmoid(z)
            coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
        present = np.asarray(clf.classes_, dtype=int)
        if len(present) < len(classes):  # a class the fit never saw can never be predicted, not shift the others
            full_coef, full_intercept = np.zeros((len(classes), coef.shape[1])), np.full(len(classes), -1e9)
            full_coef[present], full_intercept[present] = coef, intercept
            coef, intercept = full_coef, full_intercept
        return cls(name, classes, mean, scale, coef=coef, intercept=intercept, params=params)

    @property
    def linear(self) -> bool:
        return self.coef is not None

    def dense_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Kernel and bias of one Dense layer computing the same scores on unstandardised features:
        ((x - mean) / scale) @ coef.T + b  ==  x @ (coef / scale).T + (b - coef @ (mean / scale))."""
        if self.coef is None:
            raise TltoolError(f"a {self.name} head stores training examples, not weights: it has no Dense form. "
                              "Use a linear head (logreg, linsvm, ridge or sgd).")
        kernel = (self.coef / self.scale).T
        bias = self.intercept - self.coef @ (self.mean / self.scale)
        return kernel.astype(np.float32), bias.astype(np.float32)

    @property
    def width(self) -> int:
        """The number of features the head takes."""
        return len(self.mean)

    def check_width(self, X: np.ndarray) -> None:
        if X.ndim != 2 or X.shape[1] != self.width:
            raise TltoolError(f"this {self.name} head was fitted on {self.width} features a row, and was given "
                              f"{X.shape[1:] or 'a scalar'}: its run and these features (or this backbone and "
                              "pooling) do not belong together. Fit the head again on features of this backbone.")

    def decision(self, X: np.ndarray) -> np.ndarray:
        self.check_width(X)
        Z = (X - self.mean) / self.scale
        return Z @ self.coef.T + self.intercept

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        if self.coef is None:
            return self._knn_proba(X)
        z = self.decision(X)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def _knn_proba(self, X: np.ndarray) -> np.ndarray:
        from sklearn.neighbors import KNeighborsClassifier

        knn = KNeighborsClassifier(n_neighbors=int(self.params["n_neighbors"]), weights="distance")
        knn.fit(self.train_x, self.train_y)
        self.check_width(X)
        proba = np.zeros((len(X), len(self.classes)))
        proba[:, knn.classes_] = knn.predict_proba((X - self.mean) / self.scale)
        return proba

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        arrays = {k: getattr(self, k) for k in HEAD_ARRAYS if getattr(self, k) is not None}
        with atomic_path(directory / "head.npz", suffix=".npz.tmp") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        pool = {"pool": self.pool} if self.pool is not None else {}
        write_json(directory / "head.json", {"name": self.name, "classes": self.classes, "params": self.params, **pool})

    @classmethod
    def load(cls, directory: str | Path) -> "FittedHead":
        directory = Path(directory)
        try:
            meta = read_json(directory / "head.json")
            with open_regular(directory / "head.npz") as f, np.load(f) as z:  # no pickles, no pipes (it hung)
                check_zip_members(z.zip)  # a 2 MB head.npz inflated to 2.3 GB before it was found inconsistent
                arrays = {k: z[k] for k in z.files if k in HEAD_ARRAYS}
            head = cls(str(meta["name"]), [str(c) for c in meta["classes"]], params=dict(meta["params"]),
                       pool=None if meta.get("pool") is None else str(meta["pool"]), **arrays)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile,
                MemoryError) as exc:  # NumPy allocates the shape an array declares before reading it
            why = (f"{exc.__class__.__name__}: {exc}" if "pickle" not in str(exc)  # not NumPy's advice to load it
                   else "it holds pickled objects, which tltool never loads" if "Object arrays" in str(exc)  # unsafely
                   else "it is not a NumPy .npz archive")  # a text file was said to hold pickled objects
            raise TltoolError(f"{directory}: head.json / head.npz are missing or not a head tltool wrote ({why}).") \
                from None
        if not head.consistent():
            raise TltoolError(f"{directory}: head.npz does not hold a head of {len(head.classes)} classes (its arrays "
                              "disagree in shape, or hold NaN, scales of 0, labels outside the classes or a k "
                              "outside 1..its examples); fit it again with `tltool linear`.")
        return head

    def consistent(self) -> bool:
        """The arrays have the shapes of one head of ``len(classes)`` classes over ``width`` finite features."""
        d, c = self.mean.shape[0] if self.mean.ndim == 1 else -1, len(self.classes)
        shapes = [(self.mean, (d,)), (self.scale, (d,))]
        if self.coef is not None or self.intercept is not None:
            shapes += [(self.coef, (c, d)), (self.intercept, (c,))]
        else:
            m = len(self.train_x) if self.train_x is not None and self.train_x.ndim else -1
            shapes += [(self.train_x, (m, d)), (self.train_y, (m,))]
        numbers = d > 0 and all(a is not None and a.shape == shape and a.dtype.kind in "fiu"
                                and bool(np.isfinite(a).all()) for a, shape in shapes)
        return numbers and bool((self.scale > 0).all()) and (self.linear or self._examples_consistent())

    def _examples_consistent(self) -> bool:
        """A k-NN head's labels are class indices and its k a whole number of its examples (1..m)."""
        k, m = self.params.get("n_neighbors"), len(self.train_y)
        y = self.train_y
        labels = y.dtype.kind in "iu" and bool(((y >= 0) & (y < len(self.classes))).all())
        return labels and isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 1 <= k <= m


# ------------------------------------------------------------------------------------- a search, cached by content
@dataclass
class HeadSearch:
    """A head whose regularisation was chosen by stratified K-fold CV, and the record of that search."""

    fitted: FittedHead
    param: str
    grid: list[dict]  # {"value", "cv_accuracy"} per grid value
    folds: int
    chosen: dict

    def record(self) -> dict:
        return {"param": self.param, "folds": self.folds, "grid": self.grid, "chosen": self.chosen}


def search_head(spec: HeadSpec, X: np.ndarray, y: np.ndarray, classes: list[str], *, standardize: bool = True,
                class_weight: dict | str | None = None, seed: int = 0, max_folds: int = 5) -> HeadSearch:
    """:func:`search` and the fitted head, remembered by the content of ``(X, y)`` and every setting.

    The same features and settings give the same head, so a repeated ``tltool probe`` reads it back instead of
    importing scikit-learn and fitting the grid again (about 1.6 s of a 2.6 s run on 2 cores, measured).
    """
    key = _search_key(spec, X, y, classes, standardize, class_weight, seed, max_folds)
    cached = _read_search(key)
    if cached is not None:
        return cached
    gs = search(spec, X, y, standardize=standardize, class_weight=class_weight, seed=seed, max_folds=max_folds)
    chosen = {k.replace("clf__", ""): _plain(v) for k, v in gs.best_params_.items()}
    grid = [{"value": _plain(p[f"clf__{spec.param}"]), "cv_accuracy": float(score)}
            for p, score in zip(gs.cv_results_["params"], gs.cv_results_["mean_test_score"])]
    result = HeadSearch(FittedHead.from_pipeline(spec.name, gs.best_estimator_, classes, chosen, X, y),
                        spec.param, grid, int(gs.n_splits_), chosen)
    _write_search(key, result)
    return result


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _search_key(spec: HeadSpec, X, y, classes, standardize, class_weight, seed, max_folds) -> str:
    key = {"format": SEARCH_CACHE_FORMAT, "head": spec.name, "grid": list(spec.grid), "X": sha256_array(X),
           "y": sha256_array(np.asarray(y)), "classes": list(classes), "standardize": bool(standardize),
           "class_weight": class_weight, "seed": seed, "max_folds": max_folds,
           "scikit-learn": version("scikit-learn")}
    return sha256_json(key)


def _search_dir(key: str) -> Path:
    return cache_dir() / "heads" / f"v{SEARCH_CACHE_FORMAT}" / key[:2] / key


def _read_search(key: str) -> HeadSearch | None:
    """The cached search of ``key``, or None; a damaged entry (tltool's own cache) is removed, to be written again."""
    folder = _search_dir(key)
    if not folder.is_dir():
        return None
    try:
        record = read_json(folder / "search.json")
        if (isinstance(record["param"], str) and isinstance(record["grid"], list)
                and isinstance(record["chosen"], dict) and isinstance(record["folds"], int)):
            return HeadSearch(FittedHead.load(folder), record["param"], record["grid"], record["folds"],
                              record["chosen"])
    except (OSError, ValueError, KeyError, TypeError, TltoolError):
        pass
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _write_search(key: str, result: HeadSearch) -> None:
    """Written to a temporary folder, then renamed: a reader sees a whole entry or none. A cache that cannot be
    written costs speed, never a run."""
    folder = _search_dir(key)
    with contextlib.suppress(OSError):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".tmp-{secrets.token_hex(8)}"
        os.mkdir(tmp)  # the umask decides its mode, as for every folder tltool makes
        try:
            result.fitted.save(tmp)
            write_json(tmp / "search.json", result.record())
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
