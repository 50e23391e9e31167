"""Choose tltool's defaults on photos no run has seen: every candidate runs as a user would run it (the CLI, in a
subprocess), trains on ``flowers`` (train split; train+val for a refit) or ``pets`` (train split), and is scored by
``tltool evaluate`` on every photo of ``flowers-tune`` (500 photos no run trains, stops or selects on) or of
``pets/val``. Each candidate is compared with the current defaults by ``tltool compare`` on those predictions (paired
Newcombe interval, exact McNemar test). Results go to ``benchmarks/results/defaults.{json,md}``; a candidate already
in the JSON is skipped, so an interrupted run resumes. Each row keeps which score photos it got right, so a candidate
measured on another machine (without the score folders of ``--work``) is paired with the same test; rows measured
before rows kept them need their reference run again (``--only NAME --redo``).

    python benchmarks/defaults.py --list                       # the candidates
    python benchmarks/defaults.py --only 'probe-*'             # the probes: about a minute per dataset on 2 cores
    python benchmarks/defaults.py --only 'finetune-H288*' --data flowers   # 3-8 minutes per fine-tune
    python benchmarks/defaults.py --markdown                   # rewrite defaults.md from the JSON

flowers-tune is used here only to score candidates for the shipped defaults: never to train or early-stop.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, RESULTS, SHARED  # noqa: E402

JSON_PATH, MD_PATH = RESULTS / "defaults.json", RESULTS / "defaults.md"
# the head-first fine-tuning recipe of issue 14 ("H"): a random head trained alone, then the last 3 blocks
HEAD_FIRST = {"--head-init": "random", "--head-epochs": "10", "--unfreeze": "3", "--lr": "3e-4", "--epochs": "15",
              "--schedule": "constant", "--warmup-epochs": "0"}


def head_first(**changes: str) -> tuple[str, ...]:
    """The H recipe's options with some changed: ``head_first(image_size="288", unfreeze="4")``."""
    options = {**HEAD_FIRST, **{"--" + k.replace("_", "-"): v for k, v in changes.items()}}
    return tuple(x for pair in options.items() for x in pair)


# the defaults before this benchmark: what every candidate is compared with
REFERENCES = ("probe-default", "finetune-default", "probe-default-cv")
# what the shipped defaults are (tltool's defaults equal these candidates' settings), for the README's table
CHOSEN = {"`tltool probe DATA` (288 px)": "probe-288", "`tltool finetune DATA` (288 px)": "finetune-288",
          "before: `tltool probe` at 224 px": "probe-default", "before: `tltool finetune` at 224 px": "finetune-default"}


@dataclass(frozen=True)
class Training:
    """One training command: ``probe`` or ``finetune`` with its options; ``refit`` trains on train+val.

    A fine-tune refit trains on train+val as its train split: the model ``finetune --refit`` ships (same stages and
    epochs; the default recipe has no early stopping), without the val run that comes first there.
    """

    command: str
    args: tuple[str, ...] = ()
    refit: bool = False
    cv_repeats: int = 1  # of a ``linear-cv`` training (``tltool linear FEATURES --cv 5 --repeats N``)

    def describe(self) -> str:
        data = "DATA (train+val as train)" if self.refit and self.command == "finetune" else "DATA"
        if self.command == "linear-cv":
            return (f"`tltool probe DATA --features F {' '.join(self.args)}` then `tltool linear F --cv 5 --repeats "
                    f"{self.cv_repeats}` (the saved head is fitted on train+val)")
        return f"`tltool {self.command} {data} {' '.join(self.args)}`".replace(" `", "`")

    @property
    def image_size(self) -> str:
        return self.args[self.args.index("--image-size") + 1] if "--image-size" in self.args else "default"

    @property
    def features_name(self) -> str:
        """The folder of this training's cached features: one per backbone and input size."""
        if "--backbone" not in self.args:
            return f"size-{self.image_size}"
        return f"{self.args[self.args.index('--backbone') + 1]}-size-{self.image_size}"


@dataclass(frozen=True)
class Candidate:
    name: str
    training: str  # key of TRAININGS
    tta: str = "none"
    note: str = ""
    datasets: tuple[str, ...] = ("flowers", "pets")
    scored_by: str = "evaluate"  # or "cv": the out-of-fold predictions of a linear-cv training over train+val


