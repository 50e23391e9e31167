"""Feature extraction: chunked on disk, cached, resumable; metadata a user can trust."""
from __future__ import annotations

import gc
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE
from tltool.features import _earlier_meta, _refuse_other_data, extract_features, load_features
from tltool.errors import TltoolError


@pytest.fixture(scope="module")
def shapes_features(tmp_path_factory):
    out = tmp_path_factory.mktemp("feat") / "shapes"
    first = extract_features(str(SAMPLE), out, image_size=64, chunk_size=48, seed=0)
    return out, first


def test_extract_writes_chunks_and_metadata(shapes_features):
    out, first = shapes_features
    fs = first.features
    assert not first.cached
    assert fs.avg.shape == (160, 1280) and fs.max.shape == (160, 1280)
    assert len(list((out / "chunks").glob("chunk-*.npz"))) == 4  # 160 images / 48 per chunk
    meta = fs.meta
    assert meta["backbone"] == "efficientnet_lite0" and meta["image_size"] == 64 and meta["preprocess"] == "lite"
    assert meta["classes"] == ["circle", "square", "star", "triangle"]
    assert all(len(f["sha256"]) == 64 for f in meta["files"])
    assert sorted(set(fs.splits)) == ["train", "val"] and (fs.splits == "val").sum() == 32
    assert (fs.max >= fs.avg - 1e-5).all()  # max pooling dominates average pooling
    assert fs.features("avgmax").shape == (160, 2560)


def test_second_run_is_cached_and_fast(shapes_features):
    out, first = shapes_features
    gc.collect()  # keep earlier tests' garbage out of the timing (a full suite once measured 0.9 s here)
    start = time.perf_counter()
    again = extract_features(str(SAMPLE), out, image_size=64, chunk_size=48, seed=0)
    assert again.cached
    assert time.perf_counter() - start < 0.1 * first.seconds + 1.0  # +1 s: another xdist worker shares the CPUs
    np.testing.assert_array_equal(again.features.avg, first.features.avg)


def test_a_new_split_reuses_the_features_and_new_settings_do_not(shapes_features, tmp_path):
    out, first = shapes_features
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    resplit = extract_features(str(SAMPLE), copy, image_size=64, chunk_size=48, seed=1)  # another split
    assert resplit.cached  # features do not depend on the split
    old, new = first.features, resplit.features
    assert old.paths == new.paths and (old.splits != new.splits).any()
    np.testing.assert_array_equal(old.avg, new.avg)
    # other settings of the same photos replace the features a run was fitted on only when forced (a --weights none
    # baseline replaced the ImageNet features of probe's default folder, and `linear` on it fitted random ones)
    with pytest.raises(TltoolError, match=r"holds the features of other settings \(image_size 64 -> 48\); "
                                          r".*pass --force to replace them"):
        extract_features(str(SAMPLE), copy, image_size=48, chunk_size=48)
    assert load_features(copy).meta["image_size"] == 64
    assert not extract_features(str(SAMPLE), copy, image_size=48, chunk_size=48, force=True).cached
    assert not extract_features(str(SAMPLE), tmp_path / "c2", image_size=64, chunk_size=64).cached
    # a changed chunk size is the same setting: extracted again without a word
    assert not extract_features(str(SAMPLE), tmp_path / "c2", image_size=64, chunk_size=32).cached
    # one network spelled otherwise is no other setting (a review: "weights none -> None" was refused)
    # ... and reads the same numbers: ImageNet's features are not extracted again for the capital letters
    assert extract_features(str(SAMPLE), tmp_path / "c2", image_size=64, chunk_size=32, weights="ImageNet").cached


def test_probe_s_default_features_folder_differs_by_weights():
    """From a review: `probe DATA --weights none` after `probe DATA` shared runs/features-DATA-...: the baseline
    replaced the ImageNet features, and `linear` on the folder the first run recorded fitted random ones (0.317
    instead of 0.933 on pets). `probe .` named its folder features-.-...."""
    from tltool.linear import default_features_dir

    imagenet = default_features_dir("d/pets", "efficientnet_lite0", 96, "crop")
    assert imagenet.name == "features-pets-efficientnet_lite0-96-crop"
    assert default_features_dir("d/pets", "efficientnet_lite0", 96, "crop", "none").name == f"{imagenet.name}-w-none"
    one, two = (default_features_dir("d/pets", "efficientnet_lite0", 96, "crop", f"{folder}/my w.h5")
                for folder in ("a", "b"))
    assert one.name.startswith(f"{imagenet.name}-w-my-w-") and one != two
    assert default_features_dir(".", "mobilenet_v2", None, "crop").name == f"features-{Path.cwd().name}-mobilenet_v2-crop"


