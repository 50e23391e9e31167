"""``tltool compare``: are two runs really different on the same images? A paired test, not two point accuracies.

On 100 validation images two runs that differ by 1-4 points are often ranked the wrong way round; the paired
difference with its interval and an exact McNemar test say whether the data can tell them apart at all.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import SameRunWarning, TltoolError
from .models import load_finished_run, missing_file_message
from .plotting import cached_figure, pyplot
from .predict import labelled_images, warn_if_trained_on
from .report import read_predictions, trained_on_line
from .runs import check_run_dir, new_run_dir, writes_runs
from .stats import Proportion, mcnemar_exact, paired_difference_interval
from .utils import read_json, write_json, write_text_atomic


@dataclass
class Comparison:
    run_a: str
    run_b: str
    n: int
    both: int
    only_a: int
    only_b: int
    neither: int
    p_value: float
    difference: float  # accuracy of B minus accuracy of A
    ci95: tuple[float, float]
    images: str  # where the predictions came from
    # {"A": n, "B": n}: how many of the images each run was trained on (0 when its record cannot be read); None on
    # the stored validation predictions (not checked: each run made them before any refit on its val split)
    images_trained_on: dict[str, int] | None = None
    notes: list[str] = field(default_factory=list)  # what the compared predictions are not (TTA, a --cv's repeats)

    @property
    def accuracy_a(self) -> Proportion:
        return Proportion(self.both + self.only_a, self.n)

    @property
    def accuracy_b(self) -> Proportion:
        return Proportion(self.both + self.only_b, self.n)

    @property
    def seen_by(self) -> list[str]:
        """The runs ("A", "B") trained on some of these images: their accuracy on them is no test, so neither is
        the comparison (it declared "A is better, p = 1.2e-07" of a run trained on all 100 images)."""
        return [name for name, n in (self.images_trained_on or {}).items() if n]

    def verdict(self, alpha: float = 0.05) -> str:
        if self.seen_by:
            return (f"none: {' and '.join(self.seen_by)} {'was' if len(self.seen_by) == 1 else 'were'} trained on "
                    "some of these images, so the difference is not a test of the runs")
        interval = f"{self.ci95[0]:+.3f} to {self.ci95[1]:+.3f}"
        excludes_zero = not self.ci95[0] <= 0 <= self.ci95[1]
        if self.p_value < alpha and excludes_zero:
            better = "B" if self.only_b > self.only_a else "A"
            return f"{better} is better, p = {self.p_value:.3g}"
        if self.p_value < alpha or excludes_zero:  # the two methods straddle 5 %: call it undecided, say why
            return (f"borderline on {self.n} images: the exact McNemar p = {self.p_value:.3g} and the interval of "
                    f"the difference ({interval}) fall on different sides of 5 %; treat it as undecided")
        return (f"no detectable difference on {self.n} images (p = {self.p_value:.3g}); the interval of the "
                f"difference still allows {interval}")

    @property
    def undecided(self) -> bool:
        """The images cannot rank the runs: the difference's interval includes 0 or McNemar's p is at least 5 %, or
        a run was trained on some of them."""
        return self.ci95[0] <= 0 <= self.ci95[1] or self.p_value >= 0.05 or bool(self.seen_by)

    def notice(self) -> str:
        """What to do when these images cannot choose (empty when they can)."""
        if not self.undecided:
            return ""
        if self.seen_by:
            return ("do not pick the higher accuracy: compare the runs on photos neither was trained on (`tltool "
                    "compare A B DATA` with a folder of new photos), or on their stored validation predictions")
        return (f"these {self.n} images are too few to choose between A and B: do not pick the higher accuracy; "
                "estimate both with `--cv` (repeated K-fold over train+val) or compare them on a larger held-out "
                "set (`tltool compare A B DATA`)")

    def lines(self) -> list[str]:
        notice = [f"notice: {self.notice()}"] if self.undecided else []
        return [
            f"A: {self.run_a}\n   accuracy {self.accuracy_a}",
            f"B: {self.run_b}\n   accuracy {self.accuracy_b}",
            f"images both get right {self.both}, only A {self.only_a}, only B {self.only_b}, neither {self.neither}",
            f"difference B - A {self.difference:+.3f} [{self.ci95[0]:+.3f}, {self.ci95[1]:+.3f}] "
            f"(95 % Newcombe interval for paired proportions); exact McNemar p = {self.p_value:.3g}",
            f"verdict: {self.verdict()}",
            *notice,
            *(f"note: {note}" for note in self.notes),
        ]

    def leakage_lines(self) -> list[str]:
        """One line per run that was trained on some of these images (what its ``LeakageWarning`` said)."""
        trained_on = self.images_trained_on or {}
        return [trained_on_line(trained_on[name], self.n, f"{name} ({run})") + "; compare the runs on images "
                "neither was trained on" for name, run in (("A", self.run_a), ("B", self.run_b)) if trained_on.get(name)]

    def to_json(self) -> dict:
        return {**asdict(self), "accuracy_a": self.accuracy_a.to_json(), "accuracy_b": self.accuracy_b.to_json(),
                "verdict": self.verdict(), "undecided": self.undecided,
                "notice": self.notice(), "method": "paired: Newcombe (1998) method 10 interval, exact McNemar test"}


def compare_correct(correct_a: np.ndarray, correct_b: np.ndarray, run_a: str = "A", run_b: str = "B",
                    images: str = "") -> Comparison:
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise TltoolError("the two runs were scored on different numbers of images")
    both, only_a, only_b = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
    neither = len(a) - both - only_a - only_b
    diff, lo, hi = paired_difference_interval(both, only_a, only_b, neither)
    return Comparison(run_a, run_b, len(a), both, only_a, only_b, neither, mcnemar_exact(only_a, only_b), diff,
                      (lo, hi), images)


def _stored_correctness(run_dir: Path) -> tuple[dict[str, bool], dict[str, str], list[str]]:
    """``({path: correct}, {path: true label}, classes)`` of a run's stored validation predictions."""
    path = run_dir / "predictions.csv"
    if not path.exists() and not (run_dir / "model.json").is_file():  # a features folder was told to add DATA
        if not run_dir.is_dir():
            raise TltoolError(f"{run_dir}: no such folder. Pass the folder a linear, finetune or train command wrote.")
        raise TltoolError(missing_file_message(run_dir, "predictions.csv"))
    if not path.exists():
        raise TltoolError(f"{run_dir}: no predictions.csv; pass a finished run folder (or give DATA to evaluate).")
    paths, true, predicted, classes = read_predictions(path)
    if len(set(paths)) < len(paths):
        raise TltoolError(f"{path}: an image appears twice; it is not the predictions.csv tltool wrote.")
    return {p: t == q for p, t, q in zip(paths, true, predicted)}, dict(zip(paths, true)), classes


