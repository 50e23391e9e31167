"""--resume reads back state.json and the checkpoint it names: both may be damaged or hostile. Anything wrong is a
one-line TltoolError naming the file and what to do, never a traceback, and nothing outside the run folder loads."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from interrupt import Killed, killed_after_epoch
from tltool._tf import keras, tf
from tltool.errors import TltoolError
from tltool.training import LoopState, Stage, TrainOptions, checkpoint_path, run_stages

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 4)).astype(np.float32)
Y = (X[:, 0] > 0).astype(int)
DATA = tf.data.Dataset.from_tensor_slices((X, np.eye(2, dtype=np.float32)[Y])).batch(16)
STAGES = [Stage("head", TrainOptions(epochs=2, lr=0.1)), Stage("tune", TrainOptions(epochs=2, lr=0.01))]


def _build():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))


def _train(run, resume=False):
    return run_stages(_build, STAGES, lambda epoch: DATA, DATA, 2, run, resume=resume)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """A tiny real run killed right after epoch 3 (stage "tune", 1 of its 2 epochs done)."""
    run = tmp_path_factory.mktemp("killed")
    with pytest.raises(Killed), killed_after_epoch(3):
        _train(run)
    assert json.loads((run / "state.json").read_text())["checkpoint"] == "checkpoint-epoch0003.keras"
    return run


@pytest.fixture()
def run(killed, tmp_path):
    """A fresh copy of the killed run (a resume of it trains epoch 4)."""
    return Path(shutil.copytree(killed, tmp_path / "run"))


def _edit(run, **changes):
    state = json.loads((run / "state.json").read_text())
    state.update(changes)
    (run / "state.json").write_text(json.dumps(state))


def _one_line_error(run, match):
    with pytest.raises(TltoolError, match=match) as info:
        _train(run, resume=True)
    message = str(info.value)
    assert "\n" not in message and "state.json" in message
    return message


def test_the_untouched_run_resumes_after_epoch_3(run):
    _, state = _train(run, resume=True)
    assert state.epoch == 4 and [r["epoch"] for r in state.history] == [1, 2, 3, 4]


# ------------------------------------------------------------------ 1. the checkpoint must be a file of the run
@pytest.mark.parametrize("name", ["../other/checkpoint-epoch0003.keras", "ABSOLUTE", "sub/checkpoint.keras", "..",
                                  "", 7, None])
def test_a_checkpoint_outside_the_run_folder_is_refused(run, tmp_path, name):
    other = tmp_path / "other"  # another run with the same architecture: its weights would load without a word
    other.mkdir()
    shutil.copy(run / "checkpoint-epoch0003.keras", other / "checkpoint-epoch0003.keras")
    (run / "sub").mkdir()
    shutil.copy(run / "checkpoint-epoch0003.keras", run / "sub" / "checkpoint.keras")
    if name == "ABSOLUTE":
        name = str(other / "checkpoint-epoch0003.keras")
    _edit(run, checkpoint=name)
    _one_line_error(run, "checkpoint")


def test_a_checkpoint_that_is_a_link_or_a_folder_is_refused(run, tmp_path):
    outside = tmp_path / "elsewhere.keras"
    shutil.move(run / "checkpoint-epoch0003.keras", outside)
    (run / "checkpoint-epoch0003.keras").symlink_to(outside)
    _one_line_error(run, "not a regular file")
    (run / "checkpoint-epoch0003.keras").unlink()
    (run / "checkpoint-epoch0003.keras").mkdir()
    _one_line_error(run, "not a regular file")


def test_best_weights_outside_the_run_folder_are_refused(run):
    _edit(run, best_weights="../best-epoch0001.weights.h5")
    _one_line_error(run, "best_weights")


# ------------------------------------------------------------------ 2. state.json must be what tltool writes
@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "null", '"epoch"', "\xff\xfe"])
def test_a_state_json_that_is_not_a_json_object_is_a_clear_error(run, text):
    (run / "state.json").write_bytes(text.encode("latin-1"))
    message = _one_line_error(run, "state.json")
    assert "delete the state.json" in message
    with pytest.raises(TltoolError):
        LoopState.load(run / "state.json")
    with pytest.raises(TltoolError):
        checkpoint_path(run)


@pytest.mark.parametrize("changes", [
    {"epoch": "four"}, {"epoch": True}, {"epoch": 3.0}, {"epoch": -1}, {"stage_epoch": -5}, {"stage": "1"},
    {"stage_epoch": None}, {"history": {"1": 2}}, {"history": [1, 2, 3]}, {"lr_scale": "x"}, {"lr_scale": 0},
    {"best_val_loss": "low"}, {"wait": 1.5}, {"plateau_wait": -1}, {"stage_stopped": "no"},
    {"stopped_early": [1]}, {"seed_states": [[1, 2, 3]]}, {"seed_states": "x"}, {"best_epoch": 99},
])
def test_a_field_of_the_wrong_type_is_a_clear_error(run, changes):
    _edit(run, **changes)
    _one_line_error(run, next(iter(changes)))


@pytest.mark.parametrize("changes", [
    {"epoch": 10 ** 9},  # trained on and reported "1000000015 epochs in all"
    {"epoch": 5},  # more than stage 0 (2) + stage 1's 1 done
    {"stage_epoch": 3},  # stage "tune" has 2 epochs
    {"stage": 2},  # the run has 2 stages
])
def test_counters_beyond_the_runs_epochs_are_a_clear_error(run, changes):
    state = json.loads((run / "state.json").read_text())
    if "epoch" in changes and changes["epoch"] < 100:  # with the history rows to match, only the plan can tell
        state["history"] += [{**state["history"][-1], "epoch": e} for e in range(4, changes["epoch"] + 1)]
    state.update(changes)
    (run / "state.json").write_text(json.dumps(state))
    _one_line_error(run, "|".join(changes))


# ------------------------------------------------------------------ 3. a damaged checkpoint
def test_a_truncated_checkpoint_is_named_as_damaged(run):
    checkpoint = run / "checkpoint-epoch0003.keras"
    checkpoint.write_bytes(checkpoint.read_bytes()[:2000])
    message = _one_line_error(run, "damaged")
    assert "checkpoint-epoch0003.keras" in message and "File not found" not in message


def test_damaged_best_weights_are_named_when_early_stopping_restores_them(tmp_path):
    from tltool.training.policies import BestTracker, BestWeights

    best = BestWeights(BestTracker(), tmp_path)
    best.best_weights = "best-epoch0002.weights.h5"
    (tmp_path / best.best_weights).write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    with pytest.raises(TltoolError, match=r"best-epoch0002.weights.h5: the best epoch's weights cannot be loaded"):
        best.restore(_build())


def test_best_weights_declaring_a_tensor_they_do_not_store_are_refused(tmp_path):
    """The resumed run's best-epoch file is input: a kernel of 18 MB with no chunk written loaded as zeros (and one
    declaring 4 GiB took 17 GB of memory before Keras' error)."""
    import h5py

    from tltool.training.policies import BestTracker, BestWeights

    inputs = keras.Input((1100,))
    model = keras.Model(inputs, keras.layers.Dense(4096)(inputs))
    best = BestWeights(BestTracker(), tmp_path)
    best.best_weights = "best-epoch0002.weights.h5"
    model.save_weights(str(tmp_path / best.best_weights))
    with h5py.File(tmp_path / best.best_weights, "a") as f:
        del f["layers/dense/vars/0"]
        f.create_dataset("layers/dense/vars/0", shape=(1100, 4096), dtype="f4", chunks=True, compression="gzip")
    with pytest.raises(TltoolError, match=r"best-epoch0002.weights.h5: the best epoch's weights cannot be loaded"):
        best.restore(model)


