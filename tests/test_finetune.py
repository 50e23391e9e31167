"""Fine-tuning: frozen BatchNorm, resume after SIGKILL, TTA views, NaN guard (exports: test_export.py)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE
from helpers import noise_image
from tltool._tf import keras, tf
from tltool.errors import TltoolError
from tltool.tta import predict_with_tta
from tltool.finetune import FinetuneConfig, base_model, build_classifier, finetune, finetune_cv, set_trainable
from tltool.keras_files import load_keras_model
from tltool.training import Stage, TrainOptions, compile_model, run_stages

TINY = ["--image-size", "32", "--batch-size", "16", "--augment", "light", "--val-fraction", "0.25",
        "--head-init", "random"]  # no probe to fit before epoch 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    config = FinetuneConfig(data=str(SAMPLE), image_size=64, batch_size=16, augment="light", head_epochs=2,
                            epochs=1, unfreeze="1", tta="10crop", val_fraction=0.25)
    return finetune(config, out=out)


def test_tiny_finetune_writes_the_full_report(tiny_run):
    run = tiny_run.run_dir
    for name in ("model.keras", "model.json", "metrics.json", "report.md", "history.csv", "training_curves.png",
                 "confusion_matrix.png", "misclassified.png", "predictions.csv", "config.json"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and [r["stage"] for r in metrics["history"]] == ["head", "head", "unfreeze 1"]
    assert metrics["val"]["accuracy"]["n"] == 40
    assert metrics["val"]["accuracy"]["value"] > 0.5  # 4 shapes from ImageNet features: far above chance (0.25)
    assert "10crop" in metrics["tta"]


def test_batchnorm_statistics_do_not_move_after_unfreezing():
    model = build_classifier("efficientnet_lite0", "imagenet", 64, 3)
    base = base_model(model)
    set_trainable(base, "all")
    compile_model(model, TrainOptions(lr=1e-2), steps_per_epoch=1)
    bns = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in base.layers if isinstance(layer, keras.layers.Conv2D)]
    assert bns and all(not bn.trainable for bn in bns)
    before = [(bn.moving_mean.numpy().copy(), bn.moving_variance.numpy().copy()) for bn in bns]
    kernel = convs[-1].kernel.numpy().copy()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 64, 64, 3)).astype(np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 3, 8), 3)
    model.train_on_batch(x, y)
    for bn, (mean, var) in zip(bns, before):
        np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
        np.testing.assert_array_equal(bn.moving_variance.numpy(), var)
    assert not np.array_equal(convs[-1].kernel.numpy(), kernel)  # the unfrozen layers did learn


def test_a_fine_tune_from_random_weights_follows_its_seed():
    """--weights none: features always use one fixed draw (they are cached under that name), but a fine-tune from
    scratch at --seed 1 and --seed 2 must start from two different networks, and at one seed from the same."""
    def first_conv(seed):
        return base_model(build_classifier("efficientnet_lite0", "none", 32, 2, seed=seed)).get_layer(
            "stem_conv").kernel.numpy()

    assert not np.allclose(first_conv(1), first_conv(2))
    np.testing.assert_array_equal(first_conv(1), first_conv(1))
    np.testing.assert_array_equal(first_conv(None), first_conv(0))  # the features' fixed draw


def test_unfreeze_by_block_name_and_bad_name():
    model = build_classifier("efficientnet_lite0", "none", 32, 2)
    base = base_model(model)
    set_trainable(base, "block7")
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert trainable and all(name.startswith(("block7", "top")) for name in trainable)
    with pytest.raises(TltoolError, match="block"):
        set_trainable(base, "block99")


def test_ten_crop_tta_evaluates_ten_views_per_image(tmp_path):
    paths = []
    for i in range(3):
        arr = np.zeros((80, 80, 3), np.uint8)
        arr[:, :40] = 200  # left half bright: mirrored views differ from the originals
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    seen = []

    def predict_views(batch):
        batch = np.asarray(batch)
        seen.append(batch.shape)
        left = batch[:, :, :8].mean(axis=(1, 2, 3)) / 255.0
        return np.stack([left, 1 - left], axis=1)

    probs = predict_with_tta(predict_views, paths, image_size=56, resize="crop", tta="10crop", batch_size=2)
    assert sum(shape[0] for shape in seen) == 3 * 10  # 10 views per image, counted
    assert all(shape[1:] == (56, 56, 3) for shape in seen)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # half of the views are mirrored, so the bright-left score averages between the extremes
    assert 0.2 < probs[0, 0] < 0.8
    seen.clear()
    predict_with_tta(predict_views, paths, image_size=56, resize="crop", tta="flip", batch_size=4)
    assert sum(shape[0] for shape in seen) == 3 * 2 and max(shape[0] for shape in seen) <= 4


def test_a_streamed_prediction_equals_the_batch_by_batch_one_and_keeps_each_image_in_its_row():
    """``stream_tta`` hands the engine one stream of view chunks (several per batch with 10-crop) and reassembles
    each batch's probabilities in order, though the stream runs a chunk ahead of what it hands back."""
    from tltool.tta import predict_batch, stream_tta, tta_views

    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8) for n in (5, 3, 1)]

    def predict_views(views):
        score = np.asarray(views, np.float32)[:, :, :20].mean(axis=(1, 2, 3)) / 255.0  # differs per view
        return np.stack([score, 1 - score], axis=1)

    calls = []

    def ahead(chunks):  # takes the next chunk before it hands back this one, as LiteRT's map does
        chunks, previous = iter(chunks), None
        for chunk in chunks:
            calls.append(len(chunk))
            if previous is not None:
                yield predict_views(previous)
            previous = chunk
        if previous is not None:
            yield predict_views(previous)

    got = list(stream_tta(ahead, batches, "10crop", 56, batch_size=4))
    assert [n for _probs, n in got] == [5, 3, 1]
    assert sum(calls) == 9 * 10 and max(calls) <= 4  # every view once, in chunks of at most batch_size
    closed = []

    def engine(chunks):  # an engine's stream that must be told when nobody will read it any more
        try:
            yield from ahead(chunks)
        finally:
            closed.append(True)

    with_empty = batches[:1] + [batches[0][:0]] + batches[1:]  # an empty batch is skipped, not waited for
    assert [n for _p, n in stream_tta(engine, with_empty, "flip", 56, batch_size=4)] == [5, 3, 1]
    stream = stream_tta(engine, batches, "10crop", 56, batch_size=4)
    next(stream)
    stream.close()  # the caller stops (an error, Ctrl-C): the engine's stream is closed, its queued chunk cancelled
    assert closed == [True, True]
    for (probs, _n), images in zip(got, batches):  # all views in one call, averaged per image
        expected = predict_views(tta_views(images, "10crop", 56)).reshape(len(images), 10, 2).mean(axis=1)
        np.testing.assert_allclose(probs, expected, rtol=1e-6)
        np.testing.assert_allclose(predict_batch(predict_views, images, "10crop", 56, 4), expected, rtol=1e-6)


