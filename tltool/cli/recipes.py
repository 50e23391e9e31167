"""Recipes: YAML files of tltool steps, run by ``tltool run RECIPE.yaml [--set key=value]``.

A recipe is a list of command lines, so the runner lives with the CLI: it reads each command's options from
its Click parameters and runs the command as the command line would.

A step names a command as the CLI does (``probe``, ``finetune``, ``data-inspect``, ``label-export``, ...) and sets
its options by the CLI's own names (``val-fraction`` or ``val_fraction``). The schema is read from the commands
themselves, so a recipe can set exactly what the command line can, spelled the same way, and is checked before
anything runs: an unknown key gets a "did you mean", a wrong type names the key and the expected type, and every
step's command line is then parsed by its own command (not invoked), so what only Click can tell (a value out of
range, a required option left out), and what the command checks of its settings (``train`` with ``epochs: 0``), also
stop the recipe before its first step, not when the step is reached.

    name: flowers linear probe
    vars: {data: ../shared/datasets/flowers}
    steps:
      - data-inspect: {path: "${data}"}
      - probe: {data: "${data}", head: logreg, out: runs/flowers-linear}
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import yaml
from rich.markup import escape

from .. import safe_yaml
from ..arch.registry import check_arch_name
from ..backbones.registry import get_backbone_spec
from ..configs import ExtractConfig, FinetuneConfig, LinearConfig, ScratchConfig
from ..errors import TltoolError, close_match_hint, did_you_mean
from ..progress import say
from ..runs import resumable_run
from ..supervised import SESSION_SETTINGS, changed_settings
from ..utils import shown_name
from .group import main
from .recipe_files import (StepInput, made_before, misread_inputs, refused_feature_settings, refused_outputs,
                           unmade_inputs, with_earlier_outputs)

TOP_LEVEL = ("name", "description", "vars", "steps")
STEP_KEYS = ("interactive",)  # step-level settings that are not command options
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_-]*)\}")
# the settings a command gathers into configs and checks (``validate()``) only when it runs
STEP_CONFIGS: dict[str, tuple[type, ...]] = {"extract": (ExtractConfig,), "linear": (LinearConfig,),
                                             "probe": (ExtractConfig, LinearConfig), "finetune": (FinetuneConfig,),
                                             "train": (ScratchConfig,)}


def _read_yaml(text: str) -> Any:
    """``text`` as YAML, read by tltool's hardened loader (no aliases, no deep nesting, no key twice)."""
    return safe_yaml.read_yaml(text, "a recipe", alias_hint="write the value out, or give it once in vars")


@dataclass
class Step:
    command: str
    options: dict[str, Any]
    interactive: bool = False


@dataclass
class Recipe:
    path: Path
    name: str
    description: str
    vars: dict[str, Any]
    steps: list[Step]


def recipe_commands() -> dict[str, click.Command]:
    """Every command a recipe may use, by its recipe name (``group-command`` for grouped commands)."""
    out: dict[str, click.Command] = {}
    for name, command in main.commands.items():
        if name == "run":
            continue
        if isinstance(command, click.Group):
            for sub, subcommand in command.commands.items():
                out[f"{name}-{sub}"] = subcommand
        else:
            out[name] = command
    return out


def _key(param: click.Parameter) -> str:
    """A recipe key is the option as typed on the command line (``--val-fraction`` -> ``val-fraction``);
    an argument is named as in the command's usage line (``DATA`` -> ``data``)."""
    if isinstance(param, click.Option):
        long = [o for o in param.opts if o.startswith("--")]
        return (long[0] if long else param.opts[0]).lstrip("-")
    return param.name.replace("_", "-")


def _type_name(param: click.Parameter) -> str:
    if getattr(param, "is_flag", False):
        return "true or false"
    if param.nargs == -1 or getattr(param, "multiple", False):
        return "a list"
    if isinstance(param.type, click.Choice):
        return f"one of {list(param.type.choices)}"
    return {"integer": "an integer", "float": "a number", "boolean": "true or false"}.get(_base_type(param),
                                                                                            "a string")


def _base_type(param: click.Parameter) -> str:
    """The type's name, a range read as its number type (``click.IntRange`` is an integer)."""
    return {"integer range": "integer", "float range": "float"}.get(param.type.name, param.type.name)


