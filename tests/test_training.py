"""The epoch loop on tiny dense models: the policies (best weights, early stopping, plateau), checkpoints consistent
with state.json, and resumes that continue exactly (policy counters, dropout)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from interrupt import Killed, killed_after_epoch
from tltool._tf import keras, tf
from tltool.errors import TltoolError
from tltool.keras_files import load_keras_model
from tltool.report import weights_line
from tltool.training import LoopState, Stage, TrainOptions, checkpoint_path, loop, run_stages, shipped_weights

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 4)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(int)


def _build():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, activation="softmax", kernel_initializer="zeros")(inputs)
    return keras.Model(inputs, outputs)


def _data(labels):
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


# ------------------------------------------------------------------ the policies, on a scripted val loss
class ScriptedEpoch:
    """Stands in for ``model.fit``: epoch ``e`` (what ``train_data(e)`` returns) fills the weights with ``e + 1`` and
    reports ``VAL_LOSS[e]``, so every policy sees exactly the val loss a test wants."""

    VAL_LOSS: list[float] = []

    def __init__(self, model, class_weight):
        self.model = model

    def run(self, epoch, val, bar, lr):
        self.model.set_weights([np.full_like(w, epoch + 1.0) for w in self.model.get_weights()])
        return {"loss": [1.0], "val_loss": [self.VAL_LOSS[epoch]]}


@pytest.fixture()
def scripted(monkeypatch):
    monkeypatch.setattr(loop, "FitEpoch", ScriptedEpoch)

    def run(val_loss, stages, run_dir, **kw):
        ScriptedEpoch.VAL_LOSS = val_loss
        return run_stages(_build, stages, lambda epoch: epoch, None, 4, run_dir, **kw)

    return run


def _filled_with(model) -> float:
    values = np.concatenate([w.ravel() for w in model.get_weights()])
    assert values.min() == values.max()
    return float(values[0])


def test_plateau_drops_the_lr_by_the_factor_after_patience_epochs_without_a_better_val_loss(scripted, tmp_path):
    options = TrainOptions(epochs=8, lr=0.1, optimizer="sgd", schedule="plateau", plateau_patience=2,
                           plateau_factor=0.5)
    # better, better, then it stalls (0.89995 is not better by more than 1e-4), then better once more
    _, state = scripted([1.0, 0.9, 0.9, 0.89995, 0.95, 0.9, 0.5, 0.6], [Stage("s", options)], tmp_path)
    lrs = [r["lr"] for r in state.history]
    # 2 epochs without a new best (3, 4): epoch 5 runs at lr x 0.5; again after 5, 6: epoch 7 at x 0.25
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025], rtol=1e-6)
    assert state.lr_scale == pytest.approx(0.25) and state.plateau_wait == 1
    assert (state.best_epoch, state.best_val_loss) == (7, 0.5)


def test_the_history_and_the_epoch_line_give_the_lr_at_both_ends_of_an_epoch(scripted, tmp_path, monkeypatch,
                                                                             capsys):
    """Only the lr at an epoch's start was shown: a one-epoch head stage with a warm-up read 'lr 0.001', as if it
    had trained at 1 % of --head-lr, while it rose to 0.1 within the epoch."""
    class StepsEpoch(ScriptedEpoch):
        def run(self, epoch, val, bar, lr):
            self.model.optimizer.iterations.assign_add(4)  # the 4 steps of an epoch
            return super().run(epoch, val, bar, lr)

    monkeypatch.setattr(loop, "FitEpoch", StepsEpoch)
    options = TrainOptions(epochs=3, lr=0.1, optimizer="sgd", schedule="cosine", warmup_epochs=1)
    _, state = scripted([1.0, 0.9, 0.8], [Stage("s", options)], tmp_path)
    assert [r["lr"] for r in state.history][:2] == pytest.approx([0.001, 0.1])
    # the end is the rate the epoch's last batch (step 3, step 7) trained at, not the next one's
    assert [r["lr_end"] for r in state.history][:2] == pytest.approx([0.07525, 0.0691342], rel=1e-5)
    assert "lr 0.001→0.075 " in capsys.readouterr().err


def test_a_step_schedule_epoch_ends_at_the_rate_its_batches_trained_at(scripted, tmp_path, monkeypatch, capsys):
    """With the step bounds one step earlier, the rate read after an epoch's last batch was the next period's:
    'epoch 1/3 ... lr 0.001→0.0001', a rate none of its batches used."""
    class StepsEpoch(ScriptedEpoch):
        def run(self, epoch, val, bar, lr):
            self.model.optimizer.iterations.assign_add(4)
            return super().run(epoch, val, bar, lr)

    monkeypatch.setattr(loop, "FitEpoch", StepsEpoch)
    options = TrainOptions(epochs=3, lr=0.1, optimizer="sgd", schedule="step", step_epochs=1, gamma=0.5)
    _, state = scripted([1.0, 0.9, 0.8], [Stage("s", options)], tmp_path)
    assert [r["lr"] for r in state.history] == [r["lr_end"] for r in state.history] == pytest.approx(
        [0.1, 0.05, 0.025])
    assert "→" not in capsys.readouterr().err


def test_without_the_plateau_schedule_the_lr_does_not_drop(scripted, tmp_path):
    _, state = scripted([1.0, 1.0, 1.0, 1.0], [Stage("s", TrainOptions(epochs=4, lr=0.1, optimizer="sgd",
                                                                       plateau_patience=1))], tmp_path)
    assert [r["lr"] for r in state.history] == pytest.approx([0.1] * 4) and state.lr_scale == 1.0


def test_early_stopping_stops_after_patience_epochs_and_restores_the_best_weights(scripted, tmp_path):
    stages = [Stage("one", TrainOptions(epochs=6, lr=0.1, optimizer="sgd", early_stopping=2))]
    model, state = scripted([1.0, 0.5, 0.7, 0.6, 0.1, 0.1], stages, tmp_path)
    assert [r["epoch"] for r in state.history] == [1, 2, 3, 4]  # 3 and 4 were not better than 2: stop
    assert state.stopped_early == ["one"] and state.stage_stopped
    assert _filled_with(model) == 2.0  # epoch 2's weights, not epoch 4's
    assert _filled_with(load_keras_model(checkpoint_path(tmp_path))) == 2.0  # and so is the checkpoint
    # the report says which epoch the model is, and that val chose it
    weights = shipped_weights(state)
    assert weights == {"epoch": 2, "epochs": 4, "stage": "one", "chosen_by": "early stopping",
                       "lowest_val_loss_epoch": 2}
    assert weights_line(weights).startswith("model: the weights of epoch 2 of 4, where early stopping ended stage "
                                            "one at its lowest val loss: chosen on these val images")


def test_best_weights_are_those_of_the_epoch_with_the_lowest_val_loss(scripted, tmp_path):
    stages = [Stage("s", TrainOptions(epochs=5, lr=0.1, optimizer="sgd"))]
    model, state = scripted([0.9, 0.4, 0.39995, 0.5, 0.8], stages, tmp_path)
    # epoch 3 is lower than epoch 2 by less than 1e-4: not a new best
    assert (state.best_epoch, state.best_val_loss) == (2, 0.4)
    assert state.best_weights == "best-epoch0002.weights.h5" and _filled_with(model) == 5.0  # no early stopping
    # a run folder holding best-epoch0002 was read as the model's epoch (a review): the report says which it is
    weights = shipped_weights(state)
    assert weights == {"epoch": 5, "epochs": 5, "stage": "s", "chosen_by": "last epoch", "lowest_val_loss_epoch": 2}
    assert weights["epoch"] == _filled_with(model)
    assert weights_line(weights) == (
        "model: the weights after the last epoch (5); stage s's val loss was lowest at epoch 2 (best-epoch0002"
        ".weights.h5, which `--early-stopping` would restore), but weights picked by their val score are scored on the images "
        "that picked them")
    model.load_weights(str(tmp_path / state.best_weights))
    assert _filled_with(model) == 2.0


def test_a_resume_mid_plateau_and_mid_patience_continues_the_policies_exactly(scripted, tmp_path):
    val_loss = [1.0, 0.8, 0.85, 0.9, 0.7, 0.75, 0.8, 0.9, 0.95, 0.99]
    options = TrainOptions(epochs=10, lr=0.1, optimizer="sgd", schedule="plateau", plateau_patience=2,
                           plateau_factor=0.5, early_stopping=4)
    stages = [Stage("one", options), Stage("two", TrainOptions(epochs=1, lr=0.1, optimizer="sgd"))]
    whole_model, whole = scripted(val_loss + [0.5], stages, tmp_path / "whole")
    # uninterrupted: drops after epochs 4 and 7, stops after epoch 9 (4 epochs after the best, 5)
    assert [r["epoch"] for r in whole.history if r["stage"] == "one"] == list(range(1, 10))
    assert [r["lr"] for r in whole.history][:9] == pytest.approx([0.1] * 4 + [0.05] * 3 + [0.025] * 2)

    run = tmp_path / "killed"
    with killed_after_epoch(6), pytest.raises(Killed):  # mid-plateau (1 epoch since the best) and mid-patience
        scripted(val_loss + [0.5], stages, run)
    stored = LoopState.load(run / "state.json")
    assert (stored.wait, stored.plateau_wait, stored.lr_scale, stored.best_epoch) == (1, 1, 0.5, 5)
    model, resumed = scripted(val_loss + [0.5], stages, run, resume=True)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in whole.history]
    for name in ("best_val_loss", "best_epoch", "wait", "plateau_wait", "lr_scale", "stopped_early", "epoch"):
        assert getattr(resumed, name) == getattr(whole, name), name
    assert _filled_with(model) == _filled_with(whole_model) == 10.0  # the one epoch of stage two


# ------------------------------------------------------------------ resume with dropout
def _build_with_dropout():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(32, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=1))
    x = keras.layers.Dropout(0.5)(hidden(inputs))
    outputs = keras.layers.Dense(2, activation="softmax", kernel_initializer="zeros")(x)
    return keras.Model(inputs, outputs)


def _max_diff(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a.get_weights(), b.get_weights()))


def test_a_resumed_run_with_dropout_ends_where_the_uninterrupted_one_does(tmp_path):
    right = _data(Y)
    stages = [Stage("s", TrainOptions(epochs=3, lr=0.05))]

    def train(run, seed=0, **kw):  # every run seeds everything first, as a training run does
        keras.utils.set_random_seed(seed)
        return run_stages(_build_with_dropout, stages, lambda epoch: right, right, 4, run, **kw)

    reference, _ = train(tmp_path / "whole")
    other_masks, _ = train(tmp_path / "other", seed=1)  # the same initial weights, other dropout masks
    assert _max_diff(reference, other_masks) > 1e-3  # so dropout decides the result: the match below means something

    with killed_after_epoch(1), pytest.raises(Killed):
        train(tmp_path / "killed")
    resumed, state = train(tmp_path / "killed", resume=True)
    assert [r["epoch"] for r in state.history] == [1, 2, 3]
    assert _max_diff(resumed, reference) < 1e-6


def test_a_training_loss_back_above_chance_stops_the_run(tmp_path):
    """Two epochs in a row with a loss above a uniform guess's (log 2 here) after the run learned end it, with
    what to do; no NaN need appear (stage 2 is made to unlearn by training on the flipped labels)."""
    from tltool.training import DivergedLoss

    stages = [Stage("learn", TrainOptions(epochs=6, lr=0.1)), Stage("unlearn", TrainOptions(epochs=5, lr=0.01))]
    right, wrong = _data(Y), _data(1 - Y)
    with pytest.raises(DivergedLoss, match=r"stage unlearn\).* in epochs 7 and 8, after .* above the 0\.693 of a "
                                           r"uniform guess over 2 classes.*\(0\.01\) is too high"):
        run_stages(_build, stages, lambda epoch: right if epoch < 6 else wrong, right, 4, tmp_path)
    assert LoopState.load(tmp_path / "state.json").epoch == 7  # the second diverged epoch is not checkpointed


def test_a_loss_near_chance_before_the_run_learned_is_not_divergence():
    from tltool.training import check_not_diverged

    def history(*losses):
        return [{"epoch": i + 1, "loss": v} for i, v in enumerate(losses)]

    check_not_diverged(history(1.60, 1.65, 1.62, 1.70), 5, "train", 1e-3)  # from scratch, still guessing
    check_not_diverged(history(1.60, 0.90, 1.65, 1.70), 5, "train", 1e-3)  # never below half of log 5 = 0.80
    check_not_diverged(history(0.60, 0.70, 1.20, 1.30), 5, "train", 1e-3)  # worse, but still better than guessing
    check_not_diverged(history(0.60, 1.08, 1.745), 5, "train", 1e-3)  # one bad epoch may be noise
    with pytest.raises(TltoolError, match=r"1\.745 and 1\.716 in epochs 3 and 4, after 0\.600"):
        check_not_diverged(history(0.60, 1.08, 1.745, 1.716), 5, "unfreeze 2", 0.01)  # the benchmark's SGD run
