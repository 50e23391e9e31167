"""Interval and test statistics against hand-computed and table values."""
from __future__ import annotations

import math

import pytest

from tltool.stats import Proportion, mcnemar_exact, paired_difference_interval, wilson_interval


def _wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(87, 100), (0, 20), (20, 20), (1, 1), (45, 60)])
def test_wilson_matches_formula(k, n):
    lo, hi = wilson_interval(k, n)
    elo, ehi = _wilson_by_hand(k, n)
    assert lo == pytest.approx(max(0, elo), abs=1e-12) and hi == pytest.approx(min(1, ehi), abs=1e-12)


def test_wilson_known_values():
    # 87/100: the example of the issue text
    lo, hi = wilson_interval(87, 100)
    assert (round(lo, 3), round(hi, 3)) == (0.790, 0.922)
    # 0/n and n/n stay inside [0, 1] and are not degenerate (Wald would give [0, 0])
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert str(Proportion(87, 100)) == "0.870 [0.790, 0.922] (n=100)"


def test_mcnemar_exact_table_values():
    # b=1, c=8: two-sided exact p = 2 * P(X <= 1), X ~ Bin(9, 0.5) = 2 * 10/512
    assert mcnemar_exact(1, 8) == pytest.approx(20 / 512)
    assert mcnemar_exact(8, 1) == pytest.approx(20 / 512)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)
    # b=0, c=6: 2 * 0.5**6
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)


def test_mcnemar_exact_matches_the_whole_binomial_tail():
    """The tail summed from its largest term down, stopped early, is the tail summed in full."""
    for b in range(0, 80):
        for c in range(0, 80):
            n = b + c
            full = 1.0 if n == 0 else min(1.0, sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** (n - 1))
            assert mcnemar_exact(b, c) == pytest.approx(full, rel=1e-15)


def test_mcnemar_exact_is_quick_on_many_discordant_pairs():
    """40,500 discordant pairs (two runs on a large test set) took 288 s when every binomial coefficient of the
    tail was computed; the values are scipy.stats.binomtest(b, b + c).pvalue."""
    import time

    start = time.perf_counter()
    assert mcnemar_exact(20000, 20500) == pytest.approx(0.013153825113144245, rel=1e-9)
    assert mcnemar_exact(100000, 101000) == pytest.approx(0.02586239243973295, rel=1e-9)
    assert mcnemar_exact(5000, 5300) == pytest.approx(0.003215819673645259, rel=1e-9)
    assert mcnemar_exact(50000, 50000) == 1.0 and mcnemar_exact(50000, 50001) == 1.0
    assert mcnemar_exact(0, 5000) == 0.0  # 2 ** -4999 is below the smallest float
    assert time.perf_counter() - start < 5


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    """Simulate two correlated classifiers on n=100 images with a known accuracy difference."""
    import numpy as np

    rng = np.random.default_rng(0)
    true_a, true_b, n, hits, trials = 0.85, 0.90, 100, 0, 2000
    for _ in range(trials):
        shared = rng.random(n)  # image difficulty shared by both runs: outcomes are correlated
        a = shared < true_a
        b = np.where(rng.random(n) < 0.7, shared < true_b, rng.random(n) < true_b)
        both, only_a, only_b = int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum())
        diff, lo, hi = paired_difference_interval(both, only_a, only_b, n - both - only_a - only_b)
        assert lo <= diff <= hi
        hits += lo <= true_b - true_a <= hi
    assert 0.93 <= hits / trials <= 0.98


def test_paired_interval_is_symmetric_in_the_runs():
    d1, lo1, hi1 = paired_difference_interval(50, 10, 4, 36)
    d2, lo2, hi2 = paired_difference_interval(50, 4, 10, 36)
    assert d1 == pytest.approx(-d2) and lo1 == pytest.approx(-hi2) and hi1 == pytest.approx(-lo2)


def test_top5_is_reported_only_with_more_than_five_classes():
    """With exactly 5 classes (the flowers) top-5 is 1 by construction, yet it was reported with an interval:
    "top-5 accuracy: 1.000 [0.886, 1.000]"."""
    import numpy as np

    from tltool.evaluation import Evaluation

    rng = np.random.default_rng(0)
    for classes, expected in ((3, None), (5, None), (6, 26)):
        probs = rng.dirichlet(np.ones(classes), size=30)
        y = np.argsort(-probs, axis=1)[:, classes - 1]  # the least likely class: in the top 5 only with 6 or more
        y[:26] = np.argsort(-probs[:26], axis=1)[:, 0]
        ev = Evaluation([f"c{i}" for i in range(classes)], y, probs)
        top5 = ev.top_k(5)
        assert (top5.correct if top5 else None) == expected
        assert (ev.to_json()["top5_accuracy"] is None) == (expected is None)


