"""Recipes: one schema derived from the CLI, clear errors, and every recipe in recipes/ runs (tiny settings)."""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE, shared_dataset
from helpers import collected, deadline
from tltool.errors import TltoolError
from tltool.cli.recipes import load_recipe, plan_recipe, recipe_commands, run_recipe
from tltool.utils import write_json

RECIPES = REPO / "recipes"


def test_every_recipe_is_valid_and_every_recipe_has_a_test():
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert names == ["alexnet-scratch", "assignment", "flowers-finetune", "flowers-linear", "lenet5-digits"]
    for path in RECIPES.glob("*.yaml"):
        recipe = load_recipe(path)
        assert recipe.steps and recipe.name


def test_recipe_keys_are_the_cli_option_names():
    commands = recipe_commands()
    finetune = {p.opts[0].lstrip("-") for p in commands["finetune"].params if p.opts[0].startswith("--")}
    assert {"val-fraction", "head-epochs", "label-smoothing", "unfreeze", "tta", "augment"} <= finetune
    assert {"data-inspect", "label-export", "collect-import", "arch-summary", "probe"} <= set(commands)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_unknown_key_suggests_and_wrong_type_names_key_and_type(tmp_path):
    # keys are read with '_' as '-': the message names the key so, then the suggestion
    with pytest.raises(TltoolError, match=r"Unknown key in .*r\.yaml, step 1 \(finetune\): 'head-epoch'\. "
                                          r"Did you mean 'head-epochs'"):
        load_recipe(_write(tmp_path, "steps:\n  - finetune: {data: x, head_epoch: 3}\n"))
    with pytest.raises(TltoolError, match=r"key 'epochs' must be an integer, got 'ten' \(str\)"):
        load_recipe(_write(tmp_path, "steps:\n  - finetune: {data: x, epochs: ten}\n"))
    # a quoted number in a variable: the message named the step's key, not the variable, and not the quotes
    with pytest.raises(TltoolError, match=r"step 1 \(probe\), from the variable 'size': key 'image-size' must be an "
                                          r"integer, got '96' \(str\); write it without quotes\.$"):
        load_recipe(_write(tmp_path, 'vars: {size: "96"}\nsteps:\n  - probe: {data: x, image_size: "${size}"}\n'))
    for text in ("96.0", "nan"):  # unquoted, still not an integer: no hint that would not help
        with pytest.raises(TltoolError, match=rf"key 'image-size' must be an integer, got '{text}' \(str\)\.$"):
            load_recipe(_write(tmp_path, f'steps:\n  - probe: {{data: x, image_size: "{text}"}}\n'))
    with pytest.raises(TltoolError, match=r"step 1 \(data-make-sample\): key 'out' holds a NUL byte"):
        load_recipe(_write(tmp_path, 'steps:\n  - data-make-sample: {out: "ms\\0x"}\n'))  # was os.stat's ValueError
    with pytest.raises(TltoolError, match=r"key 'images' holds a NUL byte"):
        load_recipe(_write(tmp_path, 'steps:\n  - predict: {model: m, images: ["a.jpg", "b\\0.jpg"]}\n'))
    with pytest.raises(TltoolError, match=r"key 'tta' must be one of \['none', 'flip', '10crop'\]"):
        load_recipe(_write(tmp_path, "steps:\n  - probe: {data: x, tta: 5crop}\n"))
    with pytest.raises(TltoolError, match="Did you mean 'finetune'"):
        load_recipe(_write(tmp_path, "steps:\n  - fintune: {data: x}\n"))
    with pytest.raises(TltoolError, match="Did you mean 'steps'"):
        load_recipe(_write(tmp_path, "step:\n  - probe: {data: x}\n"))
    with pytest.raises(TltoolError, match="key 'data' is required"):
        load_recipe(_write(tmp_path, "steps:\n  - probe: {head: ridge}\n"))
    with pytest.raises(TltoolError, match="Did you mean 'epochs'"):
        load_recipe(_write(tmp_path, "steps:\n  - finetune: {data: x}\n"), ["epoch=2"])
    with pytest.raises(TltoolError, match=r"vars \['a', 'b'\] refer to other variables"):
        load_recipe(_write(tmp_path, "vars: {a: '${b}', b: '${a}'}\nsteps:\n  - probe: {data: '${a}'}\n"))
    with pytest.raises(TltoolError, match="'vars' must be a mapping"):
        load_recipe(_write(tmp_path, "vars: [1, 2]\nsteps:\n  - probe: {data: x}\n"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00steps")
    with pytest.raises(TltoolError, match="not a text file in UTF-8"):
        load_recipe(binary)


def test_overrides_and_variables(tmp_path):
    path = _write(tmp_path, "vars: {d: data/a}\nsteps:\n  - extract: {data: '${d}', out: f}\n"
                            "  - finetune: {data: '${d}', epochs: 5}\n")
    recipe = load_recipe(path, ["d=elsewhere", "epochs=2", "1.batch-size=8"])
    assert recipe.steps[0].options["batch-size"] == 8 and "batch-size" not in recipe.steps[1].options
    assert recipe.steps[1].options["epochs"] == 2
    from tltool.cli.recipes import build_argv

    argv = build_argv(recipe, 2, recipe.steps[1], recipe_commands()["finetune"])
    assert argv[-1] == "elsewhere" and "--epochs" in argv and "2" in argv


def _two_steps(tmp_path: Path, linear: str = "") -> Path:
    """Features of the sample data, then a linear head on them: step 2 reads what step 1 writes."""
    return _write(tmp_path, f"steps:\n  - extract: {{data: '{SAMPLE}', image-size: 64, out: runs/feat}}\n"
                            f"  - linear: {{features: runs/feat, out: runs/lin{linear}}}\n")


def _check(path: Path, *overrides: str):
    from click.testing import CliRunner

    from tltool.cli import main

    return CliRunner().invoke(main, ["run", str(path), "--check", *[f"--set={o}" for o in overrides]])


@pytest.mark.parametrize("linear, overrides, message", [
    ("", ["linear.cv=abc"], r"step 2 \(linear\): key 'cv' must be an integer, got 'abc' \(str\)"),
    (", cv: -1", [], r"step 2 \(linear\): Invalid value for '--cv': -1 is not in the range x>=0"),
    ("", ["2.repeats=0"], r"step 2 \(linear\): Invalid value for '--repeats': 0 is not in the range x>=1"),
])
def test_a_bad_value_in_a_later_step_stops_the_recipe_before_its_first_step(in_tmp, linear, overrides, message):
    # the whole recipe is parsed by the commands themselves before step 1 runs, and --check says the same
    path = _two_steps(in_tmp, linear)
    with pytest.raises(TltoolError, match=message):
        run_recipe(path, overrides)
    assert not (in_tmp / "runs").exists()  # step 1 (extract -> runs/feat) never ran
    result = _check(path, *overrides)
    assert result.exit_code == 2 and not (in_tmp / "runs").exists()
    assert re.search(message, " ".join(result.output.split())), result.output


def test_an_unknown_option_or_a_missing_required_option_in_a_later_step_stops_the_recipe(in_tmp):
    path = _two_steps(in_tmp, ", folds: 5")
    with pytest.raises(TltoolError, match=r"Unknown key in .*r\.yaml, step 2 \(linear\): 'folds'"):
        run_recipe(path)
    assert _check(path).exit_code == 2
    with pytest.raises(TltoolError, match=r"Unknown key in --set 2\.folds=5"):
        run_recipe(_two_steps(in_tmp), ["2.folds=5"])
    # a required option is only known to Click: predict without --model
    path = _write(in_tmp, f"steps:\n  - extract: {{data: '{SAMPLE}', image-size: 64, out: runs/feat}}\n"
                          f"  - predict: {{images: ['{SAMPLE}']}}\n")
    with pytest.raises(TltoolError, match=r"step 2 \(predict\): Missing option '--model'"):
        run_recipe(path)
    assert _check(path).exit_code == 2
    assert not (in_tmp / "runs").exists()


def test_a_path_an_earlier_step_writes_passes_the_check_but_a_path_of_the_wrong_kind_does_not(in_tmp):
    # linear's FEATURES must exist when linear runs; before the recipe runs, step 1 has yet to write it
    path = _two_steps(in_tmp)
    load_recipe(path)
    result = _check(path)
    assert result.exit_code == 0 and "2. linear" in result.output, result.output
    assert not (in_tmp / "runs").exists()  # checking created nothing
    # a path that exists already is still checked for its kind
    (in_tmp / "notes.txt").write_text("not a folder")
    with pytest.raises(TltoolError, match=r"step 2 \(linear\): Invalid value for 'FEATURES': Directory "
                                          r"'notes.txt' is a file"):
        load_recipe(path, ["linear.features=notes.txt"])


def test_an_input_that_no_step_writes_is_named_by_check_and_before_the_first_step_runs(in_tmp):
    """Before: `--check` and the start of a run looked only at the recipe's syntax: flowers-finetune.yaml, run without
    runs/flowers-linear (which another recipe writes), fine-tuned for minutes, then failed at step 2 (compare)."""
    path = RECIPES / "flowers-finetune.yaml"
    message = (r"flowers-finetune\.yaml: inputs that do not exist and that no earlier step of the recipe writes: "
               r"step 2 \(compare\): run-a runs/flowers-linear \(--set linear=PATH gives another\)\. Make them first")
    result = _check(path, f"data={SAMPLE}")
    assert result.exit_code == 2 and re.search(message, " ".join(result.output.split())), result.output
    with pytest.raises(TltoolError, match=message):
        run_recipe(path, [f"data={SAMPLE}"])
    assert not (in_tmp / "runs").exists()  # step 1 (the fine-tune) never started
    # a step names a missing input by a path of its own (no variable): the --set names the step
    with pytest.raises(TltoolError, match=r"step 1 \(extract\): data nowhere/photos \(--set 1\.data=PATH gives "
                                          r"another\); step 2 \(linear\): features runs/feat2 \(--set 2\.features"):
        plan_recipe(_write(in_tmp, "steps:\n  - extract: {data: nowhere/photos, out: runs/feat}\n"
                                   "  - linear: {features: runs/feat2}\n"))
    with pytest.raises(TltoolError, match=r"step 1 \(collect-import\): sources pics \(--set photos=PATH gives "
                                          r"another\)"):
        plan_recipe(RECIPES / "assignment.yaml", ["photos=pics"])  # a variable inside a list
    with pytest.raises(TltoolError, match=r"sources pics \(--set 1\.sources=\[PATH\] gives another\)"):
        plan_recipe(_write(in_tmp, "steps:\n  - collect-import: {sources: [pics], out: runs/ds}\n"))
    (in_tmp / "runs" / "flowers-linear").mkdir(parents=True)
    (in_tmp / "runs" / "flowers-linear" / "model.json").write_text("{}")  # a trained run, as --check sees one
    assert _check(path, f"data={SAMPLE}").exit_code == 0


def test_a_steps_refusal_asks_for_force_true_not_a_force_option(in_tmp, monkeypatch):
    """`tltool run` has no --force: a step refused "pass --force to replace them" was told of an option it lacks."""
    from tltool.cli import recipes as recipes_cli

    path = _write(in_tmp, "steps:\n  - probe: {data: photos, out: runs/p}\n")
    recipe = load_recipe(path)

    def refuse(*args, **kwargs):
        raise TltoolError("--features F: holds the features of other data; pass --force to replace them.")

    command = recipes_cli.recipe_commands()["probe"]
    monkeypatch.setattr(command, "main", refuse)
    with pytest.raises(TltoolError, match=r"step 1 \(probe\): --features F: holds the features of other data; add "
                                          r"force: true to the step \(--set 1\.force=true\) to replace them\.$"):
        recipes_cli._run_step(recipe, 1, recipe.steps[0], [], {"probe": command}, 1)


def test_check_reads_a_manifest_input(in_tmp):
    """`tltool run --check` passed a recipe whose manifest had a bad header; the run then replaced step 1's run
    (force: true) and stopped at step 2 on "unknown column(s)"."""
    (in_tmp / "sheet.csv").write_text("file,label\nx.jpg,a\n")
    path = _write(in_tmp, "steps:\n  - probe: {data: sheet.csv, out: runs/p}\n")
    result = _check(path)
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "inputs the steps would refuse when reached: step 1 (probe): sheet.csv, row 1 " \
        "(header): unknown column(s) ['file'] and missing column(s) ['path']" in said, result.output
    (in_tmp / "sheet.csv").write_text(f"path,label\n{SAMPLE / 'star' / 'star_000.jpg'},a\n")
    assert _check(path).exit_code == 0


def test_a_recipe_run_from_another_folder_is_told_its_paths_are_read_from_there(in_tmp, monkeypatch):
    """`tltool run ../class.yaml` from another folder: the photos beside the recipe were named as if missing."""
    (in_tmp / "class" / "photos").mkdir(parents=True)
    path = _write(in_tmp / "class", "steps:\n  - probe: {data: photos, out: runs/p}\n")
    (in_tmp / "elsewhere").mkdir()
    monkeypatch.chdir(in_tmp / "elsewhere")
    result = _check(Path("..") / "class" / path.name)
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "step 1 (probe): data photos" in said, result.output
    assert (f"A relative path in a recipe is read from the folder tltool runs in ({in_tmp / 'elsewhere'}), not from "
            f"the recipe's; these are beside the recipe: run it from {in_tmp / 'class'}.") in said
    monkeypatch.chdir(in_tmp / "class")
    assert _check(path.name).exit_code == 0


def test_what_an_earlier_step_of_the_run_writes_counts_and_what_a_step_before_from_writes_must_exist(in_tmp):
    from click.testing import CliRunner

    from tltool.cli import main

    path = _two_steps(in_tmp)  # extract writes runs/feat, linear reads it
    assert plan_recipe(path).steps[1].command == "linear"
    with pytest.raises(TltoolError, match=r"\(steps before --from 2 do not run: what they write must exist already\): "
                                          r"step 2 \(linear\): features runs/feat"):
        plan_recipe(path, start=2)
    result = CliRunner().invoke(main, ["run", str(path), "--check", "--from", "2"])
    assert result.exit_code == 2 and "features runs/feat" in result.output, result.output
    (in_tmp / "runs" / "feat").mkdir(parents=True)  # there, but not features: linear would refuse it when reached
    with pytest.raises(TltoolError, match=r"inputs the steps would refuse when reached: step 2 \(linear\): runs/feat: "
                                          r"no features\.json here"):
        plan_recipe(path, start=2)
    (in_tmp / "runs" / "feat" / "features.json").write_text("{}")
    assert plan_recipe(path, start=2).steps[1].command == "linear"


def test_a_feature_cache_a_step_writes_by_default_counts_as_written(in_tmp):
    """From a review: probe (and suspects) without `features` write runs/features-DATA-BACKBONE-RESIZE, a documented
    name a later step may give; such a recipe was refused before step 1."""
    recipe = _write(in_tmp, f"""steps:
  - probe: {{data: "{SAMPLE}", out: runs/p}}
  - viz-embedding: {{features: runs/features-shapes-efficientnet_lite0-crop}}
  - probe: {{data: "{SAMPLE}", image-size: 64, resize: stretch, out: runs/p2}}
  - linear: {{features: runs/features-shapes-efficientnet_lite0-64-stretch}}
""")
    assert len(plan_recipe(recipe).steps) == 4
    with pytest.raises(TltoolError, match=r"features runs/features-shapes-mobilenet_v2-crop"):
        plan_recipe(_write(in_tmp, f"""steps:
  - probe: {{data: "{SAMPLE}", out: runs/p}}
  - linear: {{features: runs/features-shapes-mobilenet_v2-crop}}
"""))


def test_inputs_are_read_as_their_commands_read_them(in_tmp):
    """tfds:NAME and --weights imagenet name no file; a glob matches files now or lies in a folder a step writes;
    label export's default output (DATASET-split) is written; an input inside a folder a step writes is written."""
    recipe = _write(in_tmp, f"""steps:
  - collect-import: {{sources: ["{SAMPLE}/circle/*.jpg"], out: runs/ds}}
  - collect-import: {{sources: ["runs/ds/unlabeled/*.jpg"], out: runs/again}}
  - label-export: {{dataset: runs/ds}}
  - probe: {{data: runs/ds-split, weights: imagenet, features: runs/f}}
  - probe: {{data: "tfds:mnist", weights: none}}
  - linear: {{features: runs/f}}
  - data-inspect: {{path: runs/ds-split/train}}
  - augment-preview: {{data: runs/ds-split, augment: light, out: runs/preview}}
""")
    assert len(plan_recipe(recipe).steps) == 8
    for override, named in ((f"1.sources=[{SAMPLE}/circle/*.png]", "sources .*circle/\\*\\.png"),
                            ("4.weights=mine.weights.h5", "weights mine\\.weights\\.h5"),
                            ("8.augment=aug.yaml", "augment aug\\.yaml"),
                            ("3.out=runs/elsewhere", "step 4 \\(probe\\): data runs/ds-split")):
        with pytest.raises(TltoolError, match=named):
            plan_recipe(recipe, [override])
    assert not (in_tmp / "runs").exists()


def test_every_path_option_of_every_command_is_known_as_an_input_or_an_output():
    """The tables of recipe_files name real commands and keys, and classify every path-like option, so a command
    added later cannot slip past the check of inputs."""
    import click

    from tltool.cli.recipe_files import DEFAULT_OUTPUTS, INPUT_KINDS, READ_EVERYWHERE, STEP_INPUTS, STEP_OUTPUTS
    from tltool.cli.recipe_files import WRITTEN_EVERYWHERE, input_kinds
    from tltool.cli.recipes import _key

    commands = {name: {_key(p): p for p in command.params} for name, command in recipe_commands().items()}
    declared = [*STEP_INPUTS.items(), *STEP_OUTPUTS.items(), *((n, [absent, source]) for n, (absent, source, _) in DEFAULT_OUTPUTS.items())]
    for name, keys in declared:
        assert set(keys) <= set(commands[name]), name
    assert set(READ_EVERYWHERE.values()) | {k for keys in STEP_INPUTS.values() for k in keys.values()} <= \
        set(INPUT_KINDS)
    pathlike = {"data", "path", "images", "image", "sources", "model", "features", "dataset", "run-dir", "run-a",
                "run-b", "resume", "review", "out", "weights", "augment"}
    for name, params in commands.items():
        for key, param in params.items():
            if isinstance(param.type, click.Path) or key in pathlike:
                known = set(input_kinds(name, params)) | set(WRITTEN_EVERYWHERE) | set(STEP_OUTPUTS.get(name, ()))
                assert key in known, (name, key)


def _accuracy_table() -> dict[str, list[str]]:
    """The rows of the README's table of the current defaults ("Accuracy on photos no run has seen"), by command."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Accuracy on photos no run has seen"):readme.index("The older table below")]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `tltool ")]
    return {row[0]: row for row in rows}


def test_the_accuracies_a_recipe_quotes_are_the_readmes_current_ones_with_their_split():
    """Before: flowers-finetune.yaml said "probe 0.89, this recipe 0.90", the val-split figures of the README's
    older 224 px table; the current 288 px ones are 0.880 (probe) and 0.910 (fine-tune) on the val split."""
    table = _accuracy_table()
    probe, finetune = table["`tltool probe DATA` (288 px)"], table["`tltool finetune DATA` (288 px)"]
    # columns: command | 500 flower photos never seen | its val split says (n=100) | pets val | time
    description = load_recipe(RECIPES / "flowers-finetune.yaml").description
    assert f"100-image val split the probe scores {probe[2]} and this recipe {finetune[2]}" in description
    assert f"500 flower photos no run has seen {probe[1].split()[0]} and {finetune[1].split()[0]}" in description
    assert (probe[2], finetune[2]) == ("0.880", "0.910")
    numbers = set(re.findall(r"\d\.\d+", " ".join(" ".join(row) for row in table.values())))
    for path in RECIPES.glob("*.yaml"):
        quoted = re.findall(r"(?<![\d.])[01]\.\d{2,}(?![\d.])", load_recipe(path).description)  # an accuracy
        assert set(quoted) <= numbers, (path.name, quoted)


def test_lenet5_digits_recipe(in_tmp):
    run_recipe(RECIPES / "lenet5-digits.yaml", ["epochs=3"])
    metrics = json.loads((in_tmp / "runs" / "lenet5-digits" / "metrics.json").read_text())
    assert metrics["config"]["arch"] == "lenet5" and metrics["epochs_run"] == 3
    assert metrics["val"]["accuracy"]["value"] > 0.5


def test_alexnet_recipe(in_tmp):
    run_recipe(RECIPES / "alexnet-scratch.yaml", [f"data={SAMPLE}", "size=67", "epochs=1", "batch-size=16",
                                                   "augment=light"])
    metrics = json.loads((in_tmp / "runs" / "alexnet-flowers" / "metrics.json").read_text())
    assert metrics["config"]["arch"] == "alexnet" and metrics["config"]["image_size"] == 67


def test_flowers_recipes(in_tmp):
    flowers = shared_dataset("flowers")
    run_recipe(RECIPES / "flowers-linear.yaml", [f"data={flowers}", "extract.image-size=64"])
    linear = json.loads((in_tmp / "runs" / "flowers-linear" / "metrics.json").read_text())
    assert linear["val"]["accuracy"]["n"] == 100
    assert (in_tmp / "runs" / "flowers-learning-curve" / "learning_curve.png").exists()
    run_recipe(RECIPES / "flowers-finetune.yaml", [f"data={flowers}", "image-size=64", "head-epochs=1",
                                                    "epochs=1", "tta=none", "augment=light"])
    assert list((in_tmp / "runs").glob("compare-*/metrics.json"))


def _sets(overrides: list[str]) -> list[str]:
    return [word for text in overrides for word in ("--set", text)]


def _continue_hint(output: str) -> list[str]:
    """The words of the ``continue with `...` `` command a paused run printed."""
    found = re.search(r"continue with `([^`]*)`", output)
    assert found, output
    return shlex.split(found.group(1))


def test_assignment_recipe_stops_at_the_labeler_and_its_hint_continues_it_as_it_was_run(in_tmp):
    """Before: without a terminal the runner skipped the labeler and went on to step 3, which failed with
    `labels.csv: no labels yet` (exit status 2), although the recipe says it stops there; and the hint it printed,
    `tltool run .../assignment.yaml --from 3`, dropped the --set values, so run as printed, steps 3-5 read the
    default runs/assignment/photos instead of the dataset the user had set."""
    from click.testing import CliRunner

    from tltool.cli import main

    recipe = str(RECIPES / "assignment.yaml")
    overrides = [f"photos={SAMPLE}", "dataset=runs/a2/photos", "classes=circle,square,star,triangle",
                 "probe.image-size=64", "label-suspects.image-size=64"]
    result = CliRunner().invoke(main, ["run", recipe, *_sets(overrides)])  # stdin is not a terminal here
    assert result.exit_code == 4, result.output
    assert "step 2/5: skipped (interactive, no terminal): tltool label serve --classes circle,square,star,triangle " \
           "-- runs/a2/photos; steps 3-5 need what it makes, so the recipe stops here (exit status 4)" in result.output
    hint = _continue_hint(result.output)
    assert hint == ["tltool", "run", recipe, *_sets(overrides), "--from", "3"]
    dataset = in_tmp / "runs" / "a2" / "photos"
    assert not (in_tmp / "runs" / "a2" / "photos-split").exists() and "step 3/5" not in result.output
    rows = list(csv.DictReader(open(dataset / "manifest.csv")))
    written = [r for r in rows if r.get("status") == "added"]
    assert len(written) >= 120  # a few near-duplicate renderings may be dropped
    # label as a person would in the browser: here, from the source folder of each imported photo
    with open(dataset / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for r in written:
            writer.writerow([r["file"], Path(r["source"]).parent.name])
    result = CliRunner().invoke(main, hint[1:])  # the hint as printed
    assert result.exit_code == 0, result.output
    split = in_tmp / "runs" / "a2" / "photos-split"
    assert (split / "train").is_dir() and (split / "val").is_dir()
    assert not (in_tmp / "runs" / "assignment" / "photos").exists()  # the default dataset was never touched
    metrics = json.loads((in_tmp / "runs" / "assignment" / "linear" / "metrics.json").read_text())
    assert metrics["val"]["accuracy"]["value"] > 0.8 and metrics["val"]["accuracy"]["n"] >= 30


_PAUSING = """vars: {net: lenet5, note: none}
steps:
  - arch-list: {interactive: true}
  - arch-summary: {name: "${net}", input: 32x32x3, classes: 10}
  - arch-summary: {name: lenet5, input: 32x32x3, classes: 10}
"""


@pytest.mark.parametrize("until", [[], ["--until", "2"]])
def test_the_continue_hint_repeats_every_set_shell_quoted_and_until(tmp_path, until):
    """Before: the hint after a skipped interactive step was `tltool run RECIPE --from N` whatever the run had been
    given: every --set and --until was dropped, so the hint ran another recipe than the one started."""
    from click.testing import CliRunner

    from tltool.cli import main

    path = _write(tmp_path, _PAUSING)
    overrides = ["net=vgg11", "note=it's $HOME [b]", "2.classes=3"]
    result = CliRunner().invoke(main, ["run", str(path), *_sets(overrides), *until])
    assert result.exit_code == 4 and "parameters" not in result.output, result.output  # steps 2 and 3 did not run
    hint = _continue_hint(result.output)
    assert hint == ["tltool", "run", str(path), *_sets(overrides), "--from", "2", *until]
    result = CliRunner().invoke(main, hint[1:])
    assert result.exit_code == 0, result.output
    totals = re.findall(r"total: ([\d,]+) parameters", result.output)
    assert totals == ["28,115,331"] + ([] if until else ["62,006"])  # vgg11 with 3 classes, then lenet5


def test_an_interactive_last_step_stops_the_run_with_nothing_to_continue(tmp_path):
    """Before: the runner skipped it and returned as if the recipe were done; now it is paused there (exit 4)."""
    path = _write(tmp_path, "steps:\n  - arch-list: {}\n  - arch-list: {interactive: true}\n")
    outcome = run_recipe(path, interactive=False)
    assert outcome.paused_at == 2 and outcome.resume is None


def test_a_step_after_the_labeler_without_labels_names_the_recipes_own_labeler_command(in_tmp):
    """Before: `tltool run assignment.yaml --from 3` before labelling failed with `no labels yet. Label the images
    first: tltool label serve DATASET --classes a,b,c`, classes nobody has, though the recipe names its own."""
    photos = collected(in_tmp / "runs" / "a2" / "photos") / "unlabeled"  # as step 1 (collect import) makes it
    photos.mkdir()
    (photos / "one.jpg").write_bytes(next(SAMPLE.rglob("*.jpg")).read_bytes())
    with pytest.raises(TltoolError) as caught:
        run_recipe(RECIPES / "assignment.yaml", ["dataset=runs/a2/photos", "classes=cat,dog"], start=3)
    message = str(caught.value)
    assert "labels.csv: no labels yet" in message and "a,b,c" not in message
    assert message.endswith("This run began at step 3, after step 2 (label-serve), which is interactive: if it has "
                            "not been run yet, run it first: tltool label serve --classes cat,dog -- runs/a2/photos")
    assert not (in_tmp / "runs" / "a2" / "photos-split").exists()


def test_the_documented_assignment_commands_set_the_classes_with_the_photos():
    """Before: the README's command for this recipe set only `--set photos=~/Pictures/x`; `classes` stayed the demo's
    circle,square,star,triangle, so the labeler offered shape keys for the user's own photos."""
    default = load_recipe(RECIPES / "assignment.yaml")
    texts = [(REPO / "README.md").read_text(encoding="utf-8"), default.description]
    commands = [shlex.split(c) for text in texts for c in re.findall(r"`(tltool run recipes/assignment\.yaml[^`]*)`",
                                                                     text)]
    assert len(commands) >= 2  # the README's and the recipe's own description's
    for words in commands:
        sets = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
        variables = load_recipe(RECIPES / "assignment.yaml", sets).vars
        assert variables["photos"] != default.vars["photos"], words
        assert variables["classes"] != default.vars["classes"], words


def test_from_and_until_outside_the_steps_are_refused(tmp_path):
    """Before: `run R --from 9` on a 2-step recipe, or `--from 3 --until 2`, ran nothing and exited 0."""
    from tltool.cli.recipes import run_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: two\nsteps:\n  - backbones: {}\n  - backbones: {}\n")
    for start, stop in ((9, None), (2, 1), (0, None), (1, 3)):
        given = f"--from {start}" + (f" --until {stop}" if stop else "")  # an --until not given is not named
        with pytest.raises(TltoolError, match=rf"has steps 1 to 2: {given} is not a range of them"):
            run_recipe(recipe, start=start, stop=stop)
    # a misspelt key for one step names that step, not "no step has it"
    with pytest.raises(TltoolError, match=r"key in --set 2\.haed=x \(step 2 of r\.yaml has no such option\)"):
        load_recipe(recipe, ["2.haed=x"])


def test_ctrl_c_in_a_recipe_step_exits_130_as_an_interrupted_command_does(tmp_path, monkeypatch):
    """Click turns a KeyboardInterrupt inside a nested command into Abort: the recipe printed 'Aborted!' and exited
    1 through the interpreter's shutdown, which hangs or aborts with TensorFlow loaded."""
    from click.testing import CliRunner

    from tltool.cli import group, main

    exits = []

    def interrupted():
        exits.append(130)
        raise SystemExit(130)  # the real one ends the process (os._exit) when TensorFlow is loaded

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(group, "_exit_interrupted", interrupted)
    monkeypatch.setattr(recipe_commands()["backbones"], "callback", ctrl_c)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: one\nsteps:\n  - backbones: {}\n")
    result = CliRunner().invoke(main, ["run", str(recipe)])
    assert result.exit_code == 130 and exits == [130] and "interrupted" in result.output, result.output
    assert "Aborted" not in result.output




_BOMB = "vars:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  {n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefg", "bcdefgh"))


