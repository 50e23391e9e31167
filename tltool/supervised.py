"""A Keras training run: the part fine-tuning and training from scratch share.

Prepare the data (split, validation), the pipelines (the one tf.data pipeline, with augmentation), fit (the epoch
loop with checkpoints and resume), finish (the model file and the same evaluation report as the linear path).
Fine-tuning and from-scratch training each describe their model as a :class:`ModelPlan`.
"""
from __future__ import annotations

import functools
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .augment import build_augmentation, check_augmentation, load_size, stored_augment
from .backbones import find_backbone
# RunConfig's home was here; it stays importable
from .configs import RunConfig, TrainOptions, read_run_config, stored_distribute, stored_run_kind  # noqa: F401
from .dataset import Dataset, Record, label_indices, load_dataset, write_manifest
from .distribute import DistributeInfo, read_tf_config, resolve_strategy, shard_options, worker_scratch_dir
from .errors import TltoolError
from .evaluation import Evaluation
from .inspection import checked_left_out_notes, prepare_dataset, say_upsampling, upsampling
from .models import load_run
from .progress import say
from .report import rewrite_report, write_run_report
from .outputs import check_not_in_use
from .runs import check_run_dir, hold_run_dir, new_run_dir, writes_runs
from .settings import DEFAULT_VAL_FRACTION
from .training import (LoopState, Stage, checkpoint_path, epochs_done, plot_history, refit_stages, run_stages,
                       shipped_weights)
from .tta import TTA_MODES
from .utils import atomic_path, read_json, sha256_file, write_json

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

SPLIT_FILE = "split.csv"  # the exact split of a run (absolute paths): what --resume trains and validates on
REFIT_DIR = "refit"  # --refit's checkpoints and history, inside the run folder


@dataclass
class TrainResult:
    """``run_dir`` and ``evaluation`` are None on a multiworker worker that is not the chief (it writes nothing)."""

    run_dir: Path | None
    evaluation: Evaluation | None
    metrics: dict
    model: object
    chief: bool = True


def keeps_callers_global_state(train: Callable) -> Callable:
    """Give back Python's and NumPy's global random state and Keras' precision policy after ``train``: training
    seeds them (``keras.utils.set_random_seed``) and Keras draws layer seeds from Python's, which changed a
    notebook's own random draws after a fine-tune."""
    @functools.wraps(train)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        saved = random.getstate(), np.random.get_state()  # before TensorFlow's import, which may draw too
        keras = sys.modules.get("keras")  # not imported here: a bad setting is refused before TensorFlow starts
        policy = keras.mixed_precision.global_policy() if keras is not None else None
        try:
            return train(*args, **kwargs)
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            if policy is not None:  # else Keras' own default, which training left as it found it
                keras.mixed_precision.set_global_policy(policy)
    return wrapper


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
    started = stored_distribute(resume) if resume else {}
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


def check_run_settings(config: RunConfig) -> None:
    """A run's settings, checked before TensorFlow starts (:func:`resolve_strategy` imports it first)."""
    config.validate()
    check_augmentation(config.augment)


def check_chief_output(strategy: str, out: str | Path | None, resume: str | Path | None, force: bool) -> None:
    """A multiworker chief refuses its run folder before it starts the cluster: after, the workers had connected
    and waited, for as long as the cluster took to form, on a folder another command holds or that needs --force."""
    if strategy == "multiworker" and read_tf_config().chief:
        if resume:
            check_not_in_use(resume)
        else:
            check_run_dir(out, force)


def load_split(run_dir: Path) -> Dataset:
    """The data a run was started on, from its ``split.csv`` (not the data folder as it is now: photos added since
    would change the seeded split, and validation images would land in training)."""
    path = run_dir / SPLIT_FILE
    if not path.exists():
        raise TltoolError(f"--resume {run_dir}: the run folder has no {SPLIT_FILE}, so the exact training/validation "
                          "split it started with cannot be restored (runs made before tltool wrote it). Start a new "
                          "run instead of resuming this one.")
    dataset = load_dataset(str(path))
    name = read_json(run_dir / "config.json").get("dataset")  # read and checked by RunConfig.from_run first
    return replace(dataset, name=name) if isinstance(name, str) and name else dataset


