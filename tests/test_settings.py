"""One table of legal values and one default per setting: the CLI, the configs and the registries agree."""
from __future__ import annotations

import dataclasses

import click
import pytest

from tltool import settings
from tltool.arch import build_arch
from tltool.cli import main
from tltool.cli.recipes import recipe_commands
from tltool.collect import import_images
from tltool.configs import ExtractConfig, FinetuneConfig, LinearConfig, resolve_input, split_settings
from tltool.crossval import learning_curve
from tltool.digits import export_digits
from tltool.errors import TltoolError
from tltool.labeler import export_labels
from tltool.labeler.suspects import find_suspects
from tltool.predict import predict_images
from tltool.sample import make_shapes_dataset
from tltool.stats import Proportion, format_proportion
from tltool.viz.embedding import visualize_embedding


def _options():
    for name, command in recipe_commands().items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.is_flag:  # `arch conv-calc --pool` is a flag
                yield name, param


def test_every_choice_of_the_cli_comes_from_the_table():
    seen = set()
    for command, param in _options():
        setting = "export_format" if param.name == "fmt" else param.name
        if isinstance(param.type, click.Choice) and setting in settings.CHOICES:
            assert tuple(param.type.choices) == settings.CHOICES[setting], f"{command} --{param.name}"
            seen.add(setting)
        elif setting in settings.CHOICES and setting != "augment":
            pytest.fail(f"{command} --{param.name} is not a click.Choice of the settings table")
    assert seen == set(settings.CHOICES) - {"augment"}


def test_registries_register_exactly_the_table():
    from tltool import augment, distribute, heads, images, training, tta

    assert set(training.OPTIMIZERS) == set(settings.CHOICES["optimizer"])
    assert set(training.SCHEDULES) == set(settings.CHOICES["schedule"])
    assert set(heads.HEADS) == set(settings.CHOICES["head"])
    assert set(augment.PRESETS) == set(settings.CHOICES["augment"])
    assert distribute.STRATEGIES == settings.CHOICES["strategy"]
    assert tta.TTA_MODES == settings.CHOICES["tta"]
    assert images.RESIZE_POLICIES == settings.CHOICES["resize"]


@pytest.mark.parametrize("config", [ExtractConfig, LinearConfig, FinetuneConfig])
def test_cli_defaults_are_the_config_defaults(config):
    commands = {ExtractConfig: ["extract", "probe"], LinearConfig: ["linear", "probe"], FinetuneConfig: ["finetune"]}
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    all_commands = recipe_commands()
    for name in commands[config]:
        checked = 0
        for param in all_commands[name].params:
            if param.name in defaults and param.name != "data":
                assert param.default == defaults[param.name], f"{name} --{param.name}"
                checked += 1
        assert checked >= 5


def test_one_default_backbone():
    from tltool import backbones

    assert backbones.DEFAULT_BACKBONE == ExtractConfig.backbone == FinetuneConfig.backbone
    assert settings.DEFAULT_BACKBONE == "efficientnet_lite0"


def test_augment_preview_draws_default_comes_from_the_library():
    import inspect

    from tltool.augment import preview

    command = main.commands["augment"].commands["preview"]
    draws = next(p for p in command.params if p.name == "draws")
    assert draws.default == inspect.signature(preview).parameters["draws"].default == settings.PREVIEW_DRAWS


def test_configs_validate_against_the_table():
    with pytest.raises(TltoolError, match=r"--pool must be one of \('avg', 'max', 'avgmax'\), got 'mean'"):
        LinearConfig(pool="mean").validate()
    with pytest.raises(TltoolError, match="Did you mean 'logreg'"):
        LinearConfig(head="logre").validate()
    with pytest.raises(TltoolError, match="--resize must be one of"):
        ExtractConfig(resize="squash").validate()
    with pytest.raises(TltoolError, match="--cv .* cannot add --tta"):
        LinearConfig(cv=5, tta="flip").validate()
    with pytest.raises(TltoolError, match="Did you mean 'standard'"):
        settings.check_choice("augment", "standart")
    settings.check_choice("augment", "my-pipeline.yaml")  # a file: checked when it is read
    LinearConfig().validate()
    ExtractConfig().validate()
    for bad in (-1.0, float("nan"), 11.0):
        with pytest.raises(TltoolError, match=r"--mixup must be a number in \[0, 10\] \(0 turns mixup off; "):
            FinetuneConfig(mixup=bad).validate()
    FinetuneConfig(mixup=0.2).validate()
    with pytest.raises(TltoolError, match="--tta must be one of"):
        FinetuneConfig(tta="flop").validate()