TRAININGS: dict[str, Training] = {
    # the defaults before this benchmark chose 288 px (they were run without --image-size, then the default)
    "probe-default": Training("probe", ("--image-size", "224")),
    **{f"probe-{s}": Training("probe", ("--image-size", str(s))) for s in (256, 288, 320)},
    "probe-288-avgmax": Training("probe", ("--image-size", "288", "--pool", "avgmax")),
    "probe-288-refit": Training("linear-cv", ("--image-size", "288"), refit=True),
    "probe-256-refit": Training("linear-cv", ("--image-size", "256"), refit=True),
    **{f"cv-{s}": Training("linear-cv", ("--image-size", "224" if s == "default" else s), refit=True, cv_repeats=2)
       for s in ("default", "256", "288", "320")},
    "finetune-default": Training("finetune", ("--image-size", "224")),
    **{f"finetune-{s}": Training("finetune", ("--image-size", s)) for s in ("288", "320")},
    "finetune-288-u3": Training("finetune", ("--image-size", "288", "--unfreeze", "3")),
    "finetune-288-mixup": Training("finetune", ("--image-size", "288", "--mixup", "0.2")),
    "finetune-H256": Training("finetune", head_first(image_size="256")),
    "finetune-H288": Training("finetune", head_first(image_size="288")),
    "finetune-H320": Training("finetune", head_first(image_size="320")),
    "finetune-H288-u4": Training("finetune", head_first(image_size="288", unfreeze="4")),
    "finetune-H288-e20": Training("finetune", head_first(image_size="288", epochs="20")),
    "finetune-H288-refit": Training("finetune", head_first(image_size="288"), refit=True),
    "finetune-288-refit": Training("finetune", ("--image-size", "288"), refit=True),
    **{f"finetune-288-refit-s{k}": Training("finetune", ("--image-size", "288", "--seed", str(k)), refit=True)
       for k in (1, 2)},
    **{f"finetune-288-s{k}": Training("finetune", ("--image-size", "288", "--seed", str(k))) for k in (1, 2)},
    # longer or stronger schedules of the default recipe (it trains 105 s of the 5 minutes allowed)
    "finetune-288-e20": Training("finetune", ("--image-size", "288", "--epochs", "20")),
    "finetune-288-lr2": Training("finetune", ("--image-size", "288", "--lr", "2e-4")),
    "finetune-288-u3-e20": Training("finetune", ("--image-size", "288", "--unfreeze", "3", "--epochs", "20")),
    # milder crops (scale 0.6-1 instead of 0.35-1): training objects closer to their size in the test view (FixRes)
    "finetune-288-light": Training("finetune", ("--image-size", "288", "--augment", "light")),
    # the whole network trained (BatchNorm statistics stay frozen), as full fine-tuning is usually done
    "finetune-288-uall": Training("finetune", ("--image-size", "288", "--unfreeze", "all")),
    "finetune-288-uall-lr5": Training("finetune", ("--image-size", "288", "--unfreeze", "all", "--lr", "5e-5")),
    # SGD with momentum (often the better fine-tuning optimizer), and smaller batches (twice the steps)
    "finetune-288-sgd": Training("finetune", ("--image-size", "288", "--optimizer", "momentum", "--lr", "0.01",
                                              "--head-lr", "0.01")),
    "finetune-288-sgd3": Training("finetune", ("--image-size", "288", "--optimizer", "momentum", "--lr", "0.001",
                                               "--head-lr", "0.01")),
    "finetune-288-b16": Training("finetune", ("--image-size", "288", "--batch-size", "16")),
    # stronger regularisation for 250 photos: the heavy augmentation preset, decoupled weight decay, more dropout
    "finetune-288-heavy": Training("finetune", ("--image-size", "288", "--augment", "heavy")),
    "finetune-288-adamw": Training("finetune", ("--image-size", "288", "--optimizer", "adamw", "--weight-decay",
                                                "0.05")),
    "finetune-288-d5": Training("finetune", ("--image-size", "288", "--dropout", "0.5")),
    # the larger offline EfficientNet-Lites (ImageNet top-1 76.7 % and 77.6 % against Lite0's 75.1 %)
    **{f"probe-L{v}-{s}": Training("probe", ("--backbone", f"efficientnet_lite{v}", "--image-size", str(s)))
       for v in (1, 2) for s in (260, 288, 320)},
    **{f"cv-L{v}-{s}": Training("linear-cv", ("--backbone", f"efficientnet_lite{v}", "--image-size", str(s)),
                                refit=True, cv_repeats=2) for v in (1, 2) for s in (288, 320)},
    **{f"finetune-L{v}-{s}": Training("finetune", ("--backbone", f"efficientnet_lite{v}", "--image-size", str(s)))
       for v in (1, 2) for s in (288, 320)},
}


