"""``tltool export``: formats that load without tltool, quantized .tflite files with their measured price, and a
client folder (labels.txt, input.json, README) whose documented decode agrees with tltool on every real photo."""
from __future__ import annotations

import json
import shutil
import os
import stat
import re
import subprocess
import sys
from pathlib import Path
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SAMPLE
from tltool import export as export_module
from tltool.errors import TltoolError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tltool.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("ft") / "run"
    # the head stage only (epochs=0): what export reads (model.keras, model.json, config.json) is the same after an
    # unfreeze stage, which cost ~15 s here; test_finetune trains those
    config = FinetuneConfig(data=str(SAMPLE), image_size=64, batch_size=16, augment="light", head_epochs=1,
                            epochs=0, unfreeze="1", val_fraction=0.25)
    return finetune(config, out=out)


@pytest.fixture(scope="module")
def tiny_saved(tiny_run, tmp_path_factory):
    """One SavedModel export of ``tiny_run`` (each costs many seconds), shared by the tests that only read it: copy
    it into tmp_path before writing into it. Written under umask 002 (a shared group's), which its modes must show."""
    old = os.umask(0o002)
    try:
        return export_module.export_run(tiny_run.run_dir, "savedmodel", tmp_path_factory.mktemp("saved") / "saved")
    finally:
        os.umask(old)


def test_a_savedmodel_s_folders_and_files_are_made_as_the_umask_decides(tiny_saved):
    """From a review: under umask 002 TensorFlow made saved_model/, assets/ and variables/ 0755 (no group write)."""
    modes = {p.relative_to(tiny_saved.directory).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in tiny_saved.directory.rglob("*")}
    assert {"saved_model", "saved_model/variables", "saved_model/assets"} <= set(modes)
    assert {name: oct(mode) for name, mode in modes.items()
            if mode != (0o775 if (tiny_saved.directory / name).is_dir() else 0o664)} == {}
    assert stat.S_IMODE(tiny_saved.directory.stat().st_mode) == 0o775


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    from tltool.linear import probe

    root = tmp_path_factory.mktemp("lin")
    return probe(str(SAMPLE), image_size=64, features_dir=root / "f", out=root / "run").run_dir


def test_export_formats_load_and_agree(tiny_run, tiny_saved, tmp_path):
    from tltool._tf import keras, tf

    run = tiny_run.run_dir
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    reference = np.asarray(tiny_run.model(x, training=False))
    keras_file = export_module.export_run(run, "keras", tmp_path / "k").model_path
    np.testing.assert_allclose(np.asarray(keras.models.load_model(keras_file, safe_mode=True)(x)), reference,
                               atol=1e-5)
    # the exported file needs Keras only: load it in a Python that never imports tltool
    np.save(tmp_path / "x.npy", x)
    script = ("import sys, numpy as np, keras; sys.modules['tltool'] = None; "
              f"m = keras.models.load_model({str(keras_file)!r}, safe_mode=True); "
              f"print(np.asarray(m(np.load({str(tmp_path / 'x.npy')!r}))).argmax(1).tolist())")
    standalone = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert standalone.returncode == 0, standalone.stderr[-1500:]
    assert standalone.stdout.strip().splitlines()[-1] == str(reference.argmax(1).tolist())
    loaded = tf.saved_model.load(str(tiny_saved.model_path))  # keep a reference: its variables die with it
    np.testing.assert_allclose(np.asarray(loaded.serve(tf.constant(x))), reference, atol=1e-5)
    assert set(loaded.signatures) >= {"serve", "serve_image_bytes", "serving_default"}
    # unmeasured: the measurement (export.json) is the quantization tests' subject, on the linear run below
    result = export_module.export_run(run, "tflite", tmp_path / "lite", measure=False)
    from tltool.engines import LiteRTRunner

    lite = next(iter(LiteRTRunner(result.model_path)(x).values()))
    np.testing.assert_allclose(lite, reference, atol=1e-4)
    for folder in (tmp_path / "k", tiny_saved.directory, tmp_path / "lite"):
        assert (folder / "labels.txt").read_text().splitlines() == tiny_run.evaluation.classes
        spec = json.loads((folder / "input.json").read_text())
        assert spec["size"] == 64 and spec["pixel_range"] == [0, 255] and spec["channel_order"] == "RGB"
        assert "load_pixels" in (folder / "README.md").read_text()
        # the photos tltool refuses and a client following the README classified (a 20 x 20 one, a 70 MP one)
        assert (spec["min_side"], spec["max_pixels"]) == (32, 64_000_000)
        assert ("tltool refuses photos whose shorter side is under 32 px or with more than 64,000,000 pixels"
                in (folder / "README.md").read_text())


