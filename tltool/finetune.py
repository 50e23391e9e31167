"""Fine-tuning a pretrained backbone: a new head on the frozen base, then the top of the base unfrozen.

BatchNormalization layers stay in inference mode throughout: in Keras 3.15 the ``training=False`` passed when the
base is called inside a functional model is overridden by ``fit``'s ``training=True`` (measured), so tltool
sets every BatchNormalization layer of the base to ``trainable=False``, which Keras honours. Their moving
statistics are therefore never updated by a small, augmented dataset.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .augment import stored_augment
from .backbones import create_backbone, find_backbone, get_backbone_spec
from .configs import FinetuneConfig, InputConfig, check_folds, resolve_input, stored_folds
from .crossval import CVResult, check_fold_counts, say_cv
from .dataset import label_indices, write_manifest
from .distribute import resolve_strategy
from .engines import ModelSource, TFRunner
from .errors import TltoolError
from .evaluation import Evaluation
from .heads import FittedHead, get_head_spec, require_cv_training_images, search
from .inspection import prepare_dataset
from .progress import say
from .report import read_predictions, write_run_report
from .runs import check_run_dir, hold_run_dir, new_run_dir, writes_runs
from .settings import CHOICES, DEFAULT_VAL_FRACTION
from .supervised import (GIVEN_IMAGE_SIZE, SPLIT_FILE, KerasTrainingRun, ModelPlan, RunData, TrainResult,
                         check_chief_output, check_resumed_classes, check_run_settings, keeps_callers_global_state,
                         load_split)
from .training import Stage, TrainOptions, compile_model
from .utils import read_json, write_json

if TYPE_CHECKING:
    import keras


# the way out of a training split too small for the probe the classifier starts from
PROBE_OR_RANDOM = ", or start the classifier at random instead of from the linear probe (--head-init random)"


def build_classifier(backbone: str, weights: str, image_size: int, num_classes: int, dropout: float = 0.2,
                     seed: int | None = None) -> keras.Model:
    """``pixels -> preprocess -> base (nested, named after the backbone) -> pool -> dropout -> classifier``.

    The classifier's output is float32 even under mixed precision. With ``weights="none"`` the base's random
    weights follow ``seed`` (the run's ``--seed``: fine-tunes at other seeds start from other networks).
    """
    from ._tf import keras

    extractor = create_backbone(backbone, weights=weights, image_size=image_size, random_seed=seed)
    preprocess, base = extractor.get_layer("preprocess"), extractor.layers[-1]
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = base(preprocess(inputs), training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier")(x)
    base.trainable = False
    return keras.Model(inputs, outputs, name="tltool_classifier")


def init_head_from_probe(model: keras.Model, paths: list[str], labels: np.ndarray, inputs: InputConfig,
                         batch_size: int, seed: int) -> float:
    """Start the classifier as the linear probe: logistic regression (C by CV) on the pooled features of the
    un-augmented training images, folded into the Dense layer. Returns the probe's CV accuracy.

    Linear probing then fine-tuning (LP-FT, Kumar et al. 2022) keeps a random head's large early gradients from
    distorting pretrained features, and skips the slow first epochs of an Adam-trained head (measured here: 10
    head epochs reached 0.78 val accuracy on flowers, the probe 0.91).
    """
    from ._tf import keras
    from .pipeline import image_dataset  # imports TensorFlow

    pooled = keras.Model(model.input, {"avg": model.get_layer("pool").output})
    # one compiled graph: the network called eagerly batch by batch took 1.7-2.6x as long (250 flowers at 288 px:
    # 26.8-41.2 s against 15.4-16.3 s on 2 cores)
    runner = TFRunner(ModelSource("the probe's features", inputs.image_size, {}, lambda: pooled))
    features = np.concatenate([runner(x)["avg"] for x in
                               image_dataset(paths, image_size=inputs.image_size, resize=inputs.resize,
                                             batch_size=batch_size, max_pixels=inputs.max_pixels)])
    gs = search(get_head_spec("logreg"), features, np.asarray(labels), seed=seed)
    classes = [str(i) for i in range(model.output_shape[-1])]
    head = FittedHead.from_pipeline("logreg", gs.best_estimator_, classes, {}, features, labels)
    model.get_layer("classifier").set_weights(list(head.dense_weights()))
    return float(gs.best_score_)


def base_model(model: keras.Model) -> keras.Model:
    """The nested backbone inside a classifier built by :func:`build_classifier`."""
    base = find_backbone(model)
    if base is None:
        raise TltoolError("this model has no single nested backbone to unfreeze")
    return base


def set_trainable(base: keras.Model, unfreeze: str) -> int:
    """Unfreeze the top of ``base``: ``N`` layers, ``all``, ``none`` or from the block named ``BLOCK`` on.

    BatchNormalization layers stay frozen (inference mode). Returns the number of trainable weights tensors.
    """
    from ._tf import keras

    start = unfrozen_from(base, unfreeze)
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= start and not isinstance(layer, keras.layers.BatchNormalization)
    return len(base.trainable_weights)


def unfrozen_from(base: keras.Model, unfreeze: str) -> int:
    """The index of the first layer of ``base`` that ``unfreeze`` (resolved) trains; a block name no layer starts
    with is refused. Checked when the model is built: it was refused only when the unfreeze stage began, after
    the head's epochs, and a --resume of that run failed there again."""
    layers = base.layers
    if unfreeze in ("none", "0"):
        return len(layers)
    if unfreeze == "all":
        return 0
    if unfreeze.isdigit():
        return max(0, len(layers) - int(unfreeze))
    matches = [i for i, layer in enumerate(layers) if layer.name.startswith(unfreeze)]
    if not matches:
        blocks = sorted({layer.name.split("_")[0] for layer in layers if layer.name.startswith(("block", "conv"))})
        raise TltoolError(f"--unfreeze {unfreeze}: no layer of {base.name} starts with that name. Use a number N (the "
                          "last N blocks; layers where the backbone names none), 'all', or a block name such as "
                          f"{', '.join(blocks[-4:]) or 'block7'}.")
    return matches[0]


FinetuneResult = TrainResult
HEAD_INITS = CHOICES["head_init"]


def _resolve_unfreeze(config: FinetuneConfig, spec) -> str:
    """A bare number N means the last N *stages* where the backbone names its blocks (Lite0: block1a..block7a),
    else the last N layers."""
    if config.unfreeze.isdigit() and spec.blocks is not None and int(config.unfreeze) > 0:
        stages = sorted({b[:-1] for b in spec.blocks()}, key=lambda s: int(s[5:]))
        n = min(int(config.unfreeze), len(stages))
        return stages[-n]
    return config.unfreeze


@keeps_callers_global_state
def finetune(config: FinetuneConfig, out: str | Path | None = None, resume: str | Path | None = None,
             force: bool = False) -> TrainResult:
    """Two-stage fine-tuning with checkpoints after every epoch; writes the same report as the linear path."""
    if resume:  # the run's own settings, on this session's devices
        config = replace(FinetuneConfig.from_run(Path(resume)), strategy=config.strategy)
    check_chief_output(config.strategy, out, resume, force)
    check_run_settings(config)
    resolve_strategy(config.strategy)  # before any TF operation: multiworker has to start first
    spec = get_backbone_spec(config.backbone)
    inputs = resolve_input(spec.name, config.image_size, config.resize, config.max_pixels)
    image_size = inputs.image_size
    unfreeze = _resolve_unfreeze(config, spec)
    if config.head_init not in HEAD_INITS:
        raise TltoolError(f"--head-init must be one of {HEAD_INITS}, got {config.head_init!r}.")

    def initialize(model, paths, labels):
        score = init_head_from_probe(model, paths, labels, inputs, config.batch_size, config.seed)
        say(f"classifier initialised from the linear probe (logistic regression, CV accuracy {score:.3f})")

    plan = ModelPlan(FinetuneConfig.KIND, spec.name, image_size,
                     build=lambda n: _with_unfreeze_checked(build_classifier(
                         spec.name, config.weights, image_size, n, config.dropout, seed=config.seed), unfreeze),
                     stages=finetune_stages(config, unfreeze),
                     model_config={"backbone": spec.name, "weights": config.weights, "unfreeze": config.unfreeze,
                                   "unfreeze_resolved": unfreeze},
                     initialize=initialize if config.head_init == "probe" else None,
                     check=_check_probe_data if config.head_init == "probe" else None)
    return KerasTrainingRun(config, plan).run(out, Path(resume) if resume else None, force)


def _with_unfreeze_checked(model: keras.Model, unfreeze: str) -> keras.Model:
    unfrozen_from(base_model(model), unfreeze)  # before the head's epochs, not after them
    return model


def _check_probe_data(data: RunData) -> None:
    require_cv_training_images([r.label for r in data.train], data.dataset.name, PROBE_OR_RANDOM)


def _unfreeze(unfreeze: str, model) -> None:
    set_trainable(base_model(model), unfreeze)


def finetune_stages(config: FinetuneConfig, unfreeze: str) -> list[Stage]:
    """The head alone on the frozen base, then (unless ``unfreeze`` is none) the top of the base with it."""
    stages = [Stage("head", config.stage_options(config.head_epochs, config.head_lr),
                    functools.partial(_unfreeze, "none"))]
    if unfreeze not in ("none", "0") and config.epochs > 0:
        stages.append(Stage(f"unfreeze {config.unfreeze}", config.stage_options(config.epochs, config.lr),
                            functools.partial(_unfreeze, unfreeze)))
    return stages


def estimate_seconds(config: FinetuneConfig, n_train: int, n_val: int, folds: int = 1) -> float:
    """Time a few real training steps of this backbone and size, and scale up to the whole run: each model's
    build and first steps (graph tracing: most of a short run's time, e.g. 63 s of two folds with --epochs 0 that
    were estimated at 0.0 min) once a fold, then its epochs."""
    from ._tf import keras

    size = config.image_size
    setup_start = time.perf_counter()
    model = build_classifier(config.backbone, config.weights, size, 2, config.dropout)
    set_trainable(base_model(model), _resolve_unfreeze(config, get_backbone_spec(config.backbone)))
    compile_model(model, TrainOptions(lr=1e-4), 1)
    x = np.random.default_rng(0).uniform(0, 255, (config.batch_size, size, size, 3)).astype(np.float32)
    y = keras.utils.to_categorical(np.arange(config.batch_size) % 2, 2)
    model.train_on_batch(x, y)
    model.predict_on_batch(x)
    setup = time.perf_counter() - setup_start
    start = time.perf_counter()
    for _ in range(2):
        model.train_on_batch(x, y)
    per_train = (time.perf_counter() - start) / (2 * config.batch_size)
    start = time.perf_counter()
    model.predict_on_batch(x)
    per_infer = (time.perf_counter() - start) / config.batch_size
    per_epoch_head = n_train * per_infer * 1.2 + n_val * per_infer
    per_epoch_tune = n_train * per_train + n_val * per_infer
    return folds * (setup + config.head_epochs * per_epoch_head + config.epochs * per_epoch_tune)


FOLD_RESULT = "held_out.json"  # a finished fold's probabilities on its held-out images: what --resume keeps


@keeps_callers_global_state
@writes_runs
def finetune_cv(config: FinetuneConfig, k: int, out: str | Path | None = None, force: bool = False,
                resume: str | Path | None = None) -> tuple[Path, Evaluation, dict]:
    """Stratified K-fold over train+val: one full fine-tuning per fold, reported on out-of-fold predictions.

    ``resume``: the folder of a killed cross-validation, with its settings, images and folds (this session's
    ``strategy``): its finished folds are kept, the fold it was in goes on from its last checkpoint, the rest run.
    """
    from sklearn.model_selection import StratifiedKFold

    if resume:
        resume = Path(resume)
        config, k = replace(FinetuneConfig.from_run(resume, "finetune-cv"), strategy=config.strategy), \
            stored_folds(resume)
        hold_run_dir(resume)  # first, as a plain resume does: a second resume is refused before any work
    else:  # a rerun into a finished cross-validation was refused only after the data check and the estimate
        check_run_dir(out, force)
    _check_cv_settings(config, k)
    check_run_settings(config)
    spec = get_backbone_spec(config.backbone)
    config = replace(config, image_size=resolve_input(spec.name, config.image_size).image_size)
    checked = prepare_dataset(load_split(resume) if resume else config.data,  # a resume's split was drawn before
                              DEFAULT_VAL_FRACTION if resume else config.val_fraction, config.seed,
                              config.max_pixels, strict=config.strict, pooled=True)  # every class is scored
    records = sorted(checked.dataset.records, key=lambda r: r.path)
    classes = checked.dataset.classes
    if resume:
        check_resumed_classes(resume, classes)  # a finished fold's probabilities are of the classes it started on
    y = label_indices(records, classes)
    check_fold_counts(np.bincount(y, minlength=len(classes)), k, inner_cv=config.head_init == "probe")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=config.seed)
    folds = [_fold_records(records, train, test) for train, test in splitter.split(np.zeros(len(y)), y)]
    kept = _kept_folds(resume, folds, len(classes)) if resume else {}  # before the estimate, which counts them
    left = k - len(kept)
    estimate = estimate_seconds(config, len(y) * (k - 1) // k, len(y) // k, left)
    say(f"cross-validated fine-tuning: {k} folds x ({config.head_epochs} + {config.epochs}) epochs on "
        f"{len(y)} images" + (f", {k - left} of them finished before" if left < k else "")
        + f"; estimated time {estimate / 60:.1f} min on this machine")
    if resume:
        run_dir = resume
    else:
        run_dir = new_run_dir("finetune-cv", checked.dataset.name, spec.name, out=out, force=force)
        write_json(run_dir / "config.json", {**asdict(config), "augment": stored_augment(config.augment),
                                             "kind": "finetune-cv", "cv": k, GIVEN_IMAGE_SIZE: config.image_size,
                                             "dataset": checked.dataset.name, "classes": classes})
        write_manifest(records, run_dir / SPLIT_FILE)  # the images --resume goes on with
    cv = _run_folds(config, run_dir, folds, kept, records, y, len(classes), bool(resume))
    say_cv(cv)
    evaluation = Evaluation(classes, y, cv.oof_probs)
    metrics = write_run_report(run_dir, evaluation, [r.path for r in records], kind="finetune-cv",
                               title=f"{checked.dataset.name}: fine-tuned {spec.name}, {k}-fold cross-validation",
                               config=asdict(config), extra={"cv": cv.to_json(), "estimated_seconds": estimate},
                               scored_on="out-of-fold")
    return run_dir, evaluation, metrics


def _run_folds(config: FinetuneConfig, run_dir: Path, folds: list[list], kept: dict, records: list, y: np.ndarray,
               n_classes: int, resuming: bool) -> CVResult:
    """Each fold's held-out probabilities (kept from before a resume, or trained), pooled out of fold."""
    oof = np.zeros((len(y), n_classes))
    scores, tests = [], []
    index = {r.path: i for i, r in enumerate(records)}
    for fold, fold_records in enumerate(folds):
        held_out = sum(r.split == "val" for r in fold_records)
        say(f"fold {fold + 1}/{len(folds)}: {len(fold_records) - held_out} training, {held_out} held-out images")
        if fold in kept:
            say("  finished before the resume: kept")
            paths, probs = kept[fold]
        else:
            paths, probs = _cv_fold(config, run_dir / f"fold-{fold + 1}", fold_records, n_classes, resuming)
        rows = [index[p] for p in paths]
        oof[rows] = probs
        scores.append(float((probs.argmax(1) == y[rows]).mean()))
        tests.append(np.array(rows))
    correct = int((oof.argmax(1) == y).sum())
    return CVResult(len(folds), 1, scores, [{} for _ in scores], tests, oof, correct, len(y),
                    procedure="one fine-tuning per fold")


def _check_cv_settings(config: FinetuneConfig, k: int) -> None:
    check_folds(k, off_allowed=False)
    if config.strategy == "multiworker":
        raise TltoolError("--cv with --strategy multiworker is not supported: run the folds on one machine "
                          "(--strategy auto or mirrored), or fine-tune once across the cluster.")
    if config.refit:
        raise TltoolError("--refit has nothing to do with --cv: --cv estimates accuracy with K models and ships "
                          "none of them. Drop one of them.")


def _cv_fold(config: FinetuneConfig, fold_dir: Path, records: list, n_classes: int,
             resuming: bool) -> tuple[list[str], np.ndarray]:
    """One fold's (held-out paths, probabilities), from its run resumed from its last checkpoint when it was
    killed in training (a finished fold's kept result is read before, by _kept_folds), else trained."""
    held_out = sorted(r.path for r in records if r.split == "val")
    run = fold_dir / "run"
    if resuming and os.path.lexists(run / "state.json") and _trained_on(run, records):
        # killed in training, or finished before its held_out.json (a finished run only re-evaluates): the fold
        # run's own settings and split, this session's strategy
        result = finetune(config, resume=run)
    else:
        if resuming and os.path.lexists(run / "state.json"):
            say(f"  {run} was trained on other images (the run's images that can be read changed): training the "
                "fold again")
        write_manifest(records, fold_dir / SPLIT_FILE)
        result = finetune(replace(config, data=str(fold_dir / SPLIT_FILE), tta="none"), out=run, force=True)
    paths, _, _, fold_classes = read_predictions(run / "predictions.csv")
    if len(fold_classes) != n_classes or sorted(paths) != held_out:  # its images changed while it ran
        raise TltoolError(f"{run}: predicted other images than the fold holds out (photos were changed or became "
                          f"unreadable while it ran); run `tltool finetune --resume {fold_dir.parent}` again.")
    write_json(fold_dir / FOLD_RESULT, {"paths": paths, "probs": result.evaluation.probs})
    return paths, np.asarray(result.evaluation.probs, dtype=float)


def _trained_on(run: Path, records: list) -> bool:
    """Whether the fold run ``run`` was started on exactly ``records`` (its split.csv, read as a resume reads it:
    path, label and split); a run on other images (a photo unreadable since the cross-validation started moves every
    fold's images) is not resumed."""
    try:
        started = load_split(run).records
    except (TltoolError, OSError, ValueError):  # no split.csv, a photo gone, a damaged config.json
        return False
    return {(r.path, r.label, r.split) for r in started} == {(r.path, r.label, r.split) for r in records}


def _fold_records(records: list, train: np.ndarray, test: np.ndarray) -> list:
    return [replace(records[i], split="train") for i in train] + [replace(records[i], split="val") for i in test]


def _kept_folds(run_dir: Path, folds: list[list], n_classes: int) -> dict[int, tuple[list[str], np.ndarray]]:
    """The finished folds of a killed cross-validation that --resume keeps: fold index -> (paths, probabilities)."""
    kept = {fold: _kept_fold(run_dir / f"fold-{fold + 1}", records, n_classes) for fold, records in enumerate(folds)}
    return {fold: result for fold, result in kept.items() if result is not None}


def _kept_fold(fold_dir: Path, records: list, n_classes: int) -> tuple[list[str], np.ndarray] | None:
    """A finished fold's result, if ``fold_dir`` holds one for exactly its held-out images; a damaged or
    edited one is not kept (the fold is trained again)."""
    held_out = sorted(r.path for r in records if r.split == "val")
    path = fold_dir / FOLD_RESULT
    if not os.path.lexists(path):
        return None
    try:
        if path.is_symlink():
            raise ValueError("a link, not the file tltool wrote")
        stored = read_json(path)
        paths, probs = stored["paths"], np.asarray(stored["probs"], dtype=float)
    except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError) as error:
        say(f"  {path} cannot be used ({type(error).__name__}: {error}): training the fold again")
        return None
    if (not isinstance(paths, list) or sorted(map(str, paths)) != held_out
            or probs.shape != (len(held_out), n_classes) or not np.isfinite(probs).all()):
        say(f"  {path} is not this fold's result (other images, or damaged): training the fold again")
        return None
    return [str(p) for p in paths], probs