def test_features_of_other_data_are_kept_unless_forced(shapes_features, tmp_path):
    """`extract B --out F` (or probe's default folder, named after the data's last part: a/train and b/train share
    it) replaced the features of A in F without a word; the same data with a photo added, or moved, goes on."""
    from click.testing import CliRunner

    from tltool.cli import main

    out, first = shapes_features
    kept = tmp_path / "kept"
    shutil.copytree(out, kept)
    other = tmp_path / "other"
    for name in ("circle", "square"):
        (other / name).mkdir(parents=True)
        for photo in sorted((SAMPLE / name).iterdir())[:4]:
            shutil.copy(photo, other / name)
    result = CliRunner().invoke(main, ["extract", str(other), "--out", str(kept), "--image-size", "64"])
    assert result.exit_code == 2 and f"--out {kept}: holds the features of other data" in result.output, result.output
    assert f"({SAMPLE}: 160 images, efficientnet_lite0); extracting {other} there" in result.output
    assert "pass --force to replace them" in result.output
    np.testing.assert_array_equal(load_features(kept).avg, first.features.avg)  # untouched
    replaced = extract_features(str(other), kept, image_size=64, chunk_size=48, force=True)
    assert not replaced.cached and len(load_features(kept).paths) == 8
    shutil.copy(SAMPLE / "star" / "star_000.jpg", other / "circle" / "added.jpg")  # the same data, changed
    assert len(extract_features(str(other), kept, image_size=64, chunk_size=48).features.paths) == 9
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "features.json").write_text("[]")  # damaged: extracted again, not a traceback
    _refuse_other_data(tmp_path / "odd", _earlier_meta(tmp_path / "odd"), "key", {}, f"folder:{other}", set(),
                       "--out")
    moved = shutil.move(other, tmp_path / "moved")  # the same photos elsewhere: not other data
    assert load_features(extract_features(str(moved), kept, image_size=64, chunk_size=48).directory).paths[0] \
        .startswith(str(moved))


def test_a_missing_chunk_is_recomputed_not_served_as_cached(shapes_features, tmp_path):
    out, first = shapes_features
    copy = tmp_path / "gone"
    shutil.copytree(out, copy)
    (copy / "chunks" / "chunk-00001.npz").unlink()
    with pytest.raises(TltoolError, match="chunk 1 is missing"):
        load_features(copy)
    again = extract_features(str(SAMPLE), copy, image_size=64, chunk_size=48, seed=0)
    assert not again.cached
    np.testing.assert_allclose(again.features.avg, first.features.avg, atol=1e-4)


@pytest.mark.parametrize("what", ["link", "copy", "fifo"])
def test_a_chunk_linked_or_copied_from_another_or_a_pipe_is_damaged_not_read(shapes_features, tmp_path, what):
    """Chunk 1 as a link to chunk 0 (or a copy of it) passed: images 48-95 were trained and scored on chunk 0's
    features. A named pipe in its place hung `linear` and `extract` for ever."""
    import os

    from helpers import deadline

    out, first = shapes_features
    copy = tmp_path / what
    shutil.copytree(out, copy)
    one = copy / "chunks" / "chunk-00001.npz"
    one.unlink()
    {"link": lambda: one.symlink_to("chunk-00000.npz"), "fifo": lambda: os.mkfifo(one),
     "copy": lambda: shutil.copyfile(copy / "chunks" / "chunk-00000.npz", one)}[what]()
    with deadline(60):
        with pytest.raises(TltoolError, match="chunk 1 is missing, damaged"):
            load_features(copy)
        again = extract_features(str(SAMPLE), copy, image_size=64, chunk_size=48, seed=0)
    assert not again.cached and not one.is_symlink()
    np.testing.assert_allclose(again.features.avg, first.features.avg, atol=1e-4)


@pytest.mark.parametrize("field, value", [("chunk_size", 1), ("n_images", 10**12)])
def test_an_edited_chunk_size_or_count_is_written_again_not_served_as_cached(shapes_features, tmp_path, field, value):
    """extract said "cached: 1000000000000 images" of a features.json so edited, and linear refused the folder
    however often extract was run again, as its error told the user to."""
    import json

    out, first = shapes_features
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    meta = json.loads((copy / "features.json").read_text())
    (copy / "features.json").write_text(json.dumps({**meta, field: value}))
    with pytest.raises(TltoolError, match="features.json is damaged|chunk 0 is missing"):
        load_features(copy)
    again = extract_features(str(SAMPLE), copy, image_size=64, chunk_size=48, seed=0)
    assert not again.cached and again.features.meta[field] == meta[field]
    np.testing.assert_array_equal(load_features(copy).avg, first.features.avg)