def _candidates() -> list[Candidate]:
    out = [Candidate("probe-default", "probe-default", note="the defaults before this benchmark (224 px)"),
           Candidate("finetune-default", "finetune-default", note="the defaults before this benchmark (224 px)")]
    for size in (224, 256, 288, 320):
        out.append(Candidate(f"probe-{size}-flip", "probe-default" if size == 224 else f"probe-{size}", "flip"))
        if size != 224:
            out.append(Candidate(f"probe-{size}", f"probe-{size}"))
    out += [Candidate("probe-288-avgmax", "probe-288-avgmax", note="avg and max pooling concatenated"),
            Candidate("probe-288-avgmax-flip", "probe-288-avgmax", "flip"),
            Candidate("probe-288-refit", "probe-288-refit", note="head refitted on train+val (`linear --cv 5`)",
                      datasets=("flowers",)),
            Candidate("probe-288-refit-flip", "probe-288-refit", "flip", datasets=("flowers",)),
            Candidate("probe-256-refit-flip", "probe-256-refit", "flip", datasets=("flowers",))]
    out += [Candidate(f"probe-{s}-cv", f"cv-{s}", scored_by="cv", note="5-fold CV over train+val, 2 repeats")
            for s in ("default", "256", "288", "320")]
    for name in ("finetune-288", "finetune-288-u3", "finetune-288-mixup", "finetune-320", "finetune-H256", "finetune-H288", "finetune-H320", "finetune-H288-u4", "finetune-H288-e20"):
        out += [Candidate(name, name), Candidate(f"{name}-flip", name, "flip")]
    out += [Candidate("finetune-H288-refit", "finetune-H288-refit", note="trained on train+val (350 photos)",
                      datasets=("flowers",)),
            Candidate("finetune-H288-refit-flip", "finetune-H288-refit", "flip", datasets=("flowers",)),
            Candidate("finetune-288-refit", "finetune-288-refit", note="the default recipe on train+val (350 photos)",
                      datasets=("flowers",))]
    out += [Candidate(f"finetune-288-s{k}", f"finetune-288-s{k}", note=f"the default recipe, --seed {k}",
                      datasets=("flowers",)) for k in (1, 2)]
    out += [Candidate(f"finetune-288-s{k}-flip", f"finetune-288-s{k}", "flip", datasets=("flowers",)) for k in (1, 2)]
    out += [Candidate(f"finetune-288-refit-s{k}", f"finetune-288-refit-s{k}", datasets=("flowers",),
                      note=f"the default recipe on train+val (350 photos), --seed {k}") for k in (1, 2)]
    out += [Candidate(name, name, note="the default recipe, longer or at a higher learning rate")
            for name in ("finetune-288-e20", "finetune-288-lr2", "finetune-288-u3-e20")]
    out.append(Candidate("finetune-288-light", "finetune-288-light", note="the default recipe, --augment light"))
    out += [Candidate(name, name, note="the default recipe with every block unfrozen", datasets=("flowers",))
            for name in ("finetune-288-uall", "finetune-288-uall-lr5")]
    out += [Candidate("finetune-288-sgd", "finetune-288-sgd", note="the default recipe with SGD + momentum 0.9 at 0.01 (it diverges)",
                      datasets=("flowers",)),
            Candidate("finetune-288-sgd3", "finetune-288-sgd3", note="the default recipe with SGD + momentum 0.9 at "
                      "0.001 (0.01 for the head)", datasets=("flowers",)),
            Candidate("finetune-288-b16", "finetune-288-b16", note="the default recipe at batch 16",
                      datasets=("flowers",))]
    out += [Candidate(name, name, note=note, datasets=("flowers",)) for name, note in (
        ("finetune-288-heavy", "the default recipe, --augment heavy"),
        ("finetune-288-adamw", "the default recipe with AdamW, weight decay 0.05"),
        ("finetune-288-d5", "the default recipe, --dropout 0.5"))]
    for v in (1, 2):
        out += [Candidate(f"probe-L{v}-{s}", f"probe-L{v}-{s}", note=f"EfficientNet-Lite{v}") for s in (260, 288, 320)]
        out += [Candidate(f"probe-L{v}-{s}-cv", f"cv-L{v}-{s}", scored_by="cv",
                          note=f"EfficientNet-Lite{v}, 5-fold CV over train+val, 2 repeats") for s in (288, 320)]
        out += [Candidate(f"finetune-L{v}-{s}", f"finetune-L{v}-{s}", note=f"EfficientNet-Lite{v}") for s in (288, 320)]
    return out


