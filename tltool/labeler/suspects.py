"""Suspect labels: images whose label disagrees with what the rest of the dataset says about them.

Every image (all splits) gets two estimates of the probability of its own label, neither of which lets the image
vouch for itself: a cross-validated logistic regression on standardised CNN features (the image is predicted by a
model that never saw it) and the share of its k nearest neighbours (cosine on the features) carrying that label.
Their mean is the image's support; ``score = 1 - support`` ranks the images. Measured on flowers/train (250
photos, 30 random draws of 5 images moved to a random wrong class): at least 4 of the 5 were in the top 15 in 97 %
of the draws with the mean, 90 % with either estimate alone.

The top ones are written as ``suspects.csv`` (``path,label,suggested,score``; paths relative to the dataset
root), the file ``tltool label serve DATASET --review suspects.csv`` walks through, and as a PNG contact sheet.
"""
from __future__ import annotations

import csv
import io
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backbones import get_backbone_spec
from ..dataset import Dataset, load_dataset
from ..errors import TltoolError
from ..features import extract_features
from ..heads import cv_folds, get_head_spec, make_pipeline
from ..images import DEFAULT_MAX_PIXELS
from ..linear import default_features_dir
from ..plotting import pyplot, save_figure
from ..runs import check_run_dir, new_run_dir, writes_runs
from ..settings import check_range
from ..utils import md_cell, write_json, write_text_atomic
from ..viz.plots import thumbnail
from .export import export_origin
from .store import LABELS_CSV, load_labelled, read_labels_csv

CSV_COLUMNS = ("path", "label", "suggested", "score")  # which labels were accepted suggestions: metrics.json
DEFAULT_C = 0.1  # moderate regularisation; on flowers C from 0.01 to 1 ranked planted mistakes about equally well
SHOWN_IN_TERMINAL = 10  # suspects `tltool label suspects` prints; suspects.csv holds all of them


@dataclass
class Suspect:
    rank: int
    path: str  # relative to the dataset root, POSIX separators
    label: str
    suggested: str
    score: float  # 1 - mean(cross-validated probability of the label, share of neighbours with the label)
    cv_probability: float
    knn_agreement: float
    split: str
    file: str  # absolute path
    assisted: bool = False  # the label was an accepted suggestion in the labeler (labels.csv's assisted column)

    @property
    def suggests_relabel(self) -> bool:
        """Another class is better supported than the label. Otherwise the image is listed only for its rank (its
        label's support is among the ``--top`` lowest), and no class fits it better than its own."""
        return self.suggested != self.label

    def verdict(self) -> str:
        """``label -> suggested`` for a suggested relabel, else that the label is kept."""
        if self.suggests_relabel:
            return f"{self.label} -> {self.suggested}"
        return f"{self.label} (kept: no class fits better)"


@dataclass
class SuspectsResult:
    suspects: list[Suspect]
    run_dir: Path
    csv: Path
    png: Path
    summary: dict


