"""Cached work starts instantly (issue 15.3): a command whose features are cached imports no TensorFlow and
decodes no photo, as a user runs it (a separate process, as the command line starts it)."""
from __future__ import annotations

from pathlib import Path

from conftest import SAMPLE
from helpers import run_tltool_reporting as _tltool

def test_cached_commands_import_no_tensorflow_and_decode_no_photo(tmp_path: Path):
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