CANDIDATES = {c.name: c for c in _candidates()}


@dataclass
class Layout:
    """Where one dataset's data, runs and scores live."""

    name: str
    train: Path  # what tltool trains on (a folder with train/ and val/)
    score: Path  # what every candidate is evaluated on
    work: Path
    refit: Path | None = None  # train+val as the training split (symlinks), for refit candidates
    timings: dict = field(default_factory=dict)


def layouts(work: Path) -> dict[str, Layout]:
    return {"flowers": Layout("flowers", SHARED / "flowers", SHARED / "flowers-tune", work / "flowers"),
            "pets": Layout("pets", SHARED / "pets", SHARED / "pets" / "val", work / "pets")}


def refit_data(layout: Layout) -> Path:
    """``train/`` = train + val of the dataset, ``val/`` = its val (so the val numbers of a refit mean nothing)."""
    target = layout.work / "data-trainval"
    marker = target / ".complete"
    if not marker.exists():
        for split, sources in (("train", ("train", "val")), ("val", ("val",))):
            for source in sources:
                for image in sorted((layout.train / source).glob("*/*")):
                    link = target / split / image.parent.name / image.name
                    link.parent.mkdir(parents=True, exist_ok=True)
                    if not link.exists():
                        link.symlink_to(image)
        marker.touch()
    return target


