"""Run reports: ``metrics.json``, ``report.md``, ``predictions.csv`` and PNG plots, shared by every training path.

Every artifact is written to a temporary name and renamed, so a killed run never leaves a half-written report.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import BadImageError, TltoolError
from .evaluation import Evaluation
from .images import load_thumbnail
from .plotting import cached_figure, pyplot, save_figure
from .stats import format_proportion
from .utils import md_cell, record_line, sha256_file, shown_name, write_json, write_text_atomic

THUMBNAIL_SIZE = 128  # px of a photo in the misclassified grid


def accuracy_line(evaluation: Evaluation, split: str = "val") -> str:
    return f"{split} accuracy {evaluation.accuracy()}"


def plot_confusion(evaluation: Evaluation, target: Path, title: str) -> None:
    matrix = evaluation.confusion()
    key = {"figure": "confusion", "matrix": matrix.tolist(), "classes": evaluation.classes, "title": title}
    cached_figure(target, key, lambda: _confusion_figure(matrix, evaluation.classes, title))


def _confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str):
    plt = pyplot()
    c = len(classes)
    size = max(4.0, 0.55 * c + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(c), classes, rotation=45, ha="right")
    ax.set_yticks(range(c), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = matrix.max() or 1
    for i in range(c):
        for j in range(c):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > top / 2 else "black", fontsize=9)
    return fig


def worst_mistakes(evaluation: Evaluation, limit: int = 24) -> np.ndarray:
    """Indices of wrongly classified images, most confident mistakes first."""
    wrong = np.flatnonzero(~evaluation.correct)
    return wrong[np.argsort(-evaluation.probs[wrong].max(axis=1), kind="stable")][:limit]


def plot_misclassified(evaluation: Evaluation, paths: Sequence[str], target: Path, limit: int = 24,
                       overlays: Sequence[np.ndarray] | None = None) -> int:
    """A grid of wrongly classified images, most confident mistakes first; returns how many are shown.

    ``overlays``: pictures drawn instead of the images, one per mistake in :func:`worst_mistakes` order (the
    caller's Grad-CAM heat maps of the predicted class).
    """
    wrong = worst_mistakes(evaluation, limit)
    tiles = [(paths[i], evaluation.classes[evaluation.y_true[i]], evaluation.classes[evaluation.y_pred[i]],
              f"{evaluation.probs[i].max():.2f}") for i in wrong]
    suptitle = f"misclassified: {int((~evaluation.correct).sum())} of {evaluation.n}"

    def draw():
        return _misclassified_figure(tiles, suptitle, overlays)

    key = _misclassified_key(tiles, suptitle) if overlays is None else None
    if key is None:
        save_figure(draw(), target)
    else:
        cached_figure(target, key, draw)
    return len(wrong)


def _misclassified_key(tiles: list[tuple[str, str, str, str]], suptitle: str) -> dict | None:
    """What the grid shows: each photo by its content (a photo replaced at the same path draws anew)."""
    try:
        shown = [(sha256_file(path), *labels) for path, *labels in tiles]
    except OSError:
        return None
    return {"figure": "misclassified", "tiles": shown, "title": suptitle, "thumbnail": THUMBNAIL_SIZE}


def _misclassified_figure(tiles: list[tuple[str, str, str, str]], suptitle: str,
                          overlays: Sequence[np.ndarray] | None):
    plt = pyplot()
    explained = overlays is not None
    overlays = list(overlays) if explained else [None] * len(tiles)
    cols = min(6, max(1, len(tiles)))
    rows = max(1, math.ceil(len(tiles) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, true, pred, p), overlay in zip(axes.flat, tiles, overlays):
        try:
            ax.imshow(overlay if overlay is not None else load_thumbnail(path, THUMBNAIL_SIZE))
        except BadImageError:
            pass
        ax.set_title(f"true {true}\npred {pred} ({p})", fontsize=8)
    if not tiles:
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    heat = ", Grad-CAM of the predicted class" if explained else ""
    fig.suptitle(suptitle + heat)
    return fig


def write_predictions(evaluation: Evaluation, paths: Sequence[str], target: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "true", "predicted", "correct", "confidence"] + [f"p_{c}" for c in evaluation.classes])
    for i, path in enumerate(paths):
        writer.writerow([path, evaluation.classes[evaluation.y_true[i]], evaluation.classes[evaluation.y_pred[i]],
                         int(evaluation.correct[i]), f"{evaluation.probs[i].max():.6f}"]
                        + [f"{p:.6f}" for p in evaluation.probs[i]])
    write_text_atomic(target, buf.getvalue())


def read_predictions(path: Path) -> tuple[list[str], list[str], list[str], list[str]]:
    """``(paths, true labels, predicted labels, classes)`` from a run's ``predictions.csv``; a file tltool did not
    write (empty, not text, rows cut short) is a :class:`TltoolError` naming it."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows, lines = [], []  # each record and the line it starts on (a path may hold a line break)
            for row in reader:
                rows.append(row)
                lines.append(record_line(reader, row))
    except (OSError, UnicodeDecodeError, StopIteration, csv.Error) as exc:
        raise TltoolError(f"{path}: not a predictions.csv tltool wrote ({exc.__class__.__name__}: {exc}).") from None
    if header[:3] != ["path", "true", "predicted"] or any(len(r) != len(header) for r in rows):
        raise TltoolError(f"{path}: not a predictions.csv tltool wrote (its header or a row's cells differ).")
    classes = [h[2:] for h in header[5:]]
    for line, row in zip(lines, rows):
        problem = _prediction_problem(row, classes)
        if problem:
            raise TltoolError(f"{path}, row {line}: {problem}; not a predictions.csv tltool wrote.")
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], classes