def test_an_alias_bomb_is_refused_at_once_with_a_clear_error(tmp_path):
    """Before: eight lines of aliases stand for 10**8 values; yaml shares them, but substituting variables rebuilt
    every nested list before the type check, so `tltool run --check` hung while its memory grew."""
    path = _write(tmp_path, _BOMB + "steps:\n  - data-inspect: {path: *h}\n")
    with deadline(5), pytest.raises(TltoolError, match=r"r\.yaml: not valid YAML \(line 3, column \d+: an alias "
                                                      r"\(\*a\) is not allowed in a recipe"):
        load_recipe(path)
    result = _check(path)
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1
    with deadline(5), pytest.raises(TltoolError, match=r"--set out=\*a: not a YAML value \(.*alias"):
        load_recipe(_write(tmp_path, "steps:\n  - data-inspect: {path: x}\n"), ["out=*a"])


def _assert_refused_in_one_line(tmp_path, value: str, problem: str) -> None:
    """A recipe whose step option is ``value`` is refused, naming the place and ``problem``, in one line."""
    path = _write(tmp_path, f"steps:\n  - data-inspect: {{path: {value}}}\n")
    with pytest.raises(TltoolError, match=rf"r\.yaml: not valid YAML \(line 2, column \d+: {problem}"):
        load_recipe(path)
    result = _check(path)
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1