def test_the_bytes_signature_decodes_and_resizes_inside_the_graph(tiny_saved, tmp_path):
    from PIL import Image

    from tltool._tf import tf
    from tltool.images import load_image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(5)
    sizes = [(300, 200), (40, 90), (700, 520)]  # shrink, enlarge, and a JPEG big enough for draft decoding
    for i, (w, h) in enumerate(sizes):
        smooth = np.kron(rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3)), np.ones((10, 10, 1)))[:h, :w]
        Image.fromarray(smooth.astype(np.uint8)).save(photos / f"p{i}.jpg", quality=92)
    Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)).save(photos / "p3.png")
    paths = sorted(str(p) for p in photos.iterdir())
    served = tf.saved_model.load(str(tiny_saved.model_path))
    by_bytes = served.serve_image_bytes(tf.constant([open(p, "rb").read() for p in paths])).numpy()
    pixels = np.stack([load_image(p, 64) for p in paths]).astype(np.float32)
    by_pixels = served.serve(tf.constant(pixels)).numpy()
    assert by_bytes.shape == (4, 4)
    np.testing.assert_allclose(by_bytes, by_pixels, atol=0.02)  # one grey level of resize rounding at most
    assert (by_bytes.argmax(1) == by_pixels.argmax(1)).all()


def test_export_never_deletes_or_writes_into_a_users_folder(tiny_run, tiny_saved, tmp_path):
    from tltool.cli import main

    run = tiny_run.run_dir
    projects = tmp_path / "projects"
    (projects / "thesis").mkdir(parents=True)
    (projects / "thesis" / "chapter1.tex").write_text("years of work")
    for fmt in ("savedmodel", "keras"):
        for extra in ([], ["--force"]):
            result = CliRunner().invoke(main, ["export", str(run), "--format", fmt, "--out", str(projects), *extra])
            assert result.exit_code == 2 and "did not make" in result.output, result.output
    assert sorted(p.name for p in projects.rglob("*")) == ["chapter1.tex", "thesis"]
    out = Path(shutil.copytree(tiny_saved.directory, tmp_path / "exported"))  # as `export --out` wrote it (~15 s)
    again = CliRunner().invoke(main, ["export", str(run), "--format", "savedmodel", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    # replaced whole, its saved_model/ folder too (a .keras export: a second SavedModel would cost ~15 s)
    forced = CliRunner().invoke(main, ["export", str(run), "--format", "keras", "--out", str(out), "--force"])
    assert forced.exit_code == 0 and (out / "model.keras").is_file() and not (out / "saved_model").exists()
    # the default folder inside the run is replaced with --force, as every export (a review: exporting again without
    # it replaced a measured export, export.json too, without a word)
    assert CliRunner().invoke(main, ["export", str(run), "--format", "keras"]).exit_code == 0
    first = (run / "export" / "keras" / "model.keras").stat().st_mtime_ns
    again = CliRunner().invoke(main, ["export", str(run), "--format", "keras"])
    assert again.exit_code == 2 and "already holds an earlier tltool export" in again.output, again.output
    assert "pass --force to replace it" in again.output
    assert (run / "export" / "keras" / "model.keras").stat().st_mtime_ns == first
    assert CliRunner().invoke(main, ["export", str(run), "--format", "keras", "--force"]).exit_code == 0
    assert (run / "export" / "keras" / "model.keras").stat().st_mtime_ns != first
    # ... unless the user put a file of their own there: it would be deleted with the folder
    (run / "export" / "keras" / "client.py").write_text("the user's client")
    for force, then in (([], "and pass --force to replace it,"), (["--force"], "and run again with --force,")):
        refused = CliRunner().invoke(main, ["export", str(run), "--format", "keras", *force])
        assert refused.exit_code == 2, refused.output
        said = " ".join(refused.output.split())
        assert "1 file(s) tltool did not write there (client.py)" in said and then in said, said
    assert (run / "export" / "keras" / "client.py").read_text() == "the user's client"


def test_linear_run_exports_to_an_equivalent_network(linear_run, tmp_path):
    from tltool._tf import keras
    from tltool.images import load_image
    from tltool.models import load_run

    path = export_module.export_run(linear_run, "keras", tmp_path / "lin").model_path
    model = keras.models.load_model(path, safe_mode=True)
    images = [str(p) for p in sorted(SAMPLE.glob("star/*.jpg"))[:4]]
    expected = load_run(linear_run).predict_paths(images)
    x = np.stack([load_image(p, 64) for p in images]).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), expected, atol=1e-4)


@pytest.fixture(scope="module")
def plain_tflite(linear_run, tmp_path_factory):
    return export_module.export_run(linear_run, "tflite", tmp_path_factory.mktemp("plain") / "out")


def _scored_again(result, run_dir) -> tuple[int, int]:
    """(correct, n) of the written file on the run's validation split, recomputed outside export.py."""
    from tltool.engines import LiteRTRunner
    from tltool.images import load_image
    from tltool.models import load_run

    run = load_run(run_dir)
    paths, y = export_module.run_splits(run_dir, run)["val"]
    x = np.stack([load_image(p, run.image_size) for p in paths]).astype(np.float32)
    probs = next(iter(LiteRTRunner(result.model_path)(x).values()))
    return int((probs.argmax(1) == y).sum()), len(y)


