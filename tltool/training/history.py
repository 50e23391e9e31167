"""The per-epoch history of a run: ``history.csv`` and the training-curves plot."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..plotting import pyplot, save_figure
from ..utils import write_text_atomic


def write_history(history: list[dict], target: Path) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(target, buf.getvalue())


def plot_history(history: list[dict], target: Path, title: str) -> None:
    plt = pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, ax, label in (("loss", ax_loss, "train"), ("val_loss", ax_loss, "val"),
                           ("accuracy", ax_acc, "train"), ("val_accuracy", ax_acc, "val")):
        values = [r.get(key, np.nan) for r in history]
        ax.plot(epochs, values, marker="o", ms=3, label=label)
    stage_changes = [r["epoch"] - 0.5 for prev, r in zip(history, history[1:]) if r["stage"] != prev["stage"]]
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        for x in stage_changes:
            ax.axvline(x, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, target)