def test_deeply_nested_yaml_in_a_recipe_or_a_set_value_is_a_clear_error(tmp_path):
    """Before: the YAML composer recurses once per level, so 20,000 '[' were a RecursionError traceback."""
    deep = "[" * 20000 + "]" * 20000
    _assert_refused_in_one_line(tmp_path, deep, r"nested more than 32 levels deep\)")
    with pytest.raises(TltoolError, match=r"--set out=\[+\.\.\. \(40,004 characters\): not a YAML value \(.*nested "
                                          r"more than 32 levels"):
        load_recipe(_write(tmp_path, "steps:\n  - data-inspect: {path: x}\n"), [f"out={deep}"])


@pytest.mark.parametrize("value, problem", [
    ("[1", r"line 1, column 3: expected ',' or '\]'"),
    ("!!python/name:os.system", r"could not determine a constructor for the tag"),
    ("{a: 1", r"expected ',' or '\}'"),
])
def test_a_set_value_that_is_not_yaml_is_a_clear_error(tmp_path, value, problem):
    """Before: --set parsed its value with yaml.safe_load unguarded: a YAML error was a traceback."""
    path = _write(tmp_path, "steps:\n  - data-inspect: {path: x}\n")
    with pytest.raises(TltoolError, match=rf"--set out={re.escape(value)}: not a YAML value \(.*{problem}"):
        load_recipe(path, [f"out={value}"])
    result = _check(path, f"out={value}")
    assert result.exit_code == 2 and result.output.startswith("error: --set"), result.output