def _stored_prediction_notes(run_dir: Path, name: str) -> list[str]:
    """What a run's stored predictions are not, where its report gives another accuracy: one with test-time
    augmentation (compare pairs the plain predictions; it said "no detectable difference" of a run whose TTA
    scored 2 points more, without a word), or a repeated cross-validation's mean (the first repeat is stored)."""
    try:
        metrics = read_json(run_dir / "metrics.json")
    except (OSError, ValueError, RecursionError):
        return []
    tta = metrics.get("tta") if isinstance(metrics, dict) else None
    cv = metrics.get("cv") if isinstance(metrics, dict) else None
    notes = []
    if isinstance(tta, dict) and tta:
        notes.append(f"{name}'s predictions compared here are without test-time augmentation; its report's accuracy "
                     f"with TTA {', '.join(map(str, tta))} is not what is compared")
    if isinstance(cv, dict) and isinstance(cv.get("repeats"), int) and cv["repeats"] > 1:
        notes.append(f"{name} is a cross-validation: its stored predictions are the out-of-fold ones of its first "
                     f"repeat, while its report's accuracy is the mean of {cv['repeats']} repeats")
    return notes


@writes_runs
def compare_runs(run_a: str | Path, run_b: str | Path, data: str | None = None,
                 out: str | Path | None = None, force: bool = False, engine: str = "auto") -> tuple[Comparison, Path]:
    """Compare two runs on their stored validation predictions, or on DATA evaluated by both (on ``engine``, as in
    ``tltool evaluate``). ``out``: an earlier run there is replaced only with ``force``."""
    run_a, run_b = Path(run_a), Path(run_b)
    check_run_dir(out, force, reads=(run_a, run_b, data), kind="compare")
    if os.path.realpath(run_a) == os.path.realpath(run_b):
        warnings.warn(f"{run_a} and {run_b} are one run: it agrees with itself on every image, so this comparison "
                      "says nothing; give two runs.", SameRunWarning, stacklevel=3)
    if data is None:
        (a, truth_a, classes_a), (b, truth_b, classes_b) = _stored_correctness(run_a), _stored_correctness(run_b)
        if classes_a != classes_b:
            raise TltoolError(f"the runs have different class lists ({classes_a} vs {classes_b}): they answer "
                              "different questions and cannot be compared.")
        if set(a) != set(b):
            only = len(set(a) ^ set(b))
            raise TltoolError(f"the runs were validated on different images ({only} differ; "
                              f"{len(a)} vs {len(b)} images): use the same data and split (--seed, "
                              "--val-fraction), or give DATA to evaluate both on it.")
        disagree = [p for p in truth_a if truth_a[p] != truth_b[p]]
        if disagree:
            raise TltoolError(f"the runs give {len(disagree)} image(s) different true labels (e.g. {disagree[0]}: "
                              f"{truth_a[disagree[0]]!r} vs {truth_b[disagree[0]]!r}): they were not scored against "
                              "the same labels and cannot be compared.")
        order = sorted(a)
        correct_a, correct_b = [a[p] for p in order], [b[p] for p in order]
        source, trained_on = "stored validation predictions", None
        notes = _stored_prediction_notes(run_a, "A") + _stored_prediction_notes(run_b, "B")
    else:
        correct_a, correct_b, trained_on = _evaluate_both(run_a, run_b, data, engine)
        source, notes = f"{data}, evaluated by both", []
    comparison = compare_correct(np.array(correct_a), np.array(correct_b), str(run_a), str(run_b), source)
    comparison.images_trained_on, comparison.notes = trained_on, notes
    target = new_run_dir("compare", run_a.name[:20], run_b.name[:20], out=out, force=force)
    write_json(target / "metrics.json", comparison.to_json())
    plot_comparison(comparison, target / "compare.png")
    write_text_atomic(target / "report.md", comparison_markdown(comparison))
    return comparison, target