# ------------------------------------------------------------------------------------------------ running tltool
def tltool(*args: str) -> dict:
    """Run ``python -m tltool ARGS`` from this checkout; wall and CPU seconds of the command, load before it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1", "TLTOOL_NO_PROGRESS": "1"}
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tltool", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"tltool {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"command": "tltool " + " ".join(args), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "load_before": round(load, 2), "stdout": done.stdout.strip().splitlines()[-3:]}


def train(layout: Layout, key: str) -> tuple[Path, dict]:
    """The run folder of training ``key`` on ``layout`` (trained once, reused by every TTA of it)."""
    spec = TRAININGS[key]
    run = layout.work / "runs" / key
    if (run / "model.json").exists():
        return run, layout.timings.get(key) or _stored_timing(run)
    if run.exists():
        shutil.rmtree(run)  # an interrupted run of this benchmark's own work folder
    data = str(refit_data(layout) if spec.refit and spec.command == "finetune" else layout.train)
    if spec.command == "linear-cv":
        features = _features(layout, spec)
        if not features.exists():
            tltool("probe", data, "--features", str(features), "--out", str(run) + "-probe", *spec.args)
        timing = tltool("linear", str(features), "--cv", "5", "--repeats", str(spec.cv_repeats), "--out", str(run))
    else:
        extra = ("--features", str(_features(layout, spec))) if spec.command == "probe" else ()
        timing = tltool(spec.command, data, "--out", str(run), *extra, *spec.args)
    (run / "benchmark-timing.json").write_text(json.dumps(timing, indent=2))
    layout.timings[key] = timing
    return run, timing


def _stored_timing(run: Path) -> dict:
    path = run / "benchmark-timing.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _features(layout: Layout, spec: Training) -> Path:
    return layout.work / "features" / spec.features_name


def score(layout: Layout, candidate: Candidate, run: Path) -> tuple[Path, dict]:
    target = layout.work / "scores" / candidate.name
    timing = tltool("evaluate", str(run), str(layout.score), "--tta", candidate.tta, "--out", str(target),
                    "--force")
    return target, timing


PAIRED_KEYS = ("n", "both", "only_a", "only_b", "neither", "difference", "ci95", "p_value", "verdict")


def compare(layout: Layout, reference: dict, candidate: dict, name: str) -> dict | None:
    """The paired comparison of two rows on the same score images (A = reference, B = candidate): ``tltool compare``
    on their score folders while both are here, else tltool's same test on the outcomes the rows keep (a new
    machine has none of the score folders an earlier one made under ``--work``); None, said, when neither can be
    had (``--compare-only`` adds it once the reference is run again)."""
    folders = [Path(row["score_dir"]) for row in (reference, candidate)]
    if all((folder / "predictions.csv").is_file() for folder in folders):
        target = layout.work / "compare" / name
        tltool("compare", *map(str, folders), "--out", str(target), "--force")  # a rerun replaces it
        result = json.loads((target / "metrics.json").read_text())
        return {**{k: result[k] for k in PAIRED_KEYS}, "from": "tltool compare"}
    kept = [row.get("outcomes") for row in (reference, candidate)]
    if not all(kept) or kept[0]["photos_sha256"] != kept[1]["photos_sha256"]:
        print(f"    not paired yet, {name}: a score folder is gone ({', '.join(map(str, folders))}) and the results "
              "keep no outcomes of the same photos for both; run the reference again (--only NAME --redo), then "
              "--compare-only", flush=True)
        return None
    from tltool.compare import compare_correct

    a, b = (np.array([c == "1" for c in k["correct"]]) for k in kept)
    result = compare_correct(a, b, images="outcomes kept in defaults.json").to_json()
    return {**{k: result[k] for k in PAIRED_KEYS}, "from": "outcomes kept in defaults.json"}


def outcomes(scored: Path) -> dict:
    """Which score photos a row got right, in the order of their paths (relative to the folder all share, so the
    same photos elsewhere give the same digest): enough for a later paired test, whatever machine runs it."""
    from tltool.report import read_predictions

    paths, true, predicted, _ = read_predictions(scored / "predictions.csv")
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    rows = sorted((os.path.relpath(p, root), t == q) for p, t, q in zip(paths, true, predicted))
    digest = hashlib.sha256("\n".join(path for path, _ in rows).encode()).hexdigest()
    return {"photos_sha256": digest, "correct": "".join("1" if ok else "0" for _, ok in rows)}


# ------------------------------------------------------------------------------------------------------ results
def load_results() -> dict:
    if JSON_PATH.exists():
        return json.loads(JSON_PATH.read_text())
    return {"benchmark": "defaults", "datasets": {}}


def save_results(mine: dict[tuple[str, str], dict]) -> dict:
    """Write this process's rows into the JSON as it is now (another run of this script may be adding its own)."""
    results = load_results()
    for (dataset, name), row in mine.items():
        results["datasets"].setdefault(dataset, {})[name] = row
    results["machine"] = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = JSON_PATH.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(JSON_PATH)
    write_markdown(results)
    return results


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
            "tensorflow": metadata.version("tensorflow"), "date": time.strftime("%Y-%m-%d")}


def run_candidate(layout: Layout, candidate: Candidate, results: dict, references: tuple[str, ...]) -> dict:
    spec = TRAININGS[candidate.training]
    run, train_timing = train(layout, candidate.training)
    if candidate.scored_by == "cv":
        scored, score_timing, data = run, {}, "out-of-fold predictions over train+val (first repeat)"
        accuracy = json.loads((run / "metrics.json").read_text())["cv"]["accuracy"]
    else:
        (scored, score_timing), data = score(layout, candidate, run), str(layout.score.relative_to(SHARED))
        accuracy = json.loads((scored / "metrics.json").read_text())["val"]["accuracy"]
    row = {"training": candidate.training, "command": spec.command, "args": list(spec.args), "refit": spec.refit,
           "tta": candidate.tta, "note": candidate.note, "scored_by": candidate.scored_by, "score_data": data,
           "accuracy": accuracy, "train": _timing(train_timing), "evaluate": _timing(score_timing),
           "val_split": None if spec.refit else _val_split(run), "cv": _cv(run), "paired": {},
           "score_dir": str(scored), "outcomes": outcomes(scored)}
    done = results["datasets"].get(layout.name, {})
    for reference in references:
        same_kind = reference in done and done[reference].get("scored_by", "evaluate") == candidate.scored_by
        if reference != candidate.name and same_kind:
            paired = compare(layout, done[reference], row, f"{reference}--{candidate.name}")
            if paired is not None:
                row["paired"][reference] = paired
    return row