# ------------------------------------------------------------------ 4. config.json: the settings a resume goes on with
@pytest.mark.parametrize("text, named", [
    ("{not json", "cannot be read as JSON"), ("[1, 2]", "holds a JSON list"), ('{"kind": ["x"]}', "kind"),
    ('{"kind": "finetune", "lr": "fast"}', "lr = 'fast'"), ('{"kind": "finetune", "epochs": true}', "epochs"),
    ('{"kind": "finetune", "lr": -1}', "--lr must be"), ('{"kind": "finetune", "augment": "wild"}', "'wild'"),
    ('{"kind": "finetune", "refit": 1}', "refit"),
])
def test_a_damaged_config_json_is_a_clear_error_before_anything_runs(tmp_path, text, named):
    """state.json was checked, config.json was not: a hand-edited setting failed later inside the run, as a
    traceback (a str learning rate in the optimizer) or not at all (a negative one)."""
    from tltool.finetune import FinetuneConfig, finetune

    (tmp_path / "config.json").write_text(text)
    for resume in (lambda: FinetuneConfig.from_run(tmp_path), lambda: finetune(FinetuneConfig(), resume=tmp_path)):
        with pytest.raises(TltoolError, match="config.json") as info:
            resume()
        assert named in str(info.value) and "\n" not in str(info.value)