def _prediction_problem(row: list[str], classes: list[str]) -> str | None:
    """What makes one row of a predictions.csv one tltool did not write: a class not in its header (compare scored
    it as a plain mistake), or a probability that is not a number from 0 to 1 (nan passed)."""
    for cell, what in ((row[1], "true"), (row[2], "predicted")):
        if cell not in classes:
            return f"the {what} class {shown_name(cell)!r} is none of its columns' classes"
    for cell in row[4:]:
        try:
            value = float(cell)
        except ValueError:
            return f"the probability {shown_name(cell)!r} is not a number"
        if not 0.0 <= value <= 1.0:  # nan and inf fail too
            return f"the probability {shown_name(cell)!r} is not from 0 to 1"
    return None


def trained_on_line(seen: int, n: int, run: str) -> str:
    """The sentence every score on images its run was trained on carries (evaluate, compare, the report)."""
    return (f"{seen} of these {n} images were in the training data of {run}: its accuracy on them is optimistic, "
            "not an estimate for new photos")


LOPSIDED = 2.0  # an interval whose longer side is over twice its shorter one is not given as "±"


def resolution_line(accuracy: dict, cross_validated: bool = False) -> str:
    """What the accuracy's interval means for choosing settings: its half-width in points, and what to do.

    Not "settings closer than that cannot be told apart": scored on separate images, two runs need more than the
    half-width between them (about 1.4 times it); on the same images the paired test resolves less."""
    lo, hi = accuracy["ci95"]
    below, above = 100 * (accuracy["value"] - lo), 100 * (hi - accuracy["value"])
    also = "" if cross_validated else ", or measure on every labelled photo with `--cv`"
    rank = f"to rank two settings, score both on the same images with `tltool compare`{also}"
    if max(below, above) > LOPSIDED * min(below, above):  # near 0 or 1 a "±" hides that it can go one way only
        return (f"this accuracy's 95 % interval on these {accuracy['n']} images runs from {below:.1f} points below "
                f"it to {above:.1f} above; {rank}")
    return (f"this accuracy is known to about ±{(below + above) / 2:.1f} points on these {accuracy['n']} images "
            f"(half-width of its 95 % interval); {rank}")


def write_picture_report(run_dir: Path, title: str, facts: dict, png: str, lines: Sequence[str] = ()) -> None:
    """A picture's run folder (viz, augment preview) laid out as every run's: ``metrics.json`` holds ``facts`` (what
    was drawn, and from what), ``report.md`` the title, ``lines`` and the picture."""
    write_json(run_dir / "metrics.json", facts)
    body = "".join(f"- {line}\n" for line in lines)
    write_text_atomic(run_dir / "report.md", f"# {title}\n\n{body}\n![{title}]({png})\n")


def weights_line(weights: dict) -> str:
    """Which epoch's weights a trained network's accuracy is of (:func:`tltool.training.shipped_weights`): a run
    folder's best-epoch file, of a worse-scored epoch, passed for the model's."""
    epoch, lowest = weights["epoch"], weights.get("lowest_val_loss_epoch")
    if weights["chosen_by"] == "refit":
        return f"model: the refit's weights, after its last epoch ({epoch}) on train+val (below)"
    if weights["chosen_by"] == "early stopping":
        return (f"model: the weights of epoch {epoch} of {weights['epochs']}, where early stopping ended stage "
                f"{weights['stage']} at its lowest val loss: chosen on these val images, so the accuracy above "
                "leans optimistic")
    text = f"model: the weights after the last epoch ({epoch})"
    if lowest and lowest != epoch:
        text += (f"; stage {weights['stage']}'s val loss was lowest at epoch {lowest} (best-epoch{lowest:04d}"
                 ".weights.h5, which `--early-stopping` would restore), but weights picked by their val score are "
                 "scored on the images that picked them")
    return text


