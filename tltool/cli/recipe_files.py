"""What a recipe's steps read and write, so that ``tltool run`` (and ``--check``) can name, before step 1 runs, an input
that neither exists nor is written by an earlier step of the same recipe.

A step's inputs are every ``click.Path(exists=True)`` parameter of its command (the command declares them itself),
and the keys of :data:`READ_EVERYWHERE` and :data:`STEP_INPUTS`: parameters Click cannot declare so, because their
value is not always a path (``DATA`` may be ``tfds:NAME``, ``--weights`` ``imagenet``; a source of ``collect import``
may be a glob); :data:`INPUT_KINDS` says which values name a file. Its outputs are ``out`` wherever
a command has it, the entries of :data:`STEP_OUTPUTS`, and the defaults of :data:`DEFAULT_OUTPUTS` that a later
step can name (a default with a time stamp in it cannot be named, so it is left out). Tables, not code per command:
a command added later is classified by a line here, and ``tests/test_recipes.py`` checks that every path-like
parameter of every command is.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import click

from ..errors import TltoolError
from ..labeler.export import default_export_dir
from ..linear import default_features_dir
from ..outputs import check_output_place
from ..settings import FILE_SUFFIXES


@dataclass(frozen=True)
class InputKind:
    """How a command reads a value that names an input."""

    names_file: Callable[[str], bool] = lambda value: True  # False: the value names no file (tfds:NAME)
    expand: bool = False  # ~ and glob patterns are expanded, as `collect import` expands its sources


INPUT_KINDS: dict[str, InputKind] = {
    "path": InputKind(),
    "dataset": InputKind(names_file=lambda value: not value.startswith("tfds:")),  # dataset.py's tfds source
    "sources": InputKind(expand=True),
    "weights": InputKind(names_file=lambda value: value.lower() not in ("imagenet", "none")),
    "augment": InputKind(names_file=lambda value: value.lower().endswith(FILE_SUFFIXES["augment"])),
}

# keys that name an input wherever a command has them (a weights file, an albumentations pipeline file)
READ_EVERYWHERE: dict[str, str] = {"weights": "weights", "augment": "augment"}

# inputs that Click's types do not declare, by command and recipe key
STEP_INPUTS: dict[str, dict[str, str]] = {
    "data-inspect": {"path": "dataset"},
    "data-split": {"path": "dataset"},
    "extract": {"data": "dataset"},
    "probe": {"data": "dataset"},
    "evaluate": {"data": "dataset"},
    "finetune": {"data": "dataset"},
    "train": {"data": "dataset"},
    "augment-preview": {"data": "dataset"},
    "compare": {"data": "dataset"},
    "viz-suspects": {"data": "dataset"},
    "label-suspects": {"data": "dataset"},
    "predict": {"images": "path", "model": "path"},
    "viz-filters": {"model": "path"},
    "viz-layers": {"model": "path"},
    "viz-activations": {"image": "path", "model": "path"},
    "viz-gradcam": {"images": "path", "model": "path"},
    "viz-embedding": {"features": "path"},
    "collect-import": {"sources": "sources"},
}
WRITTEN_EVERYWHERE = ("out",)
STEP_OUTPUTS: dict[str, tuple[str, ...]] = {  # outputs besides `out`: the feature caches
    "probe": ("features",),
    "label-suspects": ("features",),
    "viz-suspects": ("features",),
}
Option = Callable[[str], Any]  # a step's value of a key, or its command's default


def _features_default(data: str, option: Option) -> Path:
    return default_features_dir(data, option("backbone"), option("image-size"), option("resize"))


# where a command writes when a key is not given: (that key, the key the place derives from, the place)
DEFAULT_OUTPUTS: dict[str, tuple[str, str, Callable[[str, Option], Path]]] = {
    "label-export": ("out", "dataset", lambda dataset, option: default_export_dir(dataset)),
    "probe": ("features", "data", _features_default),  # the feature cache a later step may name
    "label-suspects": ("features", "data", _features_default),
    "viz-suspects": ("features", "data", _features_default),
}


@dataclass(frozen=True)
class StepInput:
    index: int  # the step, counted from 1
    command: str
    key: str
    value: str


@dataclass(frozen=True)
class StepRefusal:
    index: int  # the step, counted from 1
    command: str
    reason: str  # the step's own command would refuse so, when reached


def _texts(value: Any) -> list[str]:
    if value is None or isinstance(value, bool):
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def input_kinds(command: str, params: dict[str, click.Parameter]) -> dict[str, str]:
    """The keys of ``command`` (``params`` by recipe key) that name an input, each with its kind."""
    kinds = {key: "path" for key, p in params.items() if isinstance(p.type, click.Path) and p.type.exists}
    kinds |= {key: kind for key, kind in READ_EVERYWHERE.items() if key in params}
    return kinds | STEP_INPUTS.get(command, {})


def step_inputs(command: str, params: dict[str, click.Parameter], values: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, value)`` of every input a step names, ``values`` being its options by recipe key (variables filled
    in); values that name no file (``tfds:NAME``, ``--weights imagenet``) are left out."""
    return [(key, text) for key, kind in input_kinds(command, params).items() if key in values
            for text in _texts(values[key]) if INPUT_KINDS[kind].names_file(text)]


