"""Cached work starts instantly (issue 15.3): a command whose features are cached imports no TensorFlow and
decodes no photo, as a user runs it (a separate process, as the command line starts it)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SAMPLE
from helpers import assert_same_features
from helpers import run_tltool_reporting as _tltool
from tltool.cli import main
from tltool.configs import ExtractConfig
from tltool.errors import TltoolError


def test_cached_commands_import_no_tensorflow_and_decode_no_photo(tmp_path: Path, monkeypatch):
    features, common = tmp_path / "features", ["--image-size", "32", "--batch-size", "16"]
    first, _ = _tltool("probe", str(SAMPLE), *common, "--features", str(features), "--out", str(tmp_path / "p1"))
    assert first["tensorflow"] and first["decodes"] >= 160  # the first run extracts: the network runs
    commands = {
        "extract": ["extract", str(SAMPLE), *common, "--out", str(features)],
        "probe": ["probe", str(SAMPLE), *common, "--features", str(features), "--out", str(tmp_path / "p2")],
        "linear": ["linear", str(features), "--head", "ridge", "--out", str(tmp_path / "lin")],
        "learning-curve": ["learning-curve", str(features), "--seeds", "1", "--out", str(tmp_path / "lc")],
        "compare": ["compare", str(tmp_path / "p1"), str(tmp_path / "p2"), "--out", str(tmp_path / "cmp")],
    }
    for name, args in commands.items():
        state, stdout = _tltool(*args)
        assert not state["tensorflow"] and not state["keras"], f"{name} imported TensorFlow"
        if name in ("extract", "probe", "compare"):  # the same photos again: nothing to decode
            assert state["decodes"] == 0, f"{name} decoded {state['decodes']} photo(s)"
        if name == "extract":
            assert stdout.startswith("cached: 160 images")
    # a misspelt engine is refused even where nothing would run (it was ignored without a word)
    refused = CliRunner().invoke(main, commands["extract"], env={"TLTOOL_ENGINE": "gpu"})
    assert refused.exit_code == 2 and "$TLTOOL_ENGINE must be one of ('auto', 'tf', 'litert')" in refused.output
    monkeypatch.setenv("TLTOOL_ENGINE", "gpu")
    with pytest.raises(TltoolError, match="TLTOOL_ENGINE"):
        ExtractConfig().validate()  # the library's own check, without the CLI


def test_a_repeated_fit_or_report_is_read_back_not_recomputed(tmp_path: Path):
    """The second run of a head search, a CV, a learning curve and their reports on the same features imports
    neither scikit-learn nor matplotlib (about 2 s of a cached probe's 2.6 s), and writes the same numbers."""
    features, common = tmp_path / "features", ["--image-size", "32", "--batch-size", "16"]
    _tltool("extract", str(SAMPLE), *common, "--out", str(features))
    commands = {
        "probe": (["probe", str(SAMPLE), *common, "--features", str(features)], "metrics.json"),
        "linear": (["linear", str(features), "--head", "logreg"], "metrics.json"),
        "linear --cv": (["linear", str(features), "--cv", "3"], "metrics.json"),
        "learning-curve": (["learning-curve", str(features), "--seeds", "2"], "metrics.json"),
    }
    for name, (args, result) in commands.items():
        first_out, second_out = tmp_path / f"{name}-1", tmp_path / f"{name}-2"
        _tltool(*args, "--out", str(first_out))
        state, _ = _tltool(*args, "--out", str(second_out))
        assert not state["sklearn"] and not state["matplotlib"], f"{name} fitted or drew again: {state}"
        first, second = (json.loads((d / result).read_text()) for d in (first_out, second_out))
        for d in (first, second):
            d.pop("timing", None)
        assert first == second, name
        for png in first_out.glob("*.png"):
            assert (second_out / png.name).read_bytes() == png.read_bytes(), f"{name}: {png.name} differs"


def test_an_extraction_on_litert_imports_no_tensorflow_once_the_model_is_converted(tmp_path: Path):
    """LiteRT is fed by tltool.batches, not tf.data: once converted, the whole extraction runs without TensorFlow
    (3-5 s of import on 2 cores) and decodes every photo once; the features equal TensorFlow's."""
    from tltool.features import load_features

    common = ["--image-size", "32", "--batch-size", "16"]
    _tltool("extract", str(SAMPLE), *common, "--engine", "litert", "--out", str(tmp_path / "first"))  # converts
    state, _ = _tltool("extract", str(SAMPLE), *common, "--engine", "litert", "--out", str(tmp_path / "lite"))
    assert not state["tensorflow"] and not state["keras"] and state["decodes"] == 160
    _tltool("extract", str(SAMPLE), *common, "--engine", "tf", "--out", str(tmp_path / "tf"))
    assert_same_features(load_features(tmp_path / "lite"), load_features(tmp_path / "tf"), atol=1e-4)


def test_evaluate_and_predict_on_litert_import_no_tensorflow_and_agree_with_tf(tmp_path: Path):
    """Prediction follows extraction: on LiteRT (model converted) the photos are decoded by tltool.batches and
    the TTA views cut in NumPy, so `evaluate` and `predict` never load TensorFlow; the numbers equal TF's."""
    import csv

    common = ["--image-size", "32", "--batch-size", "16"]
    run = tmp_path / "run"
    _tltool("probe", str(SAMPLE), *common, "--features", str(tmp_path / "f"), "--out", str(run))
    scores = {}
    for engine, out in (("litert", "warm"), ("litert", "lite"), ("tf", "tf")):
        state, _ = _tltool("evaluate", str(run), str(SAMPLE), "--tta", "flip", "--engine", engine,
                           "--out", str(tmp_path / out))
        if out == "lite":
            assert not state["tensorflow"] and not state["keras"], "evaluate on LiteRT imported TensorFlow"
        with open(tmp_path / out / "predictions.csv", newline="") as f:
            scores[out] = np.array([[float(v) for k, v in row.items() if k.startswith("p_")] for row in csv.DictReader(f)])
    np.testing.assert_allclose(scores["lite"], scores["tf"], atol=1e-4)
    photo = sorted(SAMPLE.glob("*/*.jpg"))[0]
    state, stdout = _tltool("predict", str(photo), "--model", str(run), "--engine", "litert")
    assert not state["tensorflow"] and photo.name in stdout
