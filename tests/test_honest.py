"""Honest accuracy: paired comparison, nested cross-validation (with a spy), learning curves."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SAMPLE
from helpers import noise_image
from tltool.cli import main
from tltool.compare import compare_correct, compare_runs
from tltool.errors import TltoolError
from tltool.outputs import claim_output_dir


def _fake_run(root: Path, name: str, correct: list[bool], classes=("a", "b"), paths=None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    paths = paths or [f"/data/img_{i:03d}.jpg" for i in range(len(correct))]
    with open(run / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "true", "predicted", "correct", "confidence"] + [f"p_{c}" for c in classes])
        for path, ok in zip(paths, correct):
            writer.writerow([path, classes[0], classes[0] if ok else classes[1], int(ok), "0.9", "0.9", "0.1"])
    return run


def test_compare_stored_runs_counts_and_p(tmp_path):
    # 100 images: both right 80, only A 2, only B 10, neither 8
    a = [True] * 80 + [True] * 2 + [False] * 10 + [False] * 8
    b = [True] * 80 + [False] * 2 + [True] * 10 + [False] * 8
    comparison, target = compare_runs(_fake_run(tmp_path, "A", a), _fake_run(tmp_path, "B", b),
                                      out=tmp_path / "cmp")
    assert (comparison.both, comparison.only_a, comparison.only_b, comparison.neither) == (80, 2, 10, 8)
    # exact McNemar: 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * 79 / 4096
    assert comparison.p_value == pytest.approx(2 * 79 / 4096)
    assert comparison.difference == pytest.approx(0.08)
    assert comparison.ci95[0] < 0.08 < comparison.ci95[1]
    assert comparison.verdict() == "B is better, p = 0.0386"
    stored = json.loads((target / "metrics.json").read_text())
    assert stored["only_b"] == 10 and stored["accuracy_a"]["value"] == 0.82
    # the report's picture: each accuracy with its interval, and the paired difference with its own
    assert (target / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![the two accuracies and their paired difference](compare.png)" in (target / "report.md").read_text()
    from tltool.compare import _comparison_figure

    left, right = _comparison_figure(comparison).axes
    points = [line.get_xydata()[0].tolist() for line in left.lines if line.get_marker() == "o"]
    assert points == [[0.82, 0.0], [0.9, 1.0]]
    (bar,) = [segment for collection in right.collections for segment in collection.get_segments()]
    assert bar[:, 0].tolist() == pytest.approx(list(comparison.ci95)) and bar[:, 1].tolist() == [0, 0]
    low, high = right.get_xlim()  # a review saw "-0.075-0.050-0.025..." run together under the paired panel
    assert len([t for t in right.get_xticks() if low <= t <= high]) <= 5


def test_compare_calls_a_split_between_its_interval_and_its_test_borderline():
    """Before: 'no detectable difference (p = 0.05)' beside an interval that excluded 0 (p was 0.0525)."""
    # 85 both, 2 only A, 9 only B: McNemar p = 2 * P(X <= 2 | 11, 1/2) = 0.065; Newcombe's interval is above 0
    split = compare_correct(np.array([1] * 87 + [0] * 13, bool), np.array([1] * 85 + [0] * 2 + [1] * 9 + [0] * 4,
                                                                           bool))
    assert split.p_value >= 0.05 and split.ci95[0] > 0 and split.undecided
    assert split.verdict().startswith(f"borderline on 100 images: the exact McNemar p = {split.p_value:.3g} and ")
    assert "treat it as undecided" in split.verdict()
    assert "p = 0.05)" not in compare_correct(np.ones(100, bool), np.array([1] * 90 + [0] * 10, bool)).verdict()


def test_every_command_that_writes_a_run_folder_refuses_a_finished_run_without_force(tmp_path):
    """Before: compare, learning-curve and data inspect replaced any finished run given as --out (a trained
    linear run's head.npz, model.json and metrics.json were deleted without a word); probe, linear, evaluate and
    viz refused it only after their work (an extraction, a search)."""
    from tltool.runs import new_run_dir, writes_runs
    from tltool.sample import make_shapes_dataset

    a = _fake_run(tmp_path, "A", [True] * 10)

    @writes_runs
    def trained():  # a finished linear run
        victim = new_run_dir("linear", out=tmp_path / "victim")
        for name in ("head.npz", "model.json", "metrics.json"):
            (victim / name).write_text("the user's trained run")
        return victim

    victim = trained()
    data = make_shapes_dataset(tmp_path / "shapes", per_class=4)
    for args in (["compare", a, a], ["data", "inspect", data], ["learning-curve", data], ["evaluate", a, data],
                 ["probe", data, "--features", tmp_path / "features"], ["linear", data], ["viz", "embedding", data]):
        result = CliRunner().invoke(main, [*map(str, args), "--out", str(victim)])
        assert result.exit_code == 2 and "already holds an earlier tltool run" in result.output, result.output
        assert "--force" in result.output
        assert sorted(p.name for p in victim.iterdir() if not p.name.startswith(".")) == [
            "head.npz", "metrics.json", "model.json"]
    assert not (tmp_path / "features").exists()  # probe refused before extracting anything
    for args in (["viz", "embedding", data], ["label", "suspects", data]):  # each takes the --force it names
        result = CliRunner().invoke(main, [*map(str, args), "--out", str(victim), "--force", "--help"])
        assert result.exit_code == 0 and "--force" in result.output
    # --force replaces a report, never a trained model with one (it deleted head.npz for the comparison)
    result = CliRunner().invoke(main, ["compare", str(a), str(a), "--out", str(victim), "--force"])
    assert result.exit_code == 2 and "holds a trained model (model.json, a " in result.output
    assert (victim / "head.npz").exists()
    for _ in range(2):
        result = CliRunner().invoke(main, ["compare", str(a), str(a), "--out", str(tmp_path / "cmp"), "--force"])
        assert result.exit_code == 0 and (tmp_path / "cmp" / "metrics.json").exists()
    # one run given twice: said so (before, no word: "no significant difference" of a run with itself)
    assert f"warning (SameRunWarning): {a} and {a} are one run" in " ".join(result.output.split())


def test_compare_says_when_it_cannot_tell(tmp_path):
    comparison = compare_correct(np.array([1, 1, 0, 1] * 25, bool), np.array([1, 0, 1, 1] * 25, bool))
    assert comparison.p_value == 1.0
    assert comparison.verdict().startswith("no detectable difference on 100 images")


def test_compare_refuses_different_images_or_classes(tmp_path):
    a = _fake_run(tmp_path, "A", [True] * 10)
    b = _fake_run(tmp_path, "B", [True] * 10, paths=[f"/other/{i}.jpg" for i in range(10)])
    c = _fake_run(tmp_path, "C", [True] * 10, classes=("x", "y"))
    with pytest.raises(TltoolError, match="different images"):
        compare_runs(a, b)
    with pytest.raises(TltoolError, match="different class lists"):
        compare_runs(a, c)
    # a features folder was told "no predictions.csv ... (or give DATA to evaluate)", and with DATA it was refused
    features = claim_output_dir(tmp_path / "features", "features")
    with pytest.raises(TltoolError, match=r"features: is a tltool features folder, which holds no model \(no "
                       r"predictions\.csv\)\. Pass the folder a linear, finetune or train command wrote\.$"):
        compare_runs(a, features)
    with pytest.raises(TltoolError, match=r"nowhere: no such folder\. Pass the folder a linear, finetune "):
        compare_runs(a, tmp_path / "nowhere")
    result = CliRunner().invoke(main, ["compare", str(a), str(b)])
    assert result.exit_code == 2 and "different images" in result.output
    # a predictions.csv tltool did not write, or two runs scored against other labels: one-line errors
    swapped = _fake_run(tmp_path, "D", [True] * 10)
    lines = (swapped / "predictions.csv").read_text().splitlines()
    (swapped / "predictions.csv").write_text("\n".join([lines[0], lines[1].replace(",a,a,", ",b,b,", 1)]
                                                         + lines[2:]) + "\n")
    with pytest.raises(TltoolError, match=r"1 image\(s\) different true labels"):
        compare_runs(a, swapped)
    for content in (b"", b"\xff\xfe\x00", b"path,true,predicted\n/x.jpg\n"):
        (swapped / "predictions.csv").write_bytes(content)
        with pytest.raises(TltoolError, match="not a predictions.csv tltool wrote"):
            compare_runs(a, swapped)
    # before, accepted: a class its header does not name (scored as a plain mistake), a probability of nan
    for edit, why in (((",a,a,", ",a,zebra,"), r"row 3: the predicted class 'zebra' is none of its columns' classes"),
                      ((",0.9,0.9,0.1", ",nan,0.9,0.1"), r"row 3: the probability 'nan' is not from 0 to 1")):
        rows = (a / "predictions.csv").read_text().splitlines()
        rows[2] = rows[2].replace(*edit)
        (swapped / "predictions.csv").write_text("\n".join(rows) + "\n")
        with pytest.raises(TltoolError, match=rf"predictions\.csv, {why}; not a predictions\.csv tltool wrote"):
            compare_runs(a, swapped)


def test_nested_cv_folds_are_stratified_disjoint_and_the_search_never_sees_the_test_fold(monkeypatch):
    from sklearn.datasets import make_classification

    import tltool.heads as heads
    from tltool.crossval import nested_cv

    X, y = make_classification(n_samples=90, n_features=12, n_informative=6, n_classes=3, n_clusters_per_class=1,
                               flip_y=0, random_state=0)
    X[:, 0] = np.arange(len(X))  # a row id the spy can read back
    seen: list[set[int]] = []
    real_search = heads.search

    def spy(spec, Xs, ys, **kwargs):
        seen.append(set(Xs[:, 0].astype(int).tolist()))
        return real_search(spec, Xs, ys, **kwargs)

    monkeypatch.setattr(heads, "search", spy)
    result = nested_cv(X, y, "logreg", k=3, repeats=2, seed=0)
    assert len(seen) == 6 == len(result.test_indices)
    for searched, test in zip(seen, result.test_indices):
        assert not searched & set(test.tolist())  # the inner search never sees the outer test fold
        assert searched | set(test.tolist()) == set(range(90))
        assert np.bincount(y[test]).tolist() == [10, 10, 10]  # stratified
    first_repeat = np.concatenate(result.test_indices[:3])
    assert sorted(first_repeat.tolist()) == list(range(90))  # each image tested exactly once per repeat
    assert result.to_json()["fold_mean"] == pytest.approx(np.mean(result.fold_scores))
    assert result.accuracy()["n"] == 90
    with pytest.raises(TltoolError, match="at least 40"):
        nested_cv(X, y, k=40)


def test_linear_cv_on_real_features_and_learning_curve(flowers_probe, tmp_path):
    from tltool.crossval import run_learning_curve
    from tltool.linear import train_linear

    features = flowers_probe.features  # the default extraction of the flowers photos
    result = train_linear(features, out=tmp_path / "cv", cv=5)
    cv = result.metrics["cv"]
    assert cv["accuracy"]["n"] == 350 and len(cv["fold_scores"]) == 5
    assert cv["accuracy"]["value"] > 0.8
    assert cv["accuracy"]["ci95"][0] < cv["accuracy"]["value"] < cv["accuracy"]["ci95"][1]
    from tltool.stats import format_proportion

    # the report's headline is the cross-validated accuracy the terminal prints, not the first repeat's
    report = (tmp_path / "cv" / "report.md").read_text().splitlines()
    assert report[2].startswith(f"- **cross-validated accuracy: {format_proportion(cv['accuracy'])}**")
    assert "validation accuracy" not in "\n".join(report[:6])
    # nor is it "val" anywhere else: metrics.json's split and the confusion matrix's title said so
    assert result.metrics["split"] == result.metrics["scored_on"] == "out-of-fold"
    shown = CliRunner().invoke(main, ["linear", str(features), "--cv", "5", "--out", str(tmp_path / "cv2")])
    interval = format_proportion(cv["accuracy"]).split(" (")[0]  # 0.889 [0.851, 0.917]
    assert shown.exit_code == 0 and shown.output.count(interval) == 1, shown.output  # the library said it too
    points, reading, target = run_learning_curve(features, seeds=3, out=tmp_path / "lc")
    assert [p.fraction for p in points] == pytest.approx([0.1 * i for i in range(1, 11)])
    # measured: 0.647 with 25 training photos, 0.89 with 250; a curve that ignored the subsets would be flat
    assert points[-1].accuracy - points[0].accuracy > 0.15
    assert points[0].n_train == 25 and points[-1].n_train == 250
    assert (target / "learning_curve.png").stat().st_size > 10_000
    # a report folder like every run's: metrics.json and report.md (they were learning_curve.json and .md)
    assert json.loads((target / "metrics.json").read_text())["points"][-1]["n_train"] == 250
    assert "![learning curve](learning_curve.png)" in (target / "report.md").read_text()
    assert set(points[-1].per_class) == {"daisy", "dandelion", "roses", "sunflowers", "tulips"}
    _assert_reading_describes(reading, points)


def _assert_reading_describes(reading: str, points) -> None:
    """The sentence is about these points: the slope over the last three, and a class with its real recall."""
    import re

    last, before = points[-1], points[-3]
    gain = last.accuracy - before.accuracy
    share = last.fraction - before.fraction
    assert f"{gain * 100:+.1f} points over the last {share * 100:.0f} % of the images" in reading, reading
    named = next(name for name in re.findall(r"`([^`]+)`", reading) if name in last.per_class)
    assert f"{last.per_class[named]:.2f}" in reading
    noise = 1.96 * before.se_to_last
    if reading.startswith("still rising"):
        assert gain > 0.01 and gain > noise and last.per_class[named] > before.per_class[named]  # still improving
        assert f"{before.per_class[named]:.2f} -> {last.per_class[named]:.2f}" in reading
        assert f"noise of ±{noise * 100:.1f}" in reading
    elif reading.startswith("unclear"):
        assert not (gain > 0.01 and gain > noise) and gain + noise > 0.02
        assert f"noise of ±{noise * 100:.1f}" in reading and "--cv" in reading
        assert last.per_class[named] == min(last.per_class.values())
    else:
        assert reading.startswith("flat") and gain + noise <= 0.02
        assert last.per_class[named] == min(last.per_class.values())  # the weakest class


def test_read_curve_names_the_class_to_collect():
    from tltool.crossval import CurvePoint, read_curve

    def point(f, acc, a, b, se=0.01):
        return CurvePoint(f, int(f * 100), acc, acc - 0.1, acc + 0.1, (acc, acc), {"cats": a, "dogs": b}, se)

    rising = [point(0.6, 0.70, 0.9, 0.5), point(0.8, 0.75, 0.9, 0.6), point(1.0, 0.80, 0.92, 0.68)]
    reading = read_curve(rising, ["cats", "dogs"])
    assert "more images of `dogs` would help most" in reading and "+10.0 points" in reading
    _assert_reading_describes(reading, rising)
    flat = [point(0.6, 0.90, 0.95, 0.85, se=0.005), point(0.8, 0.90, 0.95, 0.85), point(1.0, 0.905, 0.95, 0.86)]
    reading = read_curve(flat, ["cats", "dogs"])
    assert reading.startswith("flat (+0.5 points") and "the weakest class is `dogs` (recall 0.86)" in reading
    _assert_reading_describes(reading, flat)
    # the same +10 points measured on a val split too small to see them (a paired standard error of 6 points)
    noisy = [point(0.6, 0.70, 0.9, 0.5, se=0.06), point(0.8, 0.75, 0.9, 0.6), point(1.0, 0.80, 0.92, 0.68, se=0.0)]
    reading = read_curve(noisy, ["cats", "dogs"])
    assert reading.startswith("unclear (+10.0 points") and "noise of ±11.8" in reading, reading
    _assert_reading_describes(reading, noisy)
    # a small gain is not "flat" either when the noise allows a large one; a loss reads with its sign
    for gain, se, verdict in ((0.005, 0.04, "unclear (+0.5 points"), (-0.02, 0.005, "flat (-2.0 points")):
        curve = [point(0.6, 0.80, 0.9, 0.7, se=se), point(0.8, 0.80, 0.9, 0.7), point(1.0, 0.80 + gain, 0.9, 0.7)]
        reading = read_curve(curve, ["cats", "dogs"])
        assert reading.startswith(verdict), reading
        _assert_reading_describes(reading, curve)


def test_paired_standard_error_of_a_gain():
    from tltool.crossval import paired_standard_error

    # 100 photos: 10 more right at the last point, none lost: d has ten 1s and ninety 0s
    last, before = np.r_[np.ones(60), np.ones(10), np.zeros(30)], np.r_[np.ones(60), np.zeros(40)]
    assert paired_standard_error(last, before) == pytest.approx(np.std(np.r_[np.ones(10), np.zeros(90)], ddof=1) / 10)
    assert paired_standard_error(last, last) == 0.0 and paired_standard_error(np.ones(1), np.zeros(1)) == 0.0


def test_a_curve_whose_points_predict_alike_on_a_few_photos_is_not_read_as_flat():
    """On 8 val photos that the last points predicted alike the paired standard error was 0, and the curve read
    "flat (+0.0 points ..., noise ±0.0): more images would help little" from 8 photos. The noise is now never
    below one photo's worth, 1/n: unclear on 8 photos; on 200, alike predictions still read flat."""
    from tltool.crossval import CurvePoint, gain_standard_error, read_curve

    hits = np.r_[np.ones(4), np.zeros(4)]
    assert gain_standard_error(hits, hits) == pytest.approx(1 / 8)
    assert gain_standard_error(np.r_[np.ones(20), np.zeros(180)], np.zeros(200)) == pytest.approx(
        np.std(np.r_[np.ones(20), np.zeros(180)], ddof=1) / np.sqrt(200))  # above the floor: the paired error itself

    def curve(n):
        se = gain_standard_error(np.ones(n), np.ones(n))
        return [CurvePoint(f, int(f * 40), 0.5, 0.3, 0.7, (0.5, 0.5), {"a": 0.5, "b": 0.5}, se) for f in (0.6, 0.8, 1)]

    assert read_curve(curve(8), ["a", "b"]).startswith("unclear (+0.0 points"), read_curve(curve(8), ["a", "b"])
    assert read_curve(curve(200), ["a", "b"]).startswith("flat (+0.0 points")


@pytest.mark.parametrize("required,outcome", [("1", "1 error"), ("", "1 skipped")])
def test_missing_real_photos_fail_under_tltool_require_data(tmp_path, required, outcome):
    """.ci/run sets TLTOOL_REQUIRE_DATA=1: there a missing ../shared/datasets fails the run instead of skipping."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TLTOOL_SHARED_DATASETS": str(tmp_path), "TLTOOL_REQUIRE_DATA": required}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                           "tests/test_cli_data.py::test_inspect_counts_match_files_on_disk"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert outcome in proc.stdout, proc.stdout[-2000:]
    assert f"real photos not available: {tmp_path / 'flowers'} is absent" in proc.stdout
    assert proc.returncode == (1 if required else 0)


def test_compare_notice_appears_exactly_when_the_interval_includes_zero(tmp_path):
    # 80 both, 2 only A, 10 only B: interval above 0, p = 0.039 -> the images can choose, no notice
    decided = compare_correct(np.array([1] * 82 + [0] * 18, bool), np.array([1] * 80 + [0] * 2 + [1] * 10 + [0] * 8, bool))
    assert decided.ci95[0] > 0 and decided.p_value < 0.05
    assert not decided.undecided and decided.notice() == ""
    assert not any(line.startswith("notice:") for line in decided.lines())
    # 80 both, 5 only A, 8 only B: +0.03 with an interval across 0
    a = [True] * 85 + [False] * 8 + [False] * 7
    b = [True] * 80 + [False] * 5 + [True] * 8 + [False] * 7
    comparison, target = compare_runs(_fake_run(tmp_path, "A", a), _fake_run(tmp_path, "B", b), out=tmp_path / "c")
    assert comparison.ci95[0] < 0 < comparison.ci95[1] and comparison.undecided
    assert "too few to choose" in comparison.notice() and "--cv" in comparison.notice()
    assert "tltool compare A B DATA" in comparison.notice()
    assert f"notice: {comparison.notice()}" in (target / "report.md").read_text()
    stored = json.loads((target / "metrics.json").read_text())
    assert stored["undecided"] is True and stored["notice"] == comparison.notice()
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "A"), str(tmp_path / "B"), "--out",
                                       str(tmp_path / "cli")])
    assert result.exit_code == 0 and "notice: these 100 images are too few" in result.output


def test_resolution_line_gives_the_half_width_in_points():
    from tltool.report import resolution_line
    from tltool.stats import Proportion

    accuracy = Proportion(87, 100).to_json()  # Wilson [0.7902, 0.9224]: half-width 6.6 points
    line = resolution_line(accuracy)
    assert "known to about ±6.6 points on these 100 images" in line
    assert "`tltool compare`" in line and "`--cv`" in line
    assert "±2.1 points" in resolution_line(Proportion(720, 800).to_json())  # [0.8773, 0.9189]
    assert "--cv" not in resolution_line(accuracy, cross_validated=True)


def test_resolution_line_gives_both_sides_of_a_lopsided_interval():
    """32 of 32 right is [0.893, 1.000]: "±5.4 points" said it could be 5 points higher, when it can only be lower."""
    from tltool.report import resolution_line
    from tltool.stats import Proportion

    line = resolution_line(Proportion(32, 32).to_json())
    assert line.startswith("this accuracy's 95 % interval on these 32 images runs from 10.7 points below it to 0.0 "
                           "above; to rank two settings") and "±" not in line
    assert "from 5.5 points below it to 2.0 above" in resolution_line(Proportion(97, 100).to_json())  # [.915, .990]
    assert "±5.2 points" in resolution_line(Proportion(93, 100).to_json())  # [.863, .966]: near enough even


def _synthetic_features(tmp_path, n_per_class=30, classes=("a", "b", "c"), seed=0):
    from tltool.features import FeatureSet

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(classes)), n_per_class)
    centres = rng.normal(0, 1.0, (len(classes), 8))
    X = (centres[labels] + rng.normal(0, 1.2, (len(labels), 8))).astype(np.float32)
    splits = np.array(["val" if i % 3 == 0 else "train" for i in range(len(labels))])
    meta = {"classes": list(classes), "dataset": {"name": "synthetic"}, "backbone": "efficientnet_lite0",
            "weights": "imagenet", "image_size": 64, "resize": "crop"}
    paths = [str(tmp_path / f"missing_{i}.jpg") for i in range(len(labels))]
    return FeatureSet(tmp_path / "features", meta, X, X, paths, labels, splits, [""] * len(labels))


def test_refit_ships_the_train_val_head_and_keeps_the_val_estimate(tmp_path, capsys):
    from tltool.cli.features import _print_linear
    from tltool.configs import LinearConfig
    from tltool.heads import FittedHead
    from tltool.linear import refit_head, train_linear

    fs = _synthetic_features(tmp_path)
    plain = train_linear(fs, out=tmp_path / "plain")
    capsys.readouterr()
    refit = train_linear(fs, out=tmp_path / "refit", refit=True)
    _print_linear(refit)  # the note on "the accuracy above" came first, before any accuracy, and then again
    said = "".join(capsys.readouterr())
    assert said.count("refit: the saved head was refit") == 1
    assert said.index("accuracy 0.") < said.index("refit: the saved head was refit")
    n_train, n_val = int(fs.mask("train").sum()), int(fs.mask("val").sum())
    assert (n_train, n_val) == (60, 30)
    # the estimate is the train-only head's, on val: the same numbers with or without --refit
    assert refit.metrics["val"]["accuracy"] == plain.metrics["val"]["accuracy"]
    chosen = plain.metrics["search"]["chosen"]
    assert refit.metrics["refit"]["chosen"] == chosen and refit.metrics["refit"]["n_images"] == 90
    # the shipped head differs from the train-only one and equals a head fitted directly on train+val with that C
    saved, train_only = FittedHead.load(refit.run_dir), FittedHead.load(plain.run_dir)
    assert not np.allclose(saved.coef, train_only.coef, atol=1e-3)
    assert saved.pool == train_only.pool == "avg"  # head.json says what it was fitted on (model.json is checked)
    rows = fs.mask("train") | fs.mask("val")
    direct = refit_head(fs, fs.avg[rows], fs.labels[rows], LinearConfig(), chosen)
    np.testing.assert_allclose(saved.coef, direct.coef, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(refit.head.coef, direct.coef, rtol=1e-6, atol=1e-8)
    model = json.loads((refit.run_dir / "model.json").read_text())
    assert model["refit"] is True and model["n_trained_on"] == 90
    assert json.loads((plain.run_dir / "model.json").read_text())["n_trained_on"] == 60
    report = (refit.run_dir / "report.md").read_text()
    assert "refit on train+val (90 images)" in report and "measured on val before the refit" in report
    from tltool.report import resolution_line

    accuracy = json.loads((refit.run_dir / "metrics.json").read_text())["val"]["accuracy"]
    assert accuracy["n"] == 30 and resolution_line(accuracy) in report  # the estimate's, measured before the refit


def test_refit_is_off_by_default_and_with_cv_a_user_error(tmp_path):
    from tltool.cli.features import linear_cmd, probe_cmd
    from tltool.configs import LinearConfig
    from tltool.linear import train_linear

    assert LinearConfig().refit is False
    for command in (linear_cmd, probe_cmd):
        option = next(p for p in command.params if p.name == "refit")
        assert option.default is LinearConfig.refit
    with pytest.raises(TltoolError, match="--refit has nothing to do with --cv"):
        train_linear(_synthetic_features(tmp_path), cv=3, refit=True)


def test_every_report_states_what_its_interval_can_tell_apart(tmp_path):
    from tltool.evaluation import Evaluation
    from tltool.report import write_run_report

    y = np.array([0, 1] * 20)
    probs = np.eye(2)[np.where(np.arange(40) < 34, y, 1 - y)]  # 34 of 40 right: Wilson [0.709, 0.929]
    evaluation = Evaluation(["a", "b"], y, probs)
    paths = [str(tmp_path / f"missing_{i}.jpg") for i in range(40)]
    write_run_report(tmp_path / "ft", evaluation, paths, kind="finetune", title="t", config={})
    lo, hi = evaluation.accuracy().interval
    assert (hi - lo) * 50 == pytest.approx(11.0, abs=0.05)
    lines = (tmp_path / "ft" / "report.md").read_text().splitlines()
    assert lines[2].startswith("- **validation accuracy: 0.850")
    assert lines[3] == ("- this accuracy is known to about ±11.0 points on these 40 images (half-width of its 95 % "
                        "interval); to rank two settings, score both on the same images with `tltool compare`, or "
                        "measure on every labelled photo with `--cv`")


def test_a_linear_run_records_its_features_folder_absolute(tmp_path, monkeypatch):
    """Given relative (``--features feat``), it was stored relative: export and the leakage check of evaluate, run
    from another folder, could not find the run's images."""
    from tltool.linear import train_linear

    monkeypatch.chdir(tmp_path)
    result = train_linear(_synthetic_features(Path(".")), out=tmp_path / "run")
    stored = json.loads((result.run_dir / "model.json").read_text())["features"]
    assert stored == str(tmp_path.resolve() / "features")


def test_a_linear_run_keeps_its_own_split_when_its_features_folder_is_extracted_again(tmp_path):
    """Before, a linear run read its train/val images from its features folder: after `extract` wrote other photos'
    features there, `export` measured the run on those photos' val split (0.600 on the wrong 15 images)."""
    from tltool.linear import train_linear
    from tltool.models import load_run, run_splits
    from tltool.utils import write_json

    fs = _synthetic_features(tmp_path)
    run = train_linear(fs, out=tmp_path / "run").run_dir
    model = load_run(run)
    splits = run_splits(run, model)
    assert splits["val"][0] == [p for p, s in zip(fs.paths, fs.splits) if s == "val"]
    np.testing.assert_array_equal(splits["train"][1], fs.labels[fs.mask("train")])
    fs.directory.mkdir(parents=True, exist_ok=True)  # the folder now holds another extraction
    write_json(fs.directory / "features.json", {"files": [{"path": "/other/x.jpg", "label": "a", "split": "val"}]})
    assert run_splits(run, model)["val"][0] == splits["val"][0]


def test_the_report_repeats_the_checks_warnings_about_the_split(tmp_path):
    """Before, a leak between train and val (or a class imbalance) was warned about in the terminal only; the
    report, which is what is read later, called the accuracy plain."""
    from tltool.linear import train_linear

    fs = _synthetic_features(tmp_path)
    fs.hashes = [f"h{i}" for i in range(len(fs.paths))]
    fs.hashes[0] = fs.hashes[1]  # image 0 (val) has the content of image 1 (train)
    result = train_linear(fs, out=tmp_path / "run")
    assert result.metrics["data_warnings"] == [
        f"1 image(s) appear in more than one split (identical content): validation accuracy will be optimistic. "
        f"First: {[fs.paths[0], fs.paths[1]]}"]
    report = (result.run_dir / "report.md").read_text()
    assert "- **data warning: 1 image(s) appear in more than one split" in report
    # pooled (a --cv, an evaluation of every image), "validation accuracy" is not what is at stake
    from tltool.linear import data_warnings

    assert "a cross-validation may train on one copy and score the other" in data_warnings(fs, pooled=True)[0]
    clean = train_linear(_synthetic_features(tmp_path / "clean"), out=tmp_path / "clean-run")
    assert clean.metrics["data_warnings"] == [] and "data warning" not in (clean.run_dir / "report.md").read_text()


def test_a_learning_curves_fractions_and_seeds_are_checked(tmp_path, monkeypatch):
    """From Python, fractions=[0, 2] ended in numpy's "Cannot take a larger sample than population" and a numpy
    array of fractions in "The truth value of an array ... is ambiguous"."""
    import tltool.crossval
    from tltool.crossval import learning_curve, run_learning_curve

    features = _synthetic_features(tmp_path)
    for fractions, bad in (([0, 2], r"\[0, 2\]"), ([0.5, "1"], r"\['1'\]"), ([], "none")):
        with pytest.raises(TltoolError, match=f"fractions must be shares of the training split, each above 0 and at "
                                              f"most 1; got {bad}"):
            learning_curve(features, fractions=fractions)
    with pytest.raises(TltoolError, match="--seeds must be a whole number at least 1, got 0"):
        learning_curve(features, seeds=0)
    points, _ = learning_curve(features, fractions=(f / 2 for f in (1, 2)), seeds=1)  # a generator, as before
    assert [p.fraction for p in points] == [0.5, 1.0]
    monkeypatch.setattr(tltool.crossval, "load_features", lambda directory: features)
    points, _, _ = run_learning_curve("features", fractions=np.array([0.5, 1.0]), seeds=1, out=tmp_path / "lc")
    assert [p.fraction for p in points] == [0.5, 1.0]


def test_the_largest_seed_drives_every_head_of_a_learning_curve(tmp_path):
    """--seed 4294967295 (the top of the range) gave the SGD head of the curve's second draw a random_state of
    2**32: scikit-learn's InvalidParameterError."""
    from tltool.crossval import derived_seed, learning_curve

    points, _ = learning_curve(_synthetic_features(tmp_path), head="sgd", fractions=(0.5, 1.0), seeds=2,
                               seed=2**32 - 1)
    assert len(points) == 2 and all(0 <= p.accuracy <= 1 for p in points)
    assert derived_seed(2**32 - 1, 1) == 0 and derived_seed(7, 1) == 8
    from tltool.stats import wilson_interval

    n_val = 30  # each point's interval is its mean accuracy's, not that of the mean rounded to whole images
    assert all((p.low, p.high) == pytest.approx(wilson_interval(p.accuracy * n_val, n_val)) for p in points)
    assert wilson_interval(24.8, 30) != wilson_interval(25.0, 30) != wilson_interval(25.2, 30)


@pytest.fixture(scope="module")
def shape_runs(tmp_path_factory) -> Path:
    """Two linear runs on the bundled shapes (64 px; logreg and ridge heads on the same features and split), and
    ``data``: per class 2 images the runs were trained on and 1 of their val images, linked into class folders."""
    root = tmp_path_factory.mktemp("shape-runs")
    for name, head in (("a", "logreg"), ("b", "ridge")):
        result = CliRunner().invoke(main, ["probe", str(SAMPLE), "--image-size", "64", "--head", head,
                                           "--features", str(root / "features"), "--out", str(root / name)])
        assert result.exit_code == 0, result.output
    with open(root / "a" / "split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for label in sorted({r["label"] for r in rows}):
        of_class = [r for r in rows if r["label"] == label]
        chosen = [r for r in of_class if r["split"] == "train"][:2] + [r for r in of_class if r["split"] == "val"][:1]
        (root / "data" / label).mkdir(parents=True)
        for r in chosen:
            (root / "data" / label / Path(r["path"]).name).symlink_to(r["path"])
    return root


def test_evaluate_with_tta_reports_the_plain_accuracy_and_the_tta_one_beside_it(shape_runs, tmp_path, monkeypatch):
    """Before, `evaluate --tta flip` scored only the flipped views, stored them under "val" with "tta": null, and
    printed them as the plain accuracy (`data (every image) accuracy ...`, no word of TTA); probe and finetune keep
    the plain accuracy under "val" and the TTA one under "tta", and print both. Flip's first view is the plain
    one: both come from one pass, each photo decoded once (two passes decoded each twice)."""
    import tltool.tta
    from tltool.evaluation import Evaluation
    from tltool.models import load_run
    from tltool.stats import format_proportion

    run, out, decoded = shape_runs / "a", tmp_path / "ev", []
    batches_for = tltool.tta.batches_for
    monkeypatch.setattr(tltool.tta, "batches_for", lambda engine, paths, **kw: decoded.extend(paths) or
                        batches_for(engine, paths, **kw))
    result = CliRunner().invoke(main, ["evaluate", str(run), str(shape_runs / "data"), "--tta", "flip",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(decoded) == len(set(decoded)) == 12
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    model = load_run(run)
    paths = [r["path"] for r in rows]
    y = np.array([model.classes.index(r["true"]) for r in rows])
    plain_probs, flip_probs = model.predict_paths(paths), model.predict_paths(paths, tta="flip")
    plain, flip = Evaluation(model.classes, y, plain_probs), Evaluation(model.classes, y, flip_probs)
    assert len(paths) == 12 and metrics["config"]["tta"] == "flip"
    assert metrics["val"]["accuracy"] == plain.accuracy().to_json()
    assert list(metrics["tta"]) == ["flip"] and metrics["tta"]["flip"]["accuracy"] == flip.accuracy().to_json()
    stored = np.array([[float(r[f"p_{c}"]) for c in model.classes] for r in rows])
    np.testing.assert_allclose(stored, plain_probs, atol=2e-6)  # predictions.csv: the plain probabilities
    assert np.abs(flip_probs - plain_probs).max() > 1e-3  # ... which the flipped views would have changed
    lines = [line for line in result.output.splitlines() if "LeakageWarning" not in line]  # data: 8 trained on
    assert lines[:2] == [
        f"data (every image) accuracy {plain.accuracy()}",
        f"data (every image) accuracy with TTA flip {format_proportion(metrics['tta']['flip']['accuracy'])}"]
    report = (out / "report.md").read_text()
    # not "validation accuracy": these are every image of another dataset (before, the report said validation)
    assert f"- **data (every image) accuracy: {format_proportion(metrics['val']['accuracy'])}**" in report
    assert "validation accuracy" not in report and metrics["scored_on"] == "data (every image)"
    assert f"- with test-time augmentation `flip`: {format_proportion(metrics['tta']['flip']['accuracy'])}" in report


def test_compare_on_data_the_runs_were_trained_on_says_so_in_its_report(shape_runs, tmp_path):
    """Before, `compare A B DATA` named the images each run was trained on only in the terminal's LeakageWarnings;
    compare.md and compare.json, what is read later, called the comparison plain (evaluate writes it into its
    report, and the README says compare does too)."""
    a, b = shape_runs / "a", shape_runs / "b"
    result = CliRunner().invoke(main, ["compare", str(a), str(b), str(shape_runs / "data"),
                                       "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert result.output.count("LeakageWarning") == 2, result.output
    assert result.output.count("8 of these 12 images were in the training data") == 2
    stored = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert stored["n"] == 12 and stored["images_trained_on"] == {"A": 8, "B": 8}
    # no winner is called on images a run was trained on (it said "A is better, p = 1.19e-07" of such a run)
    assert stored["verdict"] == ("none: A and B were trained on some of these images, so the difference is not a "
                                 "test of the runs") and stored["undecided"] is True
    assert "compare the runs on photos neither was trained on" in stored["notice"]
    report = (tmp_path / "c" / "report.md").read_text()
    for name, run in (("A", a), ("B", b)):
        assert (f"- **8 of these 12 images were in the training data of {name} ({run}): its accuracy on them is "
                "optimistic, not an estimate for new photos; compare the runs on images neither was trained on**"
                in report), report
    # on images neither run was trained on (their val split) nothing is said; on their stored predictions, nothing
    # is checked (None)
    with open(a / "split.csv", newline="") as f:
        val = {Path(r["path"]).name for r in csv.DictReader(f) if r["split"] == "val"}
    unseen = tmp_path / "unseen"
    for link in (shape_runs / "data").glob("*/*.jpg"):
        if link.name in val:
            (unseen / link.parent.name).mkdir(parents=True, exist_ok=True)
            (unseen / link.parent.name / link.name).symlink_to(link.resolve())
    result = CliRunner().invoke(main, ["compare", str(a), str(b), str(unseen), "--out", str(tmp_path / "u")])
    assert result.exit_code == 0 and "LeakageWarning" not in result.output, result.output
    stored = json.loads((tmp_path / "u" / "metrics.json").read_text())
    assert stored["n"] == 4 and stored["images_trained_on"] == {"A": 0, "B": 0}
    assert "training data" not in (tmp_path / "u" / "report.md").read_text()
    comparison, target = compare_runs(a, b, out=tmp_path / "s")
    assert comparison.images_trained_on is None and comparison.leakage_lines() == []
    assert json.loads((target / "metrics.json").read_text())["images_trained_on"] is None


def test_compare_on_data_runs_both_networks_on_the_engine_asked_for(shape_runs, tmp_path, monkeypatch):
    """`compare A B DATA` runs both networks like evaluate, but had no --engine: it always ran `auto`."""
    from tltool import compare

    asked = []

    def load_finished_run(run_dir, engine="auto"):
        asked.append((Path(run_dir).name, engine))
        return original(run_dir, engine)

    original = compare.load_finished_run
    monkeypatch.setattr(compare, "load_finished_run", load_finished_run)
    a, b = shape_runs / "a", shape_runs / "b"
    result = CliRunner().invoke(main, ["compare", str(a), str(b), str(shape_runs / "data"), "--engine", "tf",
                                       "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert asked == [("a", "tf"), ("b", "tf")]


def test_a_repeated_cv_report_says_which_predictions_its_balanced_accuracy_is_of():
    """From a review: `linear --cv 5 --repeats 2` printed accuracy 0.938 (every repeat) beside balanced accuracy
    0.933 on 70 photos a class, where the two agree for the same predictions: the latter was the first repeat's."""
    from tltool.evaluation import Evaluation
    from tltool.report import markdown_summary

    evaluation = Evaluation(["a", "b"], np.array([0, 1, 1, 0]), np.array([[.9, .1], [.2, .8], [.6, .4], [.7, .3]]))
    accuracy = evaluation.to_json()["accuracy"]
    cv = {"accuracy": accuracy, "description": "5-fold", "fold_mean": 0.75, "fold_std": 0.1, "repeats": 2}
    text = markdown_summary("t", {"val": evaluation.to_json(), "cv": cv})
    assert "- balanced accuracy: 0.750 (mean recall over 2 classes, n=4, the first repeat's out-of-fold predictions)" \
        in text
    once = markdown_summary("t", {"val": evaluation.to_json(), "cv": {**cv, "repeats": 1}})
    assert "- balanced accuracy: 0.750 (mean recall over 2 classes, n=4)" in once


def test_a_report_on_images_the_run_was_trained_on_says_so_in_bold():
    from tltool.evaluation import Evaluation
    from tltool.report import markdown_summary

    evaluation = Evaluation(["a", "b"], np.array([0, 1, 1, 0]), np.array([[.9, .1], [.2, .8], [.6, .4], [.7, .3]]))
    text = markdown_summary("t", {"val": evaluation.to_json(), "images_trained_on": 3})
    assert ("- **3 of these 4 images were in the training data of the run: its accuracy on them is optimistic, not "
            "an estimate for new photos**") in text
    assert "training data" not in markdown_summary("t", {"val": evaluation.to_json(), "images_trained_on": 0})


def test_a_class_without_validation_photos_has_no_recall_on_the_learning_curve(tmp_path):
    """Predefined train/val folders can leave a class out of val: its recall was NaN, written into
    learning_curve.json (not JSON), and the reading named it the weakest class ("recall nan")."""
    from dataclasses import asdict

    from tltool.crossval import learning_curve, read_curve

    fs = _synthetic_features(tmp_path, classes=("c", "a", "b"))
    fs.splits[(fs.labels == 0) & (fs.splits == "val")] = "train"  # class c: no val photos
    points, _ = learning_curve(fs, fractions=(0.5, 0.75, 1.0), seeds=2)
    assert all(p.per_class["c"] is None and p.per_class["a"] is not None for p in points)
    assert "`c`" not in read_curve(points, fs.classes) and "nan" not in read_curve(points, fs.classes)
    json.dumps([asdict(p) for p in points], allow_nan=False)  # what its metrics.json holds: strict JSON


def test_a_cross_validation_does_not_say_a_class_without_val_images_goes_unmeasured(tmp_path):
    """`linear --cv` (and `finetune --cv`) score every class on out-of-fold predictions over train+val, yet a
    class whose photos were all 'train' got the report's bold "data warning: ... their recall is not measured and
    balanced accuracy leaves them out", above a per-class table that measured it (12 photos, recall 0.917) and a
    balanced accuracy over every class. The val-split run keeps the warning."""
    import warnings

    from tltool.errors import ImbalanceWarning
    from tltool.inspection import prepare_dataset
    from tltool.linear import train_linear

    fs = _synthetic_features(tmp_path)
    fs.splits[fs.labels == 2] = "train"  # class c: no val photos
    unmeasured = "have no val images"
    cv = train_linear(fs, out=tmp_path / "cv", cv=3)
    assert not any(unmeasured in w for w in cv.metrics["data_warnings"])
    assert cv.metrics["val"]["per_class"]["c"]["support"] == 30  # measured on its 30 photos
    plain = train_linear(fs, out=tmp_path / "plain")
    assert any(unmeasured in w and "'c'" in w for w in plain.metrics["data_warnings"])

    seed = iter(range(1000))
    for split, label, n in (("train", "a", 4), ("train", "b", 4), ("train", "c", 4), ("val", "a", 2), ("val", "b", 2)):
        for i in range(n):
            noise_image(tmp_path / "data" / split / label / f"{label}{i}.jpg", seed=next(seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepare_dataset(str(tmp_path / "data"), pooled=True)  # what finetune --cv checks its data with
    assert not [w for w in caught if unmeasured in str(w.message)]
    with pytest.warns(ImbalanceWarning, match=unmeasured):
        prepare_dataset(str(tmp_path / "data"))


def test_a_command_refuses_to_write_its_report_over_a_run_it_reads(shape_runs, tmp_path):
    """Before, `evaluate RUN DATA --out RUN --force` evaluated RUN and then replaced it with the evaluation's report:
    its model (head.npz, model.json, split.csv) was gone; `compare A B --out A --force` did the same to run A."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(shape_runs / "a", run)  # with its marker: a finished tltool run, which --force may replace
    kept = sorted(p.name for p in run.iterdir())
    for args in (["evaluate", str(run), str(shape_runs / "data")], ["compare", str(run), str(shape_runs / "b")],
                 ["compare", str(shape_runs / "b"), str(run)]):
        result = CliRunner().invoke(main, [*args, "--out", str(run), "--force"])
        assert result.exit_code == 2, result.output
        assert f"--out {run}: holds {run}, which this command reads" in result.output
        assert sorted(p.name for p in run.iterdir()) == kept
    result = CliRunner().invoke(main, ["evaluate", str(run), str(shape_runs / "data"), "--out", str(run / "ev")])
    assert result.exit_code == 0 and (run / "ev" / "metrics.json").exists(), result.output  # beside it: fine


def test_evaluate_counts_copies_of_training_photos_as_trained_on(shape_runs, tmp_path):
    """Before, `evaluate RUN DATA` matched DATA to the run's training photos by path only: on a copy of them (a
    dataset copied elsewhere, or exported again with --copy) it counted 0 images trained on, printed no
    LeakageWarning, and reported the accuracy as an estimate for new photos. Now a file with a training photo's
    bytes counts, under any name; a photo that only shares a training photo's size does not."""
    import shutil

    from tltool.errors import LeakageWarning
    from tltool.models import load_run, run_splits
    from tltool.predict import evaluate_run

    data = tmp_path / "copied"
    for link in sorted((shape_runs / "data").glob("*/*")):  # per class 2 training photos and 1 val one
        (data / link.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(link.resolve(), data / link.parent.name / f"copy-{link.name}")
    # named: from a review, a count alone left the user to find the copy saved under another name
    with pytest.warns(LeakageWarning, match=re.escape(f"8 of these 12 images were in the training data of "
                                                      f"{shape_runs / 'a'}: its accuracy on them is optimistic, not an "
                                                      "estimate for new photos; first: ")) as caught:
        _, _, metrics = evaluate_run(shape_runs / "a", data, out=tmp_path / "ev")
    (said,) = [str(w.message) for w in caught if w.category is LeakageWarning]
    named = said.split("; first: ")[1].removesuffix(". Score it on images it never saw.")
    assert named.endswith(" and 5 more") and all(Path(p).name.startswith("copy-") and Path(p).is_file()
                                                  for p in named.removesuffix(" and 5 more").split("; "))
    assert metrics["images_trained_on"] == 8
    assert "8 of these 12 images were in the training data" in (tmp_path / "ev" / "report.md").read_text()
    from tltool.models import copies_of

    trained = run_splits(shape_runs / "a", load_run(shape_runs / "a"), need_val=False)["train"][0]
    copy, other = tmp_path / "copy.jpg", tmp_path / "same-size.jpg"
    shutil.copyfile(trained[0], copy)
    other.write_bytes(bytes(b ^ 0xFF for b in Path(trained[0]).read_bytes()))  # as long, other bytes
    assert (copies_of([str(copy)], trained), copies_of([str(other)], trained)) == ([str(copy)], [])
    # reading every same-size training photo (all of them in a BMP dataset) shows a bar that counts what it reads
    import tltool.models as models

    bars = []

    class Recorded:
        def __init__(self, total, description):
            self.total, self.done = total, 0
            bars.append(self)

        def update(self, n=1):
            self.done += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "Bar", Recorded)
        assert copies_of([str(copy), str(other)], trained) == [str(copy)]
    same_size = sum(Path(p).stat().st_size == copy.stat().st_size for p in trained)
    assert [(b.total, b.done) for b in bars] == [(same_size + 2, same_size + 2)]


def test_a_two_fold_cv_of_classes_of_3_photos_is_refused_naming_the_k_that_works(tmp_path):
    """`linear --cv 2` on 3 photos a class passed the K check, then each training fold kept 1 photo of a class,
    too few for the search of C inside it: "every class needs at least 2 training images", on classes of 3, with
    no word of --cv; `--cv 3` works."""
    from tltool.crossval import nested_cv
    from tltool.linear import train_linear

    fs = _synthetic_features(tmp_path, n_per_class=3, classes=("a", "b"))
    with pytest.raises(TltoolError, match=r"--cv 2: every class needs at least 4 images \(smallest has 3\): .*"
                                          r"Use --cv 3\.$"):
        train_linear(fs, out=tmp_path / "cv2", cv=2)
    assert not (tmp_path / "cv2").exists()
    assert nested_cv(fs.features(), fs.labels, k=3).accuracy()["n"] == 6
    with pytest.raises(TltoolError, match=r"smallest has 2\): .* Add images \(3 of each class at least\)\.$"):
        nested_cv(fs.features()[1:], fs.labels[1:], k=2)
    with pytest.raises(TltoolError, match=r"--cv 5: every class needs at least 5 images \(smallest has 3\); "
                                          r"use --cv 3\.$"):
        nested_cv(fs.features(), fs.labels, k=5)


def test_a_learning_curve_names_the_class_too_small_for_its_search(tmp_path):
    """The curve's C is chosen by CV on the training split: a class with 1 training photo stopped it with "every
    class needs at least 2 training images", naming none (`linear` names it)."""
    from tltool.crossval import learning_curve

    fs = _synthetic_features(tmp_path, n_per_class=6, classes=("a", "b"))
    fs.splits[np.flatnonzero((fs.labels == 1) & (fs.splits == "train"))[1:]] = "val"  # b: 1 training photo
    with pytest.raises(TltoolError, match=r"class\(es\) \{'b': 1\} have fewer than 2 training images"):
        learning_curve(fs, fractions=(0.5, 1.0), seeds=1)


def test_compare_says_when_a_run_s_report_gives_another_accuracy_than_the_predictions_it_pairs(shape_runs, tmp_path):
    """`compare` pairs stored plain predictions: of a run with --tta it said "no detectable difference" beside a
    report 2 points higher with TTA, and of a repeated --cv run it paired the first repeat under the mean's name,
    each without a word."""
    import shutil

    b = Path(shutil.copytree(shape_runs / "b", tmp_path / "b"))
    metrics = json.loads((b / "metrics.json").read_text())
    (b / "metrics.json").write_text(json.dumps({**metrics, "tta": {"flip": metrics["val"]},
                                                "cv": {"k": 5, "repeats": 2}}))
    comparison, target = compare_runs(shape_runs / "a", b, out=tmp_path / "c")
    assert comparison.notes == [
        "B's predictions compared here are without test-time augmentation; its report's accuracy with TTA flip is "
        "not what is compared",
        "B is a cross-validation: its stored predictions are the out-of-fold ones of its first repeat, while its "
        "report's accuracy is the mean of 2 repeats"]
    assert "- note: B's predictions compared here are without test-time augmentation" in \
        (target / "report.md").read_text()
    assert compare_runs(shape_runs / "a", shape_runs / "b", out=tmp_path / "plain")[0].notes == []


def test_a_test_split_is_said_to_be_held_out_and_evaluate_scores_it_alone(shape_runs, tmp_path):
    """A manifest's or folder's test split was left out of every run without a word, and `evaluate` scored every
    split it was given: there was no way to score the held-out photos alone."""
    from tltool.errors import HeldOutWarning
    from tltool.inspection import prepare_dataset

    photos = sorted(SAMPLE.glob("*/*.jpg"))
    for split, chosen in (("train", photos[0::3]), ("val", photos[1::3]), ("test", photos[2::12])):
        for photo in chosen:
            (tmp_path / "d" / split / photo.parent.name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "d" / split / photo.parent.name / photo.name).symlink_to(photo)
    n_test = len(photos[2::12])
    with pytest.warns(HeldOutWarning, match=rf"{n_test} image\(s\) of the test split are held out: no run trains, "
                                            r"chooses or is scored on them; .*`tltool evaluate RUN DATA --split test`"):
        prepare_dataset(str(tmp_path / "d"))
    result = CliRunner().invoke(main, ["evaluate", str(shape_runs / "a"), str(tmp_path / "d"), "--split", "test",
                                       "--out", str(tmp_path / "e")])
    assert result.exit_code == 0 and "HeldOutWarning" not in result.output, result.output
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["val"]["accuracy"]["n"] == n_test and metrics["scored_on"] == "d (its test split)"
    refused = CliRunner().invoke(main, ["evaluate", str(shape_runs / "a"), str(SAMPLE), "--split", "test"])
    assert refused.exit_code != 0 and "no 'test' split to score (it has no splits" in refused.output