def _number_text(text: str, kind: str) -> bool:
    """Whether ``text`` unquoted would be a number of ``kind`` ("integer", "float"): "96" yes, "96.0" no for an
    integer; "nan" never."""
    try:
        number = {"integer": int, "float": float}[kind](text)
    except (KeyError, ValueError):
        return False
    return math.isfinite(number)


def _check_value(where: str, param: click.Parameter, value: Any) -> list[str]:
    """The command-line words for ``value``; raise a clear error when its type is wrong."""
    quoted = isinstance(value, str) and _number_text(value, _base_type(param))
    bad = TltoolError(f"{where}: key {_key(param)!r} must be {_type_name(param)}, got {value!r} "
                      f"({type(value).__name__})" + ("; write it without quotes." if quoted else "."))
    if any(isinstance(v, str) and "\0" in v for v in (value if isinstance(value, list) else [value])):
        raise TltoolError(f"{where}: key {_key(param)!r} holds a NUL byte (\\0), which no file name or value may "
                          "hold; a command line cannot pass one either.")
    if getattr(param, "is_flag", False):
        if not isinstance(value, bool):
            raise bad
        if value:
            return [param.opts[0]]
        return [param.secondary_opts[0]] if param.secondary_opts else []
    if param.nargs == -1:
        values = value if isinstance(value, list) else None
        if values is None or any(isinstance(v, (list, dict)) for v in values):
            raise bad
        return [str(v) for v in values]
    if isinstance(value, (list, dict)):
        raise bad
    name = _base_type(param)
    if name == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad
    if name == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise bad
    if name == "boolean" and not isinstance(value, bool):
        raise bad
    if isinstance(param.type, click.Choice) and str(value) not in param.type.choices:
        hint = close_match_hint(value, param.type.choices) if isinstance(value, str) else ""
        raise TltoolError(f"{bad} {hint}".rstrip())
    if value is None:
        return []
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return [text] if isinstance(param, click.Argument) else [param.opts[0], text]


def _substitute(value: Any, variables: dict[str, Any], where: str) -> Any:
    if isinstance(value, list):  # a list variable in a list is spliced in: ["${photos}"] with photos=[a, b] is [a, b]
        items = [(v, _substitute(v, variables, where)) for v in value]
        return [x for v, sub in items
                for x in (sub if isinstance(sub, list) and isinstance(v, str) and _VAR.fullmatch(v) else [sub])]
    if not isinstance(value, str):
        return value
    full = _VAR.fullmatch(value)
    if full:  # "${n}" alone keeps the variable's type (an integer stays an integer)
        return _lookup(full.group(1), variables, where)
    return _VAR.sub(lambda m: str(_lookup(m.group(1), variables, where)), value)