def test_killed_run_resumes_at_the_missing_chunk(shapes_features, tmp_path, monkeypatch):
    out, first = shapes_features
    copy = tmp_path / "resume"
    shutil.copytree(out, copy)
    (copy / "chunks" / "chunk-00002.npz").unlink()
    meta = (copy / "features.json").read_text().replace('"complete": true', '"complete": false')
    (copy / "features.json").write_text(meta)
    with pytest.raises(TltoolError, match="did not finish"):
        load_features(copy)
    computed = []
    import tltool.features as features

    original = features._write_chunk
    monkeypatch.setattr(features, "_write_chunk", lambda out, i, *a: (computed.append(i), original(out, i, *a)))
    resumed = extract_features(str(SAMPLE), copy, image_size=64, chunk_size=48, seed=0)
    assert computed == [2]
    np.testing.assert_allclose(resumed.features.avg, first.features.avg, atol=1e-4)


def test_a_weights_file_of_another_network_leaves_no_unfinished_extraction_behind(tmp_path):
    """The weights were loaded after features.json (not complete) was written: the refusal left a folder that
    `tltool linear` called an unfinished extraction, to be resumed with the same (wrong) command."""
    from tltool.backbones import create_backbone

    path = tmp_path / "other.weights.h5"
    create_backbone("mobilenet_v3_small", weights="none", image_size=32).get_layer(index=-1).save_weights(str(path))
    out = tmp_path / "features"
    with pytest.raises(TltoolError, match=r"other.weights.h5: cannot load into efficientnet_lite0"):
        extract_features(str(SAMPLE), out, image_size=32, weights=str(path))
    assert not (out / "features.json").exists() and not (out / "chunks").exists()
    with pytest.raises(TltoolError, match=r"no features.json here. Run `tltool extract DATA --out"):
        load_features(out)
    again = extract_features(str(SAMPLE), out, image_size=32)  # the folder is tltool's: the right weights use it
    assert not again.cached and again.features.avg.shape == (160, 1280)


