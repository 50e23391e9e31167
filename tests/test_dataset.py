"""Dataset sources, validation and the stratified split."""
from __future__ import annotations

import json
import os
import re
import signal
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from helpers import build_bad_corpus, deadline, noise_image
from tltool.collect import expand_sources
from tltool.dataset import (HIDDEN, LINK_AGAIN, LINK_BACK_UP, LINK_INSIDE, UNREADABLE_FOLDER, ManifestWarning,
                            SymlinkWarning, load_dataset, stratified_split)
from tltool.errors import BadFilesWarning, LeakageWarning, TltoolError
from tltool.inspection import check_dataset, write_split_manifest
from tltool.predict import image_arguments


def _tree(root, layout: dict[str, int], seed=0):
    for rel, n in layout.items():
        for i in range(n):
            noise_image(root / rel / f"img_{i:02d}.jpg", seed=seed + zlib.crc32(rel.encode()) % 100_000 * 100 + i)
    return root


def test_a_macos_zip_folder_is_not_a_class(tmp_path):
    """A folder unzipped on Linux from a Mac's archive has __MACOSX/ beside the class folders, holding a ``._`` twin
    of every photo: it was a class of hidden files, 'empty folder' in an EmptyClassWarning, each twin named."""
    _tree(tmp_path, {"cats": 3, "dogs": 3})
    for name in ("cats", "dogs"):
        (tmp_path / "__MACOSX" / name).mkdir(parents=True)
        for photo in (tmp_path / name).iterdir():
            (tmp_path / "__MACOSX" / name / f"._{photo.name}").write_bytes(b"\0\5\26\7 resource fork")
    ds = load_dataset(tmp_path)
    assert ds.classes == ["cats", "dogs"] and ds.empty_class_folders() == [] and ds.skipped == []
    assert len(ds.records) == 6


def test_folder_per_class_and_hidden_and_empty_class(tmp_path):
    expected = build_bad_corpus(tmp_path)
    ds = load_dataset(tmp_path)
    assert ds.classes == ["cats", "dogs"]  # the empty folder is not a class
    assert ds.empty_class_folders() == ["empty_class"]  # inspection names it in an EmptyClassWarning
    assert {s.reason for s in ds.skipped} == {"hidden file (ignored)"}
    assert len(ds.skipped) == 2
    assert len(ds.records) == len(expected)  # every non-hidden file is a candidate, bad ones included


def test_check_names_every_bad_file_and_keeps_going(tmp_path):
    expected = build_bad_corpus(tmp_path)
    with pytest.warns(BadFilesWarning) as record:
        checked = check_dataset(load_dataset(tmp_path), max_pixels=4_000_000)
    reasons = {f.record.path: f.reason for f in checked.bad}
    for rel, outcome in expected.items():
        path = str(tmp_path / rel)
        if outcome == "ok":
            assert path not in reasons
            assert any(r.path == path for r in checked.dataset.records)
        else:
            assert reasons[path] == outcome, rel
            assert any(path in str(w.message) for w in record if w.category is BadFilesWarning)
    assert len(checked.dataset.records) == sum(v == "ok" for v in expected.values())


def test_existing_split_is_kept(tmp_path):
    _tree(tmp_path, {"train/a": 4, "train/b": 4, "val/a": 2, "val/b": 2, "unlabeled/x": 1})
    ds = stratified_split(load_dataset(tmp_path), 0.5, seed=3)
    assert ds.counts() == {"train": {"a": 4, "b": 4}, "val": {"a": 2, "b": 2}}
    assert any("unlabeled" in n for n in ds.notes)


def test_stratified_split_is_seeded_and_stratified(tmp_path):
    _tree(tmp_path, {"a": 10, "b": 20, "c": 5})
    ds = load_dataset(tmp_path)
    one = stratified_split(ds, 0.2, seed=1)
    two = stratified_split(load_dataset(tmp_path), 0.2, seed=1)
    other = stratified_split(ds, 0.2, seed=2)
    assert [(r.path, r.split) for r in one.records] == [(r.path, r.split) for r in two.records]
    assert {(r.path, r.split) for r in one.records} != {(r.path, r.split) for r in other.records}
    assert one.counts()["val"] == {"a": 2, "b": 4, "c": 1}
    assert one.counts()["train"] == {"a": 8, "b": 16, "c": 4}
    assert one.classes == ["a", "b", "c"]  # sorted: indices never depend on file order


def test_class_with_one_image_cannot_be_split(tmp_path):
    _tree(tmp_path, {"a": 5, "lonely": 1})
    with pytest.raises(TltoolError, match="lonely"):
        stratified_split(load_dataset(tmp_path), 0.2)


def test_single_class_dataset_is_a_clear_error(tmp_path):
    _tree(tmp_path, {"only": 4})
    ds = load_dataset(tmp_path)
    assert ds.classes == ["only"]
    with pytest.raises(TltoolError, match="at least 2"):
        ds.require_classes(2)


def test_manifest_rows_and_errors(tmp_path):
    _tree(tmp_path, {"imgs/a": 2, "imgs/b": 2})
    (tmp_path / "m.csv").write_text("path,label,split\nimgs/a/img_00.jpg,a,train\nimgs/a/img_01.jpg,a,val\n"
                                    "imgs/b/img_00.jpg,b,train\nimgs/b/img_01.jpg,b,validation\n")
    ds = load_dataset(tmp_path / "m.csv")
    assert ds.counts() == {"train": {"a": 1, "b": 1}, "val": {"a": 1, "b": 1}}

    (tmp_path / "bad.csv").write_text("path,label\nimgs/a/img_00.jpg,a\nimgs/a/missing.jpg,a\nimgs/b/img_00.jpg,\n")
    with pytest.raises(TltoolError) as err:
        load_dataset(tmp_path / "bad.csv")
    assert "row 3: file not found: imgs/a/missing.jpg" in str(err.value)
    assert "row 4: empty label" in str(err.value)
    # a user who wrote paths relative to where she ran the command was told only "file not found", row by row
    assert str(err.value).endswith(f"(a relative path is read from the manifest's own folder, {tmp_path}, not from "
                                   "where the command runs)")

    (tmp_path / "dup.csv").write_text("path,label\nimgs/a/img_00.jpg,a\nimgs/b/img_00.jpg,b\nimgs/a/img_00.jpg,b\n")
    with pytest.raises(TltoolError, match="row 4: imgs/a/img_00.jpg is listed again \\(first on row 2\\)"):
        load_dataset(tmp_path / "dup.csv")

    (tmp_path / "long.csv").write_text(f"path,label\nimgs/a/img_00.jpg,a\n{'x' * 300}.jpg,a\n")
    with pytest.raises(TltoolError, match=r"row 3: cannot be looked up \(File name too long\)"):
        load_dataset(tmp_path / "long.csv")  # before: OSError ENAMETOOLONG from Path.is_file, a traceback

    (tmp_path / "nul.csv").write_text("path,label\nimgs/a/img_00.jpg,a\nimgs/a/img\0_01.jpg,a\n")
    with pytest.raises(TltoolError, match=r"row 3: the path holds a NUL byte: imgs/a/img\\x00_01\.jpg"):
        load_dataset(tmp_path / "nul.csv")  # before: ValueError 'embedded null byte' from Path.resolve

    (tmp_path / "col.csv").write_text("path,label,colour\nimgs/a/img_00.jpg,a,red\n")
    with pytest.raises(TltoolError, match=r"row 1 \(header\): unknown column\(s\) \['colour'\]"):
        load_dataset(tmp_path / "col.csv")


def test_a_photo_listed_twice_as_an_absolute_and_a_relative_path_is_named(tmp_path):
    """A relative row was resolved and an absolute one was not: ``/data/imgs/../imgs/a/img_00.jpg`` and
    ``imgs/a/img_00.jpg`` passed as two photos, the same one counted twice in training."""
    _tree(tmp_path, {"imgs/a": 2, "imgs/b": 2})
    spelled = tmp_path / "imgs" / ".." / "imgs" / "a" / "img_00.jpg"
    (tmp_path / "m.csv").write_text(f"path,label\n{spelled},a\nimgs/b/img_00.jpg,b\nimgs/a/img_00.jpg,a\n")
    with pytest.raises(TltoolError, match="row 4: imgs/a/img_00.jpg is listed again \\(first on row 2\\)"):
        load_dataset(tmp_path / "m.csv")
    (tmp_path / "ok.csv").write_text(f"path,label\n{spelled},a\nimgs/b/img_00.jpg,b\n")
    assert [r.path for r in load_dataset(tmp_path / "ok.csv").records][0] == str(tmp_path / "imgs/a/img_00.jpg")