@pytest.mark.parametrize("quantize", ["float16", "int8"])
def test_a_quantized_tflite_is_measured_on_the_validation_images(linear_run, plain_tflite, tmp_path, quantize):
    plain = plain_tflite
    result = export_module.export_run(linear_run, "tflite", tmp_path / quantize, quantize=quantize)
    m = json.loads((tmp_path / quantize / "export.json").read_text())
    assert m == json.loads(json.dumps(result.measurement))
    assert m["quantize"] == quantize and m["size_bytes"] == result.model_path.stat().st_size
    assert m["size_bytes"] < 0.6 * plain.measurement["size_bytes"]  # float16 halves, int8 quarters the weights
    # a lane holds float16 weights unpacked to float32 beside the file: the lane count budgets for that
    from tltool.engines import _Lane

    held = _Lane(result.model_path).memory_bytes(m["size_bytes"])
    assert held > 1.5 * m["size_bytes"] if quantize == "float16" else held == m["size_bytes"]
    correct, n = _scored_again(result, linear_run)
    assert (m["accuracy"]["correct"], m["accuracy"]["n"]) == (correct, n) == (correct, 32)
    lo, hi = m["accuracy"]["ci95"]
    assert lo < correct / n < hi or correct == n
    paired = m["paired_difference"]
    assert paired["n"] == n and paired["only_a"] + paired["both"] == m["float_accuracy"]["correct"]
    assert m["drop_points"] == pytest.approx(-100 * paired["difference"], abs=0.006)
    assert m["within_max_drop"] == (m["drop_points"] <= 1.0)
    assert m["val_seen_in_training"] is False
    # the quantized file keeps the probe's accuracy (int8 once fell to chance here: see heads.floored_scaler)
    assert correct >= m["float_accuracy"]["correct"] - 2 and m["float_accuracy"]["correct"] >= 24
    assert m["images_per_second"]["export"] > 0 and m["images_per_second"]["float_tf"] > 0
    assert f"({quantize})" in (tmp_path / quantize / "README.md").read_text()


def test_an_export_of_a_refit_run_says_its_validation_numbers_are_optimistic(linear_run, plain_tflite, tmp_path,
                                                                               monkeypatch):
    from tltool.linear import probe

    # what is said of the numbers is the point here, not the conversion (checked above): the plain file's bytes
    monkeypatch.setattr(export_module, "to_tflite", lambda *args, **kwargs: plain_tflite.model_path.read_bytes())
    refit = probe(str(SAMPLE), image_size=64, features_dir=linear_run.parent / "f", out=tmp_path / "run",
                  refit=True).run_dir
    result = export_module.export_run(refit, "tflite", tmp_path / "export")
    assert result.measurement["val_seen_in_training"] is True
    assert "trained on these validation images too" in (tmp_path / "export" / "README.md").read_text()


class _BrokenRunner:
    """A stand-in for a quantization that ruined the model: every probability row shifted by one class."""

    def __init__(self, path) -> None:
        from tltool.engines import LiteRTRunner

        self._real = LiteRTRunner(path)
        self.lanes = self._real.lanes

    def __call__(self, batch):
        return {name: np.roll(value, 1, axis=1) for name, value in self._real(batch).items()}


def test_a_quantization_costing_more_than_max_drop_warns_and_exits_3(linear_run, tmp_path, monkeypatch):
    from tltool.cli import main

    monkeypatch.setattr(export_module, "LiteRTRunner", _BrokenRunner)
    # the three exports below convert one model alike: convert it once (this test is about the verdict, not the
    # conversion, which the tests above check), each export still writes and measures its own file
    converted: dict[str, bytes] = {}
    convert = export_module.to_tflite

    def convert_once(model, quantize, calibration=None):
        if quantize not in converted:
            converted[quantize] = convert(model, quantize, calibration)
        return converted[quantize]

    monkeypatch.setattr(export_module, "to_tflite", convert_once)
    with pytest.warns(export_module.QuantizationCostWarning, match="more than --max-drop 1"):
        result = export_module.export_run(linear_run, "tflite", tmp_path / "api", quantize="dynamic")
    assert not result.within_max_drop and result.model_path.is_file()
    assert json.loads((tmp_path / "api" / "export.json").read_text())["within_max_drop"] is False
    cli = CliRunner().invoke(main, ["export", str(linear_run), "--format", "tflite", "--quantize", "dynamic",
                                    "--out", str(tmp_path / "cli")])
    assert cli.exit_code == export_module.EXIT_TOO_COSTLY == 3, cli.output
    assert "MORE THAN --max-drop 1" in cli.output
    allowed = CliRunner().invoke(main, ["export", str(linear_run), "--format", "tflite", "--quantize", "dynamic",
                                        "--max-drop", "100", "--out", str(tmp_path / "allowed")])
    assert allowed.exit_code == 0, allowed.output