@pytest.mark.parametrize("value, problem", [
    ("2020-13-45", r"month must be in 1\.\.12"),  # read as a date by YAML
    ("2021-02-30", r"day is out of range for month"),
    ("!!int abc", r"invalid literal for int"),
    ("9" * 5000, r"Exceeds the limit \(4300 digits\)"),
])
def test_a_value_yaml_cannot_construct_is_a_clear_error_in_a_recipe_and_a_set_value(tmp_path, value, problem):
    """Before: PyYAML's constructors raise ValueError, not a YAML error: a date-like value that is no date, a tag
    that does not fit its value or an integer of 5000 digits was a traceback from `tltool run`."""
    _assert_refused_in_one_line(tmp_path, value, rf"the value .* cannot be read \(.*{problem}")
    good = _write(tmp_path, "steps:\n  - data-inspect: {path: x}\n")
    with pytest.raises(TltoolError, match=rf"--set out=.*: not a YAML value \(.*{problem}"):
        load_recipe(good, [f"out={value}"])
    result = _check(good, f"out={value}")
    assert result.exit_code == 2 and result.output.startswith("error: --set"), result.output


@pytest.mark.parametrize("value", ['"no"', '"false"', "no_thanks", "1", "[]"])
def test_interactive_must_be_a_yaml_boolean(tmp_path, value):
    """Before: `interactive` went through bool(), so the string "no" (or "false") made a step interactive."""
    with pytest.raises(TltoolError, match=r"r\.yaml, step 1 \(data-inspect\): key 'interactive' must be true or "
                                          r"false, got .* \((str|int|list)\)"):
        load_recipe(_write(tmp_path, f"steps:\n  - data-inspect: {{path: x, interactive: {value}}}\n"))
    for written, expected in (("true", True), ("false", False), ("no", False)):  # `no` unquoted is YAML's false
        recipe = load_recipe(_write(tmp_path, f"steps:\n  - data-inspect: {{path: x, interactive: {written}}}\n"))
        assert recipe.steps[0].interactive is expected