def test_a_manifest_with_a_split_on_some_rows_only_names_the_rows_without(tmp_path):
    """The error said only "the split column is filled for some rows only": in a long manifest the user had to
    hunt for the row."""
    _tree(tmp_path, {"imgs/a": 2, "imgs/b": 2})
    (tmp_path / "m.csv").write_text("path,label,split\nimgs/a/img_00.jpg,a,train\nimgs/a/img_01.jpg,a,val\n\n"
                                    "imgs/b/img_00.jpg,b\nimgs/b/img_01.jpg,b,val\n")
    with pytest.raises(TltoolError, match=r"filled for some rows only \(empty on 1 row\(s\): 5\)"):
        load_dataset(tmp_path / "m.csv")


def test_identical_photos_stay_on_one_side_of_the_split(tmp_path):
    from tltool.inspection import prepare_dataset

    _tree(tmp_path, {"a": 6, "b": 6})
    for i in range(4):  # the same photo saved four times under different names
        (tmp_path / "a" / f"copy_{i}.jpg").write_bytes((tmp_path / "a" / "img_00.jpg").read_bytes())
    for seed in range(5):
        checked = prepare_dataset(str(tmp_path), val_fraction=0.3, seed=seed)
        assert not checked.leaks()
        twins = [r for r in checked.dataset.records
                 if r.label == "a" and (r.path.endswith("img_00.jpg") or "copy_" in r.path)]
        assert len(twins) == 5 and len({r.split for r in twins}) == 1


def test_class_without_training_images_is_refused(tmp_path):
    from tltool.inspection import prepare_dataset

    _tree(tmp_path, {"train/a": 3, "train/b": 3, "val/a": 1, "val/b": 1, "val/c": 2})
    with pytest.raises(TltoolError, match=r"\['c'\] have no usable training images"):
        prepare_dataset(str(tmp_path))


def test_data_inspect_names_a_class_with_val_images_only(tmp_path):
    """probe refused a class found only in val/, but `data inspect` of the same folders listed it without a word."""
    from tltool.errors import ImbalanceWarning
    from tltool.inspection import inspect_dataset, split_warnings

    _tree(tmp_path / "d", {"train/a": 3, "train/b": 3, "val/a": 1, "val/b": 1, "val/c": 2})
    result = inspect_dataset(str(tmp_path / "d"), out=tmp_path / "inspect")
    said = "class(es) ['c'] have no training images, only val or test ones: no model can learn them"
    assert [category for message, category in result.checked.issues if message.startswith(said)] == [ImbalanceWarning]
    assert "['c'] have no training images" in (tmp_path / "inspect" / "report.md").read_text()
    assert not split_warnings({"train": {"a": 3}, "test": {"a": 1, "c": 1}}, [], pooled=True)  # every image scored
    assert "['c'] have no training" in split_warnings({"train": {"a": 3}, "test": {"a": 1, "c": 1}}, [])[0][0]