def test_bad_export_options_are_clear_errors(linear_run):
    with pytest.raises(TltoolError, match="applies to --format tflite only"):
        export_module.export_run(linear_run, "keras", quantize="int8")
    with pytest.raises(TltoolError, match="quantization 'int4'"):
        export_module.export_run(linear_run, "tflite", quantize="int4")
    with pytest.raises(TltoolError, match="--max-drop"):
        export_module.export_run(linear_run, "tflite", max_drop=-1)


def _renamed_classes(run_dir, folder, names: list[str]):
    """A copy of the linear run ``run_dir`` whose classes are called ``names`` (model.json and head.json alike, as a
    run trained on folders of those names holds them)."""
    shutil.copytree(run_dir, folder, ignore=shutil.ignore_patterns("export"))
    for name in ("model.json", "head.json"):
        config = json.loads((folder / name).read_text())
        config["classes"] = names
        (folder / name).write_text(json.dumps(config))
    return folder


def test_a_class_name_with_a_line_break_is_refused_before_labels_txt_shifts_the_names(linear_run, tmp_path):
    """Before: labels.txt wrote the name on two lines, and the README's client (``splitlines()``) read 5 names for 4
    outputs: every class after it was shown under the next class's name. Now refused, before any folder is made."""
    for i, breaking in enumerate(["sq\nuare", "sq\r\nuare", "tri\u2028angle", "star\x85"]):
        run = _renamed_classes(linear_run, tmp_path / f"run{i}", ["circle", breaking, "star", "triangle"])
        with pytest.raises(TltoolError, match="holds a line break, which labels.txt"):
            export_module.export_run(run, "keras", tmp_path / f"out{i}")
        assert not (tmp_path / f"out{i}").exists()
    # quotes, tabs and any other character stay as they are, one line each (one export, not one per case above)
    names = ['it\'s a "circle"', "tab\there", "étoile ★ 星", "triangle"]
    done = export_module.export_run(_renamed_classes(linear_run, tmp_path / "fine", names), "keras",
                                    tmp_path / "fine-out")
    assert (done.directory / "labels.txt").read_text(encoding="utf-8").splitlines() == names


def _images_tltool_converts_its_own_way(folder) -> dict[str, tuple[str, object]]:
    """Small files in each mode that ``tltool.images._to_rgb`` does not leave to ``convert("RGB")``, plus CMYK and
    plain palette: ``{name: (mode Pillow opens it in, path)}``. Random pixels; the transparent ones (alpha 0 over
    red, 200 0 0) fill the top-left block."""
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = 40, 52
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgb[:12, :12] = (200, 0, 0)
    alpha = rng.choice(np.array([0, 1, 64, 128, 254, 255], np.uint8), (h, w))
    alpha[:12, :12] = 0
    grey = rgb[..., 1]
    index = rng.integers(0, 8, (h, w), dtype=np.uint8)
    index[:12, :12] = 3
    palette = rng.integers(0, 256, 8 * 3, dtype=np.uint8).tolist()
    palette[9:12] = [200, 0, 0]

    def paletted(transparency=None):
        im = Image.fromarray(index, "L").convert("P")  # a palette image using indices 0..7
        im.putpalette(palette)
        if transparency is not None:
            im.info["transparency"] = transparency
        return im

    rotated = Image.Exif()
    rotated[0x0112] = 6
    made = {
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "png", {}),
        "RGBA rotated by EXIF": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "png", {"exif": rotated}),
        "LA": (Image.fromarray(np.dstack([grey, alpha]), "LA"), "png", {}),
        "P, one transparent index": (paletted(3), "png", {}),
        "P, alpha per index": (paletted(bytes([255, 128, 0, 0, 255, 40, 255, 255])), "png", {}),
        "P, GIF transparent index": (paletted(3), "gif", {}),
        "P, opaque": (paletted(), "png", {}),
        "I;16": (Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)), "png", {}),
        "I, above 255": (Image.fromarray(rng.integers(0, 70000, (h, w), dtype=np.int32)), "tiff", {}),
        "I, within 0..255": (Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.int32)), "tiff", {}),
        "F": (Image.fromarray(rng.uniform(0, 300, (h, w)).astype(np.float32)), "tiff", {}),
        "CMYK JPEG": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA").convert("CMYK"), "jpg", {"quality": 95}),
        "CMYK TIFF": (Image.fromarray(np.dstack([rgb, alpha]), "RGBA").convert("CMYK"), "tiff", {}),
    }
    files = {}
    for n, (name, (im, ext, options)) in enumerate(made.items()):
        path = folder / f"{n}.{ext}"
        im.save(path, **options)
        with Image.open(path) as opened:
            files[name] = (opened.mode, path)
    return files