def step_outputs(command: str, params: dict[str, click.Parameter], values: dict[str, Any]) -> list[Path]:
    """The paths a step writes that a later step can name."""
    keys = [k for k in WRITTEN_EVERYWHERE if k in params] + list(STEP_OUTPUTS.get(command, ()))
    out = [_absolute(text) for key in keys if key in values for text in _texts(values[key])]
    absent, source, default = DEFAULT_OUTPUTS.get(command, ("", "", None))
    if default is not None and absent not in values:
        def option(key: str) -> Any:
            return values[key] if key in values else (params[key].default if key in params else None)

        out += [_absolute(str(default(text, option))) for text in _texts(values.get(source))]
    return out


def _absolute(text: str) -> Path:
    """``text`` as one spelling of the place (links resolved, as ``label export`` resolves its default)."""
    try:
        return Path(text).resolve()
    except (OSError, RuntimeError):  # a link loop, say: the command will name it; compare the spelling
        return Path(os.path.abspath(text))


def _related(a: Path, b: Path) -> bool:
    """One path is the other or inside it: a step that writes ``runs/x`` makes ``runs`` and ``runs/x/y`` too."""
    return a == b or a in b.parents or b in a.parents


def _found(kind: InputKind, text: str, made: list[Path]) -> bool:
    """``text`` exists now, or an earlier step writes it (a glob: it matches a file now, or its folder is written)."""
    path = os.path.expanduser(text) if kind.expand else text
    if kind.expand and glob.has_magic(path):
        if glob.glob(path, recursive=True):
            return True
        parts = Path(path).parts
        folder = str(Path(*parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))] or ["."]))
        return any(_related(_absolute(folder), m) for m in made)
    return os.path.exists(path) or any(_related(_absolute(path), m) for m in made)


def unmade_inputs(steps: Iterable[tuple[int, str, dict[str, click.Parameter], dict[str, Any]]]) -> list[StepInput]:
    """The inputs of ``steps`` (``(index, command, params by key, values by key)``, in the order they run) that do
    not exist and that no earlier one of them writes."""
    made: list[Path] = []
    missing = []
    for index, command, params, values in steps:
        kinds = input_kinds(command, params)
        missing += [StepInput(index, command, key, text) for key, text in step_inputs(command, params, values)
                    if not _found(INPUT_KINDS[kinds[key]], text, made)]
        made += step_outputs(command, params, values)
    return missing


def refused_outputs(steps: Iterable[tuple[int, str, dict[str, click.Parameter], dict[str, Any]]]) -> list[StepRefusal]:
    """The output folders ``steps`` name (as :func:`unmade_inputs` takes them) that their commands will refuse
    whatever their kind, as they are now: a folder tltool did not make, a file, a link. An output that an earlier one
    of them writes is left out (it may be tltool's by then). Without this, the refusal came when the step was
    reached, after every step before it had run."""
    made: list[Path] = []
    refused = []
    for index, command, params, values in steps:
        keys = [k for k in (*WRITTEN_EVERYWHERE, *STEP_OUTPUTS.get(command, ())) if k in params and k in values]
        for key in keys:
            if not isinstance(params[key].type, click.Path) or params[key].type.file_okay:
                continue  # a file written (a split's CSV): its command says what it replaces
            for text in _texts(values[key]):
                if any(_related(_absolute(text), m) for m in made):
                    continue
                try:
                    check_output_place(text, option=f"--{key}")
                except TltoolError as exc:
                    refused.append(StepRefusal(index, command, str(exc)))
        made += step_outputs(command, params, values)
    return refused