def test_a_key_given_twice_in_a_recipe_is_refused(tmp_path):
    """YAML keeps the last of two equal keys without a word: `out: a` then `out: b` wrote to b."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps:\n  - data-inspect:\n      path: data\n      out: a\n      out: b\n")
    with pytest.raises(TltoolError, match=r"line 5, column 7: the key 'out' is given twice"):
        load_recipe(recipe)


@pytest.mark.parametrize("written, read_as", [("010", 8), ("0x10", 16), ("1:30", 90), ("1_0", 10)])
def test_a_number_yaml_1_1_reads_as_another_is_refused(tmp_path, written, read_as):
    """From a review: `seed: 010` ran with --seed 8 (YAML 1.1 octal) and `seed: 0x10` with 16, without a word."""
    with pytest.raises(TltoolError, match=rf"line 2, column \d+: '{written}' is not a plain decimal number \(YAML "
                                          rf"would read it as {read_as}\); write it without a leading zero"):
        load_recipe(_write(tmp_path, f"steps:\n  - probe: {{data: x, seed: {written}}}\n"))
    with pytest.raises(TltoolError, match=r"'1:30\.5' is not a plain decimal number \(YAML would read it as 90\.5"):
        load_recipe(_write(tmp_path, "steps:\n  - finetune: {data: x, lr: 1:30.5}\n"))
    recipe = load_recipe(_write(tmp_path, "steps:\n  - probe: {data: x, seed: 10, out: '010'}\n"))
    assert recipe.steps[0].options == {"data": "x", "seed": 10, "out": "010"}


def test_a_long_or_multiline_set_value_is_shown_cut_and_escaped_in_its_error():
    """The error repeated a --set value whole: 5,000 digits echoed, a newline splitting the error line."""
    from tltool.cli.recipes import _parse_override

    for text, shown in (("out=" + "9" * 5000, "(5,004 characters): not a YAML value"),
                        ("a\nb", "--set a\\nb: write KEY=VALUE")):
        with pytest.raises(TltoolError) as info:
            _parse_override(text)
        assert shown in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 500


def test_a_key_set_twice_is_refused_not_silently_the_last(tmp_path):
    # `--set photos=a --set photos=b` ran on b alone: a folder and a zip could not both be imported, without a word
    path = _write(tmp_path, "vars: {d: data/a}\nsteps:\n  - finetune: {data: '${d}', epochs: 5}\n")
    with pytest.raises(TltoolError, match=r"--set d is given twice \(d=x, then d=y\): give each key once \(where "
                                          r"it takes several values, as one YAML list: --set 'd=\[a, b\]'\)"):
        load_recipe(path, ["d=x", "d=y"])
    with pytest.raises(TltoolError, match="--set epochs is given twice"):
        load_recipe(path, ["epochs=1", "epochs=2"])
    assert load_recipe(path, ["epochs=1", "finetune.epochs=2"]).steps[0].options["epochs"] == 2  # another key
    result = _check(path, "d=x", "d=y")
    assert result.exit_code != 0 and "given twice" in result.output and "Traceback" not in result.output


def test_a_list_set_for_a_variable_inside_a_list_gives_every_source(tmp_path):
    # the assignment recipe imports ["${photos}"]: --set 'photos=[a, b.zip]' must import both, not fail as nested
    from tltool.cli.recipes import build_argv

    recipe = load_recipe(REPO / "recipes" / "assignment.yaml", [f"photos=[{SAMPLE}, {tmp_path}/b.zip]"])
    argv = build_argv(recipe, 1, recipe.steps[0], recipe_commands()["collect-import"])
    assert argv[-2:] == [str(SAMPLE), f"{tmp_path}/b.zip"]


def _refused_before_step_one(in_tmp: Path, path: Path, message: str) -> None:
    """``--check`` and a run both refuse the recipe with ``message``, and the run's step 1 never ran."""
    result = _check(path)
    assert result.exit_code == 2 and re.search(message, " ".join(result.output.split())), result.output
    with pytest.raises(TltoolError, match=message):
        run_recipe(path)
    assert not (in_tmp / "runs").exists()  # step 1 never ran