@pytest.mark.parametrize("resize", ["crop", "pad", "stretch"])
def test_the_readme_decode_agrees_with_tltool_on_transparent_palette_16_bit_and_cmyk_images(tmp_path, monkeypatch,
                                                                                           resize):
    from tltool.export_client import load_pixels_code, write_client_files
    from tltool.images import load_image

    files = _images_tltool_converts_its_own_way(tmp_path)
    assert {name: mode for name, (mode, _) in files.items()} == {
        "RGBA": "RGBA", "RGBA rotated by EXIF": "RGBA", "LA": "LA", "P, one transparent index": "P",
        "P, alpha per index": "P", "P, GIF transparent index": "P", "P, opaque": "P", "I;16": "I;16",
        "I, above 255": "I", "I, within 0..255": "I", "F": "F", "CMYK JPEG": "CMYK", "CMYK TIFF": "CMYK"}
    # tltool composites on white: the transparent block over red is white, not red
    assert (load_image(files["RGBA"][1])[:12, :12] == 255).all()
    assert (load_image(files["P, one transparent index"][1])[:12, :12] == 255).all()
    for size in (16, 96):  # shrinking (a JPEG in draft mode too) and enlarging
        folder = tmp_path / f"client-{size}"
        write_client_files(folder, "keras", "model.keras", ["a", "b"], size, resize)
        code = load_pixels_code(resize)
        assert code in (folder / "README.md").read_text()
        namespace: dict = {}
        monkeypatch.chdir(folder)
        exec(code, namespace)
        for name, (_, path) in files.items():
            expected = load_image(path, size, resize)
            got = namespace["load_pixels"](path)
            assert got.dtype == np.uint8 and got.shape == expected.shape == (size, size, 3), name
            assert np.array_equal(got, expected), (f"{name} at size {size}: {int((got != expected).any(2).sum())} "
                                                   "pixels differ")


def test_the_readme_client_reads_non_ascii_class_names_whatever_the_locale(tmp_path):
    """labels.txt and input.json are UTF-8; the README's client opened them with the locale's encoding, so a class
    named ``pissenlit été`` failed (ASCII) or was silently renamed ``pissenlit Ã©tÃ©`` (cp1252, Windows)."""
    from tltool.export_client import load_pixels_code, write_client_files

    classes = ["pissenlit été", "日本"]
    write_client_files(tmp_path, "keras", "model.keras", classes, 32, "crop")
    script = f"{load_pixels_code('crop')}\nprint(json.dumps(labels))\n"
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LANG", "LC_CTYPE")},
           "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "ascii"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == classes


# ------------------------------------------------------------------------------------------------ real photos
@pytest.fixture(scope="module")
def flowers_run(flowers_probe):
    return flowers_probe.run


@pytest.fixture(scope="module")
def flowers_val(flowers_run) -> tuple[list[str], np.ndarray]:
    """Every flowers val photo and tltool's probabilities for it, computed once for the tests that compare."""
    from conftest import shared_dataset
    from tltool.models import load_run

    paths = sorted(str(p) for p in (shared_dataset("flowers") / "val").glob("*/*.jpg"))
    return paths, load_run(flowers_run).predict_paths(paths)


