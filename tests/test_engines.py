"""Inference engines: TF and LiteRT give the same numbers; cached LiteRT needs no TensorFlow; ``auto`` is remembered."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from conftest import REPO, SAMPLE
from tltool import engines, settings
from tltool.errors import TltoolError


def _sample_pixels(size: int, n: int) -> np.ndarray:
    from tltool.images import load_image

    paths = sorted(SAMPLE.glob("*/*.jpg"))[:n]
    return np.stack([load_image(p, size) for p in paths]).astype(np.float32)


def _tiny_source(tag: str = "tiny") -> engines.ModelSource:
    """A two-layer conv net: fast to build and convert, enough to check the plumbing."""

    def build():
        from tltool._tf import keras

        keras.utils.set_random_seed(0)
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
        fmap = keras.layers.Conv2D(16, 3, activation="relu")(x)
        outputs = {"avg": keras.layers.GlobalAveragePooling2D()(fmap), "max": keras.layers.GlobalMaxPooling2D()(fmap)}
        return keras.Model(inputs, outputs)

    return engines.ModelSource(tag, 32, {"kind": "test", "tag": tag}, build)


@pytest.fixture(autouse=True)
def _auto_means_auto(monkeypatch):
    """The suite pins $TLTOOL_ENGINE to tf for speed (conftest); here ``auto`` is what is tested."""
    monkeypatch.delenv(settings.ENGINE_ENV, raising=False)


def test_tiny_network_agrees_across_engines_and_a_short_last_batch_is_resized():
    source = _tiny_source()
    x = np.random.default_rng(1).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    tf_out = engines.create_runner(source, "tf")(x)
    lite = engines.create_runner(source, "litert")
    assert lite.engine == "litert" and lite.path.parent == engines.litert_dir()
    full, short = lite(x), lite(x[:2])  # batch 5, then a last batch of 2 on the same interpreter
    assert set(full) == {"avg", "max"} and full["avg"].shape == (5, 16) and short["max"].shape == (2, 16)
    for name in ("avg", "max"):
        np.testing.assert_allclose(full[name], tf_out[name], atol=1e-4)
        np.testing.assert_allclose(short[name], tf_out[name][:2], atol=1e-4)
    assert np.abs(tf_out["max"]).max() > 0.01  # not a vacuous comparison of zeros


def test_litert_lanes_keep_every_image_in_its_row_whatever_the_batch_and_pixel_type():
    """LiteRT runs a batch as shares of single images on one interpreter per thread: rows stay in order when a
    batch is not a multiple of the lanes, has fewer images than lanes, or comes as uint8 (the thread-pool feed)."""
    source = _tiny_source()
    x = np.random.default_rng(2).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    tf_out = engines.create_runner(source, "tf")(x.astype(np.float32))
    lite = engines.LiteRTRunner(engines.converted_model(source), threads=3)
    for start, stop in ((0, 7), (0, 1), (2, 4)):
        out = lite(x[start:stop])
        for name in ("avg", "max"):
            np.testing.assert_allclose(out[name], tf_out[name][start:stop], atol=1e-4)
    assert len(set(map(tuple, tf_out["avg"].round(3)))) == len(x)  # distinct rows: a swap would be seen
    # map() queues the next batch before handing back this one: batches of every size come back whole and in order
    streamed = list(lite.map(iter([x[:3], x[3:4], x[:0], x[4:7]])))
    assert [len(out["avg"]) for out in streamed] == [3, 1, 0, 3] and streamed[2]["max"].shape == (0, 16)
    for name in ("avg", "max"):
        np.testing.assert_allclose(np.concatenate([out[name] for out in streamed]), tf_out[name], atol=1e-4)
    # a flipped view (TTA) is read as it is, not as the memory under it
    np.testing.assert_allclose(lite(x[:, :, ::-1])["avg"], tf_out_flipped := engines.create_runner(
        source, "tf")(x[:, :, ::-1].astype(np.float32))["avg"], atol=1e-4)
    assert not np.allclose(tf_out_flipped, tf_out["avg"], atol=1e-3)
    # one image without its batch axis, or another size, is refused (it would be broadcast into the input)
    for wrong in (x[0], x[:, :16]):
        with pytest.raises(ValueError, match=r"takes batches of shape \(n, 32, 32, 3\)"):
            lite(wrong)
    # a consumer that stops early: only the next batch was queued, and what no lane has started is cancelled
    # (the lanes hold every image after the first batch until the stream is closed: at most 3 have started)
    ran, run_one, gate = itertools.count(1), lite._run_one, threading.Event()
    lite._run_one = lambda image: (next(ran) <= 7 or gate.wait(10), run_one(image))[-1]
    stream = lite.map(iter([x] * 50))
    next(stream)
    stream.close()
    gate.set()
    lite.close()  # waits for the lanes
    started = next(ran) - 1
    assert 8 <= started <= 10, started  # without the cancel, all 7 of the second batch would run
    # one lane per core while the copies of the model fit in LANE_MEMORY
    assert [engines.lane_count(b, 16) for b in (14 << 20, 94 << 20, 2 << 30)] == [16, 10, 1]


class _FakeLane:
    """A lane without LiteRT: image k (its first pixel) fails when k == 0, else takes 20 ms and is counted."""

    ran: list[int] = []

    def __init__(self, path) -> None:
        self.image_shape = (2, 2, 3)

    def empty_outputs(self) -> dict[str, np.ndarray]:
        return {"avg": np.zeros((0, 1), np.float32)}

    def memory_bytes(self, file_bytes: int) -> int:
        return file_bytes

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        tag = int(image[0, 0, 0])
        if tag == 0:
            raise RuntimeError("lane failed on image 0")
        time.sleep(0.02)
        _FakeLane.ran.append(tag)
        return {"avg": np.array([tag], np.float32)}


def test_litert_says_nothing_of_its_delegate_and_passes_other_output_on(capfd):
    path = engines.converted_model(_tiny_source())
    run = ("import numpy as np; from tltool import engines; "
           f"print(engines.LiteRTRunner({str(path)!r}, threads=2)(np.zeros((1, 32, 32, 3), np.float32))['avg'].shape)")
    # a new process: LiteRT says it once per process, so one that has run an interpreter before says nothing
    done = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout == "(1, 16)\n", done.stderr
    assert "XNNPACK" not in done.stderr  # before: "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
    capfd.readouterr()
    with engines.without_delegate_banner():
        os.write(2, engines.DELEGATE_BANNER + b"\nsomething else\n")
    assert capfd.readouterr().err == "something else\n"


def test_held_back_output_is_shown_on_failure_and_the_descriptors_always_come_back(capfd):
    with engines.quiet_output():
        os.write(1, b"saved-function dump\n")
    assert capfd.readouterr() == ("", "")  # a conversion that works says nothing
    with pytest.raises(RuntimeError), engines.quiet_output():
        os.write(2, b"MLIR: the reason\n")
        raise RuntimeError("conversion failed")
    assert "MLIR: the reason" in capfd.readouterr().err
    with pytest.raises(KeyboardInterrupt), engines.quiet_output():  # Ctrl-C is no failure to explain (a review:
        os.write(1, b"TensorSpec(shape=())\n")                     # 71 lines of the dump, then "interrupted")
        raise KeyboardInterrupt
    assert capfd.readouterr() == ("", "")
    with pytest.raises(KeyboardInterrupt), engines.without_delegate_banner():
        os.write(2, b"half a line\n")
        raise KeyboardInterrupt
    os.write(2, b"after\n")  # fd 2 is the terminal again, not the temporary file
    assert capfd.readouterr().err == "half a line\nafter\n"


def test_a_failing_image_cancels_the_rest_of_its_batch_and_the_next(monkeypatch, tmp_path):
    """An error (or Ctrl-C) while a batch is collected cancels its images no lane has started, in a call and in a
    stream; before, the other 39 images ran on after the error and held up the interpreter's exit."""
    monkeypatch.setattr(engines, "_Lane", _FakeLane)
    (tmp_path / "m.tflite").write_bytes(b"x")
    runner = engines.LiteRTRunner(tmp_path / "m.tflite", threads=2)

    def batch(first: int, n: int = 40) -> np.ndarray:
        b = np.zeros((n, 2, 2, 3), np.float32)
        b[:, 0, 0, 0] = np.arange(first, first + n)
        return b

    assert runner(batch(1, 4))["avg"].ravel().tolist() == [1, 2, 3, 4]
    for run in (lambda: runner(batch(0)), lambda: list(runner.map(iter([batch(0), batch(100)])))):
        _FakeLane.ran = []
        with pytest.raises(RuntimeError, match="image 0"):
            run()
        time.sleep(0.3)  # what was left queued would run in 0.4 s on the two lanes
        assert len(_FakeLane.ran) <= 2, _FakeLane.ran  # at most the images already on the two lanes

    def failing_source():  # the second batch cannot be read (say, its photos' disk is gone)
        yield batch(1, 4)
        raise OSError("batch 2 unreadable")

    got = []
    with pytest.raises(OSError, match="batch 2"):
        for outputs in runner.map(failing_source()):
            got.append(outputs["avg"].ravel().tolist())
    assert got == [[1, 2, 3, 4]]  # the batch queued before the failure is handed back, not lost
    runner.close()