def comparison_markdown(comparison: Comparison) -> str:
    """``report.md``: the lines the terminal shows, then, in bold, the runs that were trained on these images."""
    lines = [f"- {line.replace(chr(10), ' ')}" for line in comparison.lines()]
    lines += [f"- **{line}**" for line in comparison.leakage_lines()]
    return ("# Paired comparison\n\n" + "\n".join(lines) + f"\n\nImages: {comparison.images}.\n\n"
            "![the two accuracies and their paired difference](compare.png)\n")


def plot_comparison(comparison: Comparison, target: Path) -> None:
    """``compare.png``: each run's accuracy with its interval beside the paired difference with its own: two
    intervals that overlap can still rank the runs, which only the paired one shows. Drawn once per comparison
    (:func:`cached_figure`): a repeated compare imports no matplotlib."""
    key = {"figure": "compare", "drawn": 2, **comparison.to_json()}  # drawn: this drawing's version
    cached_figure(target, key, lambda: _comparison_figure(comparison))


def _comparison_figure(c: Comparison):
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 2.4), gridspec_kw={"width_ratios": [3, 2]})
    for row, accuracy in enumerate((c.accuracy_a, c.accuracy_b)):
        low, high = accuracy.interval
        left.errorbar(accuracy.value, row, xerr=[[accuracy.value - low], [high - accuracy.value]], fmt="o",
                      capsize=4, color=f"C{row}")
    left.set_yticks([0, 1], ["A", "B"])
    left.set_ylim(1.6, -0.6)
    left.set_xlabel(f"accuracy on {c.n} images (95 % Wilson interval)")
    low, high = c.ci95
    right.errorbar(c.difference, 0, xerr=[[c.difference - low], [high - c.difference]], fmt="o", capsize=4,
                   color="black")
    right.axvline(0, color="grey", linestyle="--", linewidth=1)
    right.set_yticks([])
    right.xaxis.set_major_locator(plt.MaxNLocator(nbins=4))  # the default eight ticks of a narrow panel ran together
    right.set_xlabel("B - A, paired (95 % Newcombe interval)")
    right.set_title(f"only A right {c.only_a}, only B right {c.only_b}; McNemar p = {c.p_value:.3g}", fontsize=9)
    fig.tight_layout()
    return fig


def _evaluate_both(run_a: Path, run_b: Path, data: str,
                   engine: str = "auto") -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Which images of ``data`` each run gets right, and how many of them each was trained on (each named in a
    :class:`LeakageWarning`)."""
    model_a, model_b = load_finished_run(run_a, engine), load_finished_run(run_b, engine)
    if model_a.classes != model_b.classes:
        raise TltoolError(f"the runs have different class lists ({model_a.classes} vs {model_b.classes}).")
    # the stricter of the two runs' decode limits: every image kept can be predicted by both
    _, paths, y = labelled_images(data, model_a.classes, min(model_a.max_pixels, model_b.max_pixels))
    trained_on = {}
    for name, run, model in (("A", run_a, model_a), ("B", run_b, model_b)):
        trained_on[name] = warn_if_trained_on(run, model, paths)
    return (model_a.predict_paths(paths).argmax(1) == y), (model_b.predict_paths(paths).argmax(1) == y), trained_on