def test_a_config_json_as_tltool_writes_it_resumes_with_its_settings(tmp_path):
    from dataclasses import asdict

    from tltool.finetune import FinetuneConfig

    started = FinetuneConfig(data="photos", lr=3e-4, weight_decay=None, refit=True, image_size=288)
    (tmp_path / "config.json").write_text(json.dumps({**asdict(started), "kind": "finetune"}))
    assert FinetuneConfig.from_run(tmp_path) == started


@pytest.mark.parametrize("cv, named", [(None, "cv = None"), (1, "cv = 1"), ("5", "cv = '5'"), (True, "cv = True")])
def test_a_cross_validation_resumes_with_its_folds_or_names_the_damage(tmp_path, cv, named):
    """A cross-validated fine-tune's config.json gives its settings and its number of folds; other commands name
    the one that resumes it."""
    from dataclasses import asdict

    from tltool.configs import ScratchConfig, stored_folds
    from tltool.finetune import FinetuneConfig

    started = FinetuneConfig(data="photos", lr=3e-4, image_size=288)
    (tmp_path / "config.json").write_text(json.dumps({**asdict(started), "kind": "finetune-cv", "cv": 3}))
    assert FinetuneConfig.from_run(tmp_path, "finetune-cv") == started and stored_folds(tmp_path) == 3
    for wrong in (lambda: FinetuneConfig.from_run(tmp_path), lambda: ScratchConfig.from_run(tmp_path)):
        with pytest.raises(TltoolError, match=r"cross-validated fine-tuning run, .* resume it with `tltool finetune "
                                              r"--resume"):
            wrong()
    (tmp_path / "config.json").write_text(json.dumps({**asdict(started), "kind": "finetune-cv", "cv": cv}))
    with pytest.raises(TltoolError, match="config.json: " + named):
        stored_folds(tmp_path)


@pytest.mark.parametrize("distribute, named", [
    ("x", "distribute is 'x'"), ({"global_batch_size": "abc"}, "global_batch_size is 'abc'"),
    ({"global_batch_size": -3}, "global_batch_size is -3"), ({"lr_scale": 0}, "lr_scale is 0"),
])
def test_a_damaged_distribute_record_is_a_clear_error(tmp_path, distribute, named):
    """The record a resume keeps its global batch from was read unchecked: AttributeError, ValueError, or TF's
    'Batch size must be greater than zero' after the model was built."""
    from dataclasses import asdict

    from tltool.configs import stored_distribute
    from tltool.finetune import FinetuneConfig

    (tmp_path / "config.json").write_text(json.dumps({**asdict(FinetuneConfig()), "kind": "finetune",
                                                      "distribute": distribute}))
    with pytest.raises(TltoolError, match=named):
        stored_distribute(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**asdict(FinetuneConfig()), "kind": "finetune",
                                                      "distribute": {"global_batch_size": 64, "lr_scale": 2}}))
    assert stored_distribute(tmp_path)["global_batch_size"] == 64


