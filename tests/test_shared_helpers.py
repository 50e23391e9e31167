"""Helpers written once: pool selection, the nested backbone, the data-returning inspection, run.as_keras()."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SAMPLE
from tltool.errors import TltoolError
from tltool.features import select_pool


def test_select_pool_on_arrays_and_with_a_given_concat():
    avg, mx = np.ones((2, 3)), np.zeros((2, 3))
    assert select_pool(avg, mx, "avg") is avg and select_pool(avg, mx, "max") is mx
    np.testing.assert_array_equal(select_pool(avg, mx, "avgmax"), np.hstack([avg, mx]))
    calls = []
    select_pool("a", "m", "avgmax", concat=lambda parts, axis: calls.append((parts, axis)))
    assert calls == [(["a", "m"], 1)]
    with pytest.raises(TltoolError, match="--pool must be one of"):
        select_pool(avg, mx, "mean")


def test_find_backbone_is_the_one_nested_model():
    from tltool._tf import keras
    from tltool.backbones import find_backbone

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="base")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inner(inputs)))
    assert find_backbone(model) is inner
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="other")
    two = keras.Model(inputs, keras.layers.Concatenate()([inner(inputs), other(inputs)]))
    assert find_backbone(two) is None
    flat = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    assert find_backbone(flat) is None


def test_inspect_dataset_returns_data_and_prints_nothing(tmp_path, capsys):
    from tltool.inspection import inspect_dataset

    result = inspect_dataset(str(SAMPLE), out=tmp_path / "inspect")
    assert capsys.readouterr().out == ""
    assert result.report == tmp_path / "inspect" / "report.md" and result.report.is_file()
    counts = result.checked.to_json()["n_usable"]
    assert counts == len(result.checked.dataset.records) > 0
    assert result.has_problems == bool(result.checked.bad or result.checked.warnings or result.checked.leaks())


def test_open_regular_refuses_a_folder_a_pipe_and_a_link_and_keeps_no_descriptor(tmp_path):
    """A folder at a chunk's (or a cached PNG's) name leaked one descriptor per read: os.fdopen of a folder's
    descriptor raises without closing it."""
    import os

    from tltool.utils import open_regular

    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    before = len(os.listdir("/proc/self/fd"))
    for name, follow in (("folder", True), ("pipe", True), ("link", False)):
        for _ in range(20):
            with pytest.raises(OSError):
                with open_regular(tmp_path / name, follow_links=follow):
                    pass
    with open_regular(tmp_path / "link") as f:
        assert f.read() == b"x"
    assert len(os.listdir("/proc/self/fd")) == before


def test_status_lines_print_names_as_they_are(capsys):
    """say() read its line as Rich markup: a run folder named runs/[old] printed as runs/, a photo [red]x.jpg as
    x.jpg. Status lines are plain text; one that wants markup asks for it and escapes what it puts in."""
    from rich.markup import escape

    from tltool.progress import say

    say("features already in runs/[old]/f and [red]x.jpg[/red] \\[y]")
    say(f"[bold]step 1/2[/bold]: {escape('tltool probe [a]')}", markup=True)
    assert capsys.readouterr().err.splitlines() == ["features already in runs/[old]/f and [red]x.jpg[/red] \\[y]",
                                                    "step 1/2: tltool probe [a]"]


def test_a_progress_bar_shows_a_folder_name_as_it_is(monkeypatch):
    """In a terminal, a bar described by a folder named ds[/x] was Rich's MarkupError (a traceback) and one named
    photos [old] showed as 'photos '."""
    import io

    from rich.console import Console

    from tltool import progress

    screen = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=screen, force_terminal=True, width=200))
    monkeypatch.setattr(progress, "enabled", lambda: True)
    for name in ("importing into ds[/x]", "checking photos [old]"):
        with progress.Bar(2, name) as bar:
            bar.update(2)
        assert name in screen.getvalue()