def test_lite0_features_equal_tf_within_1e_4_on_real_weights():
    source = engines.feature_source("efficientnet_lite0", "imagenet", 224)
    x = _sample_pixels(224, 4)
    tf_out = engines.create_runner(source, "tf")(x)
    lite_out = engines.create_runner(source, "litert")(x)
    for name in ("avg", "max"):
        assert tf_out[name].shape == (4, 1280)
        np.testing.assert_allclose(lite_out[name], tf_out[name], atol=1e-4, rtol=0)
    # the TF engine gives the numbers tltool extract stores (so the engine is not part of the feature cache key)
    from tltool.features import build_feature_extractor

    _, step = build_feature_extractor("efficientnet_lite0", "imagenet", 224)
    avg, mx = step(x)
    np.testing.assert_allclose(tf_out["avg"], avg.numpy(), atol=1e-6)
    np.testing.assert_allclose(tf_out["max"], mx.numpy(), atol=1e-6)


def test_lite0_classifier_probabilities_equal_tf_within_1e_4(tmp_path):
    from tltool._tf import keras
    from tltool.backbones import create_backbone

    keras.utils.set_random_seed(3)
    base = create_backbone("efficientnet_lite0", "imagenet", 96)
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    model = keras.Model(base.input, keras.layers.Dense(4, activation="softmax")(x))
    model.save(tmp_path / "m.keras")
    source = engines.keras_file_source(tmp_path / "m.keras", 96)
    pixels = _sample_pixels(96, 6)
    tf_p = engines.create_runner(source, "tf")(pixels)["probabilities"]
    lite_p = engines.create_runner(source, "litert")(pixels)["probabilities"]
    assert tf_p.shape == (6, 4)
    np.testing.assert_allclose(tf_p.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(lite_p, tf_p, atol=1e-4, rtol=0)


def test_a_cached_litert_model_runs_without_importing_tensorflow():
    engines.converted_model(engines.feature_source("efficientnet_lite0", "imagenet", 64))  # converted here, once
    script = (
        "import sys, numpy as np\n"
        "from tltool.engines import create_runner, feature_source\n"
        "run = create_runner(feature_source('efficientnet_lite0', 'imagenet', 64), 'litert')\n"
        "out = run(np.full((3, 64, 64, 3), 128, np.float32))\n"
        "print(out['avg'].shape, 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.strip().splitlines()[-1] == "(3, 1280) False False"


def test_a_damaged_cached_litert_model_is_converted_again():
    """A cut-short or replaced .tflite in the cache failed every command that ran the network with "ValueError: The
    model is not a valid Flatbuffer buffer", naming no file, until the user found and deleted it."""
    source = engines.feature_source("efficientnet_lite0", "imagenet", 64)
    path = engines.converted_model(source)
    whole = path.read_bytes()
    path.unlink()
    path.write_bytes(whole[: len(whole) // 2])
    assert engines.converted_model(source) == path and path.read_bytes() == whole  # converted again
    # a pipe in its place is found damaged without waiting for a writer; what follows is the cut file's path above
    # (another conversion would cost ~13 s here)
    path.unlink()
    os.mkfifo(path)
    assert not engines._conversion_intact(path)
    path.unlink()
    path.write_bytes(whole)
    assert engines.converted_model(source) == path
    out = engines.create_runner(source, "litert")(np.full((2, 64, 64, 3), 128, np.float32))
    assert out["avg"].shape == (2, 1280) and np.isfinite(out["avg"]).all()


def test_the_key_changes_with_what_the_numbers_depend_on(tmp_path):
    base = engines.feature_source("efficientnet_lite0", "imagenet", 224)
    assert engines.feature_source("EfficientNet-Lite0", "imagenet", 224).digest == base.digest
    assert engines.feature_source("efficientnet_lite0", "imagenet", 256).digest != base.digest
    assert engines.feature_source("efficientnet_lite0", "none", 224).digest != base.digest
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"one")
    first = engines.feature_source("efficientnet_lite0", str(weights), 224).digest
    weights.write_bytes(b"two")  # retrained under the same name
    assert engines.feature_source("efficientnet_lite0", str(weights), 224).digest != first


def test_auto_is_measured_once_and_remembered(monkeypatch):
    monkeypatch.setattr(engines, "gpu_visible", lambda: False)
    calls = []

    def fake_measure(source):
        calls.append(source.name)
        return {"tf": 50.0, "litert": 120.0}, {}

    monkeypatch.setattr(engines, "measure_engines", fake_measure)
    source = _tiny_source("auto-test")
    assert engines.resolve_engine(source, "auto") == "litert"
    assert engines.resolve_engine(source, "auto") == "litert"
    assert calls == ["auto-test"]  # the second call read the remembered choice
    stored = json.loads((engines.cache_dir() / engines.CHOICE_FILE).read_text())
    assert any(v["engine"] == "litert" and v["images_per_second"]["tf"] == 50.0 for v in stored.values())
    monkeypatch.setattr(engines, "measure_engines", lambda s: ({"tf": 90.0, "litert": 30.0}, {}))
    assert engines.resolve_engine(_tiny_source("slow-lite"), "auto") == "tf"  # never the slower one
    path = engines.cache_dir() / engines.CHOICE_FILE
    path.write_text(json.dumps({key: "tf" for key in stored}))  # edited: a string per key, not an entry
    assert engines.resolve_engine(source, "auto") == "tf"  # measured again (before: AttributeError on str.get)


def test_auto_runs_a_small_job_on_tf_unless_its_litert_model_is_already_made(monkeypatch):
    """A fine-tune's val evaluation (100 photos) converted its brand-new model to LiteRT and measured both engines
    (30-37 s on 2 cores) to save a second or two of TF. Below LITERT_PAYS_FROM images nothing is converted or
    measured; a job that large, or a model whose conversion and choice are made, goes on as before."""
    monkeypatch.setattr(engines, "gpu_visible", lambda: False)
    measured = []
    monkeypatch.setattr(engines, "measure_engines",
                        lambda s: (measured.append(s.name), ({"tf": 50.0, "litert": 120.0}, {}))[1])
    source = _tiny_source("small-job")
    small = engines.LITERT_PAYS_FROM - 1
    assert engines.resolve_engine(source, "auto", images=small) == "tf"
    assert measured == [] and not engines._converted_path(source).exists()
    assert engines.resolve_engine(source, "auto", images=engines.LITERT_PAYS_FROM) == "litert"
    assert measured == ["small-job"]
    assert engines.resolve_engine(source, "auto", images=small) == "tf"  # chosen, but no LiteRT file yet
    engines.converted_model(source)
    assert engines.resolve_engine(source, "auto", images=1) == "litert"  # made once: every job uses it
    assert engines.resolve_engine(source, "litert", images=1) == "litert"  # asked for by name: always
    assert measured == ["small-job"]


def test_a_run_s_prediction_asks_for_the_engine_of_its_whole_job(monkeypatch):
    from tltool.models import RunModel

    class Asked(Exception):
        pass

    def runner(self, images=None):
        raise Asked(images)

    monkeypatch.setattr(RunModel, "runner", runner)
    paths = [f"{i}.jpg" for i in range(30)]
    for tta, views in (("none", 30), ("flip", 60), ("10crop", 330)):  # 10crop: the plain pass and the 10 views
        with pytest.raises(Asked) as asked:
            RunModel().predict_plain_and_tta(paths, tta)
        assert asked.value.args == (views,)


def test_auto_takes_tf_on_a_gpu_and_the_declared_engine_without_measuring(monkeypatch):
    def no_measuring(source):
        raise AssertionError("must not measure")

    monkeypatch.setattr(engines, "measure_engines", no_measuring)
    monkeypatch.setattr(engines, "gpu_visible", lambda: True)
    assert engines.resolve_engine(_tiny_source("gpu"), "auto") == "tf"
    monkeypatch.setattr(engines, "gpu_visible", lambda: False)
    assert engines.resolve_engine(engines.feature_source("vgg16", "none", 64), "auto") == "tf"
    assert engines.resolve_engine(_tiny_source("forced"), "litert") == "litert"


def test_measure_engines_gives_a_rate_per_engine_building_the_network_once_and_keeping_its_runners():
    """A first run built the network three times: for the TF runner, for the conversion, and again for the engine
    chosen. It is built once now, and the chosen engine's measured runner is the one handed out."""
    tiny = _tiny_source("measure")
    builds = []
    source = replace(tiny, build=lambda: builds.append(1) or tiny.build())
    rates, measured = engines.measure_engines(source, batch_size=4, rounds=2)
    assert set(rates) == set(measured) == {"tf", "litert"} and all(v > 0 for v in rates.values())
    assert len(builds) == 1
    lite = measured["litert"]
    x = np.random.default_rng(3).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    for name in ("avg", "max"):  # one Keras model behind both: the conversion left it as it was
        np.testing.assert_allclose(lite(x)[name], measured["tf"](x)[name], atol=1e-4)


def test_auto_hands_out_the_runner_its_first_measurement_made(monkeypatch):
    """The runner measured is the one the job gets (no second build); a later job, reading the remembered choice,
    builds its own."""
    monkeypatch.setattr(engines, "gpu_visible", lambda: False)
    measured_lite = object()
    monkeypatch.setattr(engines, "measure_engines",
                        lambda s: ({"tf": 50.0, "litert": 120.0}, {"tf": object(), "litert": measured_lite}))
    built = []
    monkeypatch.setitem(engines.ENGINES, "litert", lambda s: built.append(s.name) or "built")
    source = _tiny_source("hand-out")
    assert engines.create_runner(source, "auto") is measured_lite and built == []
    assert engines.create_runner(source, "auto") == "built" and built == ["hand-out"]


def test_an_unknown_engine_or_quantization_is_a_clear_error():
    with pytest.raises(TltoolError, match="engine 'lite'.*litert"):
        engines.resolve_engine(_tiny_source(), "lite")
    with pytest.raises(TltoolError, match="quantization 'int4'"):
        engines.to_tflite(object(), "int4")


def test_tltool_engine_pins_what_auto_means(monkeypatch):
    monkeypatch.setattr(engines, "measure_engines", lambda s: pytest.fail("a pinned engine must not be measured"))
    monkeypatch.setenv(settings.ENGINE_ENV, "litert")
    assert engines.resolve_engine(_tiny_source("pinned"), "auto") == "litert"
    assert engines.resolve_engine(_tiny_source("pinned"), "tf") == "tf"  # an explicit --engine wins
    monkeypatch.setenv(settings.ENGINE_ENV, "gpu")
    with pytest.raises(TltoolError, match="TLTOOL_ENGINE"):
        engines.resolve_engine(_tiny_source("pinned"), "auto")


def test_a_linear_run_predicts_the_same_on_both_engines(tmp_path):
    from tltool.linear import probe
    from tltool.models import load_run

    result = probe(str(SAMPLE), image_size=64, features_dir=tmp_path / "f", out=tmp_path / "lin")
    paths = [str(p) for p in sorted(SAMPLE.glob("star/*.jpg"))[:4]]
    on_tf = load_run(result.run_dir, engine="tf").predict_paths(paths)
    on_litert = load_run(result.run_dir, engine="litert").predict_paths(paths, tta="flip")
    np.testing.assert_allclose(on_litert.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(load_run(result.run_dir, engine="litert").predict_paths(paths), on_tf, atol=1e-4)


def test_threads_and_lanes_follow_the_cpus_a_container_allows(tmp_path, monkeypatch):
    """os.cpu_count() counts the host's CPUs; a cgroup quota (docker --cpus 1.5, a systemd CPUQuota on a parent
    cgroup) or an affinity mask must win, or a container on a big host would start one lane (one model copy) per
    host CPU."""
    from tltool import utils
    from tltool.batches import decode_threads

    root, membership = tmp_path / "cgroup", tmp_path / "membership"
    monkeypatch.setattr(utils.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert utils.usable_cpus(root, membership) == 64 and utils.cgroup_cpu_quota(root, membership) is None
    membership.write_text("0::/system.slice/app.service\n")
    (root / "system.slice" / "app.service").mkdir(parents=True)
    (root / "system.slice" / "app.service" / "cpu.max").write_text("max 100000\n")
    assert utils.usable_cpus(root, membership) == 64
    (root / "system.slice" / "cpu.max").write_text("150000 100000\n")  # the parent's limit applies too
    assert utils.cgroup_cpu_quota(root, membership) == 1.5 and utils.usable_cpus(root, membership) == 2
    membership.write_text("4:cpu,cpuacct:/docker/abc\n1:memory:/docker/abc\n")  # cgroup v1
    (root / "cpu" / "docker" / "abc").mkdir(parents=True)
    (root / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("300000\n")
    (root / "cpu" / "docker" / "abc" / "cpu.cfs_period_us").write_text("100000\n")
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit" at the top
    assert utils.usable_cpus(root, membership) == 3
    (root / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us").write_text("garbage")
    assert utils.usable_cpus(root, membership) == 64  # unreadable: no limit assumed, no crash
    monkeypatch.setattr(utils.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert utils.usable_cpus(root, membership) == 2
    # the decode threads and the LiteRT lanes are sized by it
    import tltool.batches as batches

    monkeypatch.setattr(batches, "usable_cpus", lambda: 1)
    monkeypatch.setattr(engines, "usable_cpus", lambda: 3)
    assert decode_threads() == 1
    assert engines.LiteRTRunner(engines.converted_model(_tiny_source())).lanes == 3