def test_a_class_with_training_images_but_none_in_val_is_warned_about(tmp_path):
    """A manifest (or train/val folders) whose class had no val image trained and reported without a word: the
    class's recall was never measured and balanced accuracy was the mean over the other classes only."""
    from tltool.errors import ImbalanceWarning
    from tltool.inspection import prepare_dataset, split_warnings

    _tree(tmp_path, {"train/a": 3, "train/b": 3, "train/c": 3, "val/a": 2, "val/b": 2})
    with pytest.warns(ImbalanceWarning, match=r"class\(es\) \['c'\] have no val images"):
        prepare_dataset(str(tmp_path))
    assert split_warnings({"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}}, []) == []
    assert split_warnings({"all": {"a": 3, "b": 3}}, []) == []


def test_an_evaluation_on_every_image_does_not_say_a_class_without_val_images_goes_unmeasured(tmp_path):
    """`tltool evaluate RUN DATA` (and `compare`) score every image of DATA, all splits, yet on train/ + val/
    folders whose class c had no val/ folder it warned "class(es) ['c'] have no val images: ... their recall is not
    measured", above "DATA (every image) accuracy ..." over c's photos too."""
    import warnings

    from tltool.predict import labelled_images

    _tree(tmp_path, {"train/a": 3, "train/b": 3, "train/c": 3, "val/a": 2, "val/b": 2})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, paths, y = labelled_images(str(tmp_path), ["a", "b", "c"], 10**8)
    assert not [str(w.message) for w in caught if "have no val images" in str(w.message)]
    assert len(paths) == 13 and list(y).count(2) == 3  # c's photos are scored


def test_a_photo_filed_under_two_classes_is_warned_about_by_training_and_in_the_report(tmp_path):
    """The same photo in daisy/ and roses/ was named by ``data inspect`` only: probe and finetune trained on both
    labels, and scored the val copy, without a word."""
    import shutil
    from types import SimpleNamespace

    from tltool import errors
    from tltool.inspection import prepare_dataset
    from tltool.linear import data_warnings

    _tree(tmp_path, {"a": 4, "b": 4})
    shutil.copy(tmp_path / "a" / "img_00.jpg", tmp_path / "b" / "same.jpg")
    with pytest.warns(errors.TltoolWarning, match=r"1 image\(s\) are filed under more than one class") as caught:
        prepare_dataset(str(tmp_path))
    assert [w.category.__name__ for w in caught if "more than one class" in str(w.message)] == ["LabelConflictWarning"]
    splits = np.array(["train", "train", "val"])
    fs = SimpleNamespace(splits=splits, labels=[0, 1, 0], classes=["a", "b"], hashes=["h", "h", "g"],
                         paths=["x/a.jpg", "y/a.jpg", "x/b.jpg"], meta={}, mask=lambda split: splits == split,
                         features=lambda pool: np.eye(3, dtype=np.float32))
    assert any("filed under more than one class" in w and "x/a.jpg" in w for w in data_warnings(fs))


def test_split_manifest_round_trip(tmp_path):
    _tree(tmp_path / "d", {"a": 5, "b": 5})
    target = write_split_manifest(str(tmp_path / "d"), tmp_path / "split.csv", val_fraction=0.4, seed=0)
    again = load_dataset(target)
    assert again.counts() == {"train": {"a": 3, "b": 3}, "val": {"a": 2, "b": 2}}
    assert (tmp_path / "classes.json").read_text().strip().startswith("[")
    # a file already there (the user's, or an earlier split) is replaced only when asked
    (tmp_path / "classes.json").write_text("my own notes")
    with pytest.raises(TltoolError, match="already exist.*--force"):
        write_split_manifest(str(tmp_path / "d"), tmp_path / "other.csv", val_fraction=0.4, seed=0)
    assert (tmp_path / "classes.json").read_text() == "my own notes" and not (tmp_path / "other.csv").exists()
    # --force names the CSV: a classes.json of the user's beside it was overwritten unnamed; one a split wrote is not
    with pytest.raises(TltoolError, match=r"classes\.json: is not a classes\.json a split wrote .*move it away"):
        write_split_manifest(str(tmp_path / "d"), tmp_path / "split.csv", val_fraction=0.4, seed=0, force=True)
    assert (tmp_path / "classes.json").read_text() == "my own notes"
    (tmp_path / "classes.json").write_text('["x", "y"]')
    write_split_manifest(str(tmp_path / "d"), tmp_path / "split.csv", val_fraction=0.4, seed=0, force=True)
    assert json.loads((tmp_path / "classes.json").read_text()) == ["a", "b"]


def test_split_manifest_is_the_split_a_run_draws(tmp_path):
    """Before, `data split` split every file found with no content hash: copies of one photo landed in train and
    val (its own `data inspect` then reported the leak), bad files went into the manifest, and --max-pixels was
    accepted but never used. Now the CSV holds the split a run on the folder draws, usable files only."""
    from tltool.inspection import prepare_dataset

    data = _tree(tmp_path / "d", {"a": 6, "b": 6})
    for i in range(6):  # the same photo saved six times under different names
        (data / "a" / f"copy_{i}.jpg").write_bytes((data / "a" / "img_00.jpg").read_bytes())
    (data / "b" / "notes.jpg").write_text("not a picture")
    noise_image(data / "b" / "big.jpg", size=(300, 300), seed=7)
    with pytest.warns(BadFilesWarning):
        target = write_split_manifest(str(data), tmp_path / "split.csv", val_fraction=0.3, seed=0,
                                      max_pixels=200 * 200)
    frozen = load_dataset(target)
    with pytest.warns(BadFilesWarning):
        drawn = prepare_dataset(str(data), val_fraction=0.3, seed=0, max_pixels=200 * 200).dataset
    assert sorted((os.path.realpath(r.path), r.split) for r in frozen.records) == sorted(
        (os.path.realpath(r.path), r.split) for r in drawn.records)
    names = {os.path.basename(r.path) for r in frozen.records}
    assert "notes.jpg" not in names and "big.jpg" not in names and len(frozen.records) == 18
    twins = {r.split for r in frozen.records if "copy_" in r.path or r.path.endswith("a/img_00.jpg")}
    assert len(twins) == 1  # the seven copies on one side (6 + 6 + 6 usable files in all)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakageWarning)
        assert not check_dataset(frozen).leaks()


def test_a_run_written_inside_the_data_is_not_read_as_photos(tmp_path):
    """Before, `tltool train PHOTOS --out PHOTOS/circle/run` (or `--out PHOTOS/run1`, or `cd PHOTOS; tltool train .`)
    gave the next run on PHOTOS the run's confusion_matrix.png and misclassified.png as photos of the class, and a
    class named after the run folder."""
    from tltool.outputs import claim_output_dir

    data = _tree(tmp_path / "d", {"a": 3, "b": 3})
    for folder, kind in (("a/run", "run"), ("run1", "run"), ("b/features", "features"), ("b/digits", "digits")):
        claim_output_dir(data / folder, kind)
        noise_image(data / folder / "confusion_matrix.png", seed=1, fmt="PNG")
    dataset = load_dataset(data)
    assert dataset.classes == ["a", "b"]
    assert sorted(os.path.relpath(r.path, data) for r in dataset.records) == sorted(
        [f"a/img_{i:02d}.jpg" for i in range(3)] + [f"b/img_{i:02d}.jpg" for i in range(3)]
        + ["b/digits/confusion_matrix.png"])  # a dataset tltool made (digits, sample) is still photos
    assert {os.path.relpath(s.path, data): s.reason for s in dataset.skipped} == {
        "a/run": "a tltool run folder, not photos (ignored)", "run1": "a tltool run folder, not photos (ignored)",
        "b/features": "a tltool features folder, not photos (ignored)", "b/digits/.tltool-output.json": HIDDEN}


def test_the_runs_folder_of_a_command_run_inside_the_data_is_no_empty_class(tmp_path):
    """`cd PHOTOS; tltool train .` writes PHOTOS/runs/finetune-.../: the run is skipped, but its `runs` folder
    (made by tltool, unmarked) became a class with no images: "1 class(es) have no usable image: 'runs' (empty
    folder) ... remove the folder", the folder that holds the user's runs. A truly empty class folder still is one."""
    from tltool.errors import EmptyClassWarning
    from tltool.inspection import prepare_dataset
    from tltool.outputs import claim_output_dir

    data = _tree(tmp_path / "d", {"a": 4, "b": 4})
    claim_output_dir(data / "runs" / "finetune-d-1", "run")
    noise_image(data / "runs" / "finetune-d-1" / "confusion_matrix.png", seed=1, fmt="PNG")
    dataset = load_dataset(data)
    assert (dataset.classes, dataset.class_folders, dataset.empty_class_folders()) == (["a", "b"], ["a", "b"], [])
    assert [os.path.relpath(s.path, data) for s in dataset.skipped] == ["runs/finetune-d-1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", EmptyClassWarning)
        assert prepare_dataset(str(data)).dataset.classes == ["a", "b"]
    (data / "c").mkdir()
    assert load_dataset(data).empty_class_folders() == ["c"]


def test_leakage_across_splits_is_reported(tmp_path):
    _tree(tmp_path, {"train/a": 3, "train/b": 3, "val/a": 1, "val/b": 1})
    leak = (tmp_path / "train/a/img_00.jpg").read_bytes()
    (tmp_path / "val/a/copy.jpg").write_bytes(leak)
    with pytest.warns(LeakageWarning):
        checked = check_dataset(load_dataset(tmp_path))
    leaks = checked.leaks()
    assert len(leaks) == 1
    assert {f.record.split for f in leaks[0]} == {"train", "val"}


def test_max_pixels_above_pillows_own_limit_is_honoured(tmp_path):
    from PIL import Image

    from tltool.images import check_image

    big = tmp_path / "big.png"
    Image.new("L", (9500, 9500)).save(big)  # 90.25 MP: above Pillow's 89.5 MP warning threshold
    assert check_image(big, max_pixels=100_000_000).width == 9500
    from tltool.errors import BadImageError

    with pytest.raises(BadImageError, match="decompression bomb"), pytest.warns(Image.DecompressionBombWarning):
        check_image(big)  # the default limit (64 MP) still refuses it; Pillow's guard, left on, warns as well


def test_unknown_path_and_non_dataset():
    with pytest.raises(TltoolError, match="no such file"):
        load_dataset("/nonexistent/place")


def test_tfds_offline_fails_fast_with_instructions(tmp_path, caplog):
    import tensorflow_datasets  # noqa: F401  (import time is not the failure time being measured)

    from tltool._tf import tf  # noqa: F401  (nor is TensorFlow's: alone, this test timed 7.9 s with it, 0.4 s without)

    from tltool.tfds_source import load_tfds

    import tempfile

    import logging

    start = time.perf_counter()
    left, tempdir = set(Path(tempfile.gettempdir()).glob("tmp*tfds")), tempfile.tempdir
    (tmp_path / "no-data" / "tf_flowers" / "3.0.1").mkdir(parents=True)  # a download that did not finish
    with caplog.at_level(logging.WARNING), pytest.raises(TltoolError) as err:
        load_tfds("tfds:tf_flowers", data_dir=str(tmp_path / "no-data"))
    assert time.perf_counter() - start < 15  # tfds.load's own offline failure takes ~200 s
    assert "not in" in str(err.value) and "TFDS_DATA_DIR" in str(err.value)
    # TFDS's own line ahead of tltool's ("WARNING:absl:Variant folder ... has no dataset_info.json"), and its reason
    # cut at 200 characters, mid-word ("before trying to access the )")
    assert not [r for r in caplog.records if "dataset_info.json" in r.getMessage()]
    assert str(err.value).rstrip(")\"'").endswith("."), str(err.value)  # TFDS's sentence whole
    # TFDS's metadata folders (tempfile.mkdtemp, never removed): two more in /tmp after each run
    assert set(Path(tempfile.gettempdir()).glob("tmp*tfds")) <= left and tempfile.tempdir == tempdir


def test_overlapping_tfds_loads_share_one_temporary_folder_and_restore_tempfile_after_the_last():
    """Two loads in two threads, the first done first: the second restored the first's folder, already removed,
    and every later tempfile call in the process failed (FileNotFoundError)."""
    import tempfile

    from tltool.tfds_source import _tfds_temporary_folders

    before = tempfile.tempdir
    first, second = _tfds_temporary_folders(), _tfds_temporary_folders()
    first.__enter__()
    folder = tempfile.tempdir
    second.__enter__()
    first.__exit__(None, None, None)  # the first load ends while the second runs
    assert tempfile.tempdir == folder and os.path.isdir(tempfile.mkdtemp())
    second.__exit__(None, None, None)
    assert tempfile.tempdir == before and not os.path.exists(folder)
    os.rmdir(tempfile.mkdtemp())


def test_tfds_dataset_becomes_files(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    with tfds.testing.mock_data(num_examples=10):
        ds = load_dataset("tfds:tf_flowers")
    assert len(ds.records) == 10
    assert set(ds.classes) <= {"daisy", "dandelion", "roses", "sunflowers", "tulips"}
    checked = check_dataset(ds, emit_warnings=False)
    # every materialised example is a real image (mock images are random sizes, some below the 32 px minimum)
    assert {f.reason for f in checked.bad} <= {"too small"}
    usable = [f for f in checked.files if f.ok]
    assert usable and all(f.width >= 32 and f.height >= 32 and f.sha256 for f in usable)


# ------------------------------------------------------------------------------------------------ symbolic links
def _labels(ds) -> dict[str, str]:
    return {os.path.relpath(r.path, ds.source.split(":", 1)[1]): r.label for r in ds.records}


posix_only = pytest.mark.skipif(not hasattr(signal, "setitimer") or os.name != "posix", reason="POSIX symlinks")


@posix_only
def test_a_link_back_up_inside_a_class_is_not_followed_and_is_named(tmp_path):
    _tree(tmp_path / "ds", {"cat": 2, "dog": 1})
    (tmp_path / "ds" / "cat" / "up").symlink_to("..")
    with pytest.warns(SymlinkWarning, match="cat/up"):
        ds = load_dataset(tmp_path / "ds")
    assert _labels(ds) == {"cat/img_00.jpg": "cat", "cat/img_01.jpg": "cat", "dog/img_00.jpg": "dog"}
    [link] = [s for s in ds.skipped if s.path.endswith("up")]
    assert link.reason.startswith(LINK_BACK_UP) and str((tmp_path / "ds").resolve()) in link.reason


@posix_only
def test_recursive_links_finish_fast(tmp_path):
    _tree(tmp_path / "ds", {"cat": 2, "dog": 1})
    (tmp_path / "ds" / "cat" / "up1").symlink_to("..")
    (tmp_path / "ds" / "cat" / "up2").symlink_to("..")  # with os.walk(followlinks=True) these two never end
    _tree(tmp_path / "ext", {"a": 1, "b": 1}, seed=50)
    (tmp_path / "ext" / "a" / "to_b").symlink_to(tmp_path / "ext" / "b")  # a -> b -> a -> ...
    (tmp_path / "ext" / "b" / "to_a").symlink_to(tmp_path / "ext" / "a")
    (tmp_path / "ds" / "dog" / "more").symlink_to(tmp_path / "ext" / "a")
    with deadline(10), pytest.warns(SymlinkWarning):  # milliseconds; os.walk(followlinks=True) never ended
        ds = load_dataset(tmp_path / "ds")
    assert _labels(ds) == {"cat/img_00.jpg": "cat", "cat/img_01.jpg": "cat", "dog/img_00.jpg": "dog",
                           "dog/more/img_00.jpg": "dog", "dog/more/to_b/img_00.jpg": "dog"}
    reasons = {os.path.relpath(s.path, tmp_path / "ds"): s.reason.split(" (")[0] for s in ds.skipped}
    assert reasons == {"cat/up1": LINK_BACK_UP, "cat/up2": LINK_BACK_UP, "dog/more/to_b/to_a": LINK_BACK_UP}
    with deadline(10), pytest.warns(SymlinkWarning, match="cat/up1"):
        files = expand_sources([str(tmp_path / "ds")])  # collect import walks the same way
    assert len(files) == 5


@posix_only
def test_a_file_link_to_itself_is_a_bad_file_not_the_end_of_the_walk(tmp_path):
    """`self.jpg -> self.jpg` (or a -> b -> a) in a class folder was an OSError traceback (ELOOP from
    DirEntry.is_dir) from data inspect, probe and predict of the folder: it is one bad file, named with its reason."""
    _tree(tmp_path / "ds", {"cat": 2, "dog": 2})
    (tmp_path / "ds" / "cat" / "self.jpg").symlink_to("self.jpg")
    (tmp_path / "ds" / "dog" / "a.jpg").symlink_to("b.jpg")
    (tmp_path / "ds" / "dog" / "b.jpg").symlink_to("a.jpg")
    with pytest.warns(BadFilesWarning, match=r"self.jpg: unreadable \(Too many levels of symbolic links\)"):
        checked = check_dataset(load_dataset(tmp_path / "ds"))
    loops = {os.path.relpath(f.record.path, tmp_path / "ds"): f.reason for f in checked.bad}
    assert loops == dict.fromkeys(["cat/self.jpg", "dog/a.jpg", "dog/b.jpg"], "unreadable")
    assert len(checked.dataset.records) == 4
    assert len(image_arguments([str(tmp_path / "ds")])) == 7  # predict's: its decode names the links, as by name


@posix_only
def test_a_link_to_a_photo_folder_elsewhere_is_followed_once(tmp_path):
    _tree(tmp_path / "ds", {"cat": 1, "dog": 1})
    _tree(tmp_path / "photos", {"cats": 2}, seed=70)
    (tmp_path / "photos" / "cats" / "again").symlink_to(".")
    (tmp_path / "ds" / "cat" / "phone").symlink_to(tmp_path / "photos" / "cats")
    (tmp_path / "ds" / "dog" / "phone").symlink_to(tmp_path / "photos" / "cats")  # the same folder again
    (tmp_path / "ds" / "dog" / "cats").symlink_to(tmp_path / "ds" / "cat")  # inside the dataset: found there
    with pytest.warns(SymlinkWarning) as caught:
        ds = load_dataset(tmp_path / "ds")
    assert _labels(ds) == {"cat/img_00.jpg": "cat", "cat/phone/img_00.jpg": "cat", "cat/phone/img_01.jpg": "cat",
                           "dog/img_00.jpg": "dog"}
    reasons = {os.path.relpath(s.path, tmp_path / "ds"): s.reason.split(" (")[0] for s in ds.skipped}
    assert reasons == {"cat/phone/again": LINK_BACK_UP, "dog/phone": LINK_AGAIN, "dog/cats": LINK_INSIDE}
    message = str(caught[0].message)
    assert "3 linked folder(s) not followed" in message and "dog/phone" in message and "dog/cats" in message


# ------------------------------------------------------------------------------------------------ manifests
def test_manifest_extra_cells_and_near_identical_labels_are_named(tmp_path):
    _tree(tmp_path, {"imgs": 5})
    rows = ["path,label",
            "imgs/img_00.jpg,roses",
            "imgs/img_01.jpg, Roses ",  # spaces: stripped, so 'Roses'
            "imgs/img_02.jpg,roses,from the garden",  # an extra cell
            "imgs/img_03.jpg,tulips,",  # a trailing comma: an empty extra cell, nothing lost
            "imgs/img_04.jpg,tulips"]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(ManifestWarning) as caught:
        ds = load_dataset(tmp_path / "m.csv")
    assert [r.label for r in ds.records] == ["roses", "Roses", "roses", "tulips", "tulips"]
    assert ds.classes == ["Roses", "roses", "tulips"]  # case is kept: 'A' and 'a' may be two classes
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3, messages
    extra, spaces, case = messages
    assert "1 row(s) have more cells than the header" in extra and "row 4" in extra and "row 5" not in extra
    assert "from the garden" in extra
    assert "stripped" in spaces and "row 3: ' Roses ' -> 'Roses'" in spaces
    assert "differ only in case" in case and "'Roses' (1 row)" in case and "'roses' (2 rows)" in case

    (tmp_path / "clean.csv").write_text("path,label\nimgs/img_00.jpg,roses\nimgs/img_01.jpg,tulips\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_dataset(tmp_path / "clean.csv").classes == ["roses", "tulips"]


def test_predict_names_an_empty_folder_among_its_arguments(tmp_path):
    """`tltool predict empty/ photo.jpg` predicted the photo and dropped the folder without a word."""
    from tltool.errors import BadFilesWarning

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"junk")
    noise_image(tmp_path / "photo.jpg", seed=1)
    with pytest.warns(BadFilesWarning, match=r"empty: a folder with no file to predict \(hidden files are left out\)"):
        assert image_arguments([str(tmp_path / "empty"), str(tmp_path / "photo.jpg")]) == [str(tmp_path / "photo.jpg")]


def test_a_manifest_as_spreadsheets_export_it_is_read(tmp_path):
    """A European-locale spreadsheet's export: `Path;Label;Split;` (semicolons, capitals, a trailing separator),
    CRLF, a BOM, blank rows written as ';;;', and a folder name typed as e + U+0301 where the disk has é. Each was an
    error: "unknown column(s) ['path;label;split']", "unknown column(s) ['']", "row 9: empty path", and "file not
    found" for a name that printed like the file's."""
    import unicodedata

    _tree(tmp_path / "fleurs été", {"a": 3, "b": 3})
    typed = unicodedata.normalize("NFD", "fleurs été")
    rows = [f"{typed}/{label}/img_{i:02d}.jpg;{label};Train" if i else f"{typed}/{label}/img_00.jpg;{label};Val"
            for label in "ab" for i in range(3)]
    (tmp_path / "semi.csv").write_bytes("\r\n".join(["Path;Label;Split;", *rows, ";;;", ";;;", ""]).encode("utf-8-sig"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(tmp_path / "semi.csv")
    assert ds.counts() == {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}}
    assert all(os.path.exists(r.path) and "fleurs été" in r.path for r in ds.records)  # the disk's spelling
    quoted = '"path";"label"\n"fleurs été/a/img_00.jpg";"a"\n"fleurs été/b/img_00.jpg";"b"\n'  # every cell quoted
    (tmp_path / "quoted.csv").write_text(quoted)
    assert [r.label for r in load_dataset(tmp_path / "quoted.csv").records] == ["a", "b"]
    comma = "path,label,\nfleurs été/a/img_00.jpg,a,\nfleurs été/b/img_00.jpg,b,from the garden\n,,\n"
    (tmp_path / "comma.csv").write_text(comma)
    with pytest.warns(ManifestWarning, match=r"1 row\(s\) have more cells than the header .*row 3: \['from the"):
        assert len(load_dataset(tmp_path / "comma.csv").records) == 2


def test_a_folder_that_cannot_be_read_is_named_not_a_traceback(tmp_path, monkeypatch):
    _tree(tmp_path, {"cat": 2, "cat/locked": 1, "dog": 2})
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ds = load_dataset(tmp_path)
    assert ds.counts() == {"all": {"cat": 2, "dog": 2}}
    assert [(os.path.relpath(s.path, tmp_path), s.reason) for s in ds.skipped] == [
        ("cat/locked", f"{UNREADABLE_FOLDER}: Permission denied")]


@posix_only
def test_a_manifest_row_naming_a_link_loop_a_folder_or_a_pipe_says_which(tmp_path):
    """A row naming a link loop was Path.resolve's RuntimeError as a traceback (Python 3.11); a folder, a named pipe
    or a device was "file not found" of a path that is there."""
    _tree(tmp_path, {"imgs/a": 1, "imgs/b": 1})
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "m.csv").write_text("path,label\nimgs/a/img_00.jpg,a\nimgs/b/img_00.jpg,b\nloop1,a\nimgs/a,a\n"
                                    "pipe.jpg,b\n/dev/null,b\nimgs/a/gone.jpg,a\n")
    with pytest.raises(TltoolError) as err:
        load_dataset(tmp_path / "m.csv")
    assert "5 problem(s)" in str(err.value)
    assert str(err.value).splitlines()[1:] == [
        "  row 4: cannot be looked up (a loop of symbolic links): loop1",
        "  row 5: a folder, not a file: imgs/a",
        "  row 6: not a regular file (a named pipe, a device or a socket): pipe.jpg",
        "  row 7: not a regular file (a named pipe, a device or a socket): /dev/null",
        "  row 8: file not found: imgs/a/gone.jpg",
        f"  (a relative path is read from the manifest's own folder, {tmp_path}, not from where the command runs)"]


def test_a_manifest_column_named_twice_is_refused_not_read_from_the_last(tmp_path):
    """`path,label,label` took every label from the third column (csv.DictReader keeps the last cell of a name):
    a photo of class a was trained as b, without a word."""
    _tree(tmp_path, {"imgs/a": 1, "imgs/b": 1})
    (tmp_path / "m.csv").write_text("path,label,label\nimgs/a/img_00.jpg,a,b\nimgs/b/img_00.jpg,b,a\n")
    with pytest.raises(TltoolError, match=r"row 1 \(header\): column\(s\) \['label'\] named more than once"):
        load_dataset(tmp_path / "m.csv")
    (tmp_path / "p.csv").write_text("path,label,path\nimgs/a/img_00.jpg,a,imgs/b/img_00.jpg\n")
    with pytest.raises(TltoolError, match=r"column\(s\) \['path'\] named more than once"):
        load_dataset(tmp_path / "p.csv")


def test_labels_that_differ_only_in_unicode_form_are_named(tmp_path):
    """`café` typed (one character) and `café` from a macOS folder name (e + U+0301) were two classes that print
    alike, without a warning: half the photos of the class trained as another class."""
    _tree(tmp_path, {"imgs": 4})
    (tmp_path / "m.csv").write_text("path,label\nimgs/img_00.jpg,caf\u00e9\nimgs/img_01.jpg,cafe\u0301\n"
                                    "imgs/img_02.jpg,caf\u00e9\nimgs/img_03.jpg,tea\n", encoding="utf-8")
    with pytest.warns(ManifestWarning, match="in how an accent is encoded") as caught:
        ds = load_dataset(tmp_path / "m.csv")
    assert len(ds.classes) == 3  # kept apart, as labels that differ in case are: named, not merged
    message = str(caught[0].message)
    assert "'caf\u00e9' (2 rows)" in message and "'cafe\u0301' (1 row)" in message


def test_a_label_holding_a_control_character_is_refused_naming_its_row(tmp_path):
    """A newline, tab, NUL or a terminal's escape in a manifest's label was taken as a class: it split the report's
    table, went into the split manifest and the class list, and printed its colour codes in tltool's messages."""
    import csv

    _tree(tmp_path, {"imgs": 6})
    labels = ["cat", "red\x1b[31mdog", "new\nline", "tab\tx", "n\x00ul", "del\x7fx"]
    with open(tmp_path / "m.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([("path", "label")]
                                                    + [(f"imgs/img_{i:02d}.jpg", c) for i, c in enumerate(labels)])
    with pytest.raises(TltoolError) as err:
        load_dataset(tmp_path / "m.csv")
    assert str(err.value).splitlines()[1:] == [
        "  row 3: the label 'red\\x1b[31mdog' holds a control character ('\\x1b'), which a class name cannot hold",
        "  row 4: the label 'new\\nline' holds a control character ('\\n'), which a class name cannot hold",
        "  row 6: the label 'tab\\tx' holds a control character ('\\t'), which a class name cannot hold",
        "  row 7: the label 'n\\x00ul' holds a control character ('\\x00'), which a class name cannot hold",
        "  row 8: the label 'del\\x7fx' holds a control character ('\\x7f'), which a class name cannot hold"]
    assert "\x1b" not in str(err.value)


def test_a_class_folder_whose_name_holds_a_control_character_is_refused_naming_it(tmp_path):
    """A class folder named with a newline or a terminal's escape was taken as a class: report.md's table split in
    two at its newline, and `data split` wrote a manifest that tltool then refused for those very labels."""
    from click.testing import CliRunner

    from tltool.cli import main

    _tree(tmp_path / "photos", {"train/cat": 2, "train/red\x1b[31mdog": 2, "val/cat": 1, "val/new\nline": 1})
    root = tmp_path / "photos"
    with pytest.raises(TltoolError) as err:
        load_dataset(root)
    assert str(err.value) == (
        f"{root}: the name of class folder {root}/train/red\\x1b[31mdog holds a control character ('\\x1b'), which "
        f"a class name cannot hold; the name of class folder {root}/val/new\\nline holds a control character "
        "('\\n'), which a class name cannot hold; rename the folders.")
    result = CliRunner().invoke(main, ["data", "split", str(root), "--out", str(tmp_path / "split" / "m.csv")])
    assert result.exit_code == 2 and "rename the folders." in result.output and "\x1b" not in result.output
    assert "Traceback" not in result.output and not (tmp_path / "split" / "m.csv").exists()
    (root / "val" / "new\nline").rename(root / "val" / "dog")
    (root / "train" / "red\x1b[31mdog").rename(root / "train" / "tab\tdog")
    with pytest.raises(TltoolError, match=r"/train/tab\\tdog holds a control character \('\\t'\)[^;]*; rename the "
                                          r"folder\.$"):
        load_dataset(root)
    os.rename(root / "train" / "tab\tdog", os.fsencode(root / "train") + b"/caf\xe9")  # Latin-1, not UTF-8
    with pytest.raises(TltoolError, match=r"/train/caf\\udce9 holds a byte that is not UTF-8 \(0xe9\)"):
        load_dataset(root)


def test_a_label_or_class_folder_holding_a_bidirectional_control_is_refused_and_printed_escaped(tmp_path):
    """U+202E (right-to-left override) or an isolate in a label was a class: terminals and Markdown viewers then show
    the rest of its line, the report's accuracy included, right to left. The marks right-to-left text may hold
    (U+200F) stay allowed."""
    from tltool.labeler.store import check_class_name
    from tltool.utils import shown_name

    _tree(tmp_path, {"imgs": 6})
    hebrew = "\u05d7\u05ea\u05d5\u05dc\u200f"  # "cat" with a right-to-left mark
    labels = ["cat", "dog\u202e59.0", "x\u2067y", hebrew, "cat", hebrew]
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"imgs/img_{i:02d}.jpg,{c}\n"
                                                              for i, c in enumerate(labels)), encoding="utf-8")
    with pytest.raises(TltoolError) as err:
        load_dataset(tmp_path / "m.csv")
    assert str(err.value).splitlines()[1:] == [
        "  row 3: the label 'dog\\u202e59.0' holds the bidirectional control U+202E, which reorders how the text "
        "after it is shown (a report's numbers included) and which a class name cannot hold",
        "  row 4: the label 'x\\u2067y' holds the bidirectional control U+2067, which reorders how the text after "
        "it is shown (a report's numbers included) and which a class name cannot hold"]
    assert "\u202e" not in str(err.value) and "\u2067" not in str(err.value)
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"imgs/img_{i:02d}.jpg,{c}\n" for i, c in
                                                              enumerate(["cat", hebrew] * 3)), encoding="utf-8")
    assert load_dataset(tmp_path / "m.csv").classes == sorted(["cat", hebrew])
    _tree(tmp_path / "photos", {"train/cat": 2, "train/dog\u202e": 2})
    with pytest.raises(TltoolError, match=r"/train/dog\\u202e holds the bidirectional control U\+202E"):
        load_dataset(tmp_path / "photos")
    with pytest.raises(TltoolError, match=r"class name 'dog\\u202e' holds the bidirectional control U\+202E"):
        check_class_name("dog\u202e")
    assert shown_name("photo\u202egpj.exe") == "photo\\u202egpj.exe"


