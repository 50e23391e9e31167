"""Linear heads: CV-chosen regularisation, arrays that reproduce scikit-learn, save/load without pickle."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sklearn.datasets import make_classification

from tltool.errors import TltoolError
from tltool.heads import HEADS, FittedHead, get_head_spec, search

from helpers import deadline


def _data(classes=3, seed=0):
    X, y = make_classification(n_samples=150, n_features=20, n_informative=8, n_classes=classes,
                               n_clusters_per_class=1, class_sep=2.0, random_state=seed)
    return X[:100], y[:100], X[100:], y[100:]


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_head_learns_and_round_trips(name, tmp_path):
    Xtr, ytr, Xte, yte = _data()
    gs = search(get_head_spec(name), Xtr, ytr, seed=0)
    classes = ["a", "b", "c"]
    head = FittedHead.from_pipeline(name, gs.best_estimator_, classes, {"x": 1}, Xtr, ytr)
    proba = head.predict_proba(Xte)
    assert proba.shape == (50, 3) and np.allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(proba.argmax(1), gs.best_estimator_.predict(Xte))
    assert (proba.argmax(1) == yte).mean() > 0.8
    head.save(tmp_path)
    again = FittedHead.load(tmp_path)
    np.testing.assert_allclose(again.predict_proba(Xte), proba)
    assert not list(tmp_path.glob("*.pkl"))


@pytest.mark.parametrize("name", ["logreg", "knn"])
def test_a_head_refuses_features_of_another_width_and_damaged_files(name, tmp_path):
    """Before, features of another width (a run's head used on another backbone's features, or a folder whose
    chunks were all narrower) ended in NumPy's broadcasting traceback, and a damaged head.npz in zipfile's."""
    Xtr, ytr, Xte, _ = _data()
    head = FittedHead.from_pipeline(name, search(get_head_spec(name), Xtr, ytr, seed=0).best_estimator_,
                                    ["a", "b", "c"], {}, Xtr, ytr)
    with pytest.raises(TltoolError, match=f"this {name} head was fitted on 20 features a row, and was given \\(12,\\)"):
        head.predict_proba(Xte[:, :12])
    head.save(tmp_path)
    arrays = dict(np.load(tmp_path / "head.npz"))
    tampered = {"mean": arrays["mean"][:12]} if name == "logreg" else {"train_y": arrays["train_y"] + 3}
    np.savez(tmp_path / "head.npz", **{**arrays, **tampered})
    with pytest.raises(TltoolError, match="head.npz does not hold a head of 3 classes"):
        FittedHead.load(tmp_path)
    np.savez(tmp_path / "head.npz", **{**arrays, "mean": np.array([object()], dtype=object)})
    with pytest.raises(TltoolError, match=r"not a head tltool wrote \(it holds pickled objects, which tltool never loads\)"):
        FittedHead.load(tmp_path)
    (tmp_path / "head.npz").write_text("garbage")  # before: "it holds pickled objects", of a text file
    with pytest.raises(TltoolError, match=r"not a head tltool wrote \(it is not a NumPy \.npz archive\)"):
        FittedHead.load(tmp_path)
    (tmp_path / "head.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(TltoolError, match="not a head tltool wrote .BadZipFile"):
        FittedHead.load(tmp_path)
    (tmp_path / "head.npz").unlink()
    os.mkfifo(tmp_path / "head.npz")  # `predict --model` waited for a writer for ever
    with deadline(20), pytest.raises(TltoolError, match="not a head tltool wrote .*not a regular file"):
        FittedHead.load(tmp_path)
    head.save(tmp_path)
    (tmp_path / "head.json").write_text("[" * 100_000 + "]" * 100_000)  # a RecursionError traceback before
    with pytest.raises(TltoolError, match="not a head tltool wrote .*nested too deeply"):
        FittedHead.load(tmp_path)


def _npy_header(shape: tuple, dtype: str = "<f8") -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_a_head_npz_declaring_arrays_it_does_not_store_is_refused_before_they_are_allocated(tmp_path):
    """A mean.npy whose header says 2**40 values was a MemoryError traceback (NumPy allocates the declared shape
    first); one deflated from 32 MiB of zeros to 32 KB was read in whole (a 2 MB one took 2.3 GB) before the head was
    found inconsistent."""
    import zipfile

    Xtr, ytr, _, _ = _data()
    FittedHead.from_pipeline("logreg", search(get_head_spec("logreg"), Xtr, ytr, seed=0).best_estimator_,
                             ["a", "b", "c"], {}, Xtr, ytr).save(tmp_path)
    with zipfile.ZipFile(tmp_path / "head.npz") as z:
        arrays = {name: z.read(name) for name in ("scale.npy", "coef.npy", "intercept.npy")}
    for mean, compression, problem in [  # where the kernel lends 8 TiB, reading past the 64 bytes fails instead
            (_npy_header((1 << 40,)) + bytes(64), zipfile.ZIP_STORED, r"(MemoryError: Unable to allocate|ValueError)"),
            (_npy_header((1 << 22,)) + bytes(8 << 22), zipfile.ZIP_DEFLATED,
             r"ValueError: mean.npy declares 33,554,560 bytes")]:
        with zipfile.ZipFile(tmp_path / "head.npz", "w", compression) as z:
            z.writestr("mean.npy", mean)
            for name, raw in arrays.items():
                z.writestr(name, raw)
        with pytest.raises(TltoolError, match=f"not a head tltool wrote .{problem}"):
            FittedHead.load(tmp_path)


@pytest.mark.parametrize("damage", [{"n_neighbors": 0}, {"n_neighbors": 10 ** 6}, {"n_neighbors": "five"},
                                    {"n_neighbors": True}, {}, {"float_labels": True}])
def test_a_knn_head_with_an_impossible_k_or_float_labels_is_refused_when_loaded(tmp_path, damage):
    """Such a head.json/head.npz loaded, then failed at predict inside scikit-learn (ValueError, KeyError)."""
    Xtr, ytr, Xte, _ = _data()
    head = FittedHead.from_pipeline("knn", search(get_head_spec("knn"), Xtr, ytr, seed=0).best_estimator_,
                                    ["a", "b", "c"], {}, Xtr, ytr)
    head.save(tmp_path)
    assert FittedHead.load(tmp_path).predict_proba(Xte).shape == (len(Xte), 3)
    meta = json.loads((tmp_path / "head.json").read_text())
    params = {k: v for k, v in {**meta["params"], **damage}.items() if k != "float_labels"}
    if not damage:
        del params["n_neighbors"]
    (tmp_path / "head.json").write_text(json.dumps({**meta, "params": params}))
    if "float_labels" in damage:
        arrays = dict(np.load(tmp_path / "head.npz"))
        np.savez(tmp_path / "head.npz", **{**arrays, "train_y": arrays["train_y"] + 0.5})
    with pytest.raises(TltoolError, match="head.npz does not hold a head of 3 classes"):
        FittedHead.load(tmp_path)


def test_logreg_probabilities_equal_sklearn():
    Xtr, ytr, Xte, _ = _data()
    gs = search(get_head_spec("logreg"), Xtr, ytr)
    head = FittedHead.from_pipeline("logreg", gs.best_estimator_, list("abc"), {}, Xtr, ytr)
    np.testing.assert_allclose(head.predict_proba(Xte), gs.best_estimator_.predict_proba(Xte), atol=1e-8)


def test_an_almost_constant_feature_is_not_blown_up_into_the_folded_dense_kernel():
    """A unit that hardly fires would be scaled by 1e5 and dominate the Dense kernel an export quantizes."""
    from tltool.heads import SCALE_FLOOR

    Xtr, ytr, Xte, _ = _data()
    Xtr, Xte = Xtr.copy(), Xte.copy()
    Xtr[:, 0] = 1e-6 * np.random.default_rng(0).standard_normal(len(Xtr))
    Xte[:, 0] = 0.0
    gs = search(get_head_spec("logreg"), Xtr, ytr)
    head = FittedHead.from_pipeline("logreg", gs.best_estimator_, list("abc"), {}, Xtr, ytr)
    typical = np.median(Xtr.std(axis=0))
    assert head.scale[0] == pytest.approx(SCALE_FLOOR * np.median(head.scale))
    assert head.scale[1:] == pytest.approx(Xtr[:, 1:].std(axis=0))  # every other feature standardised as usual
    kernel, _ = head.dense_weights()
    assert np.abs(kernel).max() < 1e3 * np.median(np.abs(kernel)) and typical > 0.1
    np.testing.assert_allclose(head.predict_proba(Xte), gs.best_estimator_.predict_proba(Xte), atol=1e-8)


def test_binary_head_gives_sigmoid_probabilities():
    Xtr, ytr, Xte, _ = _data(classes=2)
    gs = search(get_head_spec("logreg"), Xtr, ytr)
    head = FittedHead.from_pipeline("logreg", gs.best_estimator_, ["neg", "pos"], {}, Xtr, ytr)
    np.testing.assert_allclose(head.predict_proba(Xte), gs.best_estimator_.predict_proba(Xte), atol=1e-8)


def test_search_reports_grid_and_unknown_head():
    Xtr, ytr, _, _ = _data()
    gs = search(get_head_spec("ridge"), Xtr, ytr)
    assert len(gs.cv_results_["params"]) == len(get_head_spec("ridge").grid)
    with pytest.raises(TltoolError, match="Did you mean 'linsvm'"):
        get_head_spec("linsv")


def test_a_class_missing_from_the_fit_is_never_predicted_and_does_not_shift_the_others():
    Xtr, ytr, Xte, yte = _data(classes=3)
    keep = ytr != 1  # the fit sees classes 0 and 2 only
    gs = search(get_head_spec("logreg"), Xtr[keep], ytr[keep])
    head = FittedHead.from_pipeline("logreg", gs.best_estimator_, ["a", "b", "c"], {}, Xtr[keep], ytr[keep])
    proba = head.predict_proba(Xte)
    assert proba.shape == (50, 3) and proba[:, 1].max() < 1e-6
    seen = yte != 1
    np.testing.assert_array_equal(proba[seen].argmax(1), gs.best_estimator_.predict(Xte[seen]))


def test_a_search_is_remembered_by_content_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    from tltool import heads

    Xtr, ytr, Xte, _ = _data()
    spec, classes = get_head_spec("logreg"), ["a", "b", "c"]
    first = heads.search_head(spec, Xtr, ytr, classes, seed=0)
    calls = []
    real_search = heads.search
    monkeypatch.setattr(heads, "search", lambda *a, **k: calls.append(1) or real_search(*a, **k))
    again = heads.search_head(spec, Xtr, ytr, classes, seed=0)
    assert calls == [] and again.record() == first.record()
    np.testing.assert_array_equal(again.fitted.predict_proba(Xte), first.fitted.predict_proba(Xte))
    changed_y = ytr.copy()
    changed_y[:2] = changed_y[:2][::-1] if changed_y[0] != changed_y[1] else (changed_y[:2] + 1) % 3
    for variant in ({"X": Xtr * 1.01}, {"y": changed_y}, {"seed": 1}, {"standardize": False}):
        args = {"X": Xtr, "y": ytr, "seed": 0, "standardize": True, **variant}
        heads.search_head(spec, args["X"], args["y"], classes, seed=args["seed"], standardize=args["standardize"])
    assert len(calls) == 4  # each change of content or setting searches again
    for entry in (tmp_path / "cache" / "heads").rglob("search.json"):
        entry.write_text("{not json")  # a damaged entry is searched again, not an error
    heads.search_head(spec, Xtr, ytr, classes, seed=0)
    assert len(calls) == 5


def test_a_cached_knn_head_made_inconsistent_is_searched_again_and_rewritten(tmp_path, monkeypatch):
    """A cached head.json with n_neighbors 0 made every later `linear --head knn` on those features fail with
    'fit it again with tltool linear', which only read the same entry again."""
    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    from tltool import heads

    Xtr, ytr, Xte, _ = _data()
    spec, classes = get_head_spec("knn"), ["a", "b", "c"]
    first = heads.search_head(spec, Xtr, ytr, classes, seed=0)
    (entry,) = (tmp_path / "cache" / "heads").rglob("head.json")
    meta = json.loads(entry.read_text())
    entry.write_text(json.dumps({**meta, "params": {**meta["params"], "n_neighbors": 0}}))
    again = heads.search_head(spec, Xtr, ytr, classes, seed=0)
    np.testing.assert_array_equal(again.fitted.predict_proba(Xte), first.fitted.predict_proba(Xte))
    assert json.loads(entry.read_text())["params"]["n_neighbors"] >= 1  # the entry was written again


def test_a_value_chosen_at_an_end_of_the_search_grid_is_said_to_be_there():
    """linsvm chose C 0.0001 and sgd alpha 0.1, the ends of their grids, without a word: a value beyond might score
    better, and the search cannot tell."""
    from types import SimpleNamespace

    from tltool.linear import _grid_edge

    def found(chosen):
        return SimpleNamespace(param="C", chosen={"C": chosen},
                               grid=[{"value": v, "cv_accuracy": 0.8} for v in (0.001, 0.01, 0.1)])

    assert [_grid_edge(found(c)) for c in (0.001, 0.01, 0.1)] == ["smallest", None, "largest"]
    assert _grid_edge(SimpleNamespace(param="C", chosen={"C": 1.0}, grid=[{"value": 1.0}])) is None