def _readme_client(folder, paths_file) -> tuple[list[str], bool]:
    """Run the README's Python example in ``folder`` as a client would; its predicted labels, and whether it
    imported TensorFlow."""
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    client = _users_client_file(folder)
    client.write_text(code + "\nprint(json.dumps([labels[i] for i in probs.argmax(1)]), "
                      "'tensorflow' in sys.modules)\n")
    done = subprocess.run([sys.executable, str(client), *json.loads(paths_file.read_text())], cwd=folder,
                          capture_output=True, text=True, timeout=300,
                          env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                               "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    labels, imported_tf = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    return json.loads(labels), imported_tf == "True"


def _users_client_file(folder: Path) -> Path:
    """Where the README has the user save client.py: a folder of their own, not the export's (which --force
    replaces whole); it runs from the export folder."""
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "in a folder of your own (not in this one" in readme and "python PATH/TO/client.py" in readme
    own = folder.parent / f"own-{folder.name}"
    own.mkdir(exist_ok=True)
    return own / "client.py"


def _run_readme_verbatim(folder, paths: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """The README's code block saved as client.py, unchanged, and run as it says: ``python PATH/TO/client.py
    PHOTOS`` from the export folder."""
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(encoding="utf-8"), re.S).group(1)
    client = _users_client_file(folder)
    client.write_text(code, encoding="utf-8")
    return subprocess.run([sys.executable, str(client), *paths], cwd=folder, capture_output=True, text=True,
                          timeout=300, env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                                            "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})


@pytest.mark.parametrize("fmt", ["savedmodel"])  # the flowers tests run the Keras and LiteRT clients from their
def test_the_readme_client_runs_as_it_is_written(tiny_run, tiny_saved, tmp_path, fmt):  # command line as well
    """Before: the README's code used a `paths` it never defined; saved to a file and run, it stopped with a
    NameError. Now it takes the photos from its command line and prints their classes (a SavedModel's twice: from
    pixels, then from the encoded files, whose result was computed and never printed). The SavedModel folder holds
    no tltool marker of its own, which a serving system would ship with the model."""
    from tltool.models import load_run

    paths = [str(p) for p in sorted(SAMPLE.glob("*/*.jpg"))[::20]]
    folder = shutil.copytree(tiny_saved.directory, tmp_path / fmt)  # the module's export; client.py goes into a copy
    done = _run_readme_verbatim(folder, paths)
    assert done.returncode == 0, done.stderr[-2000:]
    run = load_run(tiny_run.run_dir)
    classes = [run.classes[i] for i in run.predict_paths(paths).argmax(1)]
    assert len(set(classes)) > 1  # a model that names one class for every photo would hide a shuffled output
    expected = str(classes)
    printed = done.stdout.strip().splitlines()
    assert printed[-2:] == [expected, expected] if fmt == "savedmodel" else printed[-1] == expected
    if fmt == "savedmodel":
        from tltool.outputs import MARKER

        assert (folder / MARKER).is_file() and not os.path.lexists(folder / "saved_model" / MARKER)


@pytest.mark.parametrize("fmt", ["keras", "tflite"])
def test_a_client_following_the_readme_agrees_with_tltool_on_every_flowers_val_photo(flowers_run, flowers_val,
                                                                                      tmp_path, monkeypatch, fmt):
    from tltool.export_client import load_pixels_code
    from tltool.images import load_image
    from tltool.models import load_run

    paths, probs = flowers_val
    assert len(paths) >= 100
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    folder = tmp_path / fmt
    export_module.export_run(flowers_run, fmt, folder, measure=False)
    run = load_run(flowers_run)
    expected = [run.classes[i] for i in probs.argmax(1)]
    predicted, imported_tf = _readme_client(folder, tmp_path / "paths.json")
    assert predicted == expected  # every image, not most of them
    assert imported_tf == (fmt == "keras")  # the LiteRT client needs no TensorFlow
    # and the README's decode gives tltool's pixels bit for bit
    code = load_pixels_code(run.resize)
    assert code in (folder / "README.md").read_text()
    namespace: dict = {}
    monkeypatch.chdir(folder)
    exec(code, namespace)
    for path in paths[::5]:
        assert np.array_equal(namespace["load_pixels"](path), load_image(path, run.image_size))


def test_the_bytes_signature_agrees_with_tltool_on_every_flowers_val_photo(flowers_run, flowers_val, tmp_path):
    from tltool._tf import tf

    paths, expected = flowers_val
    saved = export_module.export_run(flowers_run, "savedmodel", tmp_path / "saved").model_path
    served = tf.saved_model.load(str(saved))
    probs = np.concatenate([served.serve_image_bytes(tf.constant([open(p, "rb").read() for p in paths[i:i + 32]]))
                            for i in range(0, len(paths), 32)])
    assert (probs.argmax(1) == expected.argmax(1)).all()
    assert np.abs(probs - expected).max() < 0.05


def test_an_unmeasured_export_leaves_no_numbers_of_an_earlier_file(linear_run, plain_tflite, monkeypatch):
    folder = plain_tflite.directory
    assert (folder / "export.json").is_file()
    # the conversion is not what this test is about (the tests above check it): the plain file's bytes, at once
    monkeypatch.setattr(export_module, "to_tflite", lambda *args, **kwargs: plain_tflite.model_path.read_bytes())
    again = export_module.export_run(linear_run, "tflite", folder, force=True, quantize="float16", measure=False)
    assert again.measurement is None and not (folder / "export.json").exists()
    assert "Measured when exported" not in (folder / "README.md").read_text()


def test_a_finetuned_run_whose_model_json_names_other_classes_is_refused(tiny_run, tmp_path):
    """Before: 5 class names for a 4-output model.keras predicted with the wrong names and exported 5 labels."""
    from tltool.errors import TltoolError
    from tltool.models import load_run

    run = tmp_path / "edited"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("export"))  # other tests' exports
    earlier = export_module.export_run(run, "keras").model_path  # the default folder, RUN/export/keras
    config = json.loads((run / "model.json").read_text())
    config["classes"] = config["classes"] + ["extra"]
    (run / "model.json").write_text(json.dumps(config))
    image = str(next(SAMPLE.glob("star/*.jpg")))
    with pytest.raises(TltoolError, match=r"classes is \[.*'extra'\], but the run's model was trained with classes"):
        load_run(run).predict_paths([image])  # the classes config.json recorded at the run's start
    started = json.loads((run / "config.json").read_text())
    del started["classes"]  # as in a run of an older tltool: the count of outputs is still checked
    (run / "config.json").write_text(json.dumps(started))
    with pytest.raises(TltoolError, match="model.keras gives 4 class probabilities and model.json names 5 classes"):
        load_run(run).predict_paths([image])
    with pytest.raises(TltoolError, match="the model gives 4 class probabilities and model.json names 5 classes"):
        export_module.export_run(run, "keras", tmp_path / "ex")
    with pytest.raises(TltoolError, match="model.json names 5 classes"):
        export_module.export_run(run, "keras", force=True)  # refused again in the default folder
    assert earlier.is_file()  # before: the earlier export was deleted first, then the export refused


def test_a_finetuned_run_whose_model_json_says_another_image_size_is_refused(tiny_run, tmp_path):
    """Before: model.json's image_size edited from 64 to 80 made `predict` end in a Keras traceback, and `export`
    wrote an input.json telling clients to send 80 px images to a model that only takes 64 px ones."""
    from tltool.models import load_run

    run = tmp_path / "edited"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    config = json.loads((run / "model.json").read_text())
    assert config["image_size"] == 64
    config["image_size"] = 80
    (run / "model.json").write_text(json.dumps(config))
    image = str(next(SAMPLE.glob("star/*.jpg")))
    for engine in ("tf", "litert"):
        with pytest.raises(TltoolError, match=r"takes inputs of shape \(64, 64, 3\) and model.json says image_size 80"):
            load_run(run, engine=engine).predict_paths([image])
    with pytest.raises(TltoolError, match=r"takes inputs of shape \(64, 64, 3\) and model.json says image_size 80"):
        export_module.export_run(run, "keras", tmp_path / "ex")
    assert not (tmp_path / "ex").exists()


def test_a_run_whose_model_json_says_other_preprocessing_than_its_training_is_refused(tiny_run, linear_run, tmp_path):
    """Before: resize edited in model.json (or a linear run's image_size) went unnoticed: predict, evaluate and
    export fed the model other pixels (a flowers roses photo at 0.989 became tulips at 0.947), and export wrote the
    edit into input.json for clients. What the run recorded at its training decides: a network's config.json (its
    size is model.keras's input, checked above), a linear run's report (copied from the features it was fitted on)."""
    from tltool.cli import main
    from tltool.models import load_run

    image = str(next(SAMPLE.glob("star/*.jpg")))
    cases = [(tiny_run.run_dir, "resize", "stretch", "config.json"),  # and a network's outputs reordered: predict
             (tiny_run.run_dir, "classes", ["square", "circle", "star", "triangle"], "config.json"),  # misnamed them
             (linear_run, "resize", "pad", "metrics.json"), (linear_run, "image_size", 80, "metrics.json")]
    for i, (source, field, edited, record) in enumerate(cases):
        run = tmp_path / f"edited{i}"
        shutil.copytree(source, run, ignore=shutil.ignore_patterns("export"))
        config = json.loads((run / "model.json").read_text())
        trained = config[field]
        (run / "model.json").write_text(json.dumps({**config, field: edited}))
        line = (f"{run / 'model.json'}: {field} is {edited!r}, but the run's model was trained with {field} "
                f"{trained!r} (its {record}): one of them was edited; set model.json's back to {trained!r}.")
        with pytest.raises(TltoolError, match=re.escape(line)):
            load_run(run).predict_paths([image])
        with pytest.raises(TltoolError, match=re.escape(line)):
            export_module.export_run(run, "keras", tmp_path / f"ex{i}")
        assert not (tmp_path / f"ex{i}").exists()
    result = CliRunner().invoke(main, ["predict", "--model", str(run), image])
    assert (result.exit_code, result.output) == (2, f"error: {line}\n")
    (run / "metrics.json").unlink()  # a run without that record (an older tltool's, a copy without it): unchecked
    assert load_run(run).image_size == 80


def test_an_export_that_fails_while_writing_keeps_the_earlier_export_whole(tiny_run, tmp_path, monkeypatch):
    """The export folder was emptied before the model was written: a conversion that failed (or a kill) then lost
    the earlier export. Now the new one is built beside it and swapped in whole."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    earlier = export_module.export_run(run, "keras")
    before = {p.relative_to(earlier.directory).as_posix(): p.read_bytes()
              for p in earlier.directory.rglob("*") if p.is_file()}

    def fail_halfway(model, path, run, quantize, splits):
        path.write_bytes(b"half a model")
        raise OSError("disk full")

    monkeypatch.setitem(export_module.WRITERS, "keras", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        export_module.export_run(run, "keras", force=True)
    after = {p.relative_to(earlier.directory).as_posix(): p.read_bytes()
             for p in earlier.directory.rglob("*") if p.is_file()}
    assert after == before and "model.keras" in after
    # Ctrl-C in a new folder's conversion: the folder it made is gone (a review: left empty but for the marker);
    # a user's empty folder stays
    monkeypatch.setitem(export_module.WRITERS, "keras", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    (tmp_path / "mine").mkdir()
    for folder in (tmp_path / "new", tmp_path / "mine"):
        with pytest.raises(KeyboardInterrupt):
            export_module.export_run(run, "keras", folder)
    assert not (tmp_path / "new").exists() and (tmp_path / "mine").is_dir()
    monkeypatch.undo()
    again = export_module.export_run(run, "keras", force=True)  # the leftover staging folder is tltool's: cleared
    assert again.model_path.is_file() and sorted(p.name for p in (run / "export").iterdir()) == ["keras"]


def test_export_into_dot_keeps_the_folder_and_a_killed_export_reruns_without_force(tiny_run, tmp_path, monkeypatch):
    """`export RUN --out .` was a ValueError (Path('.') has no name to stage beside); a folder a killed export left
    holding only its marker was refused as an earlier export that needs --force."""
    import os
    import stat

    from tltool.outputs import MARKER, claim_output_dir

    here = tmp_path / "here"
    here.mkdir(mode=0o750)
    inode = here.stat().st_ino
    monkeypatch.chdir(here)
    result = export_module.export_run(tiny_run.run_dir, "keras", ".")
    assert result.model_path.is_file() and here.stat().st_ino == inode
    assert stat.S_IMODE(here.stat().st_mode) == 0o750 and not [p for p in os.listdir(tmp_path) if p != "here"]
    killed = claim_output_dir(tmp_path / "killed", "export")
    assert sorted(os.listdir(killed)) == [MARKER]
    assert export_module.export_run(tiny_run.run_dir, "keras", killed).model_path.is_file()


def test_a_killed_exports_staging_folder_is_removed_by_the_next_export_of_the_run_to_any_name(linear_run, tmp_path):
    """A SIGKILL mid-export left RUN/export/.keras.partial (14-30 MB) until the next export to that same name. Now
    the next export of the run, to any name, removes it (and one beside its --out), as a --resume of the run does;
    a live export's (locked), a folder without tltool's marker and a link are kept."""
    from tltool.outputs import _new_staging, _unlock, staging_dir
    from tltool.runs import hold_run_dir

    run = tmp_path / "run"
    shutil.copytree(linear_run, run, ignore=shutil.ignore_patterns("export"))

    def killed(target):  # what a kill mid-export leaves: tltool's marked staging folder, no process holding it
        staging = staging_dir(target, "export")
        (staging / ".model.keras.1a2b3c4d.keras").write_bytes(b"half a model")
        return staging

    dead, dead_beside = killed(run / "export" / "keras"), killed(tmp_path / "out" / "first")
    live, lock = _new_staging(run / "export" / "savedmodel", "export")  # another command's, being written now
    users = tmp_path / "out" / ".notes.partial"
    users.mkdir()
    (users / "a.txt").write_text("mine")
    linked = run / "export" / ".linked.partial"
    linked.symlink_to(killed(tmp_path / "elsewhere" / "x"), target_is_directory=True)
    try:
        export_module.export_run(run, "keras", tmp_path / "out" / "second")
        assert not dead.exists() and not dead_beside.exists()
        assert live.is_dir() and (users / "a.txt").read_text() == "mine" and linked.resolve().is_dir()
        dead = killed(run / "export" / "keras")
        hold_run_dir(run)  # a --resume of the run
        assert not dead.exists() and live.is_dir() and linked.is_symlink()
    finally:
        _unlock(lock)


# where each module the clients import comes from on PyPI (the stdlib ones need nothing)
PYPI_NAME = {"numpy": "numpy", "cv2": "opencv-python-headless", "PIL": "pillow", "ai_edge_litert": "ai-edge-litert",
             "keras": "keras", "tensorflow": "tensorflow"}


@pytest.mark.parametrize("fmt", ["tflite", "keras", "savedmodel"])
def test_the_readme_says_what_to_pip_install_for_its_client(tmp_path, fmt):
    """The export README's client imports cv2, PIL and numpy, but named only `pip install ai-edge-litert`: run as
    it says in a fresh Python it stopped at `ModuleNotFoundError: No module named 'cv2'`."""
    from tltool.export_client import write_client_files

    write_client_files(tmp_path, fmt, "model", ["a", "b"], 32, "crop")
    text = (tmp_path / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    modules = set(re.findall(r"^\s*import ([\w, ]+?)(?:\s+#.*)?$", code, re.M) + re.findall(r"^\s*from (\w+)", code,
                                                                                            re.M))
    names = {m.strip().split(" as ")[0].split(".")[0] for line in modules for m in line.split(",")}
    needed = {PYPI_NAME[m] for m in names - set(sys.stdlib_module_names)}
    pip = re.search(r"`pip install ([^`]+)`", text)
    assert pip is not None and needed <= set(pip.group(1).split()), (needed, pip)
    assert "cv2" in names and "opencv-python-headless" in needed


def test_a_quantization_that_changes_nothing_is_said_to_lose_nothing_without_a_minus_zero():
    """float16 on flowers: "loses nothing (-0.0 points)"."""
    from tltool.export import measurement_lines

    acc = {"value": 0.9, "ci95": [0.8, 0.95], "n": 100}
    m = {"model": "model.tflite", "quantize": "float16", "size_bytes": 2e6, "accuracy": acc, "float_accuracy": acc,
         "paired_difference": {"difference": 0.0, "ci95": [-0.01, 0.01], "p_value": 1.0}, "agreement_with_float": 1.0,
         "drop_points": 0.0, "within_max_drop": True, "max_drop_points": 1.0, "threads": 2, "speed_batch": 32,
         "images_per_second": {"export": 100.0, "float_tf": 50.0}}
    assert "it loses nothing (+0.0 points): within --max-drop 1" in measurement_lines(m)[3]