def _lookup(name: str, variables: dict[str, Any], where: str) -> Any:
    if name not in variables:
        raise did_you_mean(name, variables, f"variable in {where}:")
    return variables[name]


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise TltoolError(f"--set {shown_name(text)}: write KEY=VALUE (e.g. --set epochs=2 or "
                          "--set finetune.epochs=2).")
    key, raw = text.split("=", 1)
    if not raw.strip():
        return key.strip().replace("_", "-"), ""
    try:
        value = _read_yaml(raw)
    except yaml.YAMLError as exc:
        raise TltoolError(f"--set {shown_name(text)}: not a YAML value ({exc}); quote it to give it as text, e.g. "
                          f"--set '{key}=\"...\"'.") from None
    return key.strip().replace("_", "-"), value


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read and check a recipe; ``overrides`` (``KEY=VALUE``) set a variable, or an option of every step that
    has it, or ``COMMAND.KEY``/``N.KEY`` for one step (N counts from 1)."""
    path = Path(path)
    if not path.is_file():  # a FIFO or a device exists: "no such file" misled
        raise TltoolError(f"{path}: " + ("not a regular file; a recipe is a YAML file." if path.exists()
                                         else "no such recipe file."))
    try:
        data = _read_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TltoolError(f"{path}: not valid YAML ({exc}).") from None
    except UnicodeDecodeError as exc:
        raise TltoolError(f"{path}: not a text file in UTF-8 ({exc.reason} at byte {exc.start}); a recipe is YAML "
                          "text.") from None
    except OSError as exc:
        raise TltoolError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    if not isinstance(data, dict):
        raise TltoolError(f"{path}: a recipe is a mapping with keys {list(TOP_LEVEL)}.")
    for key in data:
        if key not in TOP_LEVEL:
            raise did_you_mean(str(key), TOP_LEVEL, f"top-level key in {path}:")
    steps_raw = data.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise TltoolError(f"{path}: 'steps' must be a non-empty list of {{command: {{options}}}}.")
    variables = data.get("vars") or {}
    if not isinstance(variables, dict):
        raise TltoolError(f"{path}: 'vars' must be a mapping of names to values.")
    nested = sorted(str(k) for k, v in variables.items() if isinstance(v, str) and _VAR.search(v))
    if nested:
        raise TltoolError(f"{path}: vars {nested} refer to other variables; a variable's value is used as it is "
                          "written, so give it in full.")
    variables = dict(variables)
    commands = recipe_commands()
    steps = [_read_step(path, i, raw, commands) for i, raw in enumerate(steps_raw, start=1)]
    _apply_overrides(path, steps, variables, commands, overrides)
    recipe = Recipe(path, str(data.get("name") or path.stem), str(data.get("description") or ""), variables, steps)
    for i, step in enumerate(recipe.steps, start=1):  # check every step before running any
        _parse_step(recipe, i, step, commands[step.command], build_argv(recipe, i, step, commands[step.command]))
    return recipe


def _read_step(path: Path, index: int, raw: Any, commands: dict[str, click.Command]) -> Step:
    """One ``command: {options}`` entry of ``steps``, its keys read with '_' as '-'."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise TltoolError(f"{path}, step {index}: write each step as one `command: {{options}}` mapping.")
    (command, options), = raw.items()
    if command not in commands:
        raise did_you_mean(str(command), commands, f"command in {path}, step {index}:")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TltoolError(f"{path}, step {index} ({command}): options must be a mapping.")
    options = {str(k).replace("_", "-"): v for k, v in options.items()}
    interactive = options.pop("interactive", False)
    if not isinstance(interactive, bool):  # bool("no") is True: a string would make the step interactive
        raise TltoolError(f"{path}, step {index} ({command}): key 'interactive' must be true or false, got "
                          f"{interactive!r} ({type(interactive).__name__}).")
    return Step(command, options, interactive)


def _parse_step(recipe: Recipe, index: int, step: Step, command: click.Command, argv: list[str]) -> None:
    """Parse ``argv`` as ``command`` would when the step runs, without running it: a value Click refuses (out of
    range, not a number, not a choice), an unknown option or a required one left out is the recipe's error now,
    before the first step writes anything, rather than when this step is reached.

    Parsing has no side effects: callbacks and prompts are dropped (no tltool command has one today), the help
    option is left out, and no command takes a ``click.File`` (which would open it). A path that must exist is not
    required to exist yet, because an earlier step (or the person between ``--until`` and ``--from``, as for the
    labeler) may create it; the command checks it when it runs. A path that exists already is still checked for
    its kind (a file where a folder is wanted)."""
    try:
        ctx = _parse_only(command).make_context(step.command, list(argv), help_option_names=[])
    except click.ClickException as exc:
        raise TltoolError(f"{recipe.path}, step {index} ({step.command}): {exc.format_message()}") from None
    ctx.close()
    try:
        _validate_configs(step.command, ctx.params)
    except TltoolError as exc:
        raise TltoolError(f"{recipe.path}, step {index} ({step.command}): {exc}") from None


def _validate_configs(command: str, params: dict[str, Any]) -> None:
    """Check a step's settings as its command checks them when it runs: ``train`` with ``epochs: 0``, or ``finetune``
    with ``lr: .nan``, passed Click and failed only once the steps before it had run. A resumed run takes its
    own settings from its folder: nothing to check here."""
    if params.get("resume"):
        return
    for config in STEP_CONFIGS.get(command, ()):
        names = {f.name for f in dataclasses.fields(config)}
        config(**{key: value for key, value in params.items() if key in names}).validate()
    for key, lookup in NAMED.items():  # free text to Click: `backbone: efficientnet_lit0` passed --check
        if isinstance(params.get(key), str):
            lookup(params[key])


# the options whose value names a registry entry (`name`: arch-summary's), and the lookup that refuses an unknown
# one with a "did you mean"
NAMED: dict[str, Callable[[str], Any]] = {"backbone": get_backbone_spec, "arch": check_arch_name,
                                          "name": check_arch_name}