def check_resumed_classes(run_dir: Path, classes: list[str]) -> None:
    """Refuse to resume a run on other classes than it started on (its config.json's record; a run of an older
    tltool has none): a split.csv edited, or a class whose photos are all unreadable now, shifted the labels, and
    the checkpoint's outputs went on training as other classes (a class renamed in split.csv: resumed without a
    word, then scored 0.025 on its own val images) or failed with the run's model.json rewritten."""
    started = read_json(run_dir / "config.json").get("classes")  # read and checked by RunConfig.from_run first
    if started is not None and started != classes:
        raise TltoolError(f"--resume {run_dir}: the run started on the classes {started}, and its {SPLIT_FILE} now "
                          f"gives {classes} (edited, or every photo of a class unreadable now): its checkpoint would "
                          "go on training its outputs as other classes. Restore the photos or the file, or start a "
                          "new run.")


# the settings a resume chooses again (this session's devices): never a change of what the run trains
SESSION_SETTINGS = ("strategy",)
GIVEN_IMAGE_SIZE = "image_size_given"  # config.json's record of --image-size as given ("image_size" is resolved)


def changed_settings(config: RunConfig, run_dir: Path, cv: int = 0) -> list[str]:
    """What a new run of ``config`` (``cv`` folds, 0: none) would train differently from the run ``run_dir`` started
    (``name: then -> now``); empty when resuming it trains what ``config`` would."""
    stored = read_run_config(run_dir)
    kind, started_as = "finetune-cv" if cv else config.KIND, stored_run_kind(run_dir, stored)
    if started_as != kind:
        return [f"kind: {started_as} -> {kind}"]
    started = {**asdict(type(config).from_run(run_dir, kind)), "cv": stored.get("cv", 0),
               "image_size": _given_size(stored, kind, config.image_size)}
    now = {**asdict(config), "augment": stored_augment(config.augment), "cv": cv}
    for settings in (started, now):
        settings["data"] = _place(settings["data"])
    return [f"{name}: {started[name]!r} -> {value!r}" for name, value in now.items()
            if name not in SESSION_SETTINGS and started[name] != value]


def _given_size(stored: dict, kind: str, now: int | None) -> int | str | None:
    """``--image-size`` as the run in ``stored`` was given it. config.json records it since tltool resumes recipes
    (its ``image_size`` is the size resolved); a cross-validation's was always as given; of an older run, the size
    is known, not whether it was given: it matches one given now, never the default."""
    if GIVEN_IMAGE_SIZE in stored or kind == "finetune-cv":
        return stored.get(GIVEN_IMAGE_SIZE, stored.get("image_size"))
    size = stored.get("image_size")
    return size if now is not None else f"{size} (given, or the default: a run of an older tltool does not say)"


def _place(data: str) -> str:
    """``data`` as the place it names (``photos`` and ``/home/me/photos`` from there are one)."""
    return os.path.abspath(data) if data and not data.startswith("tfds:") else data


@dataclass
class ModelPlan:
    """What a Keras training run trains: the model, its stages, and what ``model.json`` says about it.

    ``initialize(model, train_paths, train_labels)`` runs once on a new model (not on resume), e.g. to start the
    classifier from a linear probe; ``check(data)`` refuses, before the run folder is made, a training
    split that ``initialize`` cannot start from.
    """

    kind: str  # "finetune" or "scratch": the run's kind in config.json, model.json and metrics.json
    name: str  # the backbone or architecture (run folder name, report title)
    image_size: int
    build: Callable[[int], object]  # number of classes -> a new Keras model
    stages: list[Stage]
    model_config: dict
    initialize: Callable[[object, list[str], np.ndarray], None] | None = None
    check: Callable[["RunData"], None] | None = None