def test_a_manifest_problem_shows_the_path_with_its_control_characters_escaped(tmp_path):
    """A row's path was printed as written: a terminal escape in it coloured the rest of the error on a terminal."""
    _tree(tmp_path, {"imgs": 2})
    (tmp_path / "m.csv").write_text("path,label\nimgs/img_00.jpg,a\nno\x1b[31mpe.jpg,a\n"
                                    "imgs/img_01.jpg,\nimgs/img_00.jpg\x1b[0m,b\n")
    with pytest.raises(TltoolError) as err:
        load_dataset(tmp_path / "m.csv")
    assert str(err.value).splitlines()[1:] == ["  row 3: file not found: no\\x1b[31mpe.jpg",
                                               "  row 4: empty label for imgs/img_01.jpg",
                                               "  row 5: file not found: imgs/img_00.jpg\\x1b[0m",
                                               f"  (a relative path is read from the manifest's own folder, "
                                               f"{tmp_path}, not from where the command runs)"]


def test_a_manifest_record_spread_over_lines_is_named_by_the_line_it_starts_on(tmp_path):
    """A quoted cell with line breaks in it: its problem was named by the line the record ends on (one late for
    each break), so "row 5" pointed past the record to the next one."""
    _tree(tmp_path, {"imgs": 2})
    (tmp_path / "m.csv").write_bytes(b'path,label\nimgs/img_00.jpg,a\n"two\r\nline\nname.jpg",a\nnope.jpg,b\n')
    with pytest.raises(TltoolError) as err:
        load_dataset(tmp_path / "m.csv")
    assert str(err.value).splitlines()[1:3] == ["  row 3: file not found: two\\r\\nline\\nname.jpg",
                                                "  row 6: file not found: nope.jpg"]