def suspect_scores(X: np.ndarray, y: np.ndarray, classes: list[str], neighbours: int = 10, max_folds: int = 5,
                   C: float = DEFAULT_C, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cross-validated class probabilities ``(n, C)`` and kNN label distributions ``(n, C)`` (self excluded)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import NearestNeighbors

    n_classes = len(classes)
    counts = np.bincount(y, minlength=n_classes)
    small = [classes[c] for c in np.flatnonzero((counts > 0) & (counts < 2))]
    if small:
        raise TltoolError(f"class(es) {small} have a single image; cross-validated suspects need at least 2 images "
                          "of every class. Label more images of them or leave them out.")
    pipeline = make_pipeline(get_head_spec("logreg"), True, None, seed).set_params(clf__C=C)
    folds = StratifiedKFold(n_splits=cv_folds(y, max_folds), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        proba = cross_val_predict(pipeline, X, y, cv=folds, method="predict_proba")
    if proba.shape[1] != n_classes:  # a class absent from the labels: widen to all classes
        full = np.zeros((len(y), n_classes))
        full[:, np.unique(y)] = proba
        proba = full
    k = neighbours_used(neighbours, len(y))
    unit = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(unit).kneighbors(unit)
    knn = np.zeros((len(y), n_classes))
    for i, row in enumerate(idx):
        others = [j for j in row if j != i][:k]
        np.add.at(knn[i], y[others], 1.0 / len(others))
    return proba, knn


def neighbours_used(neighbours: int, n_images: int) -> int:
    """k of the nearest-neighbour check: ``--neighbours``, at most the other images there are."""
    return max(1, min(neighbours, n_images - 1))


def labeler_manifest(data: str) -> str:
    """A labeler's dataset folder (``labels.csv`` beside ``unlabeled/``) means its labels, so the suspects' paths
    are relative to that folder, as ``tltool label serve DATASET --review suspects.csv`` expects."""
    manifest = Path(data) / LABELS_CSV
    return str(manifest) if Path(data).is_dir() and manifest.is_file() else str(data)


def dataset_root(dataset: Dataset) -> Path:
    """The folder paths in ``suspects.csv`` are relative to: the dataset folder, or the manifest's folder."""
    kind, _, where = dataset.source.partition(":")
    if kind == "folder":
        return Path(where)
    if kind == "csv":
        return Path(where).parent
    return Path(os.path.commonpath([r.path for r in dataset.records])) if dataset.records else Path(".")


def review_paths(dataset: Dataset, paths: list[str]) -> tuple[Path, list[str]]:
    """The folder ``suspects.csv``'s paths are relative to, and those paths. For a split ``tltool label export``
    wrote, that is the labeler folder it came from, which ``label serve --review`` opens: the split's own paths
    (``train/daisy/x.jpg``) were not found there, so a review of them queued nothing."""
    root = dataset_root(dataset)
    relative = [Path(os.path.relpath(p, root)).as_posix() for p in paths]
    origin = export_origin(root)
    if origin is not None and all(rel in origin[1] for rel in relative):
        return origin[0], [origin[1][rel] for rel in relative]
    return root, relative


@writes_runs
def find_suspects(data: str, out: str | Path | None = None, *, backbone: str = "efficientnet_lite0",
                  weights: str = "imagenet", image_size: int | None = None, resize: str = "crop",
                  batch_size: int = 32, features_dir: str | Path | None = None, top: int = 30,
                  neighbours: int = 10, C: float = DEFAULT_C, val_fraction: float = 0.2, seed: int = 0,
                  max_pixels: int | None = None, force: bool = False, engine: str = "auto") -> SuspectsResult:
    """``tltool label suspects``: extract (or reuse) features, score every image, write the ranked suspects.
    ``out``: an earlier run there is replaced only with ``force``."""
    check_range("top", top)
    check_range("neighbours", neighbours)  # -3 ran as 1 while metrics.json said "the -3 nearest neighbours"
    check_run_dir(out, force, kind="suspects")
    spec = get_backbone_spec(backbone)  # a bad name fails before any file is read
    manifest = labeler_manifest(data)
    dataset = load_labelled(Path(data)) if manifest != str(data) else load_dataset(manifest)
    features_dir = features_dir or default_features_dir(data, spec.name, image_size, resize, weights)
    result = extract_features(dataset, features_dir, option="--features", backbone=spec.name, weights=weights,
                              image_size=image_size, resize=resize, batch_size=batch_size, val_fraction=val_fraction,
                              seed=seed, max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels,
                              engine=engine, force=force)
    fs = result.features
    proba, knn = suspect_scores(fs.avg, fs.labels, fs.classes, neighbours, C=C, seed=seed)
    rows = np.arange(len(fs.labels))
    support = (proba + knn) / 2
    own = support[rows, fs.labels]
    order = np.lexsort((proba[rows, fs.labels], own))  # least support first; ties: lower CV probability
    root, shown = review_paths(dataset, fs.paths)
    assisted = read_labels_csv(root / LABELS_CSV)[1]
    suspects = [Suspect(rank=r + 1, path=shown[i],
                        label=fs.classes[fs.labels[i]], suggested=fs.classes[int(support[i].argmax())],
                        score=float(1.0 - own[i]), cv_probability=float(proba[i, fs.labels[i]]),
                        knn_agreement=float(knn[i, fs.labels[i]]), split=str(fs.splits[i]), file=fs.paths[i])
                for r, i in enumerate(order[:top])]
    for s in suspects:
        s.assisted = s.path in assisted
    run_dir = new_run_dir("suspects", dataset.name, spec.name, out=out, force=force)
    csv_path, png = run_dir / "suspects.csv", run_dir / "suspects.png"
    write_suspects_csv(suspects, csv_path)
    plot_contact_sheet(suspects, png, f"{dataset.name}: {len(suspects)} most suspect labels of {len(rows)}")
    summary = {
        "dataset": dataset.source, "root": str(root), "n_images": int(len(rows)), "classes": fs.classes,
        "features": str(fs.directory), "backbone": spec.name, "method": {
            "probability": f"{cv_folds(fs.labels)}-fold cross-validated logistic regression on standardised "
                           f"features, C={C}",
            "neighbours": f"share of the {neighbours_used(neighbours, len(rows))} nearest neighbours (cosine) with "
                          "the same label",
            "score": "1 - mean of the two estimates of the own label's probability"},
        "cv_accuracy": float((proba.argmax(axis=1) == fs.labels).mean()),
        "knn_agreement_mean": float(knn[rows, fs.labels].mean()),
        "disagreeing": int((support.argmax(axis=1) != fs.labels).sum()),
        "assisted_labels": len(assisted), "assisted_suspects": sum(s.assisted for s in suspects),
        "suspects": [{k: v for k, v in s.__dict__.items() if k != "file"} for s in suspects],
        "csv": csv_path.name, "png": png.name, **_review(root, csv_path),
    }
    write_json(run_dir / "metrics.json", summary)
    write_text_atomic(run_dir / "report.md", suspects_markdown(dataset.name, suspects, summary))
    return SuspectsResult(suspects, run_dir, csv_path, png, summary)


def suspects_markdown(name: str, suspects: list[Suspect], summary: dict) -> str:
    """``report.md``, the run's summary: the numbers the terminal prints, how each score is made, every suspect
    of ``suspects.csv`` with its verdict, the contact sheet, and what to do next."""
    method = summary["method"]
    lines = [f"# Suspect labels: {md_cell(name)}", "",
             f"{summary['disagreeing']} of {summary['n_images']} images are better supported as another class than "
             f"their own (cross-validated accuracy {summary['cv_accuracy']:.3f}, mean neighbour agreement "
             f"{summary['knn_agreement_mean']:.3f}). Score: {method['score']}; from a {method['probability']} and "
             f"the {method['neighbours']}.", "",
             "| rank | score | label | verdict | photo |", "|---|---|---|---|---|"]
    lines += [f"| {s.rank} | {s.score:.3f} | {md_cell(s.label)} | {md_cell(s.verdict())} | {md_cell(s.path)} |"
              for s in suspects]
    review = summary.get("review_command")
    lines += ["", f"![suspects]({summary['png']})", "",
              f"Review them first: `{review}`" if review else summary.get("review_hint", ""), ""]
    return "\n".join(lines)


def _review(root: Path, csv_path: Path) -> dict[str, str]:
    """How to act on the suspects: the labeler's review for a labeler folder (its labels are in labels.csv); for
    class folders or a manifest of one's own, a labeler there would start with no label and its labels.csv would
    not change what the folders or the manifest say."""
    if (root / LABELS_CSV).is_file():
        return {"review_command": f"tltool label serve {shlex.quote(str(root))} --review {shlex.quote(str(csv_path))}"}
    return {"review_hint": "to fix a label, move the photo into its class's folder (or edit the manifest's row) and "
                           "run again; `tltool label serve --review` is for a labeler's folder (labels.csv)"}


def terminal_lines(result: SuspectsResult, shown: int = SHOWN_IN_TERMINAL) -> list[str]:
    """What ``tltool label suspects`` prints: how many images another class fits better, how many of the suspects
    are listed here of how many ``suspects.csv`` holds, one row per listed suspect, and the files."""
    summary, listed, total = result.summary, result.suspects[:shown], len(result.suspects)
    which = f"all {total} here" if total <= shown else f"the first {len(listed)} here"
    if summary["disagreeing"]:
        lines = [f"{summary['disagreeing']} of {summary['n_images']} images are better supported as another class "
                 f"than their own; the {total} most suspect are in {result.csv.name}, {which}:"]
    else:  # "0 of 16 ... the 16 most suspect" read as a contradiction
        lines = [f"none of the {summary['n_images']} images is better supported as another class than its own; the "
                 f"{total} with the least support for their label are in {result.csv.name}, {which}:"]
    lines += [f"{s.rank:>3}  {s.score:.3f}  {s.verdict()}  {s.path}" for s in listed]
    review = ([f"review them first: {summary['review_command']}"] if "review_command" in summary
              else [summary["review_hint"]] if "review_hint" in summary else [])
    return lines + [f"-> {result.csv}", f"-> {result.png}", *review]


def write_suspects_csv(suspects: list[Suspect], target: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for s in suspects:
        writer.writerow([s.path, s.label, s.suggested, f"{s.score:.4f}"])
    write_text_atomic(target, buf.getvalue())


def plot_contact_sheet(suspects: list[Suspect], target: Path, title: str, cols: int = 6, limit: int = 36) -> None:
    plt = pyplot()
    shown = suspects[:limit]
    cols = min(cols, max(1, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.75 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, s in zip(axes.flat, shown):
        picture = thumbnail(s.file, 128)
        if picture is not None:
            ax.imshow(picture)
        arrow = f"→ {s.suggested}" if s.suggests_relabel else "(kept)"
        ax.set_title(f"#{s.rank} {s.label} {arrow}\nscore {s.score:.2f}  {Path(s.path).name[:14]}", fontsize=7.5,
                     color="firebrick" if s.suggests_relabel else "black")
    fig.suptitle(f"{title}\nlabel → suggested; score = 1 - support for the label (cross-validated probability and neighbours)", fontsize=10)
    save_figure(fig, target)
