"""Scaling out (issue 9) without a GPU: the CPU split into 2 logical devices for MirroredStrategy, 2 worker
processes on 127.0.0.1 for MultiWorkerMirroredStrategy, sharded extraction, resume on another replica count.

Logical devices must be configured before TensorFlow initialises its devices, so the 2-device runs happen in a
subprocess. Comparisons are made meaningful: no dropout, no augmentation, the same seed and global batch, and the
weights must have moved far more than the tolerance.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SAMPLE
from helpers import (assert_same_features, finish_tltool_reporting, free_ports, run_tltool_reporting,
                     start_tltool_reporting)
from tltool._tf import keras
from tltool.arch import layers as _arch_layers  # noqa: F401  (registers tltool's layers)
from tltool.backbones import layers as _layers  # noqa: F401
from tltool.cli import main
from tltool.distribute import extraction_shard, parse_shard, read_tf_config, resolve_strategy
from tltool.errors import TltoolError
from tltool.features import extract_features, load_features
from tltool.finetune import FinetuneConfig
from tltool.models import load_run
from tltool.scratch import ScratchConfig, train_from_scratch
from tltool.supervised import RunConfig, _distribute_record
from tltool.training import checkpoint_path

# Weights of a 2-replica step vs a 1-device step on the same 16 images differ by float32 summation order only:
# measured 1.6e-6 after 16 Adam steps, while the largest weight moved by 8e-3 (1.6e-3 in the second epoch).
TOLERANCE = 2e-5
FINETUNE = dict(data=str(SAMPLE), image_size=32, weights="imagenet", augment="none", dropout=0.0,
                head_init="random", head_epochs=0, epochs=2, unfreeze="1", lr=1e-3, warmup_epochs=0.0,
                val_fraction=0.25)

DRIVER = textwrap.dedent("""
    import json, shutil, sys
    from pathlib import Path

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import numpy as np
    from tltool import training
    from tltool.backbones.efficientnet_lite import imagenet_weights_path
    from tltool.features import extract_features
    from tltool.finetune import FinetuneConfig, finetune

    out, settings = Path(sys.argv[1]), json.loads(sys.argv[2])
    # convert Lite0's weights into the cache first: converting builds a random model, which draws from the seed
    imagenet_weights_path()
    single = finetune(FinetuneConfig(**settings, batch_size=16, strategy="none"), out=out / "single")
    save = training.LoopState.save

    def save_and_snapshot(state, path):  # a copy of the run folder as a kill after epoch 1 leaves it
        save(state, path)
        if state.epoch == 1 and not (out / "killed").exists():
            shutil.copytree(Path(path).parent, out / "killed")

    training.LoopState.save = save_and_snapshot
    mirrored = finetune(FinetuneConfig(**settings, batch_size=8, strategy="mirrored"), out=out / "mirrored")
    training.LoopState.save = save
    kw = dict(image_size=32, chunk_size=16, batch_size=5)  # 5 per replica: uneven last batches
    one = extract_features(settings["data"], out / "f-none", strategy="none", **kw).features
    two = extract_features(settings["data"], out / "f-mirrored", strategy="mirrored", **kw).features
    print(json.dumps({"logical_cpus": len(tf.config.list_logical_devices("CPU")),
                      "extract_max_diff": float(max(np.abs(one.avg - two.avg).max(), np.abs(one.max - two.max).max())),
                      "extract_same_paths": one.paths == two.paths, "extract_std": float(np.std(one.avg))}))