@pytest.mark.parametrize("field, bad, legal", [
    ("batch_size", 0, "at least 1"), ("epochs", -1, "at least 0"), ("head_epochs", -1, "at least 0"),
    ("early_stopping", -1, "at least 0"), ("step_epochs", 0, "at least 1"), ("warmup_epochs", -1.0, "at least 0"),
    ("weight_decay", -1.0, "at least 0"), ("head_lr", 0.0, r"in \(0, 10\]"), ("head_lr", 1e300, r"in \(0, 10\]"), ("gamma", -1.0, r"in \(0, 1\]"),
    ("gamma", 1.5, r"in \(0, 1\]"), ("plateau_patience", 0, "at least 1"), ("dropout", 1.0, r"in \[0, 0.99\]"),
    ("seed", -1, r"in \[0, 4294967295\]"), ("seed", 2**32, r"in \[0, 4294967295\]"), ("epochs", float("nan"), ""),
    ("lr", 0.0, r"in \(0, 10\]"), ("lr", float("inf"), r"in \(0, 10\]"), ("lr", 11.0, r"in \(0, 10\]"), ("label_smoothing", 1.0, r"in \[0, 1\)"),
    ("label_smoothing", -0.1, r"in \[0, 1\)"), ("image_size", 0, r"in \[8, 4096\]"),
    ("image_size", 5000, r"in \[8, 4096\]"), ("epochs", 10**400, "at least 0"), ("seed", -10**400, "in")])
def test_numbers_out_of_range_are_one_line_errors(field, bad, legal):
    """Before, --batch-size 0 and --seed -1 ended in TensorFlow's and NumPy's tracebacks, and --epochs -1 or
    --gamma -1 ran as if they meant something; --head-lr 1e300 trained 20 s and ended in Keras' traceback."""
    option = "--" + field.replace("_", "-")
    with pytest.raises(TltoolError, match=f"{option} must be a (whole )?number {legal}"):
        FinetuneConfig(data="x", **{field: bad}).validate()
    legal_range = settings.RANGES[field]
    FinetuneConfig(data="x", **{field: legal_range.low + (1 if legal_range.open_low else 0)
                                if field not in ("gamma", "plateau_factor") else 0.5}).validate()


def test_augment_preview_ranges_its_numbers_too(tmp_path):
    from tltool.augment import preview

    for kwargs, option in (({"image_size": 0}, "--image-size"), ({"seed": -1}, "--seed")):
        # before: cv2's and pydantic's errors
        with pytest.raises(TltoolError, match=f"{option} must be a (whole )?number"):
            preview(str(tmp_path), out=tmp_path / "p", **kwargs)
    assert not (tmp_path / "p").exists()


def test_augment_preview_draws_has_a_ceiling(tmp_path):
    """Before, `augment preview --draws 3000` ran 5 minutes without a word (no progress, no bound) and wrote an
    11 MB PNG of 501 rows; --draws 0 was refused by a check of its own, outside the ranges' table."""
    from tltool.augment import preview

    for draws, legal in ((0, r"in \[1, 119\]"), (3000, r"in \[1, 119\]")):
        with pytest.raises(TltoolError, match=f"--draws must be a whole number {legal}"):
            preview(str(tmp_path), out=tmp_path / "p", draws=draws)
    assert not (tmp_path / "p").exists()
    settings.check_range("draws", settings.PREVIEW_DRAWS_MAX)


def test_a_library_callers_numbers_and_flags_are_checked_as_the_clis():
    """From Python: np.int64 seeds were refused as "must be a number", 2.5 epochs or a 96.5 px input ran (or ended
    in a TypeError deep in the pipeline), --cv -1 was told "every class needs at least -1 images", 2.5 folds reached
    scikit-learn, standardize="no" was true, and unfreeze=2 passed the check and ended in an AttributeError."""
    import numpy as np

    ExtractConfig(seed=np.int64(3), image_size=np.int32(96), batch_size=np.int64(8)).validate()
    FinetuneConfig(data="x", lr=np.float32(1e-3)).validate()
    for field, value in (("image_size", 96.5), ("epochs", 2.0), ("batch_size", 16.0), ("seed", True)):
        with pytest.raises(TltoolError, match=f"--{field.replace('_', '-')} must be a whole number"):
            FinetuneConfig(data="x", **{field: value}).validate()
    for k in (-1, 1, 2.5, True):
        with pytest.raises(TltoolError, match=r"--cv must be 0 \(off\) or a number of folds, at least 2; got "):
            LinearConfig(cv=k).validate()
    LinearConfig(cv=np.int64(3)).validate()
    LinearConfig(cv=None).validate()  # off, as before folds were checked
    with pytest.raises(TltoolError, match=r"got -1\.$"):  # as typed, not np.int64(-1)
        LinearConfig(cv=np.int64(-1)).validate()
    with pytest.raises(TltoolError, match="standardize must be True or False, got 'no'"):
        LinearConfig(standardize="no").validate()
    LinearConfig(standardize=np.bool_(False)).validate()
    assert FinetuneConfig(data="x", unfreeze=2).unfreeze == "2"
    FinetuneConfig(data="x", unfreeze=np.int64(3)).validate()