def fill_comparisons(layout: Layout, rows: dict, references: tuple[str, ...]) -> set[str]:
    """Add the paired comparisons rows lack (their reference finished after them), and the outcomes of rows whose
    score folder is still here; the names of rows changed."""
    added = set()
    for name, row in rows.items():
        if "outcomes" not in row and (Path(row["score_dir"]) / "predictions.csv").is_file():
            row["outcomes"] = outcomes(Path(row["score_dir"]))
            added.add(name)
        for reference in references:
            other = rows.get(reference)
            if (reference == name or reference in row["paired"] or other is None
                    or other.get("scored_by", "evaluate") != row.get("scored_by", "evaluate")):
                continue
            paired = compare(layout, other, row, f"{reference}--{name}")
            if paired is not None:
                row["paired"][reference] = paired
                added.add(name)
    return added


def _timing(timing: dict) -> dict:
    return {k: timing.get(k) for k in ("command", "wall_s", "cpu_s", "load_before")}


def _val_split(run: Path) -> dict | None:
    """What the run itself reported on its val split (the number a user sees), or None for a refit/CV run."""
    metrics = json.loads((run / "metrics.json").read_text())
    return None if metrics.get("cv") else metrics["val"]["accuracy"]


def _cv(run: Path) -> dict | None:
    cv = json.loads((run / "metrics.json").read_text()).get("cv")
    return None if not cv else {"accuracy": cv["accuracy"], "description": cv.get("description")}


# ----------------------------------------------------------------------------------------------------- markdown
def _acc(p: dict | None) -> str:
    return "" if not p else f"{p['value']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]"


def _paired(c: dict | None) -> str:
    if not c:
        return ""
    return f"{c['difference']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] p={c['p_value']:.2g}"


def write_markdown(results: dict) -> None:
    lines = ["# Defaults benchmark (`benchmarks/defaults.py`)", "",
             "Each row is a tltool command run as a user would run it, trained on the dataset's train split (train+val "
             "for a refit), scored by `tltool evaluate` on every photo of the score set (flowers: `flowers-tune`, "
             "which no run trains, stops or selects on; pets: `pets/val`). Accuracy with its 95 % Wilson interval; "
             "paired difference (candidate minus reference) with its 95 % Newcombe interval and the exact McNemar "
             "p, from `tltool compare` on the same photos. Training seconds: wall (CPU) of the command on a shared "
             "2-core machine, with the load average before it in brackets; wall times under load are not the "
             "times of a quiet machine. One seed (0) per candidate.", ""]
    lines += _chosen_table(results["datasets"]) + _seed_spread(results["datasets"].get("flowers", {}))
    for name, rows in results["datasets"].items():
        for kind in ("evaluate", "cv"):
            chosen = {k: r for k, r in rows.items() if r.get("scored_by", "evaluate") == kind}
            references = sorted({ref for r in chosen.values() for ref in r["paired"]},
                                key=lambda ref: (ref not in REFERENCES, ref))
            if chosen:
                lines += _table(name, chosen, references)
    lines += ["Training commands (DATA: the dataset folder with its train/ and val/ splits):", ""]
    lines += [f"- `{k}`: {v.describe()}" for k, v in TRAININGS.items()]
    MD_PATH.write_text("\n".join(lines) + "\n")


def _chosen_table(datasets: dict) -> list[str]:
    """The README's table: the shipped defaults on flowers-tune (the val split only as what the run says)."""
    flowers, pets = datasets.get("flowers", {}), datasets.get("pets", {})
    lines = ["## The defaults (README table)", "",
             "| command | flowers-tune, 500 photos never seen | its val split says (n=100) | pets/val (n=60) | "
             "vs the default probe on flowers-tune (paired) | train s wall (cpu) |", "|---|---|---|---|---|---|"]
    for label, name in CHOSEN.items():
        row = flowers.get(name)
        if row is None:
            continue
        versus = row["paired"].get(CHOSEN["`tltool probe DATA` (288 px)"]) if name != "probe-288" else None
        t = row["train"]
        lines.append(f"| {label} | {_acc(row['accuracy'])} | {_acc(row.get('val_split'))} | "
                     f"{_acc((pets.get(name) or {}).get('accuracy'))} | {_paired(versus)} | "
                     f"{t.get('wall_s')} ({t.get('cpu_s')}) |")
    return lines + [""]


