"""Training a reference net from scratch with the fine-tuning machinery."""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from conftest import SAMPLE
from interrupt import Killed, killed_after_epoch
from tltool.cli import main
from tltool.configs import FinetuneConfig, ScratchConfig
from tltool.models import load_run


def test_lenet5_on_digits_reaches_95_percent(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["data", "digits", str(tmp_path / "digits")])
    assert result.exit_code == 0, result.output
    # measured: 0.983 after 5 epochs (0.992 after 15, 20 s more here)
    result = runner.invoke(main, ["train", str(tmp_path / "digits"), "--arch", "lenet5", "--epochs", "5",
                                  "--initializer", "he_normal", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["kind"] == "scratch" and metrics["config"]["arch"] == "lenet5"
    assert metrics["config"]["initializer"] == "he_normal"
    assert metrics["val"]["accuracy"]["value"] >= 0.95
    assert metrics["val"]["accuracy"]["n"] == 359
    assert len(metrics["history"]) == 5
    predicted = runner.invoke(main, ["predict", str(next((tmp_path / "digits" / "val" / "7").iterdir())),
                                     "--model", str(tmp_path / "run")])
    assert predicted.exit_code == 0 and "\t7 " in predicted.output


def test_nin_at_8_px_trains_and_its_run_loads(tmp_path):
    """--image-size 8 (nin's smallest input) passed the range, trained, then failed in its own finish: model.json's
    check still required 16 px, so the run could neither be loaded nor resumed. And a run gives back the caller's
    global random state: seeding it for training changed a notebook's own draws after a fine-tune."""
    import random

    run = tmp_path / "run"
    random.seed(123)
    np.random.seed(123)
    before = random.getstate(), np.random.get_state()[1].copy()
    result = CliRunner().invoke(main, ["train", str(SAMPLE), "--arch", "nin", "--image-size", "8", "--epochs", "1",
                                       "--batch-size", "16", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    model = load_run(run)
    assert model.image_size == 8 and model.predict_paths([str(next(SAMPLE.glob("star/*.jpg")))]).shape == (1, 4)
    weights = json.loads((run / "metrics.json").read_text())["model_weights"]
    assert (weights["epoch"], weights["chosen_by"]) == (1, "last epoch")
    assert "- model: the weights after the last epoch (1)\n" in (run / "report.md").read_text()


def test_bad_architecture_option_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["train", str(SAMPLE), "--arch", "alexnett", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "Did you mean" in result.output
    result = CliRunner().invoke(main, ["train", str(SAMPLE), "--arch", "lenet5", "--initializer", "he",
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "initializer" in result.output


TINY = ["--arch", "lenet5", "--epochs", "1", "--batch-size", "16", "--val-fraction", "0.25"]


def _copy_shapes(target):
    shutil.copytree(SAMPLE, target)
    return target


def _val_paths(run) -> set[str]:
    return {r["path"] for r in csv.DictReader(open(run / "predictions.csv"))}


def test_resume_trains_on_the_split_the_run_started_with(tmp_path):
    data, run = _copy_shapes(tmp_path / "shapes"), tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(data), *TINY, "--out", str(run)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(run / "split.csv")))
    assert len(rows) == 160 and all(Path(r["path"]).is_absolute() for r in rows)
    assert sum(r["split"] == "val" for r in rows) == 40
    assert json.loads((run / "config.json").read_text())["kind"] == "scratch"
    before, saved = _val_paths(run), (run / "model.keras").read_bytes()
    # photos added to the folder after the run started: re-splitting it would move images between the splits
    rng = np.random.default_rng(0)
    for label in ("circle", "square", "star", "triangle"):
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(data / label / f"new_{i}.png")
    result = runner.invoke(main, ["train", "--resume", str(run)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_train"] == 120 and metrics["n_val"] == 40
    assert _val_paths(run) == before
    # nothing was left to train: the saved model is kept byte for byte (saved again, Keras stamps a new time into
    # it, and an engine keyed by its bytes would convert it again)
    assert (run / "model.keras").read_bytes() == saved
    # without split.csv the run cannot be resumed on the data it started with: one clear line
    (run / "split.csv").unlink()
    result = runner.invoke(main, ["train", "--resume", str(run)])
    assert result.exit_code == 2 and "no split.csv" in result.output and "Traceback" not in result.output


def test_resume_refuses_a_run_of_the_other_command(tmp_path):
    scratch, finetuned = tmp_path / "scratch", tmp_path / "finetune"
    for folder, kind in ((scratch, "scratch"), (finetuned, "finetune")):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"kind": kind, "data": "x"}))
    runner = CliRunner()
    result = runner.invoke(main, ["finetune", "--resume", str(scratch)])
    assert result.exit_code == 2 and "from-scratch run" in result.output
    assert f"tltool train --resume {scratch}" in result.output
    result = runner.invoke(main, ["train", "--resume", str(finetuned)])
    assert result.exit_code == 2 and f"tltool finetune --resume {finetuned}" in result.output
    (scratch / "config.json").write_text(json.dumps({"data": "x", "arch": "lenet5"}))  # before `kind` was stored
    result = runner.invoke(main, ["finetune", "--resume", str(scratch)])
    assert result.exit_code == 2 and "from-scratch run" in result.output


def test_a_run_with_a_larger_max_pixels_evaluates_its_large_images(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (8000, 8001), (200, 40, 40)).save(big, quality=30)  # 64,008,000 pixels > the 64 MP default
    lines = ["path,label,split"]
    for label in ("circle", "square", "star", "triangle"):
        for i, path in enumerate(sorted((SAMPLE / label).glob("*.jpg"))[:12]):
            lines.append(f"{path},{label},{'val' if i < 3 else 'train'}")
    lines.append(f"{big},star,val")
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(tmp_path / "data.csv"), *TINY, "--max-pixels", "70000000",
                                       "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "model.json").read_text())["max_pixels"] == 70_000_000
    assert json.loads((run / "metrics.json").read_text())["n_val"] == 13
    assert str(big) in _val_paths(run)
    assert load_run(run).predict_paths([str(big)]).shape == (1, 4)


def test_evaluate_and_compare_on_data_without_a_usable_image(tmp_path):
    data, run = _copy_shapes(tmp_path / "shapes"), tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(main, ["train", str(data), *TINY, "--out", str(run)]).exit_code == 0
    bad = tmp_path / "bad"
    for label in ("circle", "star"):
        (bad / label).mkdir(parents=True)
        (bad / label / "a.jpg").write_text("not an image")
    result = runner.invoke(main, ["evaluate", str(run), str(bad), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 2 and "no usable images" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["compare", str(run), str(run), str(bad)])
    assert result.exit_code == 2 and "no usable images" in result.output
    # --resume keeps the run's own settings: the options it ignores are named, not silently dropped
    result = runner.invoke(main, ["train", "--resume", str(run), "--epochs", "9", "--refit"])
    assert result.exit_code == 0, result.output
    assert "warning (IgnoredOptionsWarning): --resume continues" in result.output
    assert "--epochs, --refit ignored" in result.output
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == json.loads(
        (run / "config.json").read_text())["epochs"]


def test_cli_defaults_are_the_config_defaults():
    from tltool.cli.recipes import recipe_commands

    commands = recipe_commands()
    for command, config in (("finetune", FinetuneConfig), ("train", ScratchConfig)):
        params = {p.name: p for p in commands[command].params}
        for f in fields(config):
            if f.name == "data":
                continue
            assert f.name in params, f"{command}: no option for {f.name}"  # recipes use the field names
            assert params[f.name].default == f.default, (command, f.name)
    assert FinetuneConfig().train_options() == FinetuneConfig().stage_options(12, 1e-4)
    assert (FinetuneConfig.head_epochs, FinetuneConfig.epochs, FinetuneConfig.lr, FinetuneConfig.warmup_epochs,
            FinetuneConfig.unfreeze) == (2, 12, 1e-4, 1.0, "2")


def test_a_resumed_run_with_dropout_and_augmentation_equals_the_uninterrupted_one(tmp_path):
    args = ["train", str(SAMPLE), "--arch", "lenet5", "--epochs", "3", "--batch-size", "16", "--val-fraction", "0.25",
            "--dropout", "0.5", "--augment", "light"]
    runner = CliRunner()
    whole = runner.invoke(main, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    assert "trained 3 epochs in" in whole.output and "in all" not in whole.output

    with killed_after_epoch(1):
        killed = runner.invoke(main, [*args, "--out", str(tmp_path / "killed")])
    assert isinstance(killed.exception, Killed)
    resumed = runner.invoke(main, ["train", "--resume", str(tmp_path / "killed")])
    assert resumed.exit_code == 0, resumed.output
    assert "trained 2 epochs in" in resumed.output
    assert "in this process, 3 in all (resumed after epoch 1)" in " ".join(resumed.output.split())
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert (metrics["epochs_run"], metrics["epochs_this_process"], metrics["resumed_after_epoch"]) == (3, 2, 1)
    assert json.loads((tmp_path / "whole" / "metrics.json").read_text())["epochs_this_process"] == 3
    # dropout masks, augmentation draws and data order all continued: the same final weights and val loss
    ours, reference = (load_run(tmp_path / name).model.get_weights() for name in ("killed", "whole"))
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, reference)) < 1e-6
    losses = [[r["val_loss"] for r in json.loads((tmp_path / name / "metrics.json").read_text())["history"]]
              for name in ("killed", "whole")]
    np.testing.assert_allclose(losses[0], losses[1], atol=1e-6)


def test_a_resume_keeps_model_keras_only_when_model_json_names_its_content(tmp_path):
    """A refit replaces model.keras, then writes model.json: cut off between the two, the file is the refit's (trained
    on the val photos) and must not be evaluated as the train-split model."""
    import hashlib
    from types import SimpleNamespace

    from tltool.supervised import Fitted, _saved_already

    state = SimpleNamespace(epoch=5)
    finished, trained_now = Fitted(None, state, 0.0, epochs_before=5), Fitted(None, state, 0.0, epochs_before=3)
    (tmp_path / "model.keras").write_bytes(b"train-split model")
    described = {"kind": "finetune", "model_sha256": hashlib.sha256(b"train-split model").hexdigest()}
    (tmp_path / "model.json").write_text(json.dumps(described))
    assert _saved_already(tmp_path, finished)
    assert not _saved_already(tmp_path, trained_now)  # epochs ran in this process: their model is saved
    (tmp_path / "model.keras").write_bytes(b"refit model")  # the refit's file, model.json not yet rewritten
    assert not _saved_already(tmp_path, finished)
    (tmp_path / "model.json").write_text(json.dumps({**described, "model_sha256": hashlib.sha256(b"refit model")
                                                     .hexdigest(), "refit": True}))
    assert not _saved_already(tmp_path, finished)  # a finished refit: finish() saves the train-split model again
    (tmp_path / "model.json").write_text("[1, 2")
    assert not _saved_already(tmp_path, finished)


def test_a_run_with_an_augmentation_file_resumes_from_another_working_directory(tmp_path, monkeypatch):
    """config.json stored `--augment aug.yaml` as given: `--resume` from another folder stopped with
    "--augment aug.yaml: no such file". The file is stored by its absolute path."""
    import albumentations as A

    monkeypatch.chdir(tmp_path)
    A.save(A.Compose([A.HorizontalFlip(p=0.5)]), "aug.yaml", data_format="yaml")
    args = ["train", str(SAMPLE), "--arch", "lenet5", "--epochs", "2", "--batch-size", "32", "--image-size", "32",
            "--augment", "aug.yaml", "--out", "run"]
    with killed_after_epoch(1):
        killed = CliRunner().invoke(main, args)
    assert isinstance(killed.exception, Killed)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["augment"] == str(tmp_path / "aug.yaml")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    resumed = CliRunner().invoke(main, ["train", "--resume", "../run"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_run"] == 2
