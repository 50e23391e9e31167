"""Training a reference net from scratch with the fine-tuning machinery."""
from __future__ import annotations

import json

from click.testing import CliRunner

from tltool.cli import main


def test_lenet5_on_digits_reaches_95_percent(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["data", "digits", str(tmp_path / "digits")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["train", str(tmp_path / "digits"), "--arch", "lenet5", "--epochs", "15",
                                  "--initializer", "he_normal", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["kind"] == "scratch" and metrics["config"]["arch"] == "lenet5"
    assert metrics["config"]["initializer"] == "he_normal"
    assert metrics["val"]["accuracy"]["value"] >= 0.95
    assert metrics["val"]["accuracy"]["n"] == 359
    assert len(metrics["history"]) == 15
    predicted = runner.invoke(main, ["predict", str(next((tmp_path / "digits" / "val" / "7").iterdir())),
                                     "--model", str(tmp_path / "run")])
    assert predicted.exit_code == 0 and "\t7 " in predicted.output


def test_bad_architecture_option_is_one_clear_error(tmp_path):
    from conftest import SAMPLE

    result = CliRunner().invoke(main, ["train", str(SAMPLE), "--arch", "alexnett", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "Did you mean" in result.output
    result = CliRunner().invoke(main, ["train", str(SAMPLE), "--arch", "lenet5", "--initializer", "he",
                                       "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "initializer" in result.output