def _parse_only(command: click.Command) -> click.Command:
    """A copy of ``command`` to parse with: no callbacks or prompts, and its paths need not exist yet."""
    parser = copy.copy(command)
    parser.params = []
    for param in command.params:
        param = copy.copy(param)
        param.callback = None
        if isinstance(param, click.Option):
            param.prompt = None
        if isinstance(param.type, click.Path) and param.type.exists:
            param.type = copy.copy(param.type)
            param.type.exists = False
        parser.params.append(param)
    return parser


def _once_each(overrides) -> list[tuple[str, Any, str]]:
    """Each ``--set`` parsed; one key given twice is refused (the last would silently win: a folder and a zip
    given as ``--set photos=a --set photos=b`` imported only b)."""
    parsed, seen = [], {}
    for text in overrides:
        key, value = _parse_override(text)
        if key in seen:
            raise TltoolError(f"--set {shown_name(key)} is given twice ({shown_name(seen[key])}, then "
                              f"{shown_name(text)}): give each key once (where it takes several values, as one "
                              f"YAML list: --set '{shown_name(key)}=[a, b]').")
        seen[key] = text
        parsed.append((key, value, text))
    return parsed


def _apply_overrides(path: Path, steps: list[Step], variables: dict, commands: dict, overrides) -> None:
    for key, value, text in _once_each(overrides):
        target, _, option = key.rpartition(".")
        if not target and key.replace("-", "_") in variables:
            variables[key.replace("-", "_")] = value
            continue
        if not target and key in variables:
            variables[key] = value
            continue
        chosen = [s for n, s in enumerate(steps, start=1) if not target or target in (s.command, str(n))]
        if target and not chosen:
            raise did_you_mean(target, [s.command for s in steps], f"step in --set {text}:")
        hit = False
        for step in chosen:
            if option in {_key(p) for p in commands[step.command].params}:
                step.options[option] = value
                hit = True
        if not hit:
            known = {_key(p) for s in chosen for p in commands[s.command].params} | set(variables)
            where = f"step {target} of {path.name} has no such option" if target else f"no step of {path.name} has it"
            raise did_you_mean(option, known, f"key in --set {text} ({where}):")


def build_argv(recipe: Recipe, index: int, step: Step, command: click.Command) -> list[str]:
    where = f"{recipe.path}, step {index} ({step.command})"
    params = {_key(p): p for p in command.params if p.name != "help"}
    for key in step.options:
        if key not in params:
            raise did_you_mean(key, params, f"key in {where}:")
    argv: list[str] = []
    positional: list[str] = []
    for key, param in params.items():
        if key not in step.options:
            if isinstance(param, click.Argument) and param.required:
                raise TltoolError(f"{where}: key {key!r} is required ({_type_name(param)}).")
            continue
        given = step.options[key]
        variable = _VAR.fullmatch(given) if isinstance(given, str) else None  # the variable is what to fix
        here = f"{where}, from the variable {variable.group(1)!r}" if variable else where
        words = _check_value(here, param, _substitute(given, recipe.vars, where))
        (positional if isinstance(param, click.Argument) else argv).extend(words)
    return argv + (["--", *positional] if positional else [])


def plan_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), start: int = 1,
                stop: int | None = None) -> Recipe:
    """The recipe read and checked by :func:`load_recipe`, then for a run of steps ``start``..``stop``: the range
    is one of its steps, every input a step of it names exists now or is written by an earlier step of it (what steps
    before ``start`` write must exist already), and no output folder it names is one its command refuses (a folder
    tltool did not make). Nothing is run or written."""
    recipe = load_recipe(path, overrides)
    last = len(recipe.steps) if stop is None else stop
    if not 1 <= start <= last <= len(recipe.steps):
        given = f"--from {start}" + (f" --until {stop}" if stop is not None else "")
        raise TltoolError(f"{recipe.path} has steps 1 to {len(recipe.steps)}: {given} is not a range of them "
                          "(1 <= --from <= --until <= the last step).")
    commands = recipe_commands()
    steps = []
    for i in range(start, last + 1):
        step = recipe.steps[i - 1]
        where = f"{recipe.path}, step {i} ({step.command})"
        params = {_key(p): p for p in commands[step.command].params if p.name != "help"}
        steps.append((i, step.command, params,
                      {key: _substitute(value, recipe.vars, where) for key, value in step.options.items()}))
    recipe, steps, not_going_on, going_on = _going_on(recipe, steps, commands)
    missing = unmade_inputs(steps)
    if missing:
        named = "; ".join(f"step {m.index} ({m.command}): {m.key} {m.value} ({_set_hint(recipe, m)})"
                          for m in missing)
        before = f" (steps before --from {start} do not run: what they write must exist already)" if start > 1 else ""
        raise TltoolError(f"{recipe.path}: inputs that do not exist and that no earlier step of the recipe writes"
                          f"{before}: {named}. Make them first, or point the steps at ones that exist; nothing has "
                          "run." + _beside_recipe_hint(recipe.path, [str(m.value) for m in missing]))
    for what, refused in (("inputs", misread_inputs(steps)), ("outputs", refused_outputs(steps, not_going_on)),
                          ("features", refused_feature_settings(steps))):
        if refused:
            named = "; ".join(f"step {r.index} ({r.command}): {r.reason.rstrip('.')}" for r in refused)
            raise TltoolError(f"{recipe.path}: {what} the steps would refuse when reached: {named}. Nothing has run.")
    for line in going_on:
        say(line)
    return recipe


