"""Ensembles of the default runs: the probe with the fine-tune, and fine-tunes of several seeds.

Issue 14 lists "ensembling probe and fine-tune" among the recipes worth measuring. An ensemble averages the class
probabilities of its members (the mean of the probabilities, as a user's ensemble of exported models would; the
geometric mean is reported beside it). Each one is scored on the photos ``benchmarks/defaults.py`` scores on
(flowers: all 500 of flowers-tune; pets: pets/val) and paired with the default fine-tune (seed 0) and with its own
best member on the same photos: gained −lost, exact McNemar p. Nothing is trained here: the members' stored
``predictions.csv`` (from ``tltool evaluate``) are read from defaults.py's work folder. A member costs its own
training time, so an ensemble of two fine-tunes costs twice the default's minutes and twice its inference.

    python benchmarks/defaults.py --only probe-288 finetune-288 finetune-288-s1 finetune-288-s2   # if not run yet
    python benchmarks/ensembles.py          # seconds

Writes ``benchmarks/results/ensembles.{json,md}``.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, emit  # noqa: E402
from probe_variants import paired  # noqa: E402

REFERENCE = "finetune-288"  # the default fine-tune, seed 0
ENSEMBLES = {
    "flowers": (("probe-288", "finetune-288"), ("probe-288", "finetune-288-s1"), ("probe-288", "finetune-288-s2"),
                ("finetune-288", "finetune-288-s1"), ("finetune-288", "finetune-288-s2"),
                ("finetune-288-s1", "finetune-288-s2"), ("finetune-288", "finetune-288-s1", "finetune-288-s2"),
                ("probe-288", "finetune-288", "finetune-288-s1", "finetune-288-s2")),
    "pets": (("probe-288", "finetune-288"),),
}


def read_probabilities(scores: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(paths, true class index, probabilities)`` of one evaluated run, rows in path order."""
    with open(scores / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["path"])
    classes = [name[2:] for name in rows[0] if name.startswith("p_")]
    y = np.array([classes.index(row["true"]) for row in rows])
    probabilities = np.array([[float(row[f"p_{c}"]) for c in classes] for row in rows])
    return [row["path"] for row in rows], y, probabilities


def members(work: Path, dataset: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The true classes and every member's probabilities on the same photos (a mismatch stops the script)."""
    names = sorted({name for ensemble in ENSEMBLES[dataset] for name in ensemble} | {REFERENCE})
    loaded = {}
    for name in names:
        scores = work / dataset / "scores" / name
        if not (scores / "predictions.csv").exists():
            sys.exit(f"{scores}: not scored yet; run benchmarks/defaults.py --only {name} --data {dataset}")
        loaded[name] = read_probabilities(scores)
    paths, y, _ = loaded[REFERENCE]
    for name, (other_paths, other_y, _) in loaded.items():
        if other_paths != paths or not np.array_equal(other_y, y):
            sys.exit(f"{name} was scored on other photos than {REFERENCE}")
    return y, {name: probabilities for name, (_p, _y, probabilities) in loaded.items()}


def score(ensemble: tuple[str, ...], y: np.ndarray, probabilities: dict[str, np.ndarray]) -> dict:
    from tltool.stats import wilson_interval

    right = {name: probabilities[name].argmax(1) == y for name in ensemble + (REFERENCE,)}
    best = max(ensemble, key=lambda name: right[name].mean())
    mean = np.mean([probabilities[name] for name in ensemble], axis=0).argmax(1) == y
    geometric = np.sum([np.log(np.maximum(probabilities[name], 1e-12)) for name in ensemble], axis=0).argmax(1) == y
    return {"members": list(ensemble), "n": len(y), "accuracy": float(mean.mean()),
            "ci95": wilson_interval(int(mean.sum()), len(y)), "geometric_mean_accuracy": float(geometric.mean()),
            "member_accuracies": {name: float(right[name].mean()) for name in ensemble},
            "vs_default_finetune": paired(mean, right[REFERENCE]), "best_member": best,
            "vs_best_member": paired(mean, right[best])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tltool-bench-defaults"),
                        help="benchmarks/defaults.py's work folder (its --work)")
    args = parser.parse_args()
    results = {}
    for dataset, ensembles in ENSEMBLES.items():
        y, probabilities = members(Path(args.work), dataset)
        results[dataset] = [score(ensemble, y, probabilities) for ensemble in ensembles]
    emit("ensembles", {"reference": REFERENCE, "results": results})
    write_markdown(results)


def _paired_cell(c: dict) -> str:
    return f"{c['difference']:+.3f} (+{c['gained']} −{c['lost']}, p={c['p_value']:.2g})"


def write_markdown(results: dict) -> None:
    lines = ["# Ensembles of the default runs (`benchmarks/ensembles.py`, efficientnet_lite0, 288 px)", "",
             "Mean of the members' class probabilities. flowers: scored on flowers-tune (n=500), members trained on "
             "flowers train; pets: pets/val (n=60). Paired with the default fine-tune (seed 0) and with the "
             "ensemble's best member: difference (gained −lost, exact McNemar p).", "",
             "| data | members (their accuracies) | ensemble [95 % CI] | geometric mean | vs default fine-tune "
             "| vs best member |", "|---|---|---|---|---|---|"]
    for dataset, rows in results.items():
        for r in rows:
            named = ", ".join(f"{m} {a:.3f}" for m, a in r["member_accuracies"].items())
            lo, hi = r["ci95"]
            lines.append(f"| {dataset} | {named} | {r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | "
                         f"{r['geometric_mean_accuracy']:.3f} | {_paired_cell(r['vs_default_finetune'])} | "
                         f"{_paired_cell(r['vs_best_member'])} |")
    (RESULTS / "ensembles.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
