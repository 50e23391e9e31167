"""Every enumerated option is one Choice type: a misspelt value is Click's usage error (exit 2) naming the option
and the legal values, with the library's "did you mean" when one is close; and --help states the folders the
commands really write when --out / --features are left out."""
from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tltool import settings
from tltool.cli import main
from tltool.cli.options import Choice, ChoiceOrFile
from tltool.cli.recipes import load_recipe
from tltool.errors import TltoolError


def _walk(group: click.Group, path: tuple[str, ...] = ()):
    """(command path, command) for every command under ``group``, through nested groups."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _walk(command, (*path, name))


def _command(*path: str) -> click.Command:
    command = main
    for name in path:
        command = command.commands[name]
    return command


def _option(command: click.Command, flag: str) -> click.Option:
    return next(p for p in command.params if isinstance(p, click.Option) and flag in p.opts)


def _run(args: list[str]):
    return CliRunner().invoke(main, args)


# (command, its arguments and options, the option, the close legal value). Refused while parsing: nothing runs.
MISSPELT = [
    ("probe", ["DATA", "--head", "logregg"], "--head", "logreg"),
    ("finetune", ["DATA", "--optimizer", "adm"], "--optimizer", "adam"),
    ("probe", ["DATA", "--tta", "flp"], "--tta", "flip"),
    ("export", ["RUN", "--format", "tflit"], "--format", "tflite"),
    ("viz embedding", ["FEATURES", "--method", "tsn"], "--method", "tsne"),
    ("probe", ["DATA", "--resize", "crp"], "--resize", "crop"),
    ("extract", ["DATA", "--out", "F", "--engine", "litrt"], "--engine", "litert"),
    ("finetune", ["DATA", "--schedule", "cosin"], "--schedule", "cosine"),
    ("data digits", ["OUT", "--resample", "bilinar"], "--resample", "bilinear"),
    ("label suspects", ["DATA", "--resize", "stretsh"], "--resize", "stretch"),
    ("finetune", ["DATA", "--augment", "heavvy"], "--augment", "heavy"),
    ("augment preview", ["DATA", "--augment", "standart"], "--augment", "standard"),
]


@pytest.mark.parametrize("command, args, option, right", MISSPELT, ids=[f"{c} {a[-2]}" for c, a, _, _ in MISSPELT])
def test_a_misspelt_choice_is_a_usage_error_with_did_you_mean_and_the_choices(tmp_path: Path, command, args, option,
                                                                              right):
    args = [str(tmp_path) if a in ("RUN", "FEATURES") else a for a in args]  # arguments that must exist
    result = _run([*command.split(), *args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert f"Did you mean '{right}'" in result.output
    for legal in _option(_command(*command.split()), option).type.choices:
        assert repr(legal) in result.output, f"{legal} not listed: {result.output}"


def test_a_value_close_to_nothing_gets_no_suggestion_but_the_choices():
    result = _run(["probe", "DATA", "--head", "zzz"])
    assert result.exit_code == 2
    assert "Invalid value for '--head'" in result.output and "did you mean" not in result.output.lower()
    assert "'logreg', 'linsvm', 'ridge', 'sgd', 'knn'" in result.output
    result = _run(["export", "RUN", "--format", "onnx"])
    assert result.exit_code == 2 and "did you mean" not in result.output.lower()


@pytest.mark.parametrize("setting, misspelt", [("head", "logregg"), ("optimizer", "adm"), ("schedule", "cosin"),
                                               ("augment", "heavvy"), ("optimizer", "rmsprob")])
def test_the_cli_suggests_what_the_library_suggests(setting, misspelt):
    """The command line and the library (tltool.settings.check_choice, via tltool.errors.did_you_mean) name the same
    close values in the same words."""
    with pytest.raises(TltoolError) as library:
        settings.check_choice(setting, misspelt)
    hint = str(library.value)[str(library.value).index("Did you mean"):str(library.value).index("?") + 1]
    command, flag = (("augment", "preview"), "--augment") if setting == "augment" else (("finetune",), f"--{setting}")
    if setting == "head":
        command = ("probe",)
    result = _run([*command, "DATA", flag, misspelt])
    assert result.exit_code == 2 and hint in result.output, (hint, result.output)


def test_valid_values_and_an_augmentation_file_still_parse():
    """Parsed only (make_context): the values reach the command unchanged, and --augment still takes a pipeline
    file by its suffix, whether it exists or not (the library reads it and says when it is missing)."""
    probe = _command("probe").make_context("probe", ["DATA", "--head", "ridge", "--tta", "10crop", "--resize", "pad",
                                                     "--engine", "litert"])
    assert {k: probe.params[k] for k in ("head", "tta", "resize", "engine")} == {
        "head": "ridge", "tta": "10crop", "resize": "pad", "engine": "litert"}
    for value in ("my.yaml", "pipelines/strong.YML", "a.json", "heavy", "none"):
        finetune = _command("finetune").make_context("finetune", ["DATA", "--augment", value])
        assert finetune.params["augment"] == value
        preview = _command("augment", "preview").make_context("preview", ["DATA", "--augment", value])
        assert preview.params["preset"] == value
    assert _command("finetune").make_context("finetune", ["DATA"]).params["augment"] == "standard"


def test_every_choice_option_of_every_command_is_tltools_choice():
    """Walks every command (through groups): no click.Choice but tltool's, so no option loses "did you mean", and
    every option of a setting of the table (--augment too, which also takes a file) uses it."""
    found = 0
    for path, command in _walk(main):
        for param in command.params:
            where = f"tltool {' '.join(path)} {param.name}"
            if isinstance(param.type, click.Choice):
                assert isinstance(param.type, Choice), f"{where} is a plain click.Choice: use tltool.cli.options"
                found += 1
            setting = "export_format" if param.name == "fmt" else "augment" if param.name == "preset" else param.name
            if setting in settings.CHOICES and isinstance(param, click.Option) and not param.is_flag:
                assert isinstance(param.type, (Choice, ChoiceOrFile)), f"{where} is not a Choice of the table"
                assert tuple(param.type.choices) == settings.CHOICES[setting], where
    assert found >= 20


def test_a_recipe_with_a_misspelt_choice_is_refused_before_it_runs_with_did_you_mean(tmp_path: Path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - probe: {data: d, head: logregg}\n")
    with pytest.raises(TltoolError, match=r"key 'head' must be one of .* Did you mean 'logreg'\?"):
        load_recipe(recipe)
    recipe.write_text("steps:\n  - finetune: {data: d, augment: heavvy}\n")
    with pytest.raises(TltoolError, match=r"finetune\).*--augment.*Did you mean 'heavy'\?"):
        load_recipe(recipe)
    recipe.write_text("steps:\n  - finetune: {data: d, augment: my.yaml, optimizer: adam}\n")
    assert load_recipe(recipe).steps[0].options["augment"] == "my.yaml"


def test_help_states_the_folders_really_written_by_default():
    """The defaults shown for --features and --out are the names tltool.linear, tltool.export and tltool.runs
    build (checked on the option's help text: the rendered help wraps at hyphens)."""
    from tltool.export import default_export_out
    from tltool.linear import default_features_dir

    example = default_features_dir("data/shapes", "efficientnet_lite0", None, "crop").as_posix()
    assert example == "runs/features-shapes-efficientnet_lite0-crop"
    for path in (("probe",), ("viz", "suspects"), ("label", "suspects")):
        text = _option(_command(*path), "--features").help
        assert example in text and "features-NAME-BACKBONE[-SIZE]-RESIZE" in text, path
    assert default_export_out(Path("RUN_DIR"), "tflite", "dynamic").as_posix() in _option(_command("export"), "--out").help
    expected = {
        ("probe",): "runs/linear-DATASET-BACKBONE-HEAD-TIME",  # probe's run is a linear run
        ("linear",): "runs/linear-DATASET-BACKBONE-HEAD-TIME",
        ("finetune",): "runs/finetune-cv-DATASET-BACKBONE-TIME",
        ("train",): "runs/scratch-DATASET-ARCH-TIME",
        ("evaluate",): "runs/eval-RUN-DATASET-TIME",
        ("compare",): "runs/compare-A-B-TIME",
        ("learning-curve",): "runs/learning-curve-DATASET-HEAD-TIME",
        ("data", "inspect"): "runs/inspect-DATASET-TIME",
        ("augment", "preview"): "runs/augment-preview-DATASET-AUGMENT-TIME",
        ("viz", "filters"): "runs/viz-filters-NET-LAYER-TIME",
        ("viz", "activations"): "runs/viz-activations-NET-LAYER-TIME",
        ("viz", "gradcam"): "runs/viz-gradcam-RUN-TIME",
        ("viz", "embedding"): "runs/viz-embedding-DATASET-BACKBONE-TIME",
        ("viz", "suspects"): "runs/suspects-DATASET-BACKBONE-TIME",
        ("label", "suspects"): "runs/suspects-DATASET-BACKBONE-TIME",
    }
    for path, default in expected.items():
        assert default in _option(_command(*path), "--out").help, path