def test_bad_files_are_skipped_and_recorded(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE / "circle", data / "circle")
    shutil.copytree(SAMPLE / "star", data / "star")
    (data / "star" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        result = extract_features(str(data), tmp_path / "f", image_size=48)
    assert len(result.features.paths) == 80
    assert result.features.meta["skipped"][0]["reason"] == "truncated or corrupt"


def _sample_with_a_truncated_photo(tmp_path, monkeypatch):
    """The bundled sample's two classes, with half of a JPEG added to ``star``; a content cache of its own, so no
    earlier decode of these bytes is known."""
    from helpers import jpeg_bytes

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    shutil.copytree(SAMPLE / "circle", data / "circle")
    shutil.copytree(SAMPLE / "star", data / "star")
    whole = jpeg_bytes((200, 200))
    truncated = data / "star" / "half.jpg"
    truncated.write_bytes(whole[: len(whole) // 2])
    return data, truncated


def test_a_truncated_photo_is_found_by_the_decode_that_feeds_the_network(tmp_path, monkeypatch):
    """The check before the split reads headers only; the feeding decode names the truncated JPEG, its row is left
    out, and a second run is cached (no decode at all) and still reports it."""
    from tltool import images
    from tltool.errors import BadFilesWarning

    data, truncated = _sample_with_a_truncated_photo(tmp_path, monkeypatch)
    before = images.decode_count()
    with pytest.warns(BadFilesWarning, match="half.jpg: truncated or corrupt"):
        first = extract_features(str(data), tmp_path / "f", image_size=48, chunk_size=32)
    assert images.decode_count() - before == 81  # each photo decoded once: by the pipeline, not by a check first
    assert len(first.features.paths) == 80 and str(truncated) not in first.features.paths
    skipped = first.features.meta["skipped"]
    assert [(s["path"], s["reason"], s["found_by"]) for s in skipped] == [(str(truncated), images.CORRUPT, "decode")]
    before = images.decode_count()
    again = extract_features(str(data), tmp_path / "f", image_size=48, chunk_size=32)
    assert again.cached and images.decode_count() == before
    assert [s["path"] for s in again.features.meta["skipped"]] == [str(truncated)]
    assert str(truncated) not in {r.path for r in again.checked.dataset.records}  # the check knows it now
    np.testing.assert_array_equal(again.features.avg, first.features.avg)
    # what `tltool extract` says it extracted: 81 before, the truncated photo counted with the 80 good ones
    assert first.usable_images == again.usable_images == 80 and first.meta["n_images"] == 81


def test_a_photo_known_bad_is_named_once_by_an_extraction_at_another_size(tmp_path, monkeypatch):
    """A photo an earlier decode found bad is kept in the chunks (so the cache key does not change) and decoded
    again by a new extraction: it was then warned about twice (by the check, then by the decode) and listed twice
    in features.json's ``skipped``."""
    import warnings

    from tltool import images
    from tltool.errors import BadFilesWarning

    data, truncated = _sample_with_a_truncated_photo(tmp_path, monkeypatch)
    with pytest.warns(BadFilesWarning, match="half.jpg"):
        extract_features(str(data), tmp_path / "f", image_size=48, chunk_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other = extract_features(str(data), tmp_path / "g", image_size=40, chunk_size=32)
    named = [str(w.message) for w in caught if issubclass(w.category, BadFilesWarning)]
    assert len(named) == 1 and "half.jpg: truncated or corrupt" in named[0]
    skipped = other.features.meta["skipped"]
    assert [(s["path"], s["reason"]) for s in skipped] == [(str(truncated), images.CORRUPT)]
    assert len(other.features.paths) == 80 and str(truncated) not in other.features.paths


def test_every_extraction_records_and_says_how_many_photos_it_enlarges(tmp_path, capsys):
    from PIL import Image

    from tltool.features import extract_features

    root = tmp_path / "photos"
    for label, size in (("a", (40, 60)), ("b", (100, 50))):
        (root / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", size, (40 * i, 90, 200)).save(root / label / f"{i}.jpg")
    result = extract_features(str(root), tmp_path / "f", image_size=48, batch_size=8)
    # crop scales the shorter side to 48: the 40x60 photos are enlarged, the 100x50 ones are not
    assert result.meta["upsampling"] == {"image_size": 48, "resize": "crop", "upsampled": 4, "of": 8,
                                         "size_given": True}
    said = " ".join(capsys.readouterr().err.split())
    # the size was given: the note says so (before: "or pass --image-size to change it", to a user who had)
    assert "4 of 8 photos are smaller than the 48 px input and are enlarged to it (--resize crop); that is the " \
           "--image-size given" in said and "pass --image-size" not in said
    padded = extract_features(str(root), tmp_path / "g", image_size=48, batch_size=8, resize="pad")
    assert padded.meta["upsampling"]["upsampled"] == 0  # pad scales the longer side (60 and 100) down


def test_a_tampered_features_folder_is_a_clear_error_not_a_traceback(shapes_features, tmp_path):
    """features.json and the chunks are read as possibly hostile: a hand-edited file was a JSONDecodeError,
    ZeroDivisionError or IndexError, NaN features a page of scikit-learn tracebacks."""
    import json

    out, _ = shapes_features
    meta = json.loads((out / "features.json").read_text())
    edits = {"not json": "{", "a list": "[]", "chunk 0": json.dumps({**meta, "chunk_size": 0}),
             "negative count": json.dumps({**meta, "n_images": -5}),
             "short file list": json.dumps({**meta, "files": meta["files"][:-3]})}
    for what, text in edits.items():
        copy = tmp_path / what.replace(" ", "-")
        shutil.copytree(out, copy)
        (copy / "features.json").write_text(text)
        with pytest.raises(TltoolError, match="features.json is damaged"):
            load_features(copy)
    chunk = out / "chunks" / "chunk-00000.npz"
    with np.load(chunk) as z:
        arrays = {name: z[name] for name in z.files}
    for what, change in {"nan": {"avg": np.full_like(arrays["avg"], np.nan)},
                         "text ok": {"ok": np.array(["yes"] * len(arrays["avg"]))},
                         "narrow": {"avg": arrays["avg"][:, :7], "max": arrays["max"][:, :7]}}.items():
        copy = tmp_path / what.replace(" ", "-")
        shutil.copytree(out, copy)
        np.savez(copy / "chunks" / "chunk-00000.npz", **{**arrays, **change})
        with pytest.raises(TltoolError, match="chunk 0 is missing, damaged|different widths"):
            load_features(copy)


def test_features_json_with_an_unknown_split_or_a_label_not_a_name_is_refused(shapes_features, tmp_path):
    """Before: a file whose split read 'weird' was silently left out (val n=31 instead of 32). (A label outside the
    classes is legitimate: a file the decode found bad keeps the label of a class that lost all its images.)"""
    import json

    out, _ = shapes_features
    top_level = {"classes": [1, 2], "dataset": "x", "image_size": "big", "backbone": 5, "weights": None,
                 "resize": "squash", "max_pixels": -1}  # before: TypeErrors, or a run with model.json unusable
    for field, value in (("split", "weird"), ("label", 7), ("path", 7), ("sha256", None), *top_level.items()):
        copy = tmp_path / f"copy-{field}"
        shutil.copytree(out, copy)
        meta = json.loads((copy / "features.json").read_text())
        if field in top_level:
            meta[field] = value
        else:  # a path or hash not a string was a TypeError in the split or the cache key
            meta["files"][0][field] = value
        (copy / "features.json").write_text(json.dumps(meta))
        with pytest.raises(TltoolError, match="features.json is damaged .* each file's split"):
            load_features(copy)


def test_a_features_json_listing_a_file_twice_is_refused(shapes_features, tmp_path):
    """A file row given twice (the second in place of another file) was accepted: one photo could be trained on
    and scored at once."""
    import json

    out, _ = shapes_features
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    meta = json.loads((copy / "features.json").read_text())
    meta["files"][-1] = {**meta["files"][0], "split": "val"}
    (copy / "features.json").write_text(json.dumps(meta))
    with pytest.raises(TltoolError, match=rf"lists the file {re.escape(meta['files'][0]['path'])} more than once"):
        load_features(copy)


def test_a_class_named_twice_or_a_usable_file_outside_the_classes_is_named_not_shifted(shapes_features, tmp_path):
    """classes ['circle', 'circle', 'square', ...] loaded: every label shifted by one (circles trained as class 1,
    class 0 empty) and `tltool linear` shipped a run whose model.json every later command refused. A usable file
    whose label is not a class was an error that named neither the folder nor the file."""
    import json

    out, _ = shapes_features
    edits = {"twice": lambda m: m.update(classes=["circle", "circle", "square", "star", "triangle"]),
             "again-last": lambda m: m.update(classes=[*m["classes"], "square"]),
             "unknown": lambda m: m["files"][5].update(label="hexagon")}
    for what, edit in edits.items():
        copy = tmp_path / what
        shutil.copytree(out, copy)
        meta = json.loads((copy / "features.json").read_text())
        edit(meta)
        (copy / "features.json").write_text(json.dumps(meta))
        with pytest.raises(TltoolError) as err:
            load_features(copy)
        message = str(err.value)
        assert str(copy / "features.json") in message and "\n" not in message
        if what == "unknown":
            assert f"{meta['files'][5]['path']!r} has the label 'hexagon', not one of the 4 classes" in message
        else:
            assert f"names the class(es) {['circle'] if what == 'twice' else ['square']} more than once" in message


def test_a_features_json_that_is_a_named_pipe_or_a_device_link_is_damaged_not_a_hang(shapes_features, tmp_path):
    """read_json opened a FIFO features.json and waited forever for a writer; a link to /dev/zero would have read
    until the memory was full."""
    import os

    out, _ = shapes_features
    for what in ("fifo", "device"):
        copy = tmp_path / what
        shutil.copytree(out, copy)
        (copy / "features.json").unlink()
        if what == "fifo":
            os.mkfifo(copy / "features.json")
        else:
            (copy / "features.json").symlink_to("/dev/zero")
        with pytest.raises(TltoolError, match="features.json is damaged .*not a regular file"):
            load_features(copy)


def test_a_features_json_or_marker_nested_too_deeply_is_a_clear_error(shapes_features, tmp_path):
    """JSON of 100,000 '[' (or '{"a":' ...) made the parser's RecursionError a traceback: `tltool linear`,
    `learning-curve` and `predict --model` of such a folder printed one instead of naming the file."""
    out, _ = shapes_features
    for deep in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        copy = tmp_path / f"copy-{deep[0]}"
        shutil.copytree(out, copy)
        (copy / "features.json").write_text(deep)
        with pytest.raises(TltoolError, match="features.json is damaged .*nested too deeply"):
            load_features(copy)
        (copy / "features.json").unlink()  # no features.json: the folder's marker tells what it is
        (copy / ".tltool-output.json").write_text(deep)
        with pytest.raises(TltoolError, match="no features.json here"):
            load_features(copy)