@dataclass
class RunData:
    """The checked, split dataset of a run and its labels as class indices."""

    dataset: Dataset
    train: list[Record]
    val: list[Record]
    y_train: np.ndarray
    y_val: np.ndarray
    warnings: tuple[str, ...] = ()  # the check's warnings about the split, written into the report

    @property
    def classes(self) -> list[str]:
        return self.dataset.classes


@dataclass
class Pipelines:
    train: Callable[[int], object]  # epoch -> that epoch's shuffled, augmented dataset (seeded by the epoch)
    val: object
    steps_per_epoch: int
    class_weight: dict | None


@dataclass
class Fitted:
    """A finished fit; ``epochs_before``: the epochs a resumed run had done before this process started."""

    model: object
    state: LoopState
    seconds: float
    epochs_before: int = 0

    @property
    def epochs_now(self) -> int:
        return self.state.epoch - self.epochs_before

    def summary(self) -> str:
        """``trained 2 epochs in 9 s`` and, after a resume, how many that makes in all."""
        n = self.epochs_now
        text = f"trained {n} epoch{'' if n == 1 else 's'} in {self.seconds:.0f} s"
        if self.epochs_before:
            text += f" in this process, {self.state.epoch} in all (resumed after epoch {self.epochs_before})"
        return text


class KerasTrainingRun:
    """A Keras training run: prepare data -> pipelines -> fit -> finish (model file, metrics and report).

    A new run writes its exact split as ``split.csv``; a resumed one trains on that file, whatever the data folder
    holds now.
    """

    def __init__(self, config: RunConfig, plan: ModelPlan) -> None:
        self.config, self.plan = config, plan
        self.title = ""

    @writes_runs
    def run(self, out: str | Path | None = None, resume: Path | None = None, force: bool = False) -> TrainResult:
        strategy, info = resolve_strategy(self.config.strategy)  # first: multiworker starts before any TF operation
        if resume and info.chief:  # two resumes of one run at once would write the same checkpoints
            hold_run_dir(resume)
        data = self.prepare_data(resume)
        if self.plan.check is not None and not resume:
            self.plan.check(data)
        distribute = _distribute_record(self.config, info, resume)
        pipelines = self.pipelines(data, info, distribute["global_batch_size"], strategy)
        self.title = f"{data.dataset.name}: {self.plan.kind} {self.plan.name}"
        if not info.chief:  # checkpoints go to a scratch folder that is removed; the chief writes the run
            with worker_scratch_dir(info) as scratch:
                self.record_start(scratch, data, distribute, resume)
                fitted = self.fit(scratch, data, pipelines, self.plan.stages, distribute, strategy, info, resume)
            say(f"worker {info.worker_index}: {fitted.summary()}; the chief (worker 0) writes the run folder and "
                "the report")
            return TrainResult(None, None, {}, fitted.model, chief=False)
        run_dir = resume or new_run_dir(self.plan.kind, data.dataset.name, self.plan.name, out=out, force=force)
        self.record_start(run_dir, data, distribute, resume)
        fitted = self.fit(run_dir, data, pipelines, self.plan.stages, distribute, strategy, info, resume)
        result = self.finish(run_dir, fitted, data, distribute)
        if self.config.refit:
            result = self.refit(result, fitted.state, data, distribute, strategy, info)
        return result

    def prepare_data(self, resume: Path | None) -> RunData:
        """Check the settings, seed everything, and open, check and split the data (or the run's own split)."""
        config = self.config
        if config.tta not in TTA_MODES:
            raise TltoolError(f"--tta must be one of {TTA_MODES}.")
        config.validate()
        for stage in self.plan.stages:
            stage.options.validate()
        set_precision(config.mixed_precision)
        from ._tf import keras

        keras.utils.set_random_seed(config.seed)
        source = load_split(resume) if resume else config.data
        # a resume trains on the split it recorded: the fraction that drew it is not asked for again
        fraction = DEFAULT_VAL_FRACTION if resume else config.val_fraction
        checked = prepare_dataset(source, fraction, config.seed, config.max_pixels, strict=config.strict)
        say_upsampling(upsampling(checked, self.plan.image_size, config.resize,
                                  size_given=getattr(config, "image_size", None) is not None))
        dataset = checked.dataset
        if resume:
            check_resumed_classes(resume, dataset.classes)
        train, val = dataset.subset("train"), dataset.subset("val")
        if not val:
            raise TltoolError(_no_val_message(checked))
        return RunData(dataset, train, val, label_indices(train, dataset.classes), label_indices(val, dataset.classes),
                       tuple(checked.warnings + checked_left_out_notes(checked)))

    def pipelines(self, data: RunData, info: DistributeInfo, global_batch: int,
                  strategy: tf.distribute.Strategy | None = None) -> Pipelines:
        """The train pipeline of each epoch (augmented, shuffled, seeded by the epoch) and the cached val one.

        Under multiworker each worker decodes only its share of the training photos: its slice of every global
        batch, in the order and with the augmentation seeds one machine would use (:func:`tltool.pipeline.
        _keep_share`), handed to the strategy as it is (``distribute_datasets_from_function``, its own sharding
        off).
        """
        from .pipeline import image_dataset, shard_layout  # imports TensorFlow

        config, size, n_classes = self.config, self.plan.image_size, len(data.classes)
        transform = build_augmentation(config.augment, size, config.seed)
        decode = load_size(size, config.augment)
        shard = (info.worker_index, info.workers) if info.workers > 1 else None
        batch = global_batch // info.workers if shard else global_batch

        def for_strategy(make):
            if shard is None:
                return make()
            options = shard_options(info)
            return strategy.distribute_datasets_from_function(
                lambda context: make().with_options(options).rebatch(context.get_per_replica_batch_size(global_batch)))

        def train(epoch: int):
            return for_strategy(lambda: image_dataset(
                [r.path for r in data.train], data.y_train, image_size=decode, output_size=size, resize=config.resize,
                batch_size=batch, transform=transform, num_classes=n_classes, shuffle=True,
                seed=config.seed * 1000 + epoch, max_pixels=config.max_pixels, shard=shard, shard_block=batch,
                mixup=config.mixup))

        # every worker evaluates all of val (decoded once, cached): the step's all-reduced sums count each image
        # once per worker, in the loss and in the count alike, so the means are one machine's
        val = None if not data.val else for_strategy(lambda: image_dataset(
            [r.path for r in data.val], data.y_val, image_size=size, resize=config.resize, batch_size=batch,
            num_classes=n_classes, cache=True, max_pixels=config.max_pixels))  # none in a refit
        if shard:
            full, tail = shard_layout(len(data.train), batch, info.workers)
            steps = full + (tail > 0)
        else:
            steps = int(np.ceil(len(data.train) / global_batch))
        return Pipelines(train, val, steps,
                         balanced_class_weight(data.y_train, n_classes) if config.class_weight == "balanced" else None)

    def record_start(self, target: Path, data: RunData, distribute: dict, resume: Path | None) -> None:
        """A new run records its exact split and settings first (what ``--resume`` goes on from)."""
        if not resume:
            write_manifest(data.dataset.records, target / SPLIT_FILE)
            write_json(target / "config.json", {**asdict(self.config), "augment": stored_augment(self.config.augment),
                                                "kind": self.plan.kind,
                                                "dataset": data.dataset.name, "image_size": self.plan.image_size,
                                                GIVEN_IMAGE_SIZE: self.config.image_size,
                                                "classes": data.classes, "distribute": distribute})

    def fit(self, target: Path, data: RunData, pipelines: Pipelines, stages: list[Stage], distribute: dict,
            strategy: tf.distribute.Strategy, info: DistributeInfo, resume: Path | None) -> Fitted:
        """Train a new model (or the checkpoint of ``resume``) through ``stages`` into ``target``."""
        def new_model():
            model = self.plan.build(len(data.classes))
            if self.plan.initialize is not None:
                self.plan.initialize(model, [r.path for r in data.train], data.y_train)
            return model

        stages = [replace(s, options=replace(s.options, lr=s.options.lr * distribute["lr_scale"])) for s in stages]
        start, before = time.perf_counter(), epochs_done(resume) if resume else 0
        model, state = run_stages(new_model, stages, pipelines.train, pipelines.val, pipelines.steps_per_epoch,
                                  target, pipelines.class_weight, resume=resume is not None,
                                  strategy=strategy if info.distributed else None, resume_from=resume)
        return Fitted(model, state, time.perf_counter() - start, before)

    def finish(self, run_dir: Path, fitted: Fitted, data: RunData, distribute: dict) -> TrainResult:
        """Save ``model.keras`` and ``model.json``, plot the curves, evaluate on val and write the report."""
        keep = _saved_already(run_dir, fitted)
        model_config = self.save_model(run_dir, fitted.model, data, distribute, keep_file=keep)
        state = fitted.state
        plot_history(state.history, run_dir / "training_curves.png", self.title)
        config = self.config
        runner = load_run(run_dir)
        val_paths = [r.path for r in data.val]
        plain, augmented = runner.predict_plain_and_tta(val_paths, config.tta, config.batch_size)
        evaluation = Evaluation(data.classes, data.y_val, plain)
        tta = {config.tta: Evaluation(data.classes, data.y_val, augmented)} if augmented is not None else {}
        extra = {"history": state.history, "epochs_run": state.epoch, "epochs_this_process": fitted.epochs_now,
                 "resumed_after_epoch": fitted.epochs_before, "stopped_early": state.stopped_early,
                 "model_weights": shipped_weights(state),
                 "n_train": len(data.train), "n_val": len(data.val), "timing": {"train_seconds": fitted.seconds},
                 "data_warnings": list(data.warnings)}
        metrics = write_run_report(run_dir, evaluation, val_paths, kind=self.plan.kind, title=self.title,
                                   config={**asdict(config), "image_size": self.plan.image_size, **model_config,
                                           "distribute": distribute}, extra=extra, tta=tta)
        say(fitted.summary())
        return TrainResult(run_dir, evaluation, metrics, fitted.model)

    def refit(self, result: TrainResult, state: LoopState, data: RunData, distribute: dict,
              strategy: tf.distribute.Strategy, info: DistributeInfo) -> TrainResult:
        """``--refit``: after the val estimate, train the shipped model again on train+val, through the stages and
        epochs the val run kept, in ``RUN/refit`` (its own checkpoints: a killed refit resumes there). The report
        keeps the val estimate, which is the refit model's estimate too, and says so."""
        from ._tf import keras

        keras.utils.set_random_seed(self.config.seed)  # a resumed run's refit starts where an uninterrupted one's does
        run_dir, target = result.run_dir, result.run_dir / REFIT_DIR
        everything = RunData(data.dataset, data.train + data.val, [], np.concatenate([data.y_train, data.y_val]),
                             data.y_val[:0])
        pipelines = self.pipelines(everything, info, distribute["global_batch_size"], strategy)
        stages = refit_stages(self.plan.stages, state)
        resume = target if checkpoint_path(target) is not None else None
        target.mkdir(exist_ok=True)
        epochs = sum(stage.epochs_to_run for stage in stages)
        kept = "the epochs the run kept" if state.stopped_early else "the same epochs"
        say(f"refit: training again on train+val ({len(everything.train)} images) for {kept} ({epochs}), without a "
            "val split")
        pending = (f"refit: started but not finished (`--resume {run_dir}` finishes it); until then the saved model is "
                   "the one trained on the train split, which the accuracy above was measured on")
        rewrite_report(run_dir, {**result.metrics, "refit": {"note": pending, "finished": False}})
        fitted = self.fit(target, everything, pipelines, stages, distribute, strategy, info, resume)
        n = len(everything.train)
        self.save_model(run_dir, fitted.model, data, distribute, refit=True, n_trained_on=n)
        note = (f"refit: the saved model was trained again on train+val ({n} images) for {kept} ({epochs}); the "
                "accuracy above was measured on val before the refit and is its estimate (the refit model has seen "
                "those images)")
        metrics = {**result.metrics, "refit": {"note": note, "finished": True, "n_images": n,
                                                "epochs": fitted.state.epoch, "history": fitted.state.history,
                                                "seconds": fitted.seconds},
                   "model_weights": {**shipped_weights(fitted.state), "chosen_by": "refit"}}  # the refit's model now
        rewrite_report(run_dir, metrics)
        return replace(result, metrics=metrics, model=fitted.model)

    def save_model(self, run_dir: Path, model: keras.Model, data: RunData, distribute: dict, keep_file: bool = False,
                   **settings: Any) -> dict:
        """``model.keras`` (kept as it is with ``keep_file``) and ``model.json`` (with ``settings`` added); returns
        the model's settings."""
        if not keep_file:
            with atomic_path(run_dir / "model.keras", suffix=".keras") as tmp:
                model.save(str(tmp))
        # which file this model.json describes: a resume keeps model.keras only when it is this one, whole
        model_config = {**self.plan.model_config, **settings, "model_sha256": sha256_file(run_dir / "model.keras")}
        base = find_backbone(model)
        if base is not None:  # the backbone inside a fine-tuned classifier (Grad-CAM and unfreezing look it up)
            model_config = {**model_config, "base_layer": base.name}
        config = self.config
        write_json(run_dir / "model.json", {"kind": self.plan.kind, **model_config, "image_size": self.plan.image_size,
                                            "resize": config.resize, "max_pixels": config.max_pixels,
                                            "classes": data.classes, "seed": config.seed, "distribute": distribute})
        return model_config