def test_a_manifest_of_too_few_classes_is_told_to_list_images_not_to_make_folders(tmp_path):
    """A manifest with a header only was told to "put each class's images in its own sub-folder"."""
    (tmp_path / "m.csv").write_text("path,label\n")
    with pytest.raises(TltoolError, match=r"List the images of at least 2 classes in .*m\.csv, one row each: "
                                          r"path,label\.$"):
        load_dataset(tmp_path / "m.csv").require_classes(2)


def test_a_tfds_dataset_without_a_class_label_is_one_line(tmp_path, monkeypatch):
    """coco has no 'label' feature: once its data was there, it was a KeyError traceback."""
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    with tfds.testing.mock_data(num_examples=2), \
            pytest.raises(TltoolError, match=r"tfds:coco: not an image-classification dataset .* has \['image', "):
        load_dataset("tfds:coco")


def test_a_tfds_split_the_data_lacks_is_named_not_said_to_be_missing_data(tmp_path, monkeypatch):
    """With the data there, tfds:NAME:bogus said the data was not in the folder, and how to download it."""
    pytest.importorskip("tensorflow_datasets")
    from tensorflow_datasets.testing import DummyMnist

    from tltool.tfds_source import load_tfds

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    DummyMnist(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    with pytest.raises(TltoolError) as err:
        load_tfds("tfds:dummy_mnist:bogus", data_dir=str(tmp_path / "tfds"))
    assert "has no split 'bogus'; its splits are ['train', 'test']" in str(err.value)
    assert "not in" not in str(err.value) and "internet" not in str(err.value)
    assert len(load_tfds("tfds:dummy_mnist:train[:5]", data_dir=str(tmp_path / "tfds")).records) == 5


def test_two_tfds_data_dirs_with_the_same_dataset_and_version_each_give_their_own_examples(tmp_path, monkeypatch):
    """The index of a TFDS dataset's examples was cached by name and version only: the second data dir (an
    argument, or TFDS_DATA_DIR) got the first one's photos and labels (20 examples of 10 classes, not its 7 of
    class 3)."""
    pytest.importorskip("tensorflow_datasets")
    import numpy as np
    from PIL import Image
    from tensorflow_datasets.testing import DummyMnist

    from tltool.tfds_source import load_tfds

    class OtherMnist(DummyMnist, skip_registration=True):
        name = "dummy_mnist"  # the same name and version (3.0.1), other examples

        def _generate_examples(self):
            for i in range(7):
                yield i, {"image": np.full((28, 28, 1), 200, dtype=np.uint8), "label": 3}

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    DummyMnist(data_dir=str(tmp_path / "a")).download_and_prepare()
    OtherMnist(data_dir=str(tmp_path / "b")).download_and_prepare()
    first = load_tfds("tfds:dummy_mnist:train", data_dir=str(tmp_path / "a"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "b"))
    other = load_dataset("tfds:dummy_mnist:train")
    assert len(first.records) == 20 and sorted({r.label for r in first.records}) == [str(i) for i in range(10)]
    assert len(other.records) == 7 and {r.label for r in other.records} == {"3"}
    assert all((np.asarray(Image.open(r.path)) == 200).all() for r in other.records)
    again = load_tfds("tfds:dummy_mnist:train", data_dir=str(tmp_path / "a"))  # its own index, still there
    assert [(r.path, r.label) for r in again.records] == [(r.path, r.label) for r in first.records]
    assert all((np.asarray(Image.open(r.path)) == 1).all() for r in again.records)


def _dummy_mnist(data_dir, examples=None, names=None):
    """DummyMnist (20 examples of 10 classes) prepared in ``data_dir``, or one with other ``examples`` ((pixel
    value, label) pairs) and class ``names``: the same name and version."""
    pytest.importorskip("tensorflow_datasets")
    import numpy as np
    import tensorflow_datasets as tfds
    from tensorflow_datasets.testing import DummyMnist

    class Other(DummyMnist, skip_registration=True):
        name = "dummy_mnist"

        def _info(self):
            label = tfds.features.ClassLabel(names=names) if names else tfds.features.ClassLabel(num_classes=10)
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(28, 28, 1)), "label": label}))

        def _generate_examples(self):
            for i, (value, label) in enumerate(examples):
                yield i, {"image": np.full((28, 28, 1), value, dtype=np.uint8), "label": label}

    (DummyMnist if examples is None else Other)(data_dir=str(data_dir)).download_and_prepare()
    return str(data_dir)