""")


def _env(**extra) -> dict:
    return {**os.environ, "TLTOOL_NO_PROGRESS": "1", **extra}


def _weights(path: Path) -> list[np.ndarray]:
    return keras.models.load_model(path, safe_mode=True).get_weights()


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert len(a) == len(b)
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    """One subprocess with the CPU split in 2: a 1-device and a 2-replica fine-tuning, and both extractions."""
    out = tmp_path_factory.mktemp("mirrored")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(out), json.dumps(FINETUNE)], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_mirrored_on_two_cpu_devices_matches_one_device(two_devices):
    out, summary, log = two_devices
    assert summary["logical_cpus"] == 2
    assert "strategy mirrored (--strategy mirrored): 2 replicas, devices CPU:0, CPU:1" in " ".join(log.split())
    model_json = json.loads((out / "mirrored" / "model.json").read_text())
    assert model_json["distribute"]["replicas"] == 2 and len(model_json["distribute"]["devices"]) == 2
    assert model_json["distribute"]["global_batch_size"] == 16 and model_json["distribute"]["per_replica_batch_size"] == 8
    config = json.loads((out / "mirrored" / "metrics.json").read_text())["config"]
    assert config["strategy"] == "mirrored" and config["distribute"]["replicas"] == 2
    single, mirrored = _weights(out / "single" / "model.keras"), _weights(out / "mirrored" / "model.keras")
    start = _weights(checkpoint_path(out / "killed"))  # after epoch 1 of 2
    assert _max_diff(single, start) > 50 * TOLERANCE  # epoch 2 alone moved the weights: the match means something
    assert _max_diff(single, mirrored) < TOLERANCE
    h1 = json.loads((out / "single" / "metrics.json").read_text())["history"]
    h2 = json.loads((out / "mirrored" / "metrics.json").read_text())["history"]
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose([r[key] for r in h2], [r[key] for r in h1], atol=1e-5)
    assert h1[1]["loss"] < h1[0]["loss"] - 0.05


def test_mirrored_extraction_gives_the_single_device_features(two_devices):
    _, summary, _ = two_devices
    assert summary["extract_same_paths"] and summary["extract_max_diff"] <= 1e-5
    assert summary["extract_std"] > 1e-2  # features that say something (random weights give about 1e-13)


def test_a_two_replica_run_resumes_on_one(two_devices, tmp_path, capsys):
    from tltool.finetune import finetune

    out, _, _ = two_devices
    killed = tmp_path / "killed"  # the module's copy stays as the kill left it
    shutil.copytree(out / "killed", killed)
    assert json.loads((killed / "state.json").read_text())["epoch"] == 1 and not (killed / "model.keras").exists()
    capsys.readouterr()
    finetune(FinetuneConfig(data=None, strategy="none"), resume=killed)  # one device: this process has one CPU
    log = " ".join(capsys.readouterr().err.split())
    assert "resuming after epoch 1" in log and "run started on 2 replica(s) on 1: the global batch stays 16" in log
    record = json.loads((killed / "model.json").read_text())["distribute"]
    assert record["replicas"] == 1 and record["started_with"]["replicas"] == 2 and record["global_batch_size"] == 16
    history = json.loads((killed / "metrics.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    # the optimizer state (Adam moments, step count for the cosine schedule) came through the checkpoint: the
    # resumed run ends where the uninterrupted ones did
    assert _max_diff(_weights(killed / "model.keras"), _weights(out / "mirrored" / "model.keras")) < TOLERANCE
    assert _max_diff(_weights(killed / "model.keras"), _weights(out / "single" / "model.keras")) < TOLERANCE
    assert checkpoint_path(killed).name == "checkpoint-epoch0002.keras"
    assert int(keras.models.load_model(checkpoint_path(killed), compile=True, safe_mode=True)
               .optimizer.iterations.numpy()) == 2 * -(-120 // 16)


def test_two_workers_on_localhost_only_the_chief_writes(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    args = ["train", str(SAMPLE), "--arch", "lenet5", "--epochs", "2", "--batch-size", "8", "--val-fraction", "0.25",
            "--strategy", "multiworker"]
    cache = {"TLTOOL_CACHE": str(tmp_path / "cache")}
    run_tltool_reporting("data", "inspect", str(SAMPLE), "--out", str(tmp_path / "inspect"), **cache)  # the check
    procs = []
    for index in range(2):
        scratch = tmp_path / f"tmp{index}"
        scratch.mkdir()
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(start_tltool_reporting(*args, "--out", str(tmp_path / f"run{index}"), TF_CONFIG=tf_config,
                                            TMPDIR=str(scratch), **cache))
    try:
        states = [finish_tltool_reporting(proc, timeout=240) for proc in procs]
    finally:  # a worker left alone would wait for its peer forever
        for proc in procs:
            proc.kill()
    outputs = [(stdout, "") for _, stdout in states]
    # each worker decodes only its share of the 120 train photos: its 8-photo slice of each 16-photo global batch,
    # and half of the last, 8-photo one: 60 an epoch. Both evaluate all 40 val photos (decoded once, then cached).
    # The check before reads the cache `data inspect` filled; the chief also predicts val for its report.
    decodes = [state["decodes"] for state, _ in states]
    assert decodes[1] == 2 * 60 + 40 and 2 * 60 + 40 <= decodes[0] <= 2 * 60 + 40 + 40 + 24, decodes
    assert "chief (worker 0) writes the run folder" in outputs[1][0]
    chief = tmp_path / "run0"
    assert not (tmp_path / "run1").exists() and not any((tmp_path / "tmp1").iterdir())  # the scratch folder is gone
    for name in ("model.keras", "model.json", "metrics.json", "report.md", "split.csv"):
        assert (chief / name).exists(), name
    assert checkpoint_path(chief).name == "checkpoint-epoch0002.keras"
    record = json.loads((chief / "model.json").read_text())["distribute"]
    assert record["strategy"] == "multiworker" and record["workers"] == 2 and record["replicas"] == 2
    assert record["global_batch_size"] == 16
    runner = load_run(chief)
    assert runner.predict_paths([str(next(SAMPLE.glob("star/*.jpg")))]).shape == (1, 4)
    # each worker's slice of each global batch: together the 16 images a single device sees, same seeds
    single = train_from_scratch(ScratchConfig(data=str(SAMPLE), arch="lenet5", epochs=2, batch_size=16,
                                              val_fraction=0.25, strategy="none"), out=tmp_path / "single")
    assert _max_diff(_weights(chief / "model.keras"), single.model.get_weights()) < TOLERANCE
    history = json.loads((chief / "metrics.json").read_text())["history"]
    assert history[1]["loss"] < history[0]["loss"]


def _extract(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tltool", "extract", str(SAMPLE), "--out", str(out), "--image-size",
                             "32", "--chunk-size", "16", "--batch-size", "8", *extra],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout, " ".join(stderr.split())


def _extract_here(out: Path, *extra: str) -> tuple[str, str]:
    """As :func:`_extract` then :func:`_finish`, in this process (no TensorFlow import to wait for)."""
    result = CliRunner().invoke(main, ["extract", str(SAMPLE), "--out", str(out), "--image-size", "32", "--chunk-size",
                                       "16", "--batch-size", "8", *extra])
    assert result.exit_code == 0, (result.output[-3000:], result.exception)
    return result.stdout, " ".join(result.stderr.split())


def test_sharded_extraction_in_two_processes_equals_one(tmp_path):
    both = [_extract(tmp_path / "sharded", "--shard", f"{i}/2") for i in range(2)]  # 10 chunks, 5 each, at once
    logs = [_finish(p) for p in both]
    assert any("folder complete" in stdout for stdout, _ in logs)
    # a lone shard, then the plain command: it computes only what is missing (the finished shard is not redone);
    # in this process (the two at once above are the processes)
    stdout, _ = _extract_here(tmp_path / "merged", "--shard", "1/2")
    assert "waiting for the other shards" in stdout
    assert not json.loads((tmp_path / "merged" / "features.json").read_text())["complete"]
    with pytest.raises(TltoolError, match="did not finish"):
        load_features(tmp_path / "merged")
    _, log = _extract_here(tmp_path / "merged")
    assert "resuming: 5 of 10 chunk(s) already extracted" in log
    one = extract_features(str(SAMPLE), tmp_path / "single", image_size=32, chunk_size=16,
                           batch_size=8, strategy="none").features
    for folder in ("sharded", "merged"):
        fs = load_features(tmp_path / folder)
        assert fs.hashes == one.hashes
        np.testing.assert_array_equal(fs.labels, one.labels)
        assert_same_features(fs, one)
    again = _extract_here(tmp_path / "sharded", "--shard", "0/2")[0]
    assert again.startswith("cached")


BAD_TF_CONFIGS = [
    (None, "TF_CONFIG environment variable is not set"),
    ("{'cluster': 1}", "not valid JSON"),
    ('["a"]', "JSON object"),
    ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "no 'task'"),
    ('{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}', "not \"host:port\""),
    ('{"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}', "'ps' job"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "chief", "index": 0}}', "task type is 'chief'"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "must be 0..1"),
]


@pytest.mark.parametrize("value,message", BAD_TF_CONFIGS)
def test_a_missing_or_malformed_tf_config_is_one_clear_error(value, message):
    with pytest.raises(TltoolError, match=message) as info:
        read_tf_config({} if value is None else {"TF_CONFIG": value})
    assert "TF_CONFIG='{" in str(info.value)  # and it shows what a good one looks like


def test_tf_config_workers_chief_first():
    config = {"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    cluster = read_tf_config({"TF_CONFIG": json.dumps(config)})
    assert (cluster.worker_index, cluster.num_workers, cluster.chief) == (2, 3, False)
    config["task"] = {"type": "chief", "index": 0}
    assert read_tf_config({"TF_CONFIG": json.dumps(config)}).chief


def test_a_multiworker_chief_refuses_its_run_folder_before_the_cluster_starts(tmp_path, monkeypatch):
    """The chief checked --out only after the cluster formed: the workers connected and waited for nothing."""
    import tltool.finetune
    import tltool.scratch
    from tltool.finetune import FinetuneConfig
    from tltool.outputs import release_output_dirs
    from tltool.runs import new_run_dir, writes_runs
    from tltool.scratch import ScratchConfig

    writes_runs(lambda: (new_run_dir("scratch", out=tmp_path / "done") / "metrics.json").write_text("{}"))()
    release_output_dirs()
    for module in (tltool.finetune, tltool.scratch):
        monkeypatch.setattr(module, "resolve_strategy", lambda name: pytest.fail("the cluster was started"))
    cluster = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    for train, config in ((tltool.scratch.train_from_scratch, ScratchConfig(data=str(SAMPLE), arch="lenet5")),
                          (tltool.finetune.finetune, FinetuneConfig(data=str(SAMPLE)))):
        with pytest.raises(TltoolError, match="already holds an earlier tltool run"):
            train(replace(config, strategy="multiworker"), out=tmp_path / "done")


@pytest.mark.parametrize("command", [["train", str(SAMPLE), "--arch", "lenet5"], ["finetune", str(SAMPLE)],
                                     ["extract", str(SAMPLE), "--out", "unused"]])
def test_the_commands_print_the_tf_config_problem_in_one_line(command, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:x"]}, "task": {"type": "worker", "index": 0}}')
    result = CliRunner().invoke(main, [*command, "--strategy", "multiworker"])
    assert result.exit_code == 2
    assert result.output.startswith("error: --strategy multiworker: TF_CONFIG's cluster 'worker' has '127.0.0.1:x'")
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists() and not (tmp_path / "unused").exists()


@pytest.mark.parametrize("text, says", [("2/2", "INDEX must be 0..COUNT-1 .here 0..1."), ("1", "write INDEX/COUNT"),
                                        ("a/b", "write INDEX/COUNT"), ("-1/2", "write INDEX/COUNT"),
                                        ("0/0", "COUNT must be 1..10000"),
                                        ("0/99999999999999999999", "COUNT must be 1..10000")])
def test_bad_shard(text, says):
    with pytest.raises(TltoolError, match=f"--shard {text}: {says}"):
        parse_shard(text)


def test_shard_and_multiworker_are_exclusive(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert extraction_shard("multiworker", None) == (1, 2)
    assert extraction_shard("none", "3/4") == (3, 4)
    with pytest.raises(TltoolError, match="give one"):
        extraction_shard("multiworker", "0/2")


def test_strategy_options_are_config_fields_and_recipe_keys():
    from tltool.cli.recipes import recipe_commands

    commands = recipe_commands()
    for command, config in (("finetune", FinetuneConfig), ("train", ScratchConfig)):
        names = {p.name for p in commands[command].params}
        assert {"strategy", "scale_lr"} <= names & {f.name for f in fields(config)}
    assert {"strategy", "shard"} <= {p.name for p in commands["extract"].params}


class _FakeDevice:
    def __init__(self, name: str) -> None:
        self.name = name


class _FakeMirrored:
    def __init__(self, devices) -> None:
        self.devices, self.num_replicas_in_sync = list(devices), len(devices)


@pytest.fixture()
def visible_gpus(monkeypatch):
    """Make TensorFlow report ``n`` GPUs (whatever the machine has): returns a setter."""
    from tltool import distribute
    from tltool._tf import tf

    physical, logical = tf.config.list_physical_devices, tf.config.list_logical_devices

    def set_gpus(n: int) -> None:
        monkeypatch.setattr(distribute, "_RESOLVED", {})
        gpus = [_FakeDevice(f"/physical_device:GPU:{i}") for i in range(n)]
        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None: gpus if kind == "GPU" else physical(kind))
        monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: [
            _FakeDevice(f"/device:GPU:{i}") for i in range(n)] if kind == "GPU" else logical(kind))
        monkeypatch.setattr(tf.distribute, "MirroredStrategy", _FakeMirrored)

    return set_gpus


def test_auto_is_the_default_strategy_on_a_cpu_and_mirrored_on_two_gpus(visible_gpus):

    visible_gpus(0)
    _, info = resolve_strategy("auto")
    assert (info.strategy, info.replicas, info.distributed) == ("default", 1, False)
    assert info.devices[0].endswith("CPU:0")
    visible_gpus(1)
    _, info = resolve_strategy("auto")
    assert (info.strategy, info.replicas, info.devices) == ("default", 1, ["/device:GPU:0"])
    visible_gpus(2)
    strategy, info = resolve_strategy("auto")
    assert (info.strategy, info.replicas, info.distributed) == ("mirrored", 2, True)
    assert strategy.devices == info.devices == ["/device:GPU:0", "/device:GPU:1"]


def test_scale_lr_multiplies_by_replicas():
    from tltool.distribute import DistributeInfo

    two = DistributeInfo("mirrored", "mirrored", 2, ["/device:GPU:0", "/device:GPU:1"])
    record = _distribute_record(RunConfig(data="x", batch_size=32, scale_lr=True), two, None)
    assert (record["global_batch_size"], record["per_replica_batch_size"], record["lr_scale"]) == (64, 32, 2.0)
    one = DistributeInfo("none", "default", 1, ["/device:CPU:0"])
    assert _distribute_record(RunConfig(data="x", batch_size=32, scale_lr=True), one, None)["lr_scale"] == 1.0


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # TensorFlow sees no GPU, whatever the machine has


def test_gpu_benchmark_refuses_without_a_gpu():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_throughput.py"), "--backbone", "efficientnet_lite0"],
                          env=_env(**NO_GPU), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no GPU is visible" in proc.stderr and "--allow-cpu" in proc.stderr


def test_gpu_benchmark_logic_on_a_cpu():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_throughput.py"), "--backbone", "efficientnet_lite0",
                           "--allow-cpu", "--steps", "1", "--warmup", "1", "--batch-size", "2", "--image-size", "32",
                           "--data", str(SAMPLE)], env=_env(**NO_GPU), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == ["CPU (logic check only)"] and result["precision"] == "float32"
    assert result["reference_images_per_second"]["train"] == 4938
    assert result["reference_images_per_second"]["infer"] == 17520
    for key in ("train_synthetic", "train_jpeg", "infer_synthetic", "infer_jpeg"):
        assert result[f"{key}_images_per_second"] > 0 and f"{key}_ratio_to_reference" in result


class _Clock:
    """A fake ``time`` for the benchmark module: it advances only when a fake step runs."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Step:
    """A stand-in for a compiled step of known duration: the first ``slow`` calls take 3 s (tracing), others 0.05 s."""

    def __init__(self, clock: _Clock, slow: int) -> None:
        self.clock, self.calls, self.slow = clock, 0, slow

    def __call__(self, *_args, **_kwargs):
        self.calls += 1
        self.clock.now += 3.0 if self.calls <= self.slow else 0.05
        return (self,)  # the benchmark waits for a step's output with out[0].numpy()

    def numpy(self):
        return np.zeros(1)


