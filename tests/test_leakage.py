"""Near copies across a split, from the features a run extracted (tltool.leakage): a val photo saved again from a
training photo (other bytes, the same photo) made the reported accuracy optimistic without a word."""
from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

from tltool.errors import LeakageWarning
from tltool.features import load_features
from tltool.leakage import NEAR_COPY_SIMILARITY, near_copies, near_copy_warning
from tltool.linear import data_warnings


def test_each_query_is_paired_with_its_nearest_copy_never_itself_nor_an_identical_file():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 32)).astype(np.float32)
    x[3] = x[0] * 2.0 + 0.01 * rng.normal(size=32)  # row 0 saved again: the same direction
    x[4] = x[1]  # row 1's bytes again: the check names it as identical already
    x[5] = x[2] + 0.6 * rng.normal(size=32)  # another photo of the same scene, less alike
    hashes = ["h0", "h1", "h2", "h3", "h1", "h5"]
    found = near_copies(x, [3, 4, 5], [0, 1, 2], hashes)
    assert [(c.a, c.b) for c in found] == [(3, 0)] and found[0].similarity > 0.99
    assert [(c.a, c.b) for c in near_copies(x, range(6), range(6), hashes)] == [(0, 3), (3, 0)]
    assert near_copies(x, [], [0, 1]) == [] and near_copies(x, [3], [3]) == []
    similarity = float(x[5] @ x[2] / np.linalg.norm(x[5]) / np.linalg.norm(x[2]))
    assert [c.b for c in near_copies(x, [5], [0, 1, 2], hashes, threshold=similarity - 1e-6)] == [2]


def test_the_warning_names_the_count_the_threshold_and_the_closest_pair():
    from tltool.leakage import NearCopy

    paths = ["t/a.jpg", "t/b.jpg", "v/a.png", "v/b.jpg"]
    message = near_copy_warning(paths, [NearCopy(2, 0, 1.0), NearCopy(3, 1, 0.96)])
    assert message.startswith("2 val image(s) look like a copy of a training image")
    assert f"at least {NEAR_COPY_SIMILARITY}" in message and message.endswith("First: v/a.png ~ t/a.jpg (1.000)")
    assert near_copy_warning(paths, []) is None
    assert "cross-validation may train on one and score the other" in near_copy_warning(paths, [NearCopy(2, 0, 1.0)],
                                                                                         pooled=True)


def test_real_flowers_raise_no_alarm_and_a_val_photo_saved_again_from_a_training_photo_does(flowers_probe):
    """On the real flowers split (no copies across it) nothing is said; a val photo whose features are a training
    photo's (a PNG of a JPEG gives the same pixels: similarity 1.000 in benchmarks/near_copies.py) is named, in
    the report's warnings and as a LeakageWarning."""
    fs = load_features(flowers_probe.features)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakageWarning)
        assert not any("look like a copy" in w for w in data_warnings(fs))
        assert not any("look like a copy" in w for w in data_warnings(fs, pooled=True))
    train, val = np.flatnonzero(fs.mask("train")), np.flatnonzero(fs.mask("val"))
    avg = fs.avg.copy()
    avg[val[7]] = avg[train[3]]
    copied = replace(fs, avg=avg)
    with pytest.warns(LeakageWarning, match=r"1 val image\(s\) look like a copy of a training image"):
        said = [w for w in data_warnings(copied) if "look like a copy" in w]
    assert said and said[0].endswith(f"First: {fs.paths[val[7]]} ~ {fs.paths[train[3]]} (1.000)")


def test_more_pairs_than_the_check_compares_are_said_to_be_left_out_not_warned_of(flowers_probe, monkeypatch):
    from tltool import linear

    monkeypatch.setattr(linear, "MAX_PAIRS", 100)
    fs = load_features(flowers_probe.features)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakageWarning)
        said = data_warnings(fs)
    assert "near copies across the split were not looked for: 100 x 250 images is more than the 100 pairs the check "\
           "compares" in said


def test_features_of_random_weights_are_not_searched_for_near_copies(flowers_probe):
    """From a review: a `--weights none` baseline on pets warned that all 60 val photos "look like a copy of a
    training image" (random features are nearly parallel: a bulldog ~ an Abyssinian at 0.995), and called its
    chance-level accuracy optimistic. Its report now says the search was not made."""
    fs = load_features(flowers_probe.features)
    flat = replace(fs, avg=np.ones_like(fs.avg), meta={**fs.meta, "weights": "none"})  # every pair alike
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakageWarning)
        said = data_warnings(flat)
    assert not any("look like a copy" in w for w in said)
    assert "near copies across the split were not looked for: features of random weights (--weights none) cannot " \
           "tell one photo from another" in said
    with pytest.warns(LeakageWarning, match="look like a copy"):  # the same numbers from trained weights: warned
        data_warnings(replace(flat, meta=fs.meta))