def test_a_damaged_or_hostile_tfds_index_is_rebuilt_with_a_warning_never_followed(tmp_path, monkeypatch):
    """The index of a TFDS split's cached examples was read unchecked: truncated JSON or a record that is not a path
    and a label was a traceback (JSONDecodeError, TypeError from Record(**r)), and a record naming a photo outside
    the cache (../, an absolute path) or a class the dataset lacks was used as it stood; then a path no file can
    have (a lone surrogate) was a UnicodeEncodeError traceback."""
    import json

    import numpy as np
    from PIL import Image

    from tltool.tfds_source import TfdsCacheWarning, load_tfds

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    data = _dummy_mnist(tmp_path / "tfds")
    first = load_tfds("tfds:dummy_mnist:train", data_dir=data)
    expected = [(r.path, r.label) for r in first.records]
    index = next((tmp_path / "cache" / "tfds").rglob("index.json"))
    stored = json.loads(index.read_text())
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(outside)
    one, up = stored["examples"][0], os.path.relpath(outside, index.parent)
    damaged = {"truncated JSON": index.read_text()[:40], "holds a JSON list": json.dumps([1, 2]),
               "example 1 is not a path and a label": [{"path": one["path"]}],
               f"example 1: {up} is not a file": [{"path": up, "label": one["label"]}],
               f"example 2: {outside} is not a file": [one, {"path": str(outside), "label": one["label"]}],
               "example 1: 'cat' is not a class of the dataset": [{**one, "label": "cat"}],
               # a lone surrogate (JSON can hold one, no file name can): a UnicodeEncodeError traceback
               "example 1: \\ud800.png is not a file": [{"path": "\ud800.png", "label": one["label"]}]}
    for why, content in damaged.items():
        index.write_text(content if isinstance(content, str) else json.dumps({**stored, "examples": content}))
        with pytest.warns(TfdsCacheWarning) as caught:
            again = load_tfds("tfds:dummy_mnist:train", data_dir=data)
        message = str(caught[0].message)
        assert message.startswith(f"{index}, tltool's index of cached TFDS examples, ") and message.endswith(
            "; the examples are written again from the TFDS data."), why
        assert (why if why != "truncated JSON" else "cannot be read as JSON (JSONDecodeError)") in message
        assert [(r.path, r.label) for r in again.records] == expected, why
    assert json.loads(index.read_text()) == stored  # written again, as it was
    listed = index.parent / one["path"]  # a listed photo swapped for a link out: tltool writes no link there
    listed.unlink()
    listed.symlink_to(outside)
    with pytest.warns(TfdsCacheWarning, match=f"example 1: {one['path']} is not a file tltool wrote in"):
        again = load_tfds("tfds:dummy_mnist:train", data_dir=data)
    assert [(r.path, r.label) for r in again.records] == expected and not listed.is_symlink()