# the training commands whose unfinished run a recipe goes on with, and the settings each makes of its options
RESUMED_SETTINGS = {"finetune": FinetuneConfig, "train": ScratchConfig}
PlannedStep = tuple[int, str, dict[str, click.Parameter], dict[str, Any]]


def _going_on(recipe: Recipe, steps: list[PlannedStep], commands: dict[str, click.Command]
              ) -> tuple[Recipe, list[PlannedStep], dict[int, str], list[str]]:
    """A training step whose ``out`` holds the unfinished run it started with the same settings (the recipe was
    interrupted in it, or it stopped on an error, and runs again) goes on from that run's last finished epoch: it
    becomes ``--resume OUT``. Also returns, by step, why one that does not go on is refused, and the lines to say
    once the plan is checked."""
    going_on, refused, said = {}, {}, []
    for index, command, params, values, made in with_earlier_outputs(steps):
        out = values.get("out")
        if (command not in RESUMED_SETTINGS or values.get("resume") or not isinstance(out, str)
                or made_before(out, made) is not None or not resumable_run(out)):
            continue
        why = _why_not_going_on(recipe, index, commands[command], values, made)
        if why:
            refused[index] = why
        else:
            going_on[index] = {"resume": out, **{k: values[k] for k in SESSION_SETTINGS if k in values}}
            said.append(f"step {index} ({command}): {out} holds its run, started with the same settings and not "
                        f"finished: it goes on from the last finished epoch (delete {out} to train it again from "
                        "the start)")
    new_steps = [Step(step.command, going_on[i], step.interactive) if i in going_on else step
                 for i, step in enumerate(recipe.steps, 1)]
    # a resumed step still writes its out: a later step's output check must know it
    planned = [(i, c, p, {**going_on[i], "out": v["out"]} if i in going_on else v) for i, c, p, v in steps]
    return dataclasses.replace(recipe, steps=new_steps), planned, refused, said


def _why_not_going_on(recipe: Recipe, index: int, command: click.Command, values: dict[str, Any],
                      made: dict) -> str | None:
    """Why step ``index`` does not go on with the unfinished run in its ``out`` (None: it does): its data written
    again first by an earlier step (a resume trains on the split it started with, not on what that step writes),
    other settings (named), or a run or step whose settings cannot be read."""
    data = values.get("data")
    writer = made_before(data, made) if isinstance(data, str) else None
    if writer is not None:
        return (f"and step {writer} writes its data {data} again before it (a resume trains on the split the run "
                f"started with; --from {index} leaves the steps before it out)")
    step, out = recipe.steps[index - 1], values["out"]
    try:
        with command.make_context(step.command, build_argv(recipe, index, step, command)) as ctx:
            params = ctx.params
        settings = RESUMED_SETTINGS[step.command]
        config = settings(**{f.name: params[f.name] for f in dataclasses.fields(settings) if f.name in params
                             and f.name != "data"}, data=params.get("data") or "")
        changed = changed_settings(config, Path(out), params.get("cv") or 0)
    except TltoolError as exc:  # the run's config.json, or $TLTOOL_ENGINE read by an option's check
        return f"and its settings cannot be compared with the step's ({str(exc).removeprefix(f'--resume {out}: ')})"
    except (click.ClickException, TypeError, ValueError) as exc:  # the step's own options: its command says more
        return f"and the step's options cannot be read as settings ({exc})"
    return f"started with other settings than the step's ({'; '.join(changed)})" if changed else None