def test_repeats_is_ranged_too():
    with pytest.raises(TltoolError, match="--repeats must be a whole number at least 1, got 0"):
        LinearConfig(repeats=0).validate()
    LinearConfig(repeats=1).validate()


def test_every_ranged_setting_is_a_config_field():
    names = {f.name for c in (FinetuneConfig, LinearConfig, ExtractConfig) for f in dataclasses.fields(c)}
    # make-sample, digits, augment preview and label suspects, which have no config
    assert set(settings.RANGES) - names == {"per_class", "size", "draws", "top", "neighbours", "top_k", "seeds"}


@pytest.mark.parametrize("call, option", [
    (lambda tmp: make_shapes_dataset(tmp / "s", per_class=0), "--per-class"),
    (lambda tmp: make_shapes_dataset(tmp / "s", per_class=10**11), "--per-class"),
    (lambda tmp: make_shapes_dataset(tmp / "s", seed=-1), "--seed"),
    (lambda tmp: export_digits(tmp / "s", size=100000), "--size"),
    (lambda tmp: export_digits(tmp / "s", seed=-1), "--seed"),
    (lambda tmp: export_labels(tmp, out=tmp / "s", seed=-1), "--seed"),
    (lambda tmp: learning_curve(None, seed=-1), "--seed"),
    (lambda tmp: visualize_embedding(tmp, seed=2**40), "--seed"),
    (lambda tmp: predict_images(tmp, ["x.jpg"], max_pixels=0), "--max-pixels"),
    (lambda tmp: import_images([str(tmp)], tmp / "s", max_pixels=-1), "--max-pixels"),
    (lambda tmp: resolve_input("efficientnet_lite0", max_pixels=0), "--max-pixels"),
    (lambda tmp: find_suspects(str(tmp), out=tmp / "s", neighbours=-3), "--neighbours"),
    (lambda tmp: find_suspects(str(tmp), out=tmp / "s", neighbours=0), "--neighbours"),
    (lambda tmp: find_suspects(str(tmp), out=tmp / "s", top=0), "--top"),
], ids=["sample-per-class-0", "sample-per-class-huge", "sample-seed", "digits-size", "digits-seed",
        "label-export-seed", "learning-curve-seed", "viz-seed", "predict-max-pixels", "import-max-pixels",
        "resolve-max-pixels", "suspects-neighbours-negative", "suspects-neighbours-0", "suspects-top-0"])
def test_commands_without_a_config_range_their_numbers_from_the_table(tmp_path, call, option):
    """--per-class 0 wrote empty class folders (10**11 ran for ever), digits --size 100000 filled 24 GB of memory
    until the kernel killed it, --seed -1 of learning-curve and viz embedding ended in NumPy's and scikit-learn's
    tracebacks, and --max-pixels 0 called every image a decompression bomb in an import that "succeeded".
    label suspects --neighbours -3 (or 0) ran as 1 while suspects.json said "the -3 nearest neighbours"."""
    with pytest.raises(TltoolError, match=f"{option} must be a (whole )?number"):
        call(tmp_path)
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_a_net_too_large_for_memory_is_refused_before_it_is_built():
    with pytest.raises(TltoolError, match=r"--input 100000x100000x3: each size must be at most 4096"):
        build_arch("lenet5", input_shape=(100000, 100000, 3))  # TensorFlow's ResourceExhaustedError before


def test_split_settings_sends_shared_fields_to_both():
    extract, linear = split_settings({"seed": 3, "pool": "max", "image_size": 64}, ExtractConfig, LinearConfig)
    assert extract == {"seed": 3, "image_size": 64} and linear == {"seed": 3, "pool": "max"}
    with pytest.raises(TypeError, match="epochs"):
        split_settings({"epochs": 3}, ExtractConfig, LinearConfig)