def test_a_tfds_index_that_is_not_a_file_is_one_line(tmp_path, monkeypatch):
    """A folder where the index goes was a ValueError traceback; it cannot be read, nor written over."""
    from tltool.tfds_source import TfdsCacheWarning, load_tfds

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    data = _dummy_mnist(tmp_path / "tfds")
    load_tfds("tfds:dummy_mnist:test", data_dir=data)
    index = next((tmp_path / "cache" / "tfds").rglob("index.json"))
    index.unlink()
    index.mkdir()
    with pytest.warns(TfdsCacheWarning, match="is not a regular file"), pytest.raises(TltoolError) as err:
        load_tfds("tfds:dummy_mnist:test", data_dir=data)
    assert str(err.value) == (f"tfds:dummy_mnist:test: its examples cannot be written into tltool's cache (Is a "
                              f"directory: {index}); free space there, or point TLTOOL_CACHE at another folder.")


def test_a_tfds_dataset_prepared_again_in_its_data_dir_gives_its_new_examples(tmp_path, monkeypatch):
    """The same name and version prepared again in the same data dir with other examples: tltool reused the index of
    the old ones (20 examples of 10 classes, not the 7 of class 3 now there)."""
    import shutil

    from tltool.tfds_source import load_tfds

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    data = _dummy_mnist(tmp_path / "tfds")
    assert len(load_tfds("tfds:dummy_mnist:train", data_dir=data).records) == 20
    shutil.rmtree(tmp_path / "tfds" / "dummy_mnist")
    _dummy_mnist(tmp_path / "tfds", examples=[(200, 3)] * 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # data prepared again is no damage
        again = load_tfds("tfds:dummy_mnist:train", data_dir=data)
    assert len(again.records) == 7 and {r.label for r in again.records} == {"3"}


def test_tfds_class_names_never_lead_outside_the_cache(tmp_path, monkeypatch):
    """A class name was the folder its examples were written into: sun397's names (/a/abbey) made an absolute path
    (a PermissionError traceback, or files written at /a), and a data dir naming a class ../../x had tltool write
    its photos outside its cache."""
    from tltool.tfds_source import load_tfds

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    escaped = os.path.relpath(tmp_path / "escaped", tmp_path / "cache" / "tfds" / "dummy_mnist" / "3.0.1" / "x" / "y")
    names = [str(tmp_path / "abbey"), escaped]
    data = _dummy_mnist(tmp_path / "tfds", examples=[(1, 0), (2, 1), (3, 0), (4, 1)], names=names)
    ds = load_tfds("tfds:dummy_mnist:train", data_dir=data)
    assert sorted(r.label for r in ds.records) == sorted(names * 2)
    assert all(os.path.realpath(r.path).startswith(str(tmp_path / "cache") + os.sep) for r in ds.records)
    assert sorted(os.listdir(tmp_path)) == ["cache", "tfds"]


def test_a_tfds_class_name_with_a_control_character_or_an_unlabelled_example_is_one_line(tmp_path, monkeypatch):
    """A class name of terminal escapes was taken as it stood (printed raw in tables and messages); an example of
    label -1 (the unlabelled test split of some datasets) was filed under the last class."""
    from tltool.tfds_source import load_tfds

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    data = _dummy_mnist(tmp_path / "a", examples=[(1, 0), (2, 1)], names=["ok", "red\x1b[31m"])
    with pytest.raises(TltoolError) as err:
        load_tfds("tfds:dummy_mnist:train", data_dir=data)
    assert str(err.value) == (f"tfds:dummy_mnist:train: the class name 'red\\x1b[31m' of the TFDS data in {data}"
                              f"{os.sep}dummy_mnist{os.sep}3.0.1 holds a control character ('\\x1b'), which a class "
                              "name cannot hold.")
    data = _dummy_mnist(tmp_path / "b", examples=[(1, 0), (2, -1)], names=["a", "b"])
    with pytest.raises(TltoolError, match=r"tfds:dummy_mnist:train: example \d of split 'train' has label -1, not one "
                                          r"of the 2 classes \(an unlabelled split\?\); name a labelled split\.$"):
        load_tfds("tfds:dummy_mnist:train", data_dir=data)


def test_a_second_run_waits_for_the_first_to_write_a_tfds_datasets_examples_and_reuses_them(tmp_path, monkeypatch):
    """Two runs on a TFDS dataset at once each wrote all its examples, the second over the files the first had
    listed and was reading (a photo half written under it)."""
    import threading

    import tltool.tfds_source as source
    from tltool import utils

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    data = _dummy_mnist(tmp_path / "tfds")
    writers, second_waits, results = [], threading.Event(), {}
    extension = source._extension

    def second() -> None:
        try:
            results["second"] = source.load_tfds("tfds:dummy_mnist:train", data_dir=data)
        finally:
            second_waits.set()

    def counted_extension(image: bytes) -> str:  # called once per example written
        writers.append(threading.current_thread().name)
        if len(writers) == 1:
            threading.Thread(target=second, name="second").start()
            assert second_waits.wait(60)  # the second run waits (or, before, wrote every example)
        return extension(image)

    monkeypatch.setattr(source, "_extension", counted_extension)
    monkeypatch.setattr(utils, "say", lambda message: second_waits.set())
    first = source.load_tfds("tfds:dummy_mnist:train", data_dir=data)
    deadline_at = time.monotonic() + 60
    while "second" not in results and time.monotonic() < deadline_at:
        time.sleep(0.05)
    assert writers == ["MainThread"] * 20
    assert [(r.path, r.label) for r in results["second"].records] == [(r.path, r.label) for r in first.records]


def test_a_tfds_cache_another_user_wrote_is_used_where_it_cannot_be_written(tmp_path, monkeypatch):
    """Examples another user had written (TLTOOL_CACHE shared on a lab machine, or a read-only mount: readable, not
    writable) were used as they stood; once the index was read under a lock, every run on them failed at the lock
    file ("lock file ... cannot be opened (Permission denied)"). Tests run as root, so the refusal is made where a
    file in the cache is opened for writing."""
    import errno

    from tltool.tfds_source import load_tfds

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    data = _dummy_mnist(tmp_path / "tfds")
    first = load_tfds("tfds:dummy_mnist:train", data_dir=data)
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "cache")) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_tfds("tfds:dummy_mnist:train", data_dir=data)
    assert [(r.path, r.label) for r in again.records] == [(r.path, r.label) for r in first.records]
    with pytest.raises(TltoolError, match=r"/test/\.lock cannot be opened \(Permission denied\)$"):
        load_tfds("tfds:dummy_mnist:test", data_dir=data)  # not written yet: it cannot be, and says why


def test_a_val_fraction_of_0_or_1_is_refused_saying_both_ends_are_excluded(tmp_path):
    """"must be between 0 and 1, got 0.0": 0 is between 0 and 1 as most people read it."""
    _tree(tmp_path, {"a": 3, "b": 3})
    for fraction in (0.0, 1.0):
        with pytest.raises(TltoolError, match=rf"--val-fraction must be above 0 and below 1 .*got {fraction}"):
            stratified_split(load_dataset(tmp_path), val_fraction=fraction)


def test_data_split_writes_no_file_into_a_run_folder_or_through_a_link(tmp_path):
    """`data split DATA --out RUN/split.csv --force` replaced a run's own record of its images (compare then missed
    that the run was trained on some); a split.csv or classes.json that was a link was written into its target."""
    from tltool.outputs import claim_output_dir

    _tree(tmp_path / "d", {"a": 3, "b": 3})
    run = claim_output_dir(tmp_path / "run", "run")
    (run / "split.csv").write_text("the run's")
    with pytest.raises(TltoolError, match=r"split\.csv: is inside the tltool run folder .*run, whose files only its "
                                          r"own command writes"):
        write_split_manifest(str(tmp_path / "d"), run / "split.csv", force=True)
    (tmp_path / "important.txt").write_text("mine")
    (tmp_path / "lk").mkdir()
    (tmp_path / "lk" / "classes.json").symlink_to(tmp_path / "important.txt")
    with pytest.raises(TltoolError, match=r"classes\.json is a link; tltool writes no file through a link"):
        write_split_manifest(str(tmp_path / "d"), tmp_path / "lk" / "s.csv", force=True)
    assert (run / "split.csv").read_text() == "the run's" and (tmp_path / "important.txt").read_text() == "mine"