def _beside_recipe_hint(recipe_path: Path, values: list[str]) -> str:
    """Relative paths in a recipe are read from the working folder; say so when they are found beside the recipe
    (`tltool run ../class.yaml` from another folder named data that was there, as if missing)."""
    folder = Path(os.path.abspath(recipe_path)).parent
    if folder == Path.cwd() or not any(not os.path.isabs(v) and os.path.lexists(folder / v) for v in values):
        return ""
    return (f"\nA relative path in a recipe is read from the folder tltool runs in ({shown_name(os.getcwd())}), not "
            f"from the recipe's; these are beside the recipe: run it from {shown_name(str(folder))}.")


def _set_hint(recipe: Recipe, missing: StepInput) -> str:
    """How to give another path for ``missing``: the variable that gives it, when the step names it by one alone
    (``${data}``, or ``[${photos}]`` in a list), else the step's key."""
    raw = recipe.steps[missing.index - 1].options.get(missing.key)
    for item in raw if isinstance(raw, list) else [raw]:
        full = _VAR.fullmatch(item) if isinstance(item, str) else None
        if full and str(recipe.vars.get(full.group(1))) == missing.value:
            return f"--set {full.group(1)}=PATH gives another"
    value = "[PATH]" if isinstance(raw, list) else "PATH"
    return f"--set {missing.index}.{missing.key}={value} gives another"


EXIT_PAUSED = 4  # `tltool run` stopped at an interactive step it could not run (no terminal): nothing failed


@dataclass
class RecipeRun:
    """What :func:`run_recipe` did: every step it was asked to run, or up to ``paused_at``, an interactive step that
    needs a terminal; steps from there on did not run, and ``resume`` (when a step follows) continues after it."""

    recipe: Recipe
    paused_at: int | None = None
    resume: str | None = None


def continue_command(path: str | Path, overrides: list[str] | tuple[str, ...], start: int,
                     stop: int | None = None) -> str:
    """The command line that runs the recipe from step ``start`` as it was run before: the same recipe file, every
    ``--set`` in its order and ``--until`` when one was given, each word quoted for a POSIX shell."""
    recipe = str(path)
    words = ["tltool", "run", f"./{recipe}" if recipe.startswith("-") else recipe]
    words += [word for text in overrides for word in ("--set", text)] + ["--from", str(start)]
    return shlex.join(words + (["--until", str(stop)] if stop is not None else []))


def run_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (), start: int = 1,
               stop: int | None = None, interactive: bool | None = None) -> RecipeRun:
    """Run steps ``start``..``stop`` (1-based). An interactive step (the browser labeler) runs only with a terminal;
    without one the run stops before it, says the command that continues after it, and returns it paused there
    (the next steps need what a person makes in it)."""
    recipe = plan_recipe(path, overrides, start, stop)
    commands = recipe_commands()
    interactive = sys.stdin.isatty() if interactive is None else interactive
    for i in range(start, (len(recipe.steps) if stop is None else stop) + 1):
        step = recipe.steps[i - 1]
        argv = build_argv(recipe, i, step, commands[step.command])
        line = shlex.join([*_typed(step.command, commands), *argv])
        if step.interactive and not interactive:
            return _pause(recipe, i, line, overrides, stop)
        say(f"[bold]step {i}/{len(recipe.steps)}[/bold]: {escape(line)}", markup=True)
        try:
            _run_step(recipe, i, step, argv, commands, start)
        except (KeyboardInterrupt, click.exceptions.Abort):  # Click makes Ctrl-C in a step's main an Abort
            say(_go_on_line(recipe, i, overrides, stop, "resume" in {p.name for p in commands[step.command].params}))
            raise
    return RecipeRun(recipe)


def _go_on_line(recipe: Recipe, index: int, overrides: list[str] | tuple[str, ...], stop: int | None,
                resumes: bool) -> str:
    """What continues a recipe interrupted in step ``index``; a training step's run (its ``out`` holds it, with
    checkpoints) goes on from its last finished epoch when run again with the same settings (:func:`_going_on`)."""
    step = recipe.steps[index - 1]
    out = _substitute(step.options.get("out"), recipe.vars, f"{recipe.path}, step {index}")
    again = continue_command(recipe.path, overrides, index, stop)
    if resumes and (step.options.get("resume") or isinstance(out, str) and resumable_run(out)):
        return f"step {index} interrupted; `{again}` goes on from its last finished epoch"
    return f"step {index} interrupted; run it and the steps after it with `{again}`"


