"""Train a Keras classifier on a dataset and report it: the part fine-tuning and training from scratch share.

Data (split, validation, the one pipeline with augmentation), the epoch loop with checkpoints and resume, the
final model file, and the same evaluation report as the linear path all live here once.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .configs import RunConfig, TrainOptions  # noqa: F401  (RunConfig's home was here; it stays importable)
from .dataset import Dataset, label_indices, load_dataset, write_manifest
from .distribute import resolve_strategy, shard_options, worker_scratch_dir
from .errors import TltoolError
from .evaluation import Evaluation
from .inspection import prepare_dataset
from .progress import say
from .report import write_run_report
from .runs import new_run_dir
from .training import Stage, plot_history, run_stages
from .tta import TTA_MODES
from .utils import atomic_path, read_json, write_json

SPLIT_FILE = "split.csv"  # the exact split of a run (absolute paths): what --resume trains and validates on


@dataclass
class TrainResult:
    """``run_dir`` and ``evaluation`` are None on a multiworker worker that is not the chief (it writes nothing)."""

    run_dir: Path | None
    evaluation: Evaluation | None
    metrics: dict
    model: object
    chief: bool = True


def set_precision(mixed: bool) -> None:
    from ._tf import keras, tf

    if not mixed:
        keras.mixed_precision.set_global_policy("float32")
        return
    if not tf.config.list_physical_devices("GPU"):
        raise TltoolError("--mixed-precision needs a GPU: on a CPU float16 has no fast kernels and training becomes "
                          "slower, not faster. Run without it.")
    keras.mixed_precision.set_global_policy("mixed_float16")


def _distribute_record(config: RunConfig, info, resume: Path | None) -> dict:
    """The strategy, replicas and devices of this session, the global batch and the learning-rate factor.

    ``--batch-size`` is per replica, so the global batch is ``batch_size x replicas``; ``--scale-lr`` multiplies the
    learning rates by the replica count (linear scaling). A resumed run keeps the global batch and factor it started
    with (its data order and schedule do not change when it resumes on another number of replicas).
    """
    started = (read_json(resume / "config.json").get("distribute") or {}) if resume else {}
    global_batch = int(started.get("global_batch_size") or config.batch_size * info.replicas)
    lr_scale = float(started.get("lr_scale") or (info.replicas if config.scale_lr else 1))
    record = {**info.to_json(), "global_batch_size": global_batch,
              "per_replica_batch_size": global_batch / info.replicas, "lr_scale": lr_scale}
    if started:
        record["started_with"] = {k: started.get(k) for k in ("strategy", "replicas", "workers", "devices")}
    per_replica = f"{global_batch / info.replicas:g}"
    say(f"{info.describe()}; batch {per_replica} per replica x {info.replicas} = {global_batch} global"
        + (f"; learning rates x{lr_scale:g} (linear scaling)" if lr_scale != 1 else ""))
    if started and started.get("replicas") != info.replicas:
        say(f"resuming a run started on {started.get('replicas')} replica(s) on {info.replicas}: the global batch "
            f"stays {global_batch}")
    return record


def load_split(run_dir: Path) -> Dataset:
    """The data a run was started on, from its ``split.csv`` (not the data folder as it is now: photos added since
    would change the seeded split, and validation images would land in training)."""
    path = run_dir / SPLIT_FILE
    if not path.exists():
        raise TltoolError(f"--resume {run_dir}: the run folder has no {SPLIT_FILE}, so the exact training/validation "
                          "split it started with cannot be restored (runs made before tltool wrote it). Start a new "
                          "run instead of resuming this one.")
    dataset = load_dataset(str(path))
    name = read_json(run_dir / "config.json").get("dataset")
    return replace(dataset, name=name) if name else dataset


def train_and_report(config: RunConfig, *, kind: str, name: str, image_size: int,
                     build: Callable[[int], object], stages: Callable[[], list[Stage]], model_config: dict,
                     out: str | Path | None = None, resume: Path | None = None, force: bool = False,
                     initialize: Callable[[object, list[str], np.ndarray], None] | None = None) -> TrainResult:
    """Prepare data, train ``build(num_classes)`` through ``stages()``, save ``model.keras`` and the report.

    ``initialize(model, train_paths, train_labels)`` runs once on a new model (not on resume), e.g. to start
    the classifier from a linear probe. A new run writes its exact split as ``split.csv``; ``resume`` trains on
    that file, whatever the data folder holds now.
    """
    from ._tf import keras
    from .augment import build_augmentation, load_size
    from .models import load_run
    from .pipeline import image_dataset

    strategy, info = resolve_strategy(config.strategy)  # first: multiworker must start before any TF operation
    if config.tta not in TTA_MODES:
        raise TltoolError(f"--tta must be one of {TTA_MODES}.")
    for stage in stages():
        stage.options.validate()
    set_precision(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    source = load_split(resume) if resume else config.data
    checked = prepare_dataset(source, config.val_fraction, config.seed, config.max_pixels)
    dataset = checked.dataset
    classes = dataset.classes
    train, val = dataset.subset("train"), dataset.subset("val")
    if not val:
        raise TltoolError(f"{dataset.name}: no validation images; raise --val-fraction or add images.")
    y_train, y_val = label_indices(train, classes), label_indices(val, classes)
    distribute = _distribute_record(config, info, resume)
    global_batch = distribute["global_batch_size"]
    transform = build_augmentation(config.augment, image_size, config.seed)
    decode = load_size(image_size, config.augment)
    options = shard_options(info) if info.workers > 1 else None

    def for_strategy(ds):
        return ds.with_options(options) if options is not None else ds

    def train_data(epoch: int):
        return for_strategy(image_dataset(
            [r.path for r in train], y_train, image_size=decode, output_size=image_size, resize=config.resize,
            batch_size=global_batch, transform=transform, num_classes=len(classes), shuffle=True,
            seed=config.seed * 1000 + epoch, max_pixels=config.max_pixels))

    val_data = for_strategy(image_dataset([r.path for r in val], y_val, image_size=image_size, resize=config.resize,
                                          batch_size=global_batch, num_classes=len(classes), cache=True,
                                          max_pixels=config.max_pixels))
    class_weight = None
    if config.class_weight == "balanced":
        counts = np.bincount(y_train, minlength=len(classes))
        class_weight = {i: len(y_train) / (len(classes) * c) for i, c in enumerate(counts) if c}
    def new_model():
        model = build(len(classes))
        if initialize is not None:
            initialize(model, [r.path for r in train], y_train)
        return model

    def scaled_stages() -> list[Stage]:
        return [replace(s, options=replace(s.options, lr=s.options.lr * distribute["lr_scale"])) for s in stages()]

    def fit(target: Path):
        if not resume:
            write_manifest(dataset.records, target / SPLIT_FILE)  # the exact data of this run
            write_json(target / "config.json", {**asdict(config), "kind": kind, "dataset": dataset.name,
                                                "image_size": image_size, "distribute": distribute})
        start = time.perf_counter()
        model, state = run_stages(new_model, scaled_stages(), train_data, val_data,
                                  int(np.ceil(len(train) / global_batch)), target, class_weight,
                                  resume=resume is not None, strategy=strategy if info.distributed else None,
                                  resume_from=resume)
        return model, state, time.perf_counter() - start

    if not info.chief:  # checkpoints go to a scratch folder that is removed; the chief writes the run
        with worker_scratch_dir(info) as scratch:
            model, state, train_seconds = fit(scratch)
        say(f"worker {info.worker_index}: trained {state.epoch} epochs in {train_seconds:.0f} s; the chief (worker "
            "0) writes the run folder and the report")
        return TrainResult(None, None, {}, model, chief=False)
    run_dir = resume or new_run_dir(kind, dataset.name, name, out=out, force=force)
    model, state, train_seconds = fit(run_dir)
    with atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
        model.save(str(tmp))
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) == 1:  # the backbone inside a fine-tuned classifier (Grad-CAM and unfreezing look it up)
        model_config = {**model_config, "base_layer": nested[0]}
    write_json(run_dir / "model.json", {"kind": kind, **model_config, "image_size": image_size,
                                        "resize": config.resize, "max_pixels": config.max_pixels,
                                        "classes": classes, "seed": config.seed, "distribute": distribute})
    plot_history(state.history, run_dir / "training_curves.png", f"{dataset.name}: {kind} {name}")

    runner = load_run(run_dir)
    val_paths = [r.path for r in val]
    evaluation = Evaluation(classes, y_val, runner.predict_paths(val_paths, batch_size=config.batch_size))
    tta = {}
    if config.tta != "none":
        tta[config.tta] = Evaluation(classes, y_val, runner.predict_paths(val_paths, tta=config.tta,
                                                                          batch_size=config.batch_size))
    extra = {"history": state.history, "epochs_run": state.epoch, "stopped_early": state.stopped_early,
             "n_train": len(train), "n_val": len(val), "timing": {"train_seconds": train_seconds}}
    metrics = write_run_report(run_dir, evaluation, val_paths, kind=kind, title=f"{dataset.name}: {kind} {name}",
                               config={**asdict(config), "image_size": image_size, **model_config,
                                       "distribute": distribute}, extra=extra,
                               tta=tta)
    say(f"trained {state.epoch} epochs in {train_seconds:.0f} s")
    return TrainResult(run_dir, evaluation, metrics, model)