def test_gpu_benchmark_rates_time_only_the_measured_steps(monkeypatch):
    """Rates against steps of a known duration: 6 steps of 8 images at 0.05 s each is exactly 160 images/s; had the
    2 warm-up steps (3 s each: graph tracing on a real device) been timed, it would be 7.4."""
    import argparse
    import types

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_throughput

    from tltool import features, finetune, training

    clock = _Clock()
    monkeypatch.setattr(gpu_throughput, "time", clock)
    args = argparse.Namespace(backbone="efficientnet_lite0", weights="none", steps=6, warmup=2, batch_size=8)
    info = types.SimpleNamespace(distributed=False, replicas=1)
    step = _Step(clock, slow=2)
    monkeypatch.setattr(features, "build_feature_extractor", lambda *a, **k: (None, step))
    rate = gpu_throughput.infer_rate(args, None, info, 32, iter(range(100)))
    assert step.calls == 8 and rate == pytest.approx(160)

    fit = _Step(clock, slow=2)

    class Model:  # model.fit runs `steps_per_epoch` steps per call
        def fit(self, data, epochs, steps_per_epoch, **_kwargs):
            for _ in range(steps_per_epoch):
                fit()

    monkeypatch.setattr(finetune, "build_classifier", lambda *a, **k: Model())
    monkeypatch.setattr(finetune, "base_model", lambda model: model)
    monkeypatch.setattr(finetune, "set_trainable", lambda *a, **k: None)
    monkeypatch.setattr(training, "compile_model", lambda *a, **k: None)
    rate = gpu_throughput.train_rate(args, None, info, 32, None)
    assert fit.calls == 8 and rate == pytest.approx(160)
    info.replicas = 2  # the global batch is per-replica batch x replicas
    assert gpu_throughput.train_rate(args, None, info, 32, None) == pytest.approx(320)


def test_a_distributed_epoch_traces_its_steps_once_whatever_the_last_batch():
    """The distributed steps were traced for the first batch's shape: a last partial batch (120 photos in batches of
    16) traced the whole model's train step again, and the val step too, in every stage of a --strategy mirrored
    run (the slowest part of its first epoch). Now each is traced once, for the dataset's element spec."""
    from tltool._tf import tf
    from tltool.training import DistributedEpoch, TrainOptions, compile_model

    class NoBar:
        def update(self, n: int = 1) -> None:
            pass

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
        compile_model(model, TrainOptions(lr=1e-2), steps_per_epoch=3)
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, np.eye(2, dtype=np.float32)[np.arange(20) % 2])).batch(8)
    epoch = DistributedEpoch(model, strategy, TrainOptions(lr=1e-2), None)
    logs = [epoch.run(data, data, NoBar(), 1e-2) for _ in range(2)]  # batches of 8, 8 and 4
    assert epoch.train_step.experimental_get_tracing_count() == 1
    assert epoch.eval_step.experimental_get_tracing_count() == 1
    assert logs[1]["loss"][0] < logs[0]["loss"][0]  # and the steps still train