def _seed_spread(flowers: dict) -> list[str]:
    """The default fine-tune at other seeds: how far one seed's score can move (no other candidate has them)."""
    seeds = {0: flowers.get("finetune-288"), **{k: flowers.get(f"finetune-288-s{k}") for k in (1, 2)}}
    scores = {k: row["accuracy"]["value"] for k, row in seeds.items() if row}
    if len(scores) < 2:
        return []
    listed = ", ".join(f"{v:.3f} (seed {k})" for k, v in scores.items())
    return [f"The default fine-tune (`finetune-288`) at {len(scores)} seeds scores {listed} on flowers-tune: mean "
            f"{sum(scores.values()) / len(scores):.3f}, range {max(scores.values()) - min(scores.values()):.3f}. "
            "Differences between single-seed candidates of about a point are within this spread.", ""]


def _table(dataset: str, rows: dict, references: list[str]) -> list[str]:
    first = next(iter(rows.values()))
    lines = [f"## {dataset}: {first['score_data']} (n={first['accuracy']['n']})", "",
             "| candidate | accuracy | " + " | ".join(f"vs {r}" for r in references)
             + " | val split says | train s wall (cpu) [load] | evaluate s |",
             "|---|---|" + "---|" * len(references) + "---|---|---|"]
    for cand, row in sorted(rows.items(), key=lambda kv: -kv[1]["accuracy"]["value"]):
        t, e = row["train"], row["evaluate"]
        lines.append(f"| {cand} | {_acc(row['accuracy'])} | "
                     + " | ".join(_paired(row["paired"].get(r)) for r in references)
                     + f" | {_acc(row.get('val_split'))} | {t.get('wall_s')} ({t.get('cpu_s')}) "
                       f"[{t.get('load_before')}] | {e.get('wall_s') or ''} |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["*"], help="candidate names or globs [all]")
    parser.add_argument("--data", nargs="*", default=["flowers", "pets"], choices=["flowers", "pets"])
    parser.add_argument("--redo", action="store_true", help="run candidates already in the JSON again")
    parser.add_argument("--list", action="store_true", help="list the candidates and stop")
    parser.add_argument("--markdown", action="store_true", help="rewrite defaults.md from the JSON and stop")
    parser.add_argument("--references", nargs="*", default=[],
                        help="more candidates to compare every candidate with (e.g. the proposed defaults)")
    parser.add_argument("--compare-only", action="store_true",
                        help="only add the missing paired comparisons of candidates already in the JSON")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tltool-bench-defaults"),
                        help="runs, features and scores (kept, so later candidates reuse them)")
    args = parser.parse_args()
    chosen = [c for c in CANDIDATES.values() if any(fnmatch.fnmatch(c.name, p) for p in args.only)]
    if args.list:
        for c in chosen:
            print(f"{c.name:28s} {TRAININGS[c.training].command:9s} tta={c.tta:5s} {' '.join(TRAININGS[c.training].args)}")
        return
    if args.markdown:
        write_markdown(load_results())
        return
    references = REFERENCES + tuple(args.references)
    if args.compare_only:
        results, work = load_results(), layouts(Path(args.work))
        for d in args.data:
            rows = results["datasets"].get(d, {})
            save_results({(d, name): rows[name] for name in fill_comparisons(work[d], rows, references)})
        return
    # the references first, so every later candidate is compared with them
    chosen.sort(key=lambda c: c.name not in references)
    mine: dict[tuple[str, str], dict] = {}
    for layout in (layouts(Path(args.work))[d] for d in args.data):
        for candidate in chosen:
            results = load_results()  # fresh: references another run of this script finished meanwhile
            for (dataset, name), row in mine.items():
                results["datasets"].setdefault(dataset, {})[name] = row
            done = results["datasets"].get(layout.name, {})
            if layout.name not in candidate.datasets or (candidate.name in done and not args.redo):
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {layout.name} {candidate.name} ...", flush=True)
            row = mine[layout.name, candidate.name] = run_candidate(layout, candidate, results, references)
            print(f"    {_acc(row['accuracy'])}  train {row['train']['wall_s']} s  "
                  + "  ".join(f"vs {k} {_paired(v)}" for k, v in row["paired"].items()), flush=True)
            save_results(mine)

if __name__ == "__main__":
    main()