def test_a_class_folder_given_as_the_photos_is_sent_to_its_dataset_and_never_told_to_import_into_it(tmp_path,
                                                                                                   monkeypatch):
    """`probe fl/train/daisy` advised `collect import fl/train/daisy --out fl/train/daisy-dataset`: inside the
    dataset, where the next `probe fl` read the new folder as a fourth class (and its manifest.csv as a bad image),
    and val accuracy fell from 0.792 to 0.583. The advice names the dataset and imports beside it; a folder collect
    import made inside a dataset is named and left out, never a class."""
    from tltool.collect import import_images
    from tltool.dataset import UNLABELLED_DATASET, dataset_of_class_folder

    monkeypatch.chdir(tmp_path)
    for split, n in (("train", 3), ("val", 2)):
        for c, name in enumerate(("daisy", "roses")):
            for i in range(n):
                noise_image(tmp_path / "fl" / split / name / f"{i}.jpg", seed=10 * c + i)
    with pytest.raises(TltoolError, match=r"which names no class: it looks like one class of fl: give that folder, "
                       r"or label them \(your class names\): tltool collect import fl/train/daisy --out daisy-dataset "
                       r"&& tltool label serve daisy-dataset"):
        load_dataset("fl/train/daisy")
    import_images(["fl/train/daisy"], "fl/train/daisy-dataset")  # as the old advice had it
    dataset = load_dataset("fl")
    assert dataset.classes == ["daisy", "roses"] and len(dataset.records) == 10
    assert [(os.path.basename(s.path), s.reason) for s in dataset.skipped] == [("daisy-dataset", UNLABELLED_DATASET)]
    # photos beside a folder of code are no class of it; the root has no dataset above it
    (tmp_path / "proj" / "src").mkdir(parents=True)
    (tmp_path / "proj" / "src" / "main.py").write_text("print()")
    noise_image(tmp_path / "proj" / "photos" / "p.jpg", seed=1)
    with pytest.raises(TltoolError, match="give the folder above it") as refused:
        load_dataset("proj/photos")
    assert "looks like one class" not in str(refused.value)
    assert dataset_of_class_folder(Path("/")) is None
    # a dataset of one import a class (`collect import cats --out data/cats`) keeps its classes, as before
    for c, name in enumerate(("cats", "dogs")):
        for i in range(3):
            noise_image(tmp_path / "src" / name / f"{i}.jpg", seed=50 + 10 * c + i)
        import_images([f"src/{name}"], f"data/{name}")
    dataset = load_dataset("data")
    assert dataset.classes == ["cats", "dogs"] and sum(r.path.endswith(".jpg") for r in dataset.records) == 6


def test_copies_of_a_photo_filed_under_two_classes_are_split_to_one_side():
    """`data split` promises copies of a photo on one side; one copy in roses/ and one in dandelion/ went to train
    and val (each class drew its side alone), a LeakageWarning of tltool's own making. A split without such copies
    is the one it always was (the same seeds give the same files)."""
    import hashlib

    from tltool.dataset import Dataset, Record

    records = [Record(f"/d/{c}/{i:02d}.jpg", c) for c, n in (("a", 7), ("b", 12), ("c", 5)) for i in range(n)]
    groups = {r.path: r.path for r in records}
    groups["/d/a/03.jpg"] = groups["/d/a/04.jpg"] = "same"  # copies within one class
    drawn = [",".join(sorted(r.path[3:] for r in stratified_split(Dataset("d", "x", records), fraction, seed,
                                                                   groups).records if r.split == "val"))
             for seed in range(6) for fraction in (0.2, 0.5)]
    assert drawn[0] == "a/05.jpg,b/09.jpg,b/11.jpg,c/02.jpg"  # as before this change
    assert hashlib.sha256("\n".join(drawn).encode()).hexdigest() == (
        "19d9705f0e94d5b0a1f7064b3478d9dfb43187f52fd3c4b89c06a276aaebf77a")
    copies = ("/d/a/01.jpg", "/d/b/05.jpg", "/d/c/02.jpg")
    groups.update(dict.fromkeys(copies, "copied"))
    for seed in range(30):
        split = stratified_split(Dataset("d", "x", records), 0.3, seed, groups)
        sides = {r.path: r.split for r in split.records}
        assert len({sides[p] for p in copies}) == 1, seed
        for c in "abc":  # and every class still has images on both sides
            assert {sides[r.path] for r in records if r.label == c} == {"train", "val"}, (seed, c)
    # a class of nothing but copies of another's photos: drawn last, it found both its groups in train
    records = [Record(f"/A/{i}.jpg", "A") for i in range(5)] + [Record("/B/0.jpg", "B"), Record("/B/1.jpg", "B")]
    groups = {r.path: r.path for r in records} | {"/A/0.jpg": "g0", "/B/0.jpg": "g0", "/A/1.jpg": "g1",
                                                   "/B/1.jpg": "g1"}
    for seed in range(30):
        sides = {r.path: r.split for r in stratified_split(Dataset("d", "x", records), 0.2, seed, groups).records}
        assert sides["/A/0.jpg"] == sides["/B/0.jpg"] and sides["/A/1.jpg"] == sides["/B/1.jpg"], seed
        assert {sides["/B/0.jpg"], sides["/B/1.jpg"]} == {"train", "val"}, seed


def test_class_folders_differing_only_in_case_are_warned_of_as_a_manifests_labels_are(tmp_path):
    from tltool.errors import ClassNameWarning

    for name in ("Bengal", "bengal", "sphynx"):
        for i in range(2):
            noise_image(tmp_path / "d" / name / f"{i}.jpg", seed=i + 10 * len(name) + (name == "Bengal"))
    with pytest.warns(ClassNameWarning, match=r"the class folders 'Bengal', 'bengal' differ only in case"):
        dataset = load_dataset(str(tmp_path / "d"))
    assert dataset.classes == ["Bengal", "bengal", "sphynx"]  # kept apart: merging is the user's call


def test_a_fine_tune_s_report_notes_name_the_files_its_check_left_out(tmp_path):
    """The notes a fine-tune's report.md carries (its RunData warnings) named no bad file and no photo beside the
    class folders; more than ten are counted, not listed."""
    from tltool.inspection import NAMED_IN_NOTE, checked_left_out_notes, prepare_dataset

    _tree(tmp_path, {"a": 4, "b": 4})
    for i in range(NAMED_IN_NOTE + 2):
        (tmp_path / "a" / f"empty{i:02d}.jpg").write_bytes(b"")
    noise_image(tmp_path / "loose.jpg", seed=5)
    (tmp_path / "notes.md").write_text("x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        notes = checked_left_out_notes(prepare_dataset(str(tmp_path)))
    assert len(notes) == 2
    assert notes[0].startswith(f"{NAMED_IN_NOTE + 2} file(s) left out as unusable: {tmp_path / 'a' / 'empty00.jpg'}: "
                               "empty file (0 bytes); ") and notes[0].endswith("; and 2 more")
    assert notes[1] == f"1 file(s) or folder(s) not read: {tmp_path / 'loose.jpg'}: not inside a class folder (ignored)"


def test_data_given_one_level_too_high_is_pointed_one_level_down(tmp_path):
    """From a review: `probe wrap` where wrap/myflowers/{a,b}/ hold the photos said to label every photo again in
    the browser (collect import, label serve); the class folders were one level down."""
    from tltool.dataset import load_dataset
    from tltool.errors import TltoolError

    _tree(tmp_path / "wrap" / "myflowers", {"a": 3, "b": 3})
    with pytest.raises(TltoolError, match=re.escape(
            f"found 1 class(es) ['myflowers']; a classifier needs at least 2. {tmp_path / 'wrap' / 'myflowers'} holds "
            "2 folders of images (a, b); if they are your classes, give that folder as the data.")):
        load_dataset(str(tmp_path / "wrap")).require_classes()
    _tree(tmp_path / "one", {"day1": 3})  # a single folder of photos: labelling them is still the advice
    with pytest.raises(TltoolError, match="label them"):
        load_dataset(str(tmp_path / "one")).require_classes()


def test_left_out_notes_show_names_as_tltool_prints_them(tmp_path):
    """From a review of this change: a photo beside the class folders whose name is not UTF-8 reached report.md as a
    lone surrogate and the report could not be written (UnicodeEncodeError, after the fit); a newline in a name
    split the report's line. Both are escaped now; a HEIC photo beside the classes is named too."""
    from tltool.inspection import checked_left_out_notes, prepare_dataset
    from tltool.utils import write_text_atomic

    _tree(tmp_path, {"a": 4, "b": 4})
    with open(os.fsencode(tmp_path) + b"/caf\xe9.jpg", "wb") as f:
        f.write((tmp_path / "a" / "img_00.jpg").read_bytes())
    (tmp_path / "a" / "empty\n- **fake** line.jpg").write_bytes(b"")
    (tmp_path / "IMG_1.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        notes = checked_left_out_notes(prepare_dataset(str(tmp_path)))
    assert all("\n" not in note for note in notes) and "empty\\n- **fake** line.jpg" in notes[0]
    assert "caf\\udce9.jpg: not inside a class folder" in notes[1] and "IMG_1.HEIC" in notes[1]
    write_text_atomic(tmp_path / "report.md", "\n".join(notes))  # what failed
