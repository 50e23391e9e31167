"""Metrics of a classifier on labelled images, in numpy: accuracy (with its interval), top-5, balanced accuracy,
per-class precision/recall/F1, confusion matrix. Test-time augmentation (TensorFlow) is :mod:`tltool.tta`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .stats import Proportion


def ranked_classes(probs: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` most probable classes of each row, best first. Ties go to the lower class index, as argmax (the
    prediction) gives them: numpy's default sort is unstable past 16 classes, and an int8 export's probabilities
    tie often, so top-5 missed images top-1 got right, and `predict` could list first a class it did not predict."""
    return np.argsort(-np.asarray(probs), axis=-1, kind="stable")[..., :k]


@dataclass
class Evaluation:
    classes: list[str]
    y_true: np.ndarray
    probs: np.ndarray

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def n(self) -> int:
        return len(self.y_true)

    @property
    def correct(self) -> np.ndarray:
        return self.y_pred == self.y_true

    def accuracy(self) -> Proportion:
        return Proportion(int(self.correct.sum()), self.n)

    def top_k(self, k: int) -> Proportion | None:
        """Top-``k`` accuracy; None when there are ``k`` classes or fewer (it is 1 by construction: 5 flower
        classes had "top-5 accuracy 1.000 [0.886, 1.000]", an interval around a constant)."""
        if len(self.classes) <= k:
            return None
        top = ranked_classes(self.probs, k)
        return Proportion(int((top == self.y_true[:, None]).any(axis=1).sum()), self.n)

    def confusion(self) -> np.ndarray:
        c = len(self.classes)
        matrix = np.zeros((c, c), dtype=np.int64)
        np.add.at(matrix, (self.y_true, self.y_pred), 1)
        return matrix

    def per_class(self) -> dict[str, dict]:
        matrix = self.confusion()
        out = {}
        for i, name in enumerate(self.classes):
            tp, support, predicted = matrix[i, i], matrix[i].sum(), matrix[:, i].sum()
            # undefined (None, "n/a" in the report) where nothing divides: precision of a class never predicted,
            # F1 of a class with neither images nor predictions; 0.000 read as a class the model always got wrong
            precision = float(tp / predicted) if predicted else None
            recall = Proportion(int(tp), int(support))
            p, r = precision or 0.0, recall.value if support else 0.0
            f1 = (2 * p * r / (p + r) if p + r else 0.0) if support or predicted else None
            out[name] = {"precision": precision, "recall": recall.to_json() if support else None,
                         "f1": None if f1 is None else float(f1), "support": int(support), "predicted": int(predicted)}
        return out

    def balanced_accuracy(self) -> dict:
        recalls = [v["recall"]["value"] for v in self.per_class().values() if v["recall"]]
        return {"value": float(np.mean(recalls)) if recalls else float("nan"), "n": self.n,
                "n_classes": len(recalls)}

    def to_json(self) -> dict:
        top5 = self.top_k(5)
        return {
            "accuracy": self.accuracy().to_json(),
            "top5_accuracy": top5.to_json() if top5 else None,
            "balanced_accuracy": self.balanced_accuracy(),
            "per_class": self.per_class(),
            "confusion_matrix": self.confusion().tolist(),
            "confusion_matrix_axes": ["true", "predicted"],  # rows: the true class; columns: the predicted one
            "classes": self.classes,
        }
