"""Train a Keras classifier on a dataset and report it: the part fine-tuning and training from scratch share.

Data (split, validation, the one pipeline with augmentation), the epoch loop with checkpoints and resume, the
final model file, and the same evaluation report as the linear path all live here once.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from .dataset import label_indices
from .distribute import resolve_strategy, shard_options, worker_scratch_dir
from .errors import TltoolError
from .evaluation import TTA_MODES, Evaluation
from .features import prepare_dataset
from .images import DEFAULT_MAX_PIXELS
from .progress import say
from .report import write_run_report
from .runs import new_run_dir
from .training import Stage, TrainOptions, plot_history, run_stages
from .utils import atomic_path, read_json, write_json


@dataclass
class RunConfig:
    """Settings shared by every supervised run; field names are the CLI option names."""

    data: str
    image_size: int | None = None
    resize: str = "crop"
    batch_size: int = 32
    val_fraction: float = 0.2
    seed: int = 0
    max_pixels: int = DEFAULT_MAX_PIXELS
    augment: str = "standard"
    epochs: int = 15
    lr: float = 3e-4
    optimizer: str = "adam"
    weight_decay: float | None = None
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_epochs: int = 10
    gamma: float = 0.1
    label_smoothing: float = 0.1
    early_stopping: int = 0
    class_weight: str = "none"
    mixed_precision: bool = False
    strategy: str = "auto"
    scale_lr: bool = False
    tta: str = "none"

    def stage_options(self, epochs: int, lr: float) -> TrainOptions:
        return TrainOptions(epochs=epochs, lr=lr, optimizer=self.optimizer, weight_decay=self.weight_decay,
                            schedule=self.schedule, warmup_epochs=self.warmup_epochs, step_epochs=self.step_epochs,
                            gamma=self.gamma, label_smoothing=self.label_smoothing,
                            early_stopping=self.early_stopping)

    @classmethod
    def from_run(cls, run_dir: Path):
        if not (run_dir / "config.json").exists():
            raise TltoolError(f"--resume {run_dir}: not a training run folder (no config.json).")
        stored = read_json(run_dir / "config.json")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in stored.items() if k in known})


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


def train_and_report(config: RunConfig, *, kind: str, name: str, image_size: int,
                     build: Callable[[int], object], stages: Callable[[], list[Stage]], model_config: dict,
                     out: str | Path | None = None, resume: Path | None = None, force: bool = False,
                     initialize: Callable[[object, list[str], np.ndarray], None] | None = None) -> TrainResult:
    """Prepare data, train ``build(num_classes)`` through ``stages()``, save ``model.keras`` and the report.

    ``initialize(model, train_paths, train_labels)`` runs once on a new model (not on resume), e.g. to start
    the classifier from a linear probe.
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
    checked = prepare_dataset(config.data, config.val_fraction, config.seed, config.max_pixels)
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
            write_json(target / "config.json", {**asdict(config), "image_size": image_size, "distribute": distribute})
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
                                        "resize": config.resize, "classes": classes, "seed": config.seed,
                                        "distribute": distribute})
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