def test_an_output_folder_a_step_would_refuse_is_named_by_check_and_before_the_first_step_runs(in_tmp):
    """Before: `--check` passed a recipe whose step 2 wrote into a folder of the user's (or a link, or under a file);
    the run did step 1 (minutes of extraction or training), then step 2 refused its --out."""
    (in_tmp / "mine").mkdir()
    (in_tmp / "mine" / "thesis.txt").write_text("mine")
    (in_tmp / "notes.txt").write_text("a file")
    (in_tmp / "link").symlink_to("mine")
    path = _write(in_tmp, f"steps:\n  - data-inspect: {{path: '{SAMPLE}', out: runs/a}}\n"
                          f"  - data-inspect: {{path: '{SAMPLE}', out: mine, force: true}}\n")
    message = (r"r\.yaml: outputs the steps would refuse when reached: step 2 \(data-inspect\): --out mine: is a "
               r"folder tltool did not make, and tltool never writes into or replaces such a folder; choose a new or "
               r"empty folder\. Nothing has run\.")
    _refused_before_step_one(in_tmp, path, message)
    assert [p.name for p in (in_tmp / "mine").iterdir()] == ["thesis.txt"]
    with pytest.raises(TltoolError, match=r"step 1 \(probe\): --out notes\.txt/x: notes\.txt is a file, not a folder; "
                                          r"choose another place; step 1 \(probe\): --features link: is a link to"):
        plan_recipe(_write(in_tmp, f"steps:\n  - probe: {{data: '{SAMPLE}', out: notes.txt/x, features: link}}\n"))
    # what an earlier step writes, an empty folder, a file a command writes (a split's CSV): not refused
    (in_tmp / "empty").mkdir()
    assert len(plan_recipe(_write(in_tmp, f"""steps:
  - data-inspect: {{path: '{SAMPLE}', out: runs/a}}
  - data-inspect: {{path: '{SAMPLE}', out: runs/a, force: true}}
  - data-inspect: {{path: '{SAMPLE}', out: empty}}
  - data-split: {{path: '{SAMPLE}', out: notes.txt, force: true}}
""")).steps) == 4
    assert _check(path, "2.out=runs/b").exit_code == 0


@pytest.mark.parametrize("steps, message", [
    # an --out an earlier step makes another kind of tltool folder
    (f"  - extract: {{data: '{SAMPLE}', image-size: 32, out: feats}}\n  - linear: {{features: feats, out: feats}}\n",
     r"step 2 \(linear\): --out feats: step 1 \(extract\) makes it a tltool features folder, and tltool never "
     r"writes a run into or over such a folder"),
    # a run an earlier step writes, replaced without force
    (f"  - data-inspect: {{path: '{SAMPLE}', out: runs/a}}\n  - data-inspect: {{path: '{SAMPLE}', out: runs/a}}\n",
     r"step 2 \(data-inspect\): --out runs/a: step 1 \(data-inspect\) writes a tltool run there first, which this "
     r"step replaces only with force: true"),
    # a finished run that is there now, replaced without force
    (f"  - data-inspect: {{path: '{SAMPLE}', out: runs/a}}\n  - data-inspect: {{path: '{SAMPLE}', out: done}}\n",
     r"step 2 \(data-inspect\): --out done: already holds an earlier tltool run; choose another folder, or add "
     r"force: true to the step \(--set 2\.force=true\) to replace it"),  # `tltool run` has no --force
    # a trained run that is there now, replaced by a report (a step that writes no model) with force: true
    (f"  - data-inspect: {{path: '{SAMPLE}', out: runs/a}}\n  - data-inspect: {{path: '{SAMPLE}', out: trained, "
     "force: true}\n", r"step 2 \(data-inspect\): --out trained: holds a trained model \(model\.json"),
    # a finished run that is there now, where an export is written
    (f"  - data-inspect: {{path: '{SAMPLE}', out: runs/a}}\n  - export: {{run-dir: trained, out: done, force: true}}\n",
     r"step 2 \(export\): --out done: is a tltool run folder, and tltool never writes into or replaces such"),
])
def test_check_names_an_out_a_later_step_will_refuse_when_an_earlier_step_or_an_earlier_run_holds_it(
        in_tmp, steps, message):
    """Before: `--check` skipped an --out that an earlier step writes whatever kind of folder it made there, and
    passed an --out holding a finished run without force: true; the run did the steps before (minutes of
    extraction), then the step refused its --out."""
    from tltool.runs import new_run_dir, writes_runs

    writes_runs(lambda: new_run_dir("inspect", out=in_tmp / "done"))()

    @writes_runs
    def trained() -> None:
        write_json(new_run_dir("linear", out=in_tmp / "trained") / "model.json", {"kind": "linear"})

    trained()
    _refused_before_step_one(in_tmp, _write(in_tmp, f"steps:\n{steps}"), message)


@pytest.mark.parametrize("steps, message", [
    (f"  - extract: {{data: '{SAMPLE}', image-size: 32, out: feats}}\n  - probe: {{data: feats, out: runs/p}}\n",
     r"step 2 \(probe\): feats: step 1 \(extract\) makes it a tltool features folder, not photos"),
    (f"  - data-inspect: {{path: '{SAMPLE}', out: runs/i}}\n  - linear: {{features: runs/i, out: runs/l}}\n",
     r"step 2 \(linear\): runs/i: step 1 \(data-inspect\) makes it a tltool run folder, not features"),
    (f"  - data-inspect: {{path: '{SAMPLE}', out: runs/i}}\n  - linear: {{features: '{SAMPLE}', out: runs/l}}\n",
     r"step 2 \(linear\): .*shapes: no features\.json here: this takes the folder `tltool extract`"),
    (f"  - data-inspect: {{path: '{SAMPLE}', out: runs/i}}\n  - data-inspect: {{path: done, out: runs/j}}\n",
     r"step 2 \(data-inspect\): done: is a tltool run folder .*not photos"),
    # a trained run's input (a review: compare, evaluate and export on a features folder, or on an interrupted run,
    # passed --check and were refused when reached)
    (f"  - extract: {{data: '{SAMPLE}', image-size: 32, out: feats}}\n  - compare: {{run-a: feats, run-b: done}}\n",
     r"step 2 \(compare\): feats: step 1 \(extract\) makes it a tltool features folder, which holds no model"),
    (f"  - data-inspect: {{path: '{SAMPLE}', out: runs/i}}\n  - export: {{run-dir: '{SAMPLE}'}}\n",
     r"step 2 \(export\): .*shapes: not a tltool run \(no model\.json\)"),
    (f"  - data-inspect: {{path: '{SAMPLE}', out: runs/i}}\n  - evaluate: {{run-dir: done, data: '{SAMPLE}'}}\n",
     r"step 2 \(evaluate\): done: is the run of a tltool command, which holds no model \(no model\.json\)"),
    (f"  - data-inspect: {{path: '{SAMPLE}', out: runs/i}}\n  - predict: {{model: cut, images: ['{SAMPLE}']}}\n",
     r"step 2 \(predict\): cut: its command did not finish"),
])
def test_check_names_an_input_of_the_kind_its_command_refuses(in_tmp, steps, message):
    """Before: --check asked only that an input exist (or that an earlier step write it): probe on extract's folder,
    linear on photos passed, and the step failed when reached, after the steps before it ran."""
    from tltool.outputs import claim_output_dir
    from tltool.runs import new_run_dir, writes_runs

    writes_runs(lambda: new_run_dir("inspect", out=in_tmp / "done"))()
    write_json(claim_output_dir(in_tmp / "cut", "run") / "model.json", {"kind": "linear"})  # its command never ended
    _refused_before_step_one(in_tmp, _write(in_tmp, f"steps:\n{steps}"),
                             r"inputs the steps would refuse when reached: " + message)


def test_check_passes_a_cache_or_a_forced_run_that_an_earlier_step_writes(in_tmp):
    """What the commands take: a feature cache or a collected dataset written again (before: a collect import
    step's dataset was taken for a run, so the bundled assignment recipe was refused once its first step had run),
    a run replaced with force: true."""
    from tltool.collect import import_images
    from tltool.runs import new_run_dir, writes_runs

    writes_runs(lambda: new_run_dir("inspect", out=in_tmp / "done"))()
    import_images([str(SAMPLE / "circle")], in_tmp / "photos")
    path = _write(in_tmp, f"""steps:
  - extract: {{data: '{SAMPLE}', image-size: 32, out: feats}}
  - probe: {{data: '{SAMPLE}', image-size: 32, features: feats, out: runs/p}}
  - data-inspect: {{path: '{SAMPLE}', out: runs/p, force: true}}
  - data-inspect: {{path: '{SAMPLE}', out: done, force: true}}
  - collect-import: {{sources: ['{SAMPLE}/square'], out: photos}}
  - collect-import: {{sources: ['{SAMPLE}/star'], out: photos}}
""")
    assert len(plan_recipe(path).steps) == 6
    with pytest.raises(TltoolError, match=r"step 2 \(probe\): --out photos: step 1 \(collect-import\) makes it a "
                                          r"tltool dataset folder"):
        plan_recipe(_write(in_tmp, f"steps:\n  - collect-import: {{sources: ['{SAMPLE}/star'], out: photos}}\n"
                                   f"  - probe: {{data: '{SAMPLE}', out: photos, force: true}}\n"))


