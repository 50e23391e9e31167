"""Model-assisted labelling: label a few photos, confirm the rest.

While the page is open, a child process extracts (and caches) CNN features of every photo in the folder; the
server process never runs TensorFlow, so a key press is never queued behind the network. A background thread
retrains a linear head (standardised logistic regression) after every few new labels and swaps in a new
:class:`Snapshot` whole: a suggestion and its probability for every photo. Readers (the HTTP handlers) only look
at the current snapshot, so neither extraction nor retraining ever makes a request wait.

Order of the photos offered one by one: with no head yet, typical photos of every group first (k-means on the
features, so the first labels cover the classes); while the head is weak, the most uncertain
first (active learning); then grouped by suggested class, most confident first. A grid offers up to 24 photos the
head puts in one class; the user clicks the misfits (that class is then never suggested for them again) or labels
them on their tile with a number key, and confirms the rest. Honesty: every label given to a photo that had a suggestion is tallied right or wrong per head,
so the page shows how often the current head's suggestions were right.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..backbones import get_backbone_spec
from ..dataset import Dataset, Record
from ..errors import TltoolError
from ..features import extract_features
from ..heads import blas_threads, get_head_spec, make_pipeline
from ..inspection import check_dataset
from ..utils import atomic_path, cache_dir, open_regular, sha256_text
from .store import LabelStore

GRID_SIZE = 24
WEAK_HEAD_LABELS = 40  # a head trained on fewer labels orders by uncertainty (its labels are worth most there)
HEAD_C = 0.1
CLASS_WEIGHT = None  # "balanced" was tried: 146 actions against 114 on flowers-tune (grids rotate classes anyway)  # moderate regularisation: few labels, 1280 features

Featurize = Callable[[Path, list[str]], tuple[list[str], np.ndarray]]


@dataclass(frozen=True)
class AssistSettings:
    """What the assistant extracts with and how often it retrains."""

    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    image_size: int | None = None
    retrain_every: int = 5  # new labels between two retrains (a confirmed grid always triggers one)
    grid_size: int = GRID_SIZE
    # less sure photos are offered one by one: a grid full of misfits is slow to look through. Simulated in
    # process on flowers-tune (500 photos, with the rules below): 0.5 -> 117 actions, 0.6 -> 122
    grid_min_p: float = 0.5
    grid_min_p_rejected: float = 0.8  # a photo rejected once joins a grid of its next class when this sure
    # actions a grid must be expected to save over the same photos one by one (Assistant.grid_saving): without
    # it the last ~60 photos came in grids of 1-3
    grid_min_saving: float = 1.0
    # k-means groups per class whose typical photos come first (and open the grids): 4 -> 188, 2 -> 174 (misfits
    # still rejected, not labelled on the tile); 1 is fragile (284 for a user who waits for the features)
    typical_per_class: int = 2

    def unavailable(self) -> str | None:
        """Why assistance cannot run offline (None: it can)."""
        spec = get_backbone_spec(self.backbone)
        if self.weights == "imagenet" and not spec.weights_cached():
            return f"the {spec.name} weights are not on this machine (assistance needs no download: try efficientnet_lite0)"
        return None


# ---------------------------------------------------------------------------------------------- the adapters
def photo_features(root: Path, paths: list[str], out_dir: Path, settings: AssistSettings) -> tuple[list[str], np.ndarray]:
    """The one adapter onto :mod:`tltool.features`: average-pooled features of ``root/paths`` (the decodable
    ones, in the order returned) cached in ``out_dir``."""
    records = [Record(str(root / p), "photo", "train") for p in paths]
    dataset = Dataset(name=root.name, source=f"folder:{root}", records=records)
    checked = check_dataset(dataset, emit_warnings=False)
    if not checked.dataset.records:
        return [], np.zeros((0, 0), np.float32)
    result = extract_features(dataset, out_dir, backbone=settings.backbone, weights=settings.weights,
                              image_size=settings.image_size, checked=checked)
    fs = result.features
    return [Path(p).relative_to(root).as_posix() for p in fs.paths], fs.avg.astype(np.float32)


def fit_head(X: np.ndarray, y: np.ndarray, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """The one adapter onto :mod:`tltool.heads`: a standardised logistic regression (classes weighted equally:
    the first labels are rarely balanced); returns ``predict_proba``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    pipeline = make_pipeline(get_head_spec("logreg"), True, CLASS_WEIGHT, seed).set_params(clf__C=HEAD_C)
    with blas_threads(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(X, y)
    return pipeline.predict_proba


# ---------------------------------------------------------------------------------------------- extraction
def features_cache(root: Path, settings: AssistSettings) -> Path:
    """Where the features of a labeler folder are kept: tltool's cache, never inside the user's folder."""
    key = sha256_text(f"{root}|{settings.backbone}|{settings.weights}|{settings.image_size}")[:16]
    return cache_dir() / "labeler" / f"{root.name or 'dataset'}-{key}"


def extract_in_child(settings: AssistSettings, cache: Path | None = None) -> Featurize:
    """A featurizer that runs :func:`photo_features` in a child process at low priority (TensorFlow stays out of
    the server's process, and its threads never take the CPU from a key press)."""

    def featurize(root: Path, paths: list[str]) -> tuple[list[str], np.ndarray]:
        folder = cache or features_cache(root, settings)
        request = {"root": str(root), "paths": paths, "out": str(folder), "settings": settings.__dict__}
        child = subprocess.run([sys.executable, "-m", __name__], input=json.dumps(request), text=True,
                               capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if child.returncode != 0:
            lines = [line for line in child.stderr.strip().splitlines() if line.strip()]
            raise TltoolError(f"feature extraction failed: {lines[-1] if lines else f'exit {child.returncode}'}")
        with open_regular(folder / "labeler.npz", follow_links=False) as f, np.load(f) as saved:
            return [str(p) for p in saved["paths"]], saved["features"]

    return featurize


def _child_main() -> None:
    """``python -m tltool.labeler.assist`` with a JSON request on stdin: extract, then save ``labeler.npz``."""
    argparse.ArgumentParser(description="feature extraction for the labeler (internal)").parse_args()
    if hasattr(os, "nice"):
        os.nice(10)
    request = json.loads(sys.stdin.read())
    out = Path(request["out"])
    paths, features = photo_features(Path(request["root"]), request["paths"], out, AssistSettings(**request["settings"]))
    with atomic_path(out / "labeler.npz", suffix=".npz") as tmp:
        np.savez(tmp, paths=np.array(paths, dtype=str), features=features)


# ---------------------------------------------------------------------------------------------- the head's view
@dataclass(frozen=True)
class Snapshot:
    """One trained head's suggestions for every photo with features; replaced whole, never changed."""

    version: int
    trained_on: int
    proba: np.ndarray  # (photos, classes), columns in the store's class order
    labels: dict[str, str] = field(default_factory=dict)  # what it was trained on: never judged by those labels


@dataclass
class Tally:
    """Suggestions judged by the user: path -> was it right (a photo relabelled counts once, last verdict)."""

    verdicts: dict[str, bool] = field(default_factory=dict)

    def to_json(self) -> dict:
        right = sum(self.verdicts.values())
        return {"right": right, "judged": len(self.verdicts)}


def typical_photos(X: np.ndarray, groups: int, seed: int = 0) -> list[int]:
    """Representative photos: k-means on the unit features, the photo nearest each centre, largest group first.
    Labelling these first covers the classes; farthest-point sampling was tried and picks outliers (on
    flowers-tune 11 of its first 20 were roses, and the head then was right 30 % of the time); so does asking for
    the most uncertain photos of a head trained on a handful of labels."""
    from sklearn.cluster import KMeans

    if len(X) == 0:
        return []
    unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    k = max(1, min(groups, len(X)))
    with blas_threads(1):
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(unit)
    sizes = np.bincount(km.labels_, minlength=k)
    distance = np.linalg.norm(unit - km.cluster_centers_[km.labels_], axis=1)
    return [int(np.flatnonzero(km.labels_ == c)[np.argmin(distance[km.labels_ == c])])
            for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]


class Assistant:
    """Background features, a retrained head and the suggestions of a :class:`LabelStore` (thread-safe)."""

    def __init__(self, store: LabelStore, settings: AssistSettings | None = None,
                 featurize: Featurize | None = None) -> None:
        self.store = store
        self.settings = settings or AssistSettings()
        self.featurize = featurize or extract_in_child(self.settings)
        self.state, self.message = "waiting", ""
        self.row: dict[str, int] = {}
        self.paths: list[str] = []
        self.X = np.zeros((0, 0), np.float32)
        self.typical: list[str] = []
        self.snapshot: Snapshot | None = None
        self.revision = 0  # bumped whenever a suggestion changes (a retrain, a rejection)
        self.rejected: dict[str, set[str]] = {}
        self.tallies: dict[int, Tally] = {}
        self.seconds: dict[str, float] = {}
        self._new_labels = 0
        self._in_training: dict[str, str] = {}  # the labels the retrain under way learns
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="labeler-assist", daemon=True)

    # ------------------------------------------------------------------ the background thread
    def start(self) -> "Assistant":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wait_ready(self, timeout: float = 600) -> bool:
        """Block until features are loaded (tests and the benchmark); False on timeout or failure."""
        deadline = time.monotonic() + timeout
        while self.state in ("waiting", "extracting") and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.state == "ready"

    def _run(self) -> None:
        try:
            self._load_features()
        except Exception as exc:  # the labeler keeps working without suggestions, and says why
            self.state, self.message = "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return
        while not self._stop.is_set():
            if self._due():
                self._retrain()
            self._wake.wait(timeout=1.0)
            self._wake.clear()

    def _load_features(self) -> None:
        self.state, self.message = "extracting", f"extracting features of {len(self.store.items)} photos"
        start = time.perf_counter()
        paths, X = self.featurize(self.store.root, list(self.store.items))
        self.seconds["extract"] = time.perf_counter() - start
        self.paths, self.X = list(paths), np.asarray(X, np.float32)
        self.row = {p: i for i, p in enumerate(self.paths)}
        self.typical = [self.paths[i] for i in typical_photos(self.X, self.settings.typical_per_class * len(self.store.classes))]
        missing = len(self.store.items) - len(self.paths)
        self.state = "ready"
        self.message = f"features of {len(self.paths)} photos" + (f" ({missing} not decodable)" if missing else "")
        self.revision += 1

    def _due(self) -> bool:
        labelled = self._training_labels()
        if len(set(labelled.values()) & set(self.store.classes)) < 2:  # labels of an earlier round's classes
            return False  # are kept, but the head suggests only these classes and needs two of them
        return self.snapshot is None or self._new_labels >= self.settings.retrain_every

    def _training_labels(self) -> dict[str, str]:
        return {p: label for p, label in dict(self.store.labels).items() if p in self.row}

    def _retrain(self) -> None:
        with self._lock:
            labelled = self._training_labels()
            self._new_labels, self._in_training = 0, labelled
        classes = self.store.classes
        present = sorted({classes.index(c) for c in labelled.values() if c in classes})
        rows = [self.row[p] for p, c in labelled.items() if c in classes]
        y = np.array([classes.index(labelled[self.paths[r]]) for r in rows])
        start = time.perf_counter()
        proba = fit_head(self.X[rows], y)(self.X)
        full = np.zeros((len(self.paths), len(classes)), np.float32)
        full[:, present] = proba
        self.seconds["retrain"] = time.perf_counter() - start
        version = (self.snapshot.version + 1) if self.snapshot else 1
        with self._lock:
            self.snapshot = Snapshot(version, len(rows), full, {self.paths[r]: labelled[self.paths[r]] for r in rows})
            self.tallies[version] = Tally()
            self.revision += 1

    # ------------------------------------------------------------------ what the user did
    def observe(self, changes: list[tuple[str, str | None]]) -> None:
        """Labels just saved (``(path, label or None)``): judge the suggestions they answer; maybe retrain."""
        with self._lock:
            for path, label in changes:
                if label is None or (self.snapshot is not None and self.snapshot.labels.get(path) == label):
                    continue  # a head that already learnt this label is not judged by it
                suggested = self.suggestion(path)
                if suggested is not None and self.snapshot is not None:
                    self.tallies[self.snapshot.version].verdicts[path] = suggested[0] == label
                if self._in_training.get(path) != label:  # the retrain under way learns it already
                    self._new_labels += 1
        if self.state == "ready":
            self._wake.set()

    def reject(self, paths: list[str], label: str) -> None:
        """Grid misfits: ``label`` was suggested and is wrong; it is never suggested for them again."""
        if label not in self.store.classes:  # not a class the head suggests: nothing to reject
            return
        with self._lock:
            for path in paths:
                if self.snapshot is not None and path in self.row:
                    self.tallies[self.snapshot.version].verdicts[path] = False
                self.rejected.setdefault(path, set()).add(label)
            self.revision += 1

    # ------------------------------------------------------------------ what the page reads
    def suggestion(self, path: str) -> tuple[str, float] | None:
        """The head's class for ``path`` (rejected classes left out, the rest renormalised) and its probability."""
        snap, i = self.snapshot, self.row.get(path)
        if snap is None or i is None:
            return None
        p = snap.proba[i].copy()
        for label in self.rejected.get(path, ()):
            if label in self.store.classes:
                p[self.store.classes.index(label)] = 0.0
        if p.sum() <= 0:
            return None
        best = int(p.argmax())
        return self.store.classes[best], float(p[best] / p.sum())

    def _grid_waits_for(self) -> str | None:
        """Why no grid is offered yet. A head that has seen two classes puts the photos of the other three in them
        with p > 0.7 (benchmark: 321 misfit clicks); grids open once the typical photos and every class have labels."""
        if self.snapshot is None:
            return "no suggestions yet"
        open_paths = set(self._open_paths())
        typical_left = sum(p in open_paths for p in self.typical)
        missing = [c for c in self.store.classes if c not in set(self.store.labels.values())]
        if typical_left:
            return f"label the {typical_left} typical photo(s) offered first"
        return f"label a photo of {', '.join(missing)} first" if missing else None

    def _grid_probability(self, path: str, label: str) -> float:
        """How sure the head is that ``path`` belongs in a grid of ``label``: its own probability. A photo rejected
        from its top class must not reach a grid on the renormalised rest (0.02 of 0.03 is 0.67: in the benchmark
        that cost 700 misfit clicks), except a photo rejected once whose rest points clearly one way (renormalised
        >= ``grid_min_p_rejected``; on flowers-tune 29 of 32 such suggestions were right)."""
        snap = self.snapshot
        if snap is None:
            return 0.0
        if len(self.rejected.get(path, ())) == 1:
            suggested = self.suggestion(path)
            if suggested and suggested[0] == label and suggested[1] >= self.settings.grid_min_p_rejected:
                return suggested[1]
        return float(snap.proba[self.row[path], self.store.classes.index(label)])

    def _open_paths(self) -> list[str]:
        """Photos with features that have no label and are not skipped."""
        labels, skipped = self.store.labels, self.store.skipped
        return [p for p in self.paths if p not in labels and p not in skipped]

    def order(self) -> tuple[str, list[str]]:
        """The photos to offer one by one, and the rule that ordered them: the typical photos first (until they
        are labelled), then the head's order."""
        open_paths = set(self._open_paths())
        typical = [p for p in self.typical if p in open_paths]
        if self.snapshot is None or typical:
            first = set(typical)
            return "typical", typical + [p for p in self.paths if p in open_paths and p not in first]
        scored = [(p, self.suggestion(p)) for p in self.paths if p in open_paths]
        if self.snapshot.trained_on < WEAK_HEAD_LABELS:
            return "uncertain", [p for p, s in sorted(scored, key=lambda ps: ps[1][1] if ps[1] else 0.0)]
        classes = self.store.classes
        key = (lambda ps: (classes.index(ps[1][0]), -ps[1][1]) if ps[1] else (len(classes), 0.0))
        return "grouped", [p for p, _ in sorted(scored, key=key)]

    def grid(self, label: str | None = None, size: int | None = None) -> dict:
        """Up to ``size`` open photos the head puts in ``label`` with at least ``grid_min_p``, most confident first.

        The default class is the one with the fewest labels so far. Offering the class with most candidates was
        tried: the head, fed grid after grid of roses and daisies, came to call tulips roses with p > 0.9 (on
        flowers-tune 224 misfit clicks instead of about 60)."""
        size = size or self.settings.grid_size
        waiting = self._grid_waits_for()
        if waiting:
            return {"label": None, "items": [], "left": 0, "reason": waiting,
                    "version": self.snapshot.version if self.snapshot else 0}
        by_class: dict[str, list[tuple[float, str]]] = {}
        for path in self._open_paths():
            s = self.suggestion(path)
            if s is None:
                continue
            sure = self._grid_probability(path, s[0])
            if sure >= self.settings.grid_min_p:
                by_class.setdefault(s[0], []).append((sure, path))
        left = sum(len(v) for v in by_class.values())
        by_class = {c: top for c, top in ((c, sorted(v, reverse=True)[:size]) for c, v in by_class.items())
                    if label == c or self.grid_saving([p for p, _ in top]) >= self.settings.grid_min_saving}
        if label is None and by_class:  # the class with fewest labels: grids of one class only feed back into the head
            labelled = Counter(self.store.labels.values())
            label = min(by_class, key=lambda c: (labelled[c], -len(by_class[c])))
        chosen = sorted(by_class.get(label, []), reverse=True)[:size] if label else []
        return {"label": label, "items": [{"path": path, "p": round(p, 4)} for p, path in chosen],
                "left": left, "version": self.snapshot.version if self.snapshot else 0}

    @staticmethod
    def grid_saving(probabilities: list[float]) -> float:
        """Actions a grid of photos with these probabilities saves, expected: one by one each photo costs a key; a
        grid costs one confirm, and each misfit its class's key pressed on its tile. A grid of 1-3 photos late in the
        run cost more than it saved (flowers-tune: 26 such grids, 13 misfits)."""
        return len(probabilities) - 1 - sum(1 - p for p in probabilities)

    def status(self) -> dict:
        snap = self.snapshot
        tally = self.tallies.get(snap.version, Tally()) if snap else Tally()
        everything = Counter(v for t in self.tallies.values() for v in t.verdicts.values())
        return {"state": self.state, "message": self.message, "revision": self.revision,
                "version": snap.version if snap else 0, "trained_on": snap.trained_on if snap else 0,
                "since_retrain": tally.to_json(),
                "all": {"right": everything[True], "judged": everything[True] + everything[False]},
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}

    def suggestions(self) -> dict:
        """Everything the page needs to suggest: per open photo ``[label, probability]``, and the order."""
        rule, order = self.order()
        pairs = {p: self.suggestion(p) for p in order}
        return {**self.status(), "rule": rule, "order": order,
                "suggestions": {p: [s[0], round(s[1], 4)] for p, s in pairs.items() if s is not None}}


if __name__ == "__main__":
    _child_main()