def test_top_k_breaks_ties_as_the_prediction_does():
    """Tied probabilities (an int8 export's outputs tie often): the class argmax predicts is in the top k, so top-5
    is never below top-1. With numpy's unstable default sort, a row of 20 classes with 8 tied at the top was
    predicted right (class 8, the first of them) yet missed by top-5 ([12 10 13 14 9])."""
    import numpy as np

    from tltool.evaluation import Evaluation

    rng = np.random.default_rng(0)
    for classes in (20, 50, 100):
        probs = np.zeros((500, classes), np.float32)
        for row in probs:
            tied = rng.integers(6, classes)
            row[rng.choice(classes, tied, replace=False)] = 1.0 / tied
        y = probs.argmax(axis=1)  # every image right at top-1
        evaluation = Evaluation([str(i) for i in range(classes)], y, probs)
        assert evaluation.accuracy().correct == 500
        assert evaluation.top_k(5).correct == 500


def test_cv_interval_is_the_pooled_accuracys_own():
    """Repeats pool more predictions than images: 76 right of 90 (3 x 30 images) is 0.844, and its interval on the
    30 distinct images is Wilson's at p = 0.844, not at 25/30 = 0.833 (the count rounded first)."""
    import numpy as np

    from tltool.crossval import CVResult

    result = CVResult(3, 3, [0.8] * 9, [{}] * 9, [np.arange(10)] * 9, np.zeros((30, 2)), 76, 90)
    accuracy = result.accuracy()
    assert accuracy["value"] == pytest.approx(76 / 90) and accuracy["n"] == 30
    assert accuracy["ci95"] == pytest.approx(list(_wilson_by_hand(76 / 90 * 30, 30)), abs=1e-12)
    perfect = CVResult(3, 3, [1.0] * 9, [{}] * 9, [np.arange(10)] * 9, np.zeros((30, 2)), 90, 90).accuracy()
    assert perfect["ci95"][1] == 1.0 and perfect["ci95"][0] == pytest.approx(_wilson_by_hand(30, 30)[0])


def test_predict_lists_tied_classes_in_the_order_the_prediction_takes():
    import numpy as np

    from tltool.evaluation import ranked_classes

    p = np.zeros(40, np.float32)
    p[[9, 14, 17, 18, 22, 29, 34, 36]] = 1 / 8  # numpy's default sort listed 14, 9, 18: first a class not predicted
    assert ranked_classes(p, 3).tolist() == [9, 14, 17] and ranked_classes(p, 1)[0] == p.argmax()


def test_the_confusion_matrix_says_its_rows_are_the_true_class():
    import numpy as np

    from tltool.evaluation import Evaluation

    evaluation = Evaluation(["a", "b"], np.array([0, 0, 1]), np.array([[0.2, 0.8], [0.9, 0.1], [0.3, 0.7]]))
    stored = evaluation.to_json()
    assert stored["confusion_matrix"] == [[1, 1], [0, 1]]  # the a photo predicted b is in row a, column b
    assert stored["confusion_matrix_axes"] == ["true", "predicted"]


def test_precision_and_f1_are_not_available_where_nothing_divides_not_zero(tmp_path):
    """Before: a class with no images that the model never predicted showed precision 0.000 and F1 0.000, as if it
    were always wrong; and a class never predicted, precision 0.000. Undefined values are None, "n/a" in report.md."""
    import numpy as np

    from tltool.evaluation import Evaluation
    from tltool.report import markdown_summary

    # a: 2 images, right once; b: 1 image, never predicted; c: no images, never predicted; d: no images, predicted once
    probs = np.array([[.9, .0, .0, .1], [.1, .0, .0, .9], [.8, .1, .0, .1]])
    per_class = Evaluation(["a", "b", "c", "d"], np.array([0, 0, 1]), probs).per_class()
    assert per_class["a"]["precision"] == 0.5 and per_class["a"]["f1"] == 0.5
    assert per_class["b"]["precision"] is None and per_class["b"]["f1"] == 0.0  # 1 image, always missed
    assert per_class["c"]["precision"] is None and per_class["c"]["f1"] is None and per_class["c"]["recall"] is None
    assert per_class["d"]["precision"] == 0.0 and per_class["d"]["f1"] == 0.0  # predicted, always wrongly
    metrics = {"val": Evaluation(["a", "b", "c", "d"], np.array([0, 0, 1]), probs).to_json()}
    table = markdown_summary("t", metrics)
    assert "| b | n/a | 0.000 [0.000, 0.793] (n=1) | 0.000 | 1 |" in table, table
    assert "| c | n/a | n/a | n/a | 0 |" in table