def _typed(name: str, commands: dict[str, click.Command]) -> list[str]:
    """The command's words as typed (``label-serve`` -> ``tltool label serve``)."""
    return ["tltool", *(name.split("-", 1) if name in _grouped(commands) else [name])]


def _pause(recipe: Recipe, index: int, line: str, overrides: list[str] | tuple[str, ...],
           stop: int | None) -> RecipeRun:
    """Stop before the interactive step ``index``: say what to run by hand, and the command that continues."""
    total = len(recipe.steps)
    resume = None
    if index < total:
        resume = continue_command(recipe.path, overrides, index + 1, stop if stop is not None and stop > index
                                  else None)
        then = f"run it yourself, then continue with `{resume}`"
    else:
        then = "run it yourself; it is the recipe's last step"
    after = f"; steps {index + 1}-{total} need what it makes, so the recipe stops here" if index < total else ""
    say(f"step {index}/{total}: skipped (interactive, no terminal): {line}{after} (exit status {EXIT_PAUSED})\n"
        f"  {then}")
    return RecipeRun(recipe, paused_at=index, resume=resume)


def _run_step(recipe: Recipe, index: int, step: Step, argv: list[str], commands: dict[str, click.Command],
              start: int) -> None:
    """Run one step as its command line would; its failure is the recipe's, with a word on an interactive step
    before ``start`` that this command did not run (it may be what is missing)."""
    try:
        commands[step.command].main(args=argv, prog_name=" ".join(_typed(step.command, commands)),
                                    standalone_mode=False)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise TltoolError(f"{recipe.path}, step {index} ({step.command}) exited with status {exc.code}."
                              f"{_skipped_note(recipe, start, commands)}") from None
    except click.ClickException as exc:
        raise TltoolError(f"{recipe.path}, step {index} ({step.command}): {exc.format_message()}"
                          f"{_skipped_note(recipe, start, commands)}") from None
    except TltoolError as exc:  # the step's own error (its type kept), named as the step's, with the note added
        # `tltool run` has no --force: the step's `force: true` is what its refusal asks for
        said = str(exc).replace("pass --force", f"add force: true to the step (--set {index}.force=true)")
        exc.args = (f"{recipe.path}, step {index} ({step.command}): {said}{_skipped_note(recipe, start, commands)}",
                    *exc.args[1:])
        raise


def _skipped_note(recipe: Recipe, start: int, commands: dict[str, click.Command]) -> str:
    """A sentence on the last interactive step before ``start`` (``--from``), with its command line as the recipe
    gives it (the labeler with the recipe's own --classes), or nothing when there is none."""
    before = [i for i, step in enumerate(recipe.steps[:start - 1], start=1) if step.interactive]
    if not before:
        return ""
    i = before[-1]
    step = recipe.steps[i - 1]
    line = shlex.join([*_typed(step.command, commands), *build_argv(recipe, i, step, commands[step.command])])
    return (f" This run began at step {start}, after step {i} ({step.command}), which is interactive: if it has not "
            f"been run yet, run it first: {line}")


def _grouped(commands: dict[str, click.Command]) -> set[str]:
    return {name for name in commands if name not in main.commands}


@click.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Set a variable, an option of every step that has it, or COMMAND.KEY / N.KEY for one step.")
@click.option("--from", "start", type=int, default=1, show_default=True, help="First step to run (1-based).")
@click.option("--until", "stop", type=int, default=None, help="Last step to run.")
@click.option("--check", is_flag=True,
              help="Only check the recipe (for the steps --from/--until name: their inputs too) and print its steps.")
def run_cmd(recipe: str, overrides: tuple[str, ...], start: int, stop: int | None, check: bool) -> None:
    """Run a YAML recipe of tltool steps (see recipes/); options have the same names as on the command line.

    Without a terminal, an interactive step (the labeler) stops the run before it with the command that continues
    after it, and exit status 4."""
    if check:
        loaded = plan_recipe(recipe, overrides, start, stop)
        commands = recipe_commands()
        for i, step in enumerate(loaded.steps, start=1):
            click.echo(f"{i}. {step.command} {' '.join(build_argv(loaded, i, step, commands[step.command]))}"
                       + ("  (interactive)" if step.interactive else ""))
        return
    if run_recipe(recipe, overrides, start=start, stop=stop).paused_at is not None:
        sys.exit(EXIT_PAUSED)


COMMANDS = [run_cmd]
