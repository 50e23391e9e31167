"""The main job end to end on real photos with real (offline) weights: extract -> linear head -> report."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from conftest import SAMPLE
from tltool.cli import main


@pytest.fixture(scope="module")
def flowers_run(tmp_path_factory):
    from conftest import shared_dataset

    flowers = shared_dataset("flowers")
    root = tmp_path_factory.mktemp("main-job")
    runner = CliRunner()
    result = runner.invoke(main, ["probe", str(flowers), "--features", str(root / "features"),
                                  "--out", str(root / "run")])
    return flowers, root, result


def test_flowers_linear_probe_reaches_80_percent(flowers_run):
    flowers, root, result = flowers_run
    assert result.exit_code == 0, result.output
    match = re.search(r"val accuracy (\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\] \(n=100\)", result.output)
    assert match, result.output
    accuracy, low, high = map(float, match.groups())
    assert accuracy >= 0.80
    assert low < accuracy < high
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["val"]["accuracy"]["n"] == 100
    assert metrics["val"]["top5_accuracy"]["value"] == 1.0  # 5 classes: top-5 is always right
    assert set(metrics["val"]["per_class"]) == {"daisy", "dandelion", "roses", "sunflowers", "tulips"}
    for artifact in ("report.md", "confusion_matrix.png", "misclassified.png", "predictions.csv", "head.npz"):
        assert (root / "run" / artifact).stat().st_size > 0
    assert "Wilson" in (root / "run" / "report.md").read_text()


def test_predict_and_evaluate_with_the_saved_head(flowers_run):
    flowers, root, _ = flowers_run
    runner = CliRunner()
    image = sorted((flowers / "val" / "sunflowers").glob("*.jpg"))[0]
    result = runner.invoke(main, ["predict", str(image), "--model", str(root / "run"), "--top-k", "2"])
    assert result.exit_code == 0, result.output
    assert result.output.count("\t") == 2 and image.name in result.output
    result = runner.invoke(main, ["evaluate", str(root / "run"), str(flowers / "val"), "--out", str(root / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    stored = json.loads((root / "run" / "metrics.json").read_text())
    # the same 100 images through the end-to-end predictor give the accuracy the cached features gave
    assert metrics["val"]["accuracy"]["n"] == 100
    assert abs(metrics["val"]["accuracy"]["value"] - stored["val"]["accuracy"]["value"]) <= 0.02


def test_evaluate_refuses_unknown_classes(flowers_run, tmp_path):
    _, root, _ = flowers_run
    result = CliRunner().invoke(main, ["evaluate", str(root / "run"), str(SAMPLE), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "not classes of the model" in result.output


def test_readme_demo_runs_offline_and_prints_the_interval(in_tmp):
    result = CliRunner().invoke(main, ["probe", str(SAMPLE), "--image-size", "96"])
    assert result.exit_code == 0, result.output
    assert re.search(r"val accuracy \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \(n=32\)", result.output)
    assert list((in_tmp / "runs").glob("linear-shapes-*/metrics.json"))