def test_check_names_a_features_folder_a_step_would_refuse_for_other_settings(in_tmp):
    """Before: `--check` passed a step extracting into a features folder of another size (one there now, or one an
    earlier step writes); the run did the steps before (minutes of extraction), then the step refused its folder."""
    from tltool.features import extract_features

    extract_features(str(SAMPLE), in_tmp / "feats", image_size=32, chunk_size=64)
    one = f"  - probe: {{data: '{SAMPLE}', image-size: 48, features: feats, out: runs/p}}\n"
    _refused_before_step_one(in_tmp, _write(in_tmp, f"steps:\n  - data-inspect: {{path: '{SAMPLE}', out: runs/a}}\n"
                                                      + one),
                             r"features the steps would refuse when reached: step 2 \(probe\): --features .*feats: "
                             r"holds the features of other settings \(image_size 32 -> 48\); .* add force: true to "
                             r"the step \(--set 2\.force=true\) to replace them\. Nothing has run\.")
    two = (f"steps:\n  - extract: {{data: '{SAMPLE}', image-size: 32, out: new}}\n"
           f"  - probe: {{data: '{SAMPLE}', image-size: 32, features: new, out: runs/p, weights: none}}\n")
    with pytest.raises(TltoolError, match=r"step 2 \(probe\): --features .*new: holds the features of other "
                                          r"settings \(weights imagenet -> none\)"):
        plan_recipe(_write(in_tmp, two))
    assert not (in_tmp / "new").exists()
    # the same network spelled otherwise, and another setting with force: true, pass
    assert len(plan_recipe(_write(in_tmp, one.replace("48", "32").replace("probe: {", "probe: {weights: ImageNet, ")
                                  .join(["steps:\n", ""]))).steps) == 1
    assert len(plan_recipe(_write(in_tmp, "steps:\n" + one.replace("out: runs/p", "out: runs/p, force: true"))
                           ).steps) == 1


def test_check_takes_a_run_a_resume_step_finishes_and_names_an_export_s_default_folder_replaced(in_tmp):
    """From a review of the checks above: a step reading the run an earlier `resume` step finishes was refused as an
    interrupted run; an export step re-run into RUN/export/FORMAT (replaced only with force) passed --check and was
    refused when reached."""
    from tltool.outputs import staged_output

    run = in_tmp / "runs" / "a"
    run.mkdir(parents=True)
    (run / ".tltool-output.json").write_text('{"kind": "run", "tool": "tltool", "finished": false}')
    for name, text in (("state.json", "{}"), ("split.csv", "path,label,split\n"), ("model.json", "{}")):
        (run / name).write_text(text)
    assert len(plan_recipe(_write(in_tmp, f"steps:\n  - finetune: {{resume: runs/a}}\n"
                                          f"  - evaluate: {{run-dir: runs/a, data: '{SAMPLE}'}}\n")).steps) == 2
    trained = in_tmp / "trained"
    trained.mkdir()
    (trained / "model.json").write_text("{}")
    with staged_output(trained / "export" / "keras", "export") as staging:
        (staging / "model.keras").write_text("an earlier export")
    path = _write(in_tmp, "steps:\n  - export: {run-dir: trained}\n")
    with pytest.raises(TltoolError, match=r"outputs the steps would refuse when reached: step 1 \(export\): --out "
                                          r"\(its default\) trained/export/keras: already holds an earlier tltool "
                                          r"export; choose another folder, or add force: true to the step"):
        plan_recipe(path)
    assert len(plan_recipe(_write(in_tmp, "steps:\n  - export: {run-dir: trained, force: true}\n")).steps) == 1
    assert len(plan_recipe(_write(in_tmp, "steps:\n  - export: {run-dir: trained, format: tflite}\n")).steps) == 1


def test_a_step_that_fails_when_it_runs_is_named_in_the_error_and_the_earlier_steps_outputs_stay(in_tmp):
    """Before: a step's own error was printed as it was (`error: nods: no images found...`), naming no step, after
    screens of the earlier steps' output; Click's errors and exit statuses of a step were already named."""
    (in_tmp / "nods").mkdir()
    (in_tmp / "nods" / "a.txt").write_text("no photo")
    path = _write(in_tmp, f"steps:\n  - data-inspect: {{path: '{SAMPLE}', out: runs/a}}\n"
                          "  - data-inspect: {path: nods, out: runs/b}\n  - data-inspect: {path: nods, out: runs/c}\n")
    with pytest.raises(TltoolError, match=r"^.*r\.yaml, step 2 \(data-inspect\): nods: no images found"):
        run_recipe(path)
    assert (in_tmp / "runs" / "a" / "report.md").is_file()
    assert sorted(p.name for p in (in_tmp / "runs").iterdir()) == ["a"]  # step 3 did not run


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_recipe_that_is_a_fifo_is_said_to_be_no_regular_file_not_missing(tmp_path):
    os.mkfifo(tmp_path / "r.yaml")
    with deadline(5), pytest.raises(TltoolError, match=r"r\.yaml: not a regular file; a recipe is a YAML file\.$"):
        load_recipe(tmp_path / "r.yaml")  # before: "no such recipe file", of a file `ls` shows
    with pytest.raises(TltoolError, match=r"gone\.yaml: no such recipe file\.$"):
        load_recipe(tmp_path / "gone.yaml")


@pytest.mark.parametrize("step, message", [
    ("train: {data: DATA, epochs: 0, out: runs/t}", r"step 2 \(train\): no epoch to train"),
    # names Click takes as free text: checked by their registries ("did you mean")
    ("extract: {data: DATA, backbone: efficientnet_lit0, out: f}",
     r"step 2 \(extract\): Unknown backbone 'efficientnet_lit0'"),
    ("train: {data: DATA, arch: lenet6}", r"step 2 \(train\): .*architecture 'lenet6'.*lenet5"),
    ("arch-summary: {name: alexnt}", r"step 2 \(arch-summary\): .*architecture 'alexnt'.*alexnet"),
    ("finetune: {data: DATA, lr: .nan, out: runs/f}",
     r"step 2 \(finetune\): --lr must be a number in \(0, 10\], got nan"),
    ("finetune: {data: DATA, refit: true, schedule: plateau}", r"step 2 \(finetune\): --refit repeats the run's"),
    ("probe: {data: DATA, max-pixels: 0}", r"step 2 \(probe\): --max-pixels must be a whole number at least 1"),
    ("linear: {features: runs/a, cv: 1}", r"step 2 \(linear\): --cv must be 0 \(off\) or a number of folds"),
    # from a review: passed --check, refused when the step was reached
    ("probe: {data: DATA, val-fraction: 1.5}", r"step 2 \(probe\): --val-fraction must be a number above 0 and "
                                                r"below 1 \(a share of each class\), got 1\.5"),
    ("extract: {data: DATA, shard: 3/2, out: f}", r"step 2 \(extract\): --shard 3/2: INDEX must be 0\.\.COUNT-1"),
])
def test_settings_a_command_checks_when_it_runs_are_checked_before_the_first_step(in_tmp, step, message):
    """Before: Click took `epochs: 0` or `lr: .nan`, so `--check` passed; the run did step 1 (minutes, for an
    extraction), then step 2's own check of its settings refused them."""
    path = _write(in_tmp, f"steps:\n  - data-inspect: {{path: '{SAMPLE}', out: runs/a}}\n"
                          f"  - {step.replace('DATA', repr(str(SAMPLE)))}\n")
    _refused_before_step_one(in_tmp, path, message)