@pytest.mark.parametrize("layout", [["state.json"], ["fold-1/run/state.json"], ["fold-2/held_out.json"]])
def test_an_unfinished_run_is_kept_only_where_resume_can_finish_it(tmp_path, layout):
    """A killed run whose checkpoints `--resume` can finish is refused without --force; one of an older tltool,
    without the split.csv a resume needs, is not (it was refused, naming a --resume that then refused it too)."""
    from tltool.outputs import release_output_dirs
    from tltool.runs import check_run_dir, new_run_dir

    out = new_run_dir("finetune", out=tmp_path / "run")
    release_output_dirs()
    for name in layout:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("{}")
    check_run_dir(out)  # no split.csv: nothing --resume could go on with
    (out / "split.csv").write_text("path,label,split\n")
    with pytest.raises(TltoolError, match="checkpoints that `--resume .*` can finish"):
        check_run_dir(out)
    check_run_dir(out, force=True)


def test_each_checkpoint_lists_what_the_run_holds_so_a_kill_leaves_the_users_files_known(tmp_path):
    """Killed after a checkpoint, a run's marker listed nothing: --force on it deleted a file the user had added.
    Each file is listed as it is written, the checkpoint too (a kill between it and a listing made afterwards left
    the checkpoint unlisted, taken for the user's)."""
    from tltool.outputs import MARKER, added_entries, claim_output_dir, hold_output_dir, release_output_dirs
    from tltool.training.state import LoopState, save_checkpoint

    run = claim_output_dir(tmp_path / "run", "run")
    hold_output_dir(run)  # as every command holds the run it writes
    save_checkpoint(_build(), LoopState(epoch=1, history=[{"epoch": 1, "loss": 0.5}]), run)
    release_output_dirs()  # killed: nothing more is written
    listed = json.loads((run / MARKER).read_text())["files"]
    assert listed == ["checkpoint-epoch0001.keras", "history.csv", "state.json"]
    (run / "notes.txt").write_text("mine")
    assert added_entries(run) == ["notes.txt"]


def test_the_settings_a_new_run_would_change_of_an_unfinished_one_are_named(tmp_path, monkeypatch):
    """What lets a recipe go on with its interrupted training (tests/test_recipes.py): the run records the size as
    given beside the resolved one, an augmentation file by its absolute path, and a cross-validation's folds."""
    from dataclasses import asdict, replace

    from tltool.configs import FinetuneConfig
    from tltool.supervised import changed_settings

    monkeypatch.chdir(tmp_path)
    Path("aug.yaml").write_text("[]\n")
    config = FinetuneConfig(data="photos/", augment="aug.yaml", epochs=3)
    record = {**asdict(config), "augment": str(tmp_path / "aug.yaml"), "kind": "finetune", "image_size": 224,
              "image_size_given": None, "classes": ["a", "b"]}
    run = tmp_path / "run"
    run.mkdir()

    def changes(record: dict, now=config, cv: int = 0) -> list[str]:
        (run / "config.json").write_text(json.dumps(record))
        return changed_settings(now, run, cv)

    assert changes(record) == [] and changes(record, replace(config, data="photos", strategy="mirrored")) == []
    assert changes(record, replace(config, epochs=4, image_size=224)) == ["image_size: None -> 224", "epochs: 3 -> 4"]
    older = {k: v for k, v in record.items() if k != "image_size_given"}  # a run of a tltool before the record
    assert changes(older, replace(config, image_size=224)) == []
    assert changes(older) == ["image_size: '224 (given, or the default: a run of an older tltool does not say)' -> "
                              "None"]
    assert changes({**record, "data": str(tmp_path / "photos")}) == []  # one place, spelt two ways
    assert changes(record, cv=3) == ["kind: finetune -> finetune-cv"]
    assert changes({**record, "kind": "finetune-cv", "cv": 5}, cv=3) == ["cv: 5 -> 3"]
    # a cross-validation recorded --image-size as given from the start (its image_size is not the resolved one)
    cv_run = {k: v for k, v in record.items() if k != "image_size_given"}
    assert changes({**cv_run, "kind": "finetune-cv", "cv": 3, "image_size": None}, cv=3) == []