def markdown_summary(title: str, metrics: dict) -> str:
    val, cv = metrics["val"], metrics.get("cv")
    lines = [f"# {title}", ""]
    if cv:  # the headline the terminal printed: pooled over every repeat; the tables are the first repeat's
        lines += [f"- **cross-validated accuracy: {format_proportion(cv['accuracy'])}** ({cv['description']}; fold "
                  f"mean {cv['fold_mean']:.3f} ± {cv['fold_std']:.3f})",
                  f"- out-of-fold predictions{' of the first repeat' if cv.get('repeats', 1) > 1 else ''} (the "
                  f"per-class table, the plots and predictions.csv): {format_proportion(val['accuracy'])}"]
    else:
        lines += [f"- **{metrics.get('scored_on') or 'validation'} accuracy: {format_proportion(val['accuracy'])}**"]
    lines.append(f"- {resolution_line(cv['accuracy'] if cv else val['accuracy'], bool(cv))}")
    lines += [f"- **data warning: {warning}**" for warning in metrics.get("data_warnings") or []]
    if metrics.get("images_trained_on"):
        lines.append(f"- **{trained_on_line(metrics['images_trained_on'], val['accuracy']['n'], 'the run')}**")
    if metrics.get("model_weights"):
        lines.append(f"- {weights_line(metrics['model_weights'])}")
    if metrics.get("refit"):
        lines.append(f"- {metrics['refit']['note']}")
    # a repeated --cv's headline pools every repeat, these lines one: a review read 0.933 beside 0.938 on balanced
    # classes, where the two must agree for the same predictions
    first = ", the first repeat's out-of-fold predictions" if cv and cv.get("repeats", 1) > 1 else ""
    if val.get("top5_accuracy"):
        lines.append(f"- top-5 accuracy{first and ' (' + first[2:] + ')'}: {format_proportion(val['top5_accuracy'])}")
    ba = val["balanced_accuracy"]
    lines.append(f"- balanced accuracy: {ba['value']:.3f} (mean recall over {ba['n_classes']} classes, n={ba['n']}"
                 f"{first})")
    for name, tta in (metrics.get("tta") or {}).items():
        lines.append(f"- with test-time augmentation `{name}`: {format_proportion(tta['accuracy'])}")
    if metrics.get("train_accuracy"):
        lines.append(f"- training accuracy: {format_proportion(metrics['train_accuracy'])}")
    lines += ["", "Intervals are 95 % Wilson score intervals over the n images; on a small validation split they are "
              "wide, and two runs whose intervals overlap may not differ at all (`tltool compare` tests it).", ""]
    lines += ["## Per class", "", "| class | precision | recall [95 % CI] | F1 | n |", "|---|---|---|---|---|"]
    for name, row in val["per_class"].items():
        recall = format_proportion(row["recall"]) if row["recall"] else "n/a"
        precision, f1 = (f"{row[key]:.3f}" if row[key] is not None else "n/a" for key in ("precision", "f1"))
        lines.append(f"| {md_cell(name)} | {precision} | {recall} | {f1} | {row['support']} |")
    lines += ["", "## Settings", "", "```json"]
    lines += [json.dumps(metrics.get("config", {}), indent=2, default=str), "```", ""]
    lines += ["## Plots", "", "![confusion matrix](confusion_matrix.png)", "", "![misclassified](misclassified.png)"]
    if (metrics.get("artifacts") or {}).get("training_curves"):
        lines += ["", "![training curves](training_curves.png)"]
    return "\n".join(lines) + "\n"


def write_run_report(run_dir: str | Path, evaluation: Evaluation, paths: Sequence[str], *, kind: str, title: str,
                     config: dict, extra: dict | None = None,
                     tta: dict[str, Evaluation] | None = None,
                     overlays: Sequence[np.ndarray] | None = None, scored_on: str | None = None) -> dict:
    """Write the full report of one run; returns the metrics dict written to ``metrics.json``.

    ``overlays``: the misclassified grid's pictures (see :func:`plot_misclassified`), e.g. Grad-CAM heat maps.
    ``scored_on``: what the images scored are, where they are not the run's validation split (``evaluate``'s
    other dataset): named in the headline and the plot instead of "validation".
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(evaluation, run_dir / "confusion_matrix.png",
                   f"{title}\n{accuracy_line(evaluation, scored_on or 'val')}")
    plot_misclassified(evaluation, paths, run_dir / "misclassified.png", overlays=overlays)
    write_predictions(evaluation, paths, run_dir / "predictions.csv")
    write_json(run_dir / "classes.json", evaluation.classes)
    metrics = {
        "kind": kind, "title": title, "split": "val" if scored_on is None else scored_on, "scored_on": scored_on,
        "val": evaluation.to_json(),
        "tta": {name: ev.to_json() for name, ev in (tta or {}).items()} or None,
        "interval_method": "Wilson score interval, 95 %",
        "config": config,
        "artifacts": {"confusion_matrix": "confusion_matrix.png", "misclassified": "misclassified.png",
                      "predictions": "predictions.csv", "summary": "report.md"},
        **(extra or {}),
    }
    if (run_dir / "training_curves.png").exists():
        metrics["artifacts"]["training_curves"] = "training_curves.png"
    rewrite_report(run_dir, metrics)
    return metrics


def rewrite_report(run_dir: str | Path, metrics: dict) -> None:
    """``metrics.json`` and ``report.md`` of ``metrics``: for :func:`write_run_report`, and again when they grew
    after it (a refit)."""
    write_json(Path(run_dir) / "metrics.json", metrics)
    write_text_atomic(Path(run_dir) / "report.md", markdown_summary(metrics["title"], metrics))