def _interrupted_training(run: Path) -> None:
    """What a Ctrl-C in a training's third epoch leaves: a claimed, unfinished run with its split and checkpoint."""
    from tltool.outputs import claim_output_dir

    claim_output_dir(run, "run")
    (run / "split.csv").write_text("path,label,split\n")
    (run / "state.json").write_text("{}")
    (run / "checkpoint-epoch0002.keras").write_bytes(b"")


def test_a_recipe_run_again_after_an_interrupted_training_step_keeps_its_checkpoints(in_tmp, monkeypatch):
    """The bundled recipes give their training steps force: true (so a finished recipe runs again). Run again after
    a Ctrl-C, that deleted the interrupted run's checkpoints and trained again from epoch 1, without a word: the
    interrupt says how to go on, and a plain rerun is refused with it."""
    from click.testing import CliRunner

    from tltool.cli import group, main

    path = _write(in_tmp, f"steps:\n  - data-inspect: {{path: '{SAMPLE}', out: runs/i, force: true}}\n"
                          f"  - train: {{data: '{SAMPLE}', arch: lenet5, epochs: 6, out: runs/lenet, force: true}}\n")

    def ctrl_c_in_epoch_3(*args, **kwargs):
        _interrupted_training(in_tmp / "runs" / "lenet")
        raise KeyboardInterrupt

    train = recipe_commands()["train"]
    monkeypatch.setattr(group, "_exit_interrupted", lambda: (_ for _ in ()).throw(SystemExit(130)))
    monkeypatch.setattr(train, "callback", ctrl_c_in_epoch_3)
    result = CliRunner().invoke(main, ["run", str(path)])
    hint = f"tltool run {path} --from 2"
    assert result.exit_code == 130 and f"step 2 interrupted; `{hint}` goes on from its last finished epoch" in \
        " ".join(result.output.split()), result.output
    monkeypatch.setattr(train, "callback", lambda *a, **k: pytest.fail("the interrupted run was trained again"))
    refusal = (r"step 2 \(train\): --out runs/lenet: holds the run of a training that did not finish \(interrupted, "
               r"or stopped on an error\), and its settings cannot be compared with the step's \(not a training run "
               r"folder \(no config\.json\)\.\), with checkpoints; a recipe never replaces it\. Go on from its last epoch, "
               r"with the settings it started with, by --from 2 --set 2\.resume=runs/lenet")
    unforced = _write(in_tmp / "runs", path.read_text().replace(", force: true}", "}"))  # no force: true either
    for run in (lambda: run_recipe(path), lambda: plan_recipe(path, start=2), lambda: plan_recipe(unforced)):
        with pytest.raises(TltoolError, match=refusal):
            run()
    assert (in_tmp / "runs" / "lenet" / "checkpoint-epoch0002.keras").exists()
    plan_recipe(path, ["2.resume=runs/lenet"], start=2)  # the hint's command passes the check
    plan_recipe(unforced, ["2.resume=runs/lenet"], start=2)
    # an interrupted step of a command that cannot resume is run again
    monkeypatch.setattr(recipe_commands()["data-inspect"], "callback", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    result = CliRunner().invoke(main, ["run", str(path), "--until", "1"])
    assert f"step 1 interrupted; run it and the steps after it with `tltool run {path} --from 1 --until 1`" in \
        " ".join(result.output.split()), result.output


def test_a_recipe_run_again_after_an_interrupted_training_goes_on_with_it_unless_its_settings_changed(in_tmp,
                                                                                                       monkeypatch):
    """Run again after a Ctrl-C in a training step, a recipe was refused (rightly: force: true deleted the run's
    checkpoints) and the user had to type `--set N.resume=OUT`: with the step's settings unchanged it goes on by
    itself; changed, the refusal names what changed."""
    from click.testing import CliRunner

    from tltool.cli import group, main
    from tltool.training import LoopState

    path = _write(in_tmp, f"steps:\n  - train: {{data: '{SAMPLE}', arch: lenet5, epochs: 2, out: runs/lenet, "
                          "force: true}\n")
    save = LoopState.save

    def save_then_ctrl_c(state, file):
        save(state, file)
        if state.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(group, "_exit_interrupted", lambda: (_ for _ in ()).throw(SystemExit(130)))
    with monkeypatch.context() as patch:
        patch.setattr(LoopState, "save", save_then_ctrl_c)
        result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 130, result.output
    assert f"step 1 interrupted; `tltool run {path} --from 1` goes on from its last finished epoch" in \
        " ".join(result.output.split())
    changed = CliRunner().invoke(main, ["run", str(path), "--set", "1.epochs=3", "--set", "1.seed=1"])
    assert changed.exit_code != 0 and "started with other settings than the step's (seed: 0 -> 1; epochs: 2 -> 3)" \
        in " ".join(changed.output.split()), changed.output
    assert json.loads((in_tmp / "runs" / "lenet" / "state.json").read_text())["epoch"] == 1  # untouched
    again = CliRunner().invoke(main, ["run", str(path)])
    said = " ".join(again.output.split())
    assert again.exit_code == 0, again.output
    assert "step 1 (train): runs/lenet holds its run, started with the same settings and not finished: it goes on " \
           "from the last finished epoch" in said and "resuming after epoch 1" in said
    assert "ignored" not in said  # the step's options are the run's: none is named as ignored by --resume
    history = (in_tmp / "runs" / "lenet" / "history.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in history] == [1, 2]
    finished = CliRunner().invoke(main, ["run", str(path)])  # a finished run: force: true trains it again
    assert finished.exit_code == 0 and "holds its run" not in finished.output, finished.output


def _unfinished_scratch_run(run: Path, **settings) -> None:
    """An interrupted `train` run's folder, with the config.json its start wrote for ``settings``."""
    from dataclasses import asdict

    from tltool.configs import ScratchConfig

    _interrupted_training(run)
    config = ScratchConfig(**settings)
    write_json(run / "config.json", {**asdict(config), "kind": "scratch", "image_size": config.image_size or 32,
                                     "image_size_given": config.image_size, "classes": ["a", "b"]})


def test_a_recipe_does_not_go_on_with_a_run_whose_data_an_earlier_step_writes_again(in_tmp, capsys):
    """Going on trains on the split the run started with: after a step that writes the data again (a new split,
    new labels), the same settings are not the same training. A resumed step still writes its out (a later step
    there needs force: true), and the going-on line is said once the plan is checked."""
    split = "split.csv"
    _unfinished_scratch_run(in_tmp / "runs" / "lenet", data=split, arch="lenet5", epochs=6)
    (in_tmp / split).write_text("path,label,split\n")
    path = _write(in_tmp, f"steps:\n  - data-split: {{path: '{SAMPLE}', out: {split}, force: true}}\n"
                          f"  - train: {{data: {split}, arch: lenet5, epochs: 6, out: runs/lenet}}\n")
    with pytest.raises(TltoolError, match=r"step 2 \(train\): --out runs/lenet: holds the run of a training that did "
                                          r"not finish \(interrupted, or stopped on an error\), and step 1 writes its "
                                          r"data split\.csv again before it .*--from 2 leaves the steps before it out"):
        plan_recipe(path)
    planned = plan_recipe(path, start=2)  # without step 1, the run goes on
    assert planned.steps[1].options == {"resume": "runs/lenet"}
    assert "step 2 (train): runs/lenet holds its run, started with the same settings" in capsys.readouterr().err
    again = _write(in_tmp, path.read_text() + "  - data-inspect: {path: " + f"'{SAMPLE}'" + ", out: runs/lenet}\n")
    with pytest.raises(TltoolError, match=r"step 3 \(data-inspect\): --out runs/lenet: step 2 \(train\) writes a "
                                          r"tltool run there first"):
        plan_recipe(again, start=2)
    assert "holds its run" not in capsys.readouterr().err  # refused: nothing is said to go on
