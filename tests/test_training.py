"""The epoch loop on a tiny dense model: per-stage early stopping, and checkpoints consistent with state.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tltool.training import LoopState, Stage, TrainOptions, checkpoint_path, run_stages

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 4)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(int)


def _build():
    from tltool._tf import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, activation="softmax", kernel_initializer="zeros")(inputs)
    return keras.Model(inputs, outputs)


def _data(labels):
    from tltool._tf import tf

    return tf.data.Dataset.from_tensor_slices((X, np.eye(2, dtype=np.float32)[labels])).batch(16)


def _val_loss(model) -> float:
    probs = np.asarray(model(X, training=False))
    return float(-np.log(probs[np.arange(len(Y)), Y]).mean())


def test_a_stage_that_stops_early_keeps_its_best_weights_and_the_next_stage_runs(tmp_path):
    # stage 1 learns the wrong labels: val loss is best after its first epoch and worse after the second
    wrong, right = _data(1 - Y), _data(Y)
    seen = {}

    def enter_stage_2(model):
        seen["val_loss"] = _val_loss(model)

    stages = [Stage("one", TrainOptions(epochs=5, lr=0.5, optimizer="sgd", early_stopping=1)),
              Stage("two", TrainOptions(epochs=2, lr=0.5, optimizer="sgd"), enter_stage_2)]
    model, state = run_stages(_build, stages, lambda epoch: wrong if epoch < 2 else right, right, 4, tmp_path)
    assert [r["stage"] for r in state.history] == ["one", "one", "two", "two"]
    assert state.stopped_early == ["one"] and state.epoch == 4
    h = state.history
    assert h[1]["val_loss"] > h[0]["val_loss"]
    # stage 2 started from stage 1's best epoch (the first), not from its last
    assert seen["val_loss"] == pytest.approx(h[0]["val_loss"], abs=1e-5)
    assert h[3]["val_loss"] < h[2]["val_loss"]
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["stopped_early"] == ["one"] and saved["checkpoint"] == "checkpoint-epoch0004.keras"
    # only the checkpoint state.json names is kept (and this stage's best weights)
    assert sorted(p.name for p in tmp_path.glob("checkpoint*")) == ["checkpoint-epoch0004.keras"]
    assert len(list(tmp_path.glob("best-epoch*.weights.h5"))) == 1


def test_a_resume_after_a_stage_stopped_early_goes_on_with_the_next_stage(tmp_path):
    wrong, right = _data(1 - Y), _data(Y)

    class Killed(Exception):
        pass

    def data(epoch):
        if epoch == 2 and not killed:
            killed.append(epoch)
            raise Killed  # dies as stage 2 starts
        return wrong if epoch < 2 else right

    killed: list[int] = []
    stages = [Stage("one", TrainOptions(epochs=5, lr=0.5, optimizer="sgd", early_stopping=1)),
              Stage("two", TrainOptions(epochs=2, lr=0.5, optimizer="sgd"))]
    with pytest.raises(Killed):
        run_stages(_build, stages, data, right, 4, tmp_path)
    assert LoopState.load(tmp_path / "state.json").stage_stopped
    _, state = run_stages(_build, stages, data, right, 4, tmp_path, resume=True)
    assert [(r["epoch"], r["stage"]) for r in state.history] == [(1, "one"), (2, "one"), (3, "two"), (4, "two")]
    assert state.stopped_early == ["one"]


def test_a_kill_between_checkpoint_and_state_does_not_repeat_an_epoch(tmp_path, monkeypatch):
    right = _data(Y)
    stages = [Stage("s", TrainOptions(epochs=3, lr=0.1))]
    reference, _ = run_stages(_build, stages, lambda epoch: right, right, 4, tmp_path / "whole")

    class Killed(Exception):
        pass

    save = LoopState.save

    def save_or_die(state, path):
        if state.epoch == 2:
            raise Killed  # epoch 2's checkpoint is written, state.json still says epoch 1
        save(state, path)

    run = tmp_path / "killed"
    monkeypatch.setattr(LoopState, "save", save_or_die)
    with pytest.raises(Killed):
        run_stages(_build, stages, lambda epoch: right, right, 4, run)
    monkeypatch.setattr(LoopState, "save", save)
    assert json.loads((run / "state.json").read_text())["epoch"] == 1
    assert checkpoint_path(run).name == "checkpoint-epoch0001.keras"
    model, state = run_stages(_build, stages, lambda epoch: right, right, 4, run, resume=True)
    assert [r["epoch"] for r in state.history] == [1, 2, 3]
    # the resumed run ends exactly where the uninterrupted one did: epoch 2 ran once, on epoch 1's model
    for a, b in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert sorted(p.name for p in run.glob("*checkpoint*")) == ["checkpoint-epoch0003.keras"]