def test_resolve_input_takes_the_backbone_size_once():
    inputs = resolve_input("lite0", None, "pad", None)
    assert (inputs.backbone, inputs.image_size, inputs.resize) == ("efficientnet_lite0", 288, "pad")  # the registry default
    assert inputs.max_pixels == ExtractConfig.max_pixels and inputs.preprocess
    assert resolve_input("efficientnet_lite0", 96).image_size == 96


def test_one_formatter_of_a_proportion():
    p = Proportion(87, 100)
    assert str(p) == format_proportion(p) == format_proportion(p.to_json())
    lo, hi = p.interval
    assert format_proportion(p) == f"0.870 [{lo:.3f}, {hi:.3f}] (n=100)"
    assert format_proportion(p, "5-fold") == f"0.870 [{lo:.3f}, {hi:.3f}] (n=100; 5-fold)"
    assert format_proportion(None) == "n/a"


def test_init_head_from_probe_decodes_with_the_runs_pixel_limit(monkeypatch):
    """The probe that starts a fine-tuning read images without --max-pixels (it used the default limit)."""
    import numpy as np

    from tltool import pipeline
    from tltool._tf import keras
    from tltool.finetune import init_head_from_probe

    inputs = keras.Input((32, 32, 3))  # Lite0's smallest input
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="classifier")(pooled))
    seen = {}

    def fake_dataset(paths, **kwargs):
        seen.update(kwargs)
        rng = np.random.default_rng(0)
        return [rng.uniform(0, 255, (len(paths), 32, 32, 3)).astype("float32")]

    monkeypatch.setattr(pipeline, "image_dataset", fake_dataset)
    resolved = resolve_input("efficientnet_lite0", 32, "pad", 1234)
    init_head_from_probe(model, [f"{i}.jpg" for i in range(8)], [0, 1] * 4, resolved, batch_size=4, seed=0)
    assert seen["max_pixels"] == 1234 and seen["image_size"] == 32 and seen["resize"] == "pad"


def test_engine_and_quantization_registries_match_the_settings_table():
    from tltool.engines import ENGINE_CHOICES, QUANTIZATIONS
    from tltool.settings import CHOICES

    assert tuple(ENGINE_CHOICES) == CHOICES["engine"]
    assert tuple(QUANTIZATIONS) == CHOICES["quantize"]


def test_cv_1_is_refused_as_what_it_is():
    """Before: '--cv 1: every class needs at least 1 images (smallest has 40); use a smaller K (at least 2)'."""
    from tltool.finetune import finetune_cv

    with pytest.raises(TltoolError, match=r"--cv must be 0 \(off\) or a number of folds, at least 2; got 1\."):
        LinearConfig(cv=1).validate()
    with pytest.raises(TltoolError, match=r"--cv must be 0 \(off\) or a number of folds, at least 2; got 1\."):
        finetune_cv(FinetuneConfig(data="no-such-folder"), 1)
    LinearConfig(cv=2).validate()


def test_a_run_with_no_epoch_to_train_is_refused():
    """Before: `train --epochs 0` and a random-head `finetune --head-epochs 0 --epochs 0` wrote a report of a guess."""
    from tltool.configs import ScratchConfig

    with pytest.raises(TltoolError, match="no epoch to train: the model would be the network's random init"):
        ScratchConfig(data="x", epochs=0).validate()
    with pytest.raises(TltoolError, match="no epoch to train: the model would be a random head"):
        FinetuneConfig(data="x", head_init="random", head_epochs=0, epochs=0).validate()
    FinetuneConfig(data="x", head_epochs=0, epochs=0).validate()  # the probe-initialised network: the probe itself
    ScratchConfig(data="x", epochs=1).validate()


def test_a_step_schedule_lowers_the_rate_from_the_first_batch_of_its_epoch():
    """The bounds of --schedule step were the first step of each new period, which Keras counts in the period
    before (step <= bound): epoch 2 of `--step-epochs 1 --gamma 0.5` started at the old rate for one batch."""
    from tltool._tf import keras
    from tltool.training.optim import SCHEDULES, ScheduleArgs

    schedule = SCHEDULES["step"](ScheduleArgs(1.0, steps_per_epoch=4, epochs=3, step_epochs=1, gamma=0.5), keras)
    rates = [float(keras.ops.convert_to_numpy(schedule(step))) for step in range(12)]
    assert rates == [1.0] * 4 + [0.5] * 4 + [0.25] * 4  # steps 0-3 are epoch 1, 4-7 epoch 2, 8-11 epoch 3