def test_nan_loss_stops_at_once_and_suggests_a_lower_lr(tmp_path):
    def build():
        inputs = keras.Input((4,))
        outputs = keras.layers.Dense(2, activation="softmax", kernel_initializer="zeros")(inputs)
        return keras.Model(inputs, outputs)

    x = np.full((32, 4), np.nan, np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, np.eye(2)[np.arange(32) % 2])).batch(8)
    with pytest.raises(TltoolError, match=r"--lr 0\.001"):
        run_stages(build, [Stage("s", TrainOptions(epochs=5, lr=0.01))], lambda e: data, data, 4, tmp_path)
    assert not (tmp_path / "state.json").exists()  # stopped inside the first epoch


def _epochs_done(run: Path) -> int:
    try:
        return json.loads((run / "state.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_sigkill_after_epoch_one_then_resume(tmp_path):
    run = tmp_path / "killed"
    env = {**os.environ, "TLTOOL_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "tltool", "finetune", str(SAMPLE), *TINY, "--head-epochs", "2", "--epochs", "1",
               "--unfreeze", "1", "--out", str(run)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while _epochs_done(run) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _epochs_done(run)
    assert 1 <= done < 3, proc.stderr.read().decode()[-2000:]
    assert not (run / "model.keras").exists()
    resumed = subprocess.run([sys.executable, "-m", "tltool", "finetune", "--resume", str(run)], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming after epoch {done}" in resumed.stderr
    history = (run / "history.csv").read_text().strip().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in history] == [1, 2, 3]
    model = load_keras_model(run / "model.keras")  # tltool's layers registered, whichever tests ran before
    assert model.output_shape == (None, 4)


def test_a_resume_on_other_classes_than_the_run_started_on_is_refused_before_anything_changes(tiny_run, tmp_path):
    """split.csv names the labels a resume trains on: with one class renamed (circle -> zcircle, now sorted last) the
    checkpoint's outputs went on training as shifted classes without a word (the resumed run scored 0.025 on its
    own val images); with one class's rows gone, the resume rewrote model.json with 3 classes for a model of 4."""
    import shutil

    run = Path(shutil.copytree(tiny_run.run_dir, tmp_path / "run"))  # a finished run: a resume only evaluates it
    rows = (run / "split.csv").read_text()
    before = {name: (run / name).read_bytes() for name in ("model.json", "model.keras", "metrics.json")}
    for edited in (rows.replace(",circle,", ",zcircle,"),
                   "".join(line for line in rows.splitlines(keepends=True) if ",triangle," not in line)):
        (run / "split.csv").write_text(edited)
        with pytest.raises(TltoolError, match=r"the run started on the classes \['circle', 'square', 'star', "
                                              r"'triangle'\], and its split.csv now gives \["):
            finetune(FinetuneConfig(), resume=run)
        assert {name: (run / name).read_bytes() for name in before} == before
    (run / "split.csv").write_text(rows)  # as it started: resumed (nothing left to train)
    assert finetune(FinetuneConfig(), resume=run).evaluation.classes == ["circle", "square", "star", "triangle"]


def test_refit_stages_repeat_the_epochs_the_val_run_kept():
    from tltool.training import LoopState, refit_stages

    options = TrainOptions(epochs=6, lr=1e-4, schedule="cosine", early_stopping=2)
    stages = [Stage("head", replace(options, epochs=2, early_stopping=0)), Stage("unfreeze 2", options)]
    losses = [("head", 1.0), ("head", 0.9), ("unfreeze 2", 0.8), ("unfreeze 2", 0.7), ("unfreeze 2", 0.75),
              ("unfreeze 2", 0.76)]
    state = LoopState(epoch=6, history=[{"epoch": i + 1, "stage": s, "val_loss": v} for i, (s, v) in enumerate(losses)],
                      stopped_early=["unfreeze 2"])
    head, tune = refit_stages(stages, state)
    assert (head.epochs_to_run, head.options.epochs) == (2, 2)
    # early stopping kept epoch 2 of the stage: the refit runs 2 epochs of the same 6-epoch schedule, never stopping
    assert (tune.epochs_to_run, tune.options.epochs, tune.options.early_stopping) == (2, 6, 0)
    assert tune.options.lr == options.lr and tune.options.schedule == "cosine"


def test_refit_ships_a_train_val_model_and_keeps_the_val_estimate(tmp_path):
    import shutil

    from tltool.dataset import load_dataset
    from tltool.models import load_run
    from tltool.training import LoopState

    # a random head (no probe to fit, twice) at 32 px: the refit's bookkeeping does not depend on either
    config = FinetuneConfig(data=str(SAMPLE), image_size=32, batch_size=16, augment="light", head_epochs=1,
                            epochs=1, unfreeze="1", val_fraction=0.25, refit=True, head_init="random")
    save = LoopState.save

    def save_and_snapshot(state, path):  # a copy of the run folder as a kill after the refit's first epoch leaves it
        save(state, path)
        if Path(path).parent.name == "refit" and state.epoch == 1:
            shutil.copytree(Path(path).parents[1], tmp_path / "killed")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LoopState, "save", save_and_snapshot)
        result = finetune(config, out=tmp_path / "run")
    run = result.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    refit = metrics["refit"]
    assert refit["n_images"] == 160 and refit["epochs"] == 2 and metrics["val"]["accuracy"]["n"] == 40
    assert [r["stage"] for r in refit["history"]] == ["head", "unfreeze 1"]
    assert not any("val_loss" in r for r in refit["history"])  # no val split in a refit
    model_json = json.loads((run / "model.json").read_text())
    assert model_json["refit"] is True and model_json["n_trained_on"] == 160
    assert "trained again on train+val (160 images)" in (run / "report.md").read_text()
    # which weights: the refit's, not the val run's last epoch (the review of the change)
    assert metrics["model_weights"]["chosen_by"] == "refit"
    assert "- model: the refit's weights, after its last epoch (2) on train+val" in (run / "report.md").read_text()
    # the reported estimate is the train-only model's (its last checkpoint), and the shipped model is another one
    val_paths = [r.path for r in load_dataset(str(run / "split.csv")).subset("val")]
    before = tmp_path / "before-refit"
    before.mkdir()
    (before / "model.json").write_text((run / "model.json").read_text())
    (before / "model.keras").write_bytes((run / "checkpoint-epoch0002.keras").read_bytes())
    np.testing.assert_allclose(load_run(before).predict_paths(val_paths), result.evaluation.probs, atol=1e-5)
    assert np.abs(load_run(run).predict_paths(val_paths) - result.evaluation.probs).max() > 1e-3

    # killed after the refit's first epoch (the folder as it was then) and resumed, the run ships the model of the
    # uninterrupted one
    killed = tmp_path / "killed"
    pending = json.loads((killed / "metrics.json").read_text())["refit"]
    assert pending["finished"] is False and "--resume" in pending["note"]  # the report says the refit is not done
    assert not (killed / "refit" / "checkpoint-epoch0002.keras").exists()
    resumed = finetune(config, resume=killed)
    assert json.loads((killed / "metrics.json").read_text())["refit"]["finished"] is True
    for a, b in zip(result.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_refit_with_a_val_driven_schedule_or_cv_is_a_user_error(tmp_path):
    from tltool.finetune import finetune_cv

    with pytest.raises(TltoolError, match="--schedule plateau"):
        FinetuneConfig(data=str(SAMPLE), refit=True, schedule="plateau").validate()
    with pytest.raises(TltoolError, match="--refit has nothing to do with --cv"):
        finetune_cv(FinetuneConfig(data=str(SAMPLE), refit=True), 3, out=tmp_path / "cv")
    from tltool.cli.training import finetune_cmd, train_cmd

    for command in (finetune_cmd, train_cmd):  # off by default, on the command line as in the library
        option = next(p for p in command.params if p.name == "refit")
        assert option.default is False is FinetuneConfig.refit


def test_a_killed_cross_validation_keeps_its_finished_folds(tmp_path, monkeypatch, capsys):
    """A fine-tune --cv killed in its second fold, run again on the same --out, deleted the first fold's minutes of
    training (no metrics.json: it looked unfinished); --resume trained every fold again. Now the rerun is refused
    and --resume keeps the finished fold and goes on with the killed one from its checkpoint."""
    import tltool.finetune as ft
    from tltool.supervised import KerasTrainingRun

    config = FinetuneConfig(data=str(SAMPLE), image_size=32, batch_size=32, augment="none", head_epochs=1,
                            epochs=0, head_lr=3e-3, head_init="random", unfreeze="none")
    finish, calls = KerasTrainingRun.finish, []

    def killed_in_fold_2(self, run_dir, *args, **kwargs):
        if run_dir.parent.name == "fold-2":
            raise KeyboardInterrupt  # after its last epoch's checkpoint, before its report
        return finish(self, run_dir, *args, **kwargs)

    estimated = []  # the folds each estimate counts (its timed model build, 12 s each, is tested on its own)
    monkeypatch.setattr(ft, "estimate_seconds", lambda config, n_train, n_val, folds: estimated.append(folds) or 60.0)
    monkeypatch.setattr(KerasTrainingRun, "finish", killed_in_fold_2)
    with pytest.raises(KeyboardInterrupt):
        ft.finetune_cv(config, 2, out=tmp_path / "cv")
    monkeypatch.setattr(KerasTrainingRun, "finish", finish)
    fold_1 = json.loads((tmp_path / "cv" / "fold-1" / "held_out.json").read_text())
    with pytest.raises(TltoolError, match="--resume"):
        ft.finetune_cv(config, 2, out=tmp_path / "cv")
    assert (tmp_path / "cv" / "fold-1" / "run" / "model.keras").exists()  # refused, nothing removed

    real = ft.finetune
    monkeypatch.setattr(ft, "finetune", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    run_dir, evaluation, metrics = ft.finetune_cv(FinetuneConfig(data=None), 0, resume=tmp_path / "cv")
    assert [Path(kw["resume"]).parent.name for kw in calls] == ["fold-2"]  # fold 1 kept, fold 2 resumed
    err = capsys.readouterr().err
    assert "2 folds x (1 + 0) epochs on 160 images, 1 of them finished before; estimated time" in err
    # the terminal said "1x repeated stratified 2-fold, regularisation searched inside each training fold"
    assert "\nstratified 2-fold, one fine-tuning per fold: accuracy " in err and "regularisation" not in err
    assert "- out-of-fold predictions (the per-class table" in (run_dir / "report.md").read_text()
    assert evaluation.n == 160 and metrics["cv"]["k"] == 2  # every image predicted once, by the fold that did not
    assert metrics["estimated_seconds"] == 60 and estimated == [2, 1]  # train on it; the resume has one fold left
    splits = [list(csv.DictReader(open(run_dir / f"fold-{i}" / "split.csv"))) for i in (1, 2)]
    val_1, val_2 = ({r["path"] for r in split if r["split"] == "val"} for split in splits)
    assert not val_1 & val_2 and len(val_1 | val_2) == 160
    rows = [sorted(r.path for r in ft.load_split(tmp_path / "cv").records).index(p) for p in fold_1["paths"]]
    np.testing.assert_allclose(evaluation.probs[rows], fold_1["probs"])
    assert metrics["cv"]["fold_scores"][0] == pytest.approx(
        np.mean(np.argmax(fold_1["probs"], 1) == evaluation.y_true[rows]))


def test_the_cross_validation_estimate_counts_each_folds_model_build():
    """--epochs 0 --cv 2 was estimated at 0.0 min and took 63 s: the estimate scaled only the epochs, while each
    fold builds and traces a model of its own."""
    from tltool.finetune import estimate_seconds

    config = FinetuneConfig(data=str(SAMPLE), image_size=32, batch_size=8, head_epochs=0, epochs=0)
    start = time.perf_counter()
    estimate = estimate_seconds(config, 100, 50, folds=2)
    assert estimate > 0.5 * (time.perf_counter() - start) > 0  # two builds, where its own one build took that long


def test_finetune_resume_of_a_cross_validation_goes_on_with_its_folds(tmp_path, monkeypatch):
    """`tltool finetune --resume RUN` on a --cv run calls the cross-validation with it (not a plain fine-tune,
    which refused it as another kind of run)."""
    from click.testing import CliRunner

    import tltool.cli.training as cli
    from tltool.cli import main
    from tltool.evaluation import Evaluation

    (tmp_path / "config.json").write_text(json.dumps({"kind": "finetune-cv", "cv": 3}))
    seen = []

    def cross_validation(config, k, out=None, force=False, resume=None):
        seen.append((k, resume))
        return tmp_path, Evaluation(["a", "b"], np.array([0, 1, 1]), np.array([[.9, .1], [.2, .8], [.6, .4]])), \
            {"cv": {"k": 3, "accuracy": {"value": 2 / 3, "ci95": [0.208, 0.939], "n": 3}}}

    monkeypatch.setattr(cli, "finetune_cv", cross_validation)
    result = CliRunner().invoke(main, ["finetune", "--resume", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen == [(0, str(tmp_path))] and "3-fold cross-validated" in result.output and "0.667" in result.output
    assert "known to about ±36.5 points on these 3 images" in result.output  # as probe says it


def test_finetune_says_how_well_its_accuracy_is_known_as_probe_does(tmp_path, monkeypatch):
    """probe printed "this accuracy is known to about ±N points ..." under its accuracy; finetune did not (only
    its report.md said it), so a user comparing two fine-tunes by their printed accuracies was not told."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    import tltool.cli.training as cli
    from tltool.cli import main
    from tltool.evaluation import Evaluation

    evaluation = Evaluation(["a", "b"], np.array([0, 1] * 50), np.tile([[.9, .1], [.2, .8]], (50, 1)))
    monkeypatch.setattr(cli, "finetune", lambda *a, **kw: SimpleNamespace(
        chief=True, evaluation=evaluation, metrics={}, run_dir=tmp_path))
    result = CliRunner().invoke(main, ["finetune", str(SAMPLE)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("val accuracy 1.000") and lines[1].startswith(
        "this accuracy's 95 % interval on these 100 images runs from 3.7 points below it to 0.0 above"), result.output


@pytest.mark.parametrize("images, finished, resumed", [("same", False, True), ("same", True, True),
                                                      ("other", False, False)])
def test_a_resumed_cross_validation_resumes_a_fold_run_only_on_the_fold_s_images(tmp_path, monkeypatch, images,
                                                                                  finished, resumed):
    """A fold run with checkpoints is resumed when it was started on this fold's images: killed in training, or
    finished before its held_out.json (`finetune --resume CV/fold-2/run`: it was trained again from scratch). One
    on other images (a photo unreadable since the cross-validation started moves every fold's) is trained again:
    resumed, its predictions failed an assert, as a traceback."""
    import tltool.finetune as ft
    from tltool.dataset import load_dataset, write_manifest

    records = sorted(load_dataset(str(SAMPLE)).records, key=lambda r: r.path)
    records = [replace(r, split="val" if i % 2 else "train") for i, r in enumerate(records)]
    run = tmp_path / "fold-2" / "run"
    run.mkdir(parents=True)
    write_manifest(records if images == "same" else records[1:], run / "split.csv")
    (run / "state.json").write_text("{}")
    (run / "config.json").write_text(json.dumps({"kind": "finetune"}))  # as a fold run writes it first
    if finished:
        (run / "metrics.json").write_text("{}")
    calls = []

    class Stop(Exception):
        pass

    def started(config, out=None, resume=None, force=False):
        calls.append(resume)
        raise Stop

    monkeypatch.setattr(ft, "finetune", started)
    with pytest.raises(Stop):
        ft._cv_fold(FinetuneConfig(data=None), tmp_path / "fold-2", records, 4, True)
    assert calls == ([run] if resumed else [None])


def test_cv_given_with_the_resume_of_a_plain_fine_tune_is_ignored_as_warned(tmp_path, monkeypatch):
    """`finetune --resume RUN --cv 3` on a plain fine-tune warned '--cv ignored', then used it: the run was taken
    for a cross-validation and refused ('resume it with `tltool finetune --resume RUN`', what was typed)."""
    from click.testing import CliRunner

    import tltool.cli.training as cli
    from tltool.cli import main

    (tmp_path / "config.json").write_text(json.dumps({"kind": "finetune"}))
    seen = []

    class Stop(Exception):
        pass

    def called(name):
        def record(*args, **kwargs):
            seen.append((name, str(kwargs.get("resume"))))
            raise Stop
        return record

    monkeypatch.setattr(cli, "finetune", called("finetune"))
    monkeypatch.setattr(cli, "finetune_cv", called("finetune_cv"))
    result = CliRunner().invoke(main, ["finetune", "--resume", str(tmp_path), "--cv", "3"])
    assert isinstance(result.exception, Stop) and seen == [("finetune", str(tmp_path))]
    assert "--cv ignored" in result.output


def test_a_fold_that_predicted_other_images_is_a_clear_error(tmp_path, monkeypatch):
    """A photo changed or unreadable while a fold trained: its predictions name other images than the fold holds
    out. This was an assert (a traceback, or nothing under python -O); it is one line naming what to do."""
    import tltool.finetune as ft
    from tltool.dataset import load_dataset

    records = [replace(r, split="val" if i % 2 else "train")
               for i, r in enumerate(sorted(load_dataset(str(SAMPLE)).records, key=lambda r: r.path))]

    def trained(config, out=None, resume=None, force=False):
        out.mkdir(parents=True)
        (out / "predictions.csv").write_text("path,true,predicted,correct,confidence,p_a,p_b\nx.jpg,a,a,1,0.9,0.9,0.1\n")

    monkeypatch.setattr(ft, "finetune", trained)
    with pytest.raises(TltoolError, match=r"fold-1/run: predicted other images than the fold holds out .* `tltool "
                                          r"finetune --resume .*` again"):
        ft._cv_fold(FinetuneConfig(data=None), tmp_path / "fold-1", records, 2, False)


def test_a_damaged_fold_result_is_not_counted_as_finished_in_the_resume_estimate(tmp_path, monkeypatch, capsys):
    """The resume's time estimate counted every fold with a held_out.json as finished, then trained a damaged one
    again: the estimate was one fold low. Now the kept folds are read before the estimate."""
    from dataclasses import asdict

    import tltool.finetune as ft
    from tltool.dataset import load_dataset, write_manifest

    run = tmp_path / "cv"
    (run / "fold-1").mkdir(parents=True)
    config = FinetuneConfig(data=str(SAMPLE), image_size=48, head_epochs=1, epochs=0)
    (run / "config.json").write_text(json.dumps({**asdict(config), "kind": "finetune-cv", "cv": 2}))
    write_manifest(sorted(load_dataset(str(SAMPLE)).records, key=lambda r: r.path), run / "split.csv")
    (run / "fold-1" / "held_out.json").write_text('{"paths": ["cut short')

    class Stop(Exception):
        pass

    def trained(config, fold_dir, *args):
        raise Stop(fold_dir.name)

    estimated = []  # the folds the estimate counts (its timed model build, 12 s here, is tested on its own)
    monkeypatch.setattr(ft, "estimate_seconds", lambda config, n_train, n_val, folds: estimated.append(folds) or 60.0)
    monkeypatch.setattr(ft, "_cv_fold", trained)
    with pytest.raises(Stop, match="fold-1"):
        ft.finetune_cv(FinetuneConfig(data=None), 0, resume=run)
    err = capsys.readouterr().err
    assert "held_out.json cannot be used" in err and "finished before" not in err and estimated == [2]


def test_a_class_too_small_for_the_probe_head_is_named_before_the_run_folder(tmp_path):
    """The classifier starts as the linear probe, whose C is chosen by CV on the training split: a class of 2
    photos (1 in train) made the fine-tune build the network and leave a run folder of config.json and split.csv,
    then say only "every class needs at least 2 training images", naming no class."""
    for label, n in (("big", 8), ("rare", 2)):
        for i in range(n):
            noise_image(tmp_path / "data" / label / f"{label}{i}.jpg", seed=len(label) * 100 + i)
    config = FinetuneConfig(data=str(tmp_path / "data"), weights="none", image_size=32, head_epochs=0, epochs=1)
    with pytest.raises(TltoolError, match=r"\{'rare': 1\} have fewer than 2 training images.*--head-init random"):
        finetune(config, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_two_fold_cv_of_classes_of_3_photos_is_refused_before_its_folder(tmp_path):
    """`--cv 2` on 3 photos a class left 1 photo of a class in a fold's training part, too few for the probe the
    classifier starts from: the first fold's fine-tune stopped with "every class needs at least 2 training
    images", naming neither the class nor --cv, in a cross-validation folder of config.json, split.csv, fold-1."""
    for i in range(3):
        noise_image(tmp_path / "three" / "a" / f"a{i}.jpg", seed=i)
        noise_image(tmp_path / "three" / "b" / f"b{i}.jpg", seed=10 + i)
    config = FinetuneConfig(data=str(tmp_path / "three"), weights="none", image_size=32, head_epochs=0, epochs=1)
    with pytest.raises(TltoolError, match=r"--cv 2: every class needs at least 4 images \(smallest has 3\).*"
                                          r"Use --cv 3\.$"):
        finetune_cv(config, 2, out=tmp_path / "cv")
    assert not (tmp_path / "cv").exists()
    with pytest.raises(TltoolError, match=r"--cv 4: every class needs at least 4 images \(smallest has 3\); "
                                          r"use a K from 2 to 3\.$"):  # a random head has no search to feed
        finetune_cv(replace(config, head_init="random"), 4, out=tmp_path / "cv")


def test_a_bad_unfreeze_is_refused_before_the_head_trains(tmp_path, capsys):
    """`--unfreeze bogus` (or -1) trained the head's epochs first and was refused when the unfreeze stage began,
    leaving a run whose --resume failed there again (with --epochs 0 it passed without a word)."""
    with pytest.raises(TltoolError, match=r"--unfreeze must be none, all, a number N \(the last N blocks; layers "
                                          r"where the backbone names none\) or a block name such as block6a, got '-1'"):
        FinetuneConfig(data=str(SAMPLE), unfreeze="-1").validate()
    for epochs in (1, 0):
        config = FinetuneConfig(data=str(SAMPLE), image_size=32, batch_size=32, augment="none", head_epochs=1,
                                epochs=epochs, head_init="random", unfreeze="bogus")
        with pytest.raises(TltoolError, match=r"--unfreeze bogus: no layer of .* starts with that name\. Use a "
                                              r"number N \(the last N blocks; layers where the backbone names "
                                              r"none\), 'all', or a block name such as "):
            finetune(config, out=tmp_path / f"run{epochs}")
        assert "epoch 1/" not in capsys.readouterr().err  # refused before any epoch
        assert not list((tmp_path / f"run{epochs}").glob("checkpoint-*"))