def _no_val_message(checked) -> str:
    """Why there is nothing to validate on: a split the dataset came with whose files are all unusable (named), or
    a drawn split too small."""
    lost = [f.record.path for f in checked.bad if f.record.split in ("val", "test")]
    if lost:
        named = ", ".join(lost[:3]) + (f" and {len(lost) - 3} more" if len(lost) > 3 else "")
        return (f"{checked.dataset.name}: no usable validation images: none of the {len(lost)} file(s) of its val "
                f"split can be read ({named}; the reasons are above). Replace them, or move the val folder away so "
                "that --val-fraction splits the training images.")
    return f"{checked.dataset.name}: no validation images; raise --val-fraction or add images."


def _saved_already(run_dir: Path, fitted: Fitted) -> bool:
    """A resumed run with nothing left to train whose ``model.keras`` is the file ``model.json`` describes (by
    content) and not a refit's: saved again, the file would differ in bytes (Keras stamps the time) and every
    engine keyed by them would convert it again (6 s for LiteRT). A refit replaces model.keras before it writes
    model.json, so a refit cut off between the two leaves a file whose content model.json does not name."""
    if fitted.epochs_now or fitted.epochs_before == 0 or not (run_dir / "model.keras").is_file():
        return False
    try:
        described = read_json(run_dir / "model.json")
        return (isinstance(described, dict) and described.get("refit") is not True
                and described.get("model_sha256") == sha256_file(run_dir / "model.keras"))
    except (OSError, ValueError):
        return False


def balanced_class_weight(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """``--class-weight balanced``: n / (classes x count) per class present, as scikit-learn computes it."""
    counts = np.bincount(labels, minlength=num_classes)
    return {i: len(labels) / (num_classes * c) for i, c in enumerate(counts) if c}
