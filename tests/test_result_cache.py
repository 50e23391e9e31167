"""Results and figures remembered by content (issue 15.3): what a cached command repeats is read back, and a
change of any input computes it again."""
from __future__ import annotations

import numpy as np
import pytest

from tltool.evaluation import Evaluation
from tltool.filecache import remembered
from tltool.plotting import figure_cache_path
from tltool.report import plot_confusion, plot_misclassified

from helpers import noise_image


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))


def test_a_result_is_computed_once_per_key_and_reads_back_as_json():
    calls = []

    def compute():
        calls.append(1)
        return {"scores": np.array([0.5, 0.25]), "n": np.int64(3), "pair": (1, 2)}

    first = remembered("demo", {"a": 1}, compute)
    assert first == {"scores": [0.5, 0.25], "n": 3, "pair": [1, 2]}  # as JSON has it, even when just computed
    assert remembered("demo", {"a": 1}, compute) == first and len(calls) == 1
    remembered("demo", {"a": 2}, compute)
    remembered("other", {"a": 1}, compute)
    assert len(calls) == 3


def _evaluation():
    return Evaluation(["a", "b"], np.array([0, 1, 1, 0]), np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]]))


def test_report_figures_are_copied_when_nothing_they_show_changed(tmp_path, monkeypatch):
    from tltool import report

    photos = [noise_image(tmp_path / f"p{i}.jpg", seed=i) for i in range(4)]
    paths = [str(p) for p in photos]
    plot_confusion(_evaluation(), tmp_path / "c1.png", "title")
    plot_misclassified(_evaluation(), paths, tmp_path / "m1.png")
    drawn = []
    monkeypatch.setattr(report, "_confusion_figure", lambda *a: drawn.append("confusion"))
    monkeypatch.setattr(report, "_misclassified_figure", lambda *a: drawn.append("misclassified"))
    plot_confusion(_evaluation(), tmp_path / "c2.png", "title")
    plot_misclassified(_evaluation(), paths, tmp_path / "m2.png")
    assert drawn == [] and (tmp_path / "c2.png").read_bytes() == (tmp_path / "c1.png").read_bytes()
    assert (tmp_path / "m2.png").read_bytes() == (tmp_path / "m1.png").read_bytes()
    monkeypatch.undo()
    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    noise_image(photos[2], seed=42)  # a mistake's photo replaced at the same path: drawn anew
    monkeypatch.setattr(report, "_misclassified_figure", lambda *a: drawn.append("misclassified"))
    with pytest.raises(AttributeError):  # the fake draws nothing: proof that it was asked to draw
        plot_misclassified(_evaluation(), paths, tmp_path / "m3.png")
    assert drawn == ["misclassified"]
    assert not figure_cache_path({"figure": "confusion"}).exists()


@pytest.mark.parametrize("damage", ["cut", "link"])
def test_a_damaged_cached_figure_is_drawn_again_not_copied_into_the_report(tmp_path, damage):
    """A cut-short PNG in the figure cache was copied into every later run as its confusion matrix; a link there
    would have put any picture into the report."""
    from tltool.plotting import png_intact

    plot_confusion(_evaluation(), tmp_path / "c1.png", "title")
    (stored,) = (tmp_path / "cache").rglob("*.png")
    whole = stored.read_bytes()
    assert png_intact(whole) and not png_intact(whole[:200]) and not png_intact(whole[:-1] + b"!")
    stored.unlink()
    if damage == "cut":
        stored.write_bytes(whole[:200])
    else:
        from PIL import Image

        Image.new("RGB", (2, 2)).save(tmp_path / "other.png")  # a whole PNG, but not this figure
        stored.symlink_to(tmp_path / "other.png")
    plot_confusion(_evaluation(), tmp_path / "c2.png", "title")
    assert (tmp_path / "c2.png").read_bytes() == whole and png_intact(stored.read_bytes())
