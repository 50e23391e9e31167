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
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import click

from ..dataset import COLLECTED, NOT_PHOTOS, load_manifest, refuse_tltool_output
from ..configs import ExtractConfig
from ..errors import TltoolError
from ..export import default_export_out
from ..features import extraction_settings, other_settings_refusal
from ..labeler.export import KIND as LABEL_EXPORT_KIND
from ..labeler.export import default_export_dir
from ..linear import default_features_dir
from ..models import missing_file_message
from ..outputs import check_output_dir, finished_state, holds_no_output
from ..runs import check_run_dir, resumable_run
from ..sample import KIND as SAMPLE_KIND
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
    "features": InputKind(),  # a features folder (extract's, or probe's --features)
    "run": InputKind(),  # a trained run: the folder probe, linear, finetune or train writes
    "scored": InputKind(),  # compare's: a trained run, or an evaluation (its predictions.csv)
}

# keys that name an input wherever a command has them (a weights file, an albumentations pipeline file)
READ_EVERYWHERE: dict[str, str] = {"weights": "weights", "augment": "augment"}

# inputs that Click's types do not declare, by command and recipe key
STEP_INPUTS: dict[str, dict[str, str]] = {
    "data-inspect": {"path": "dataset"},
    "data-split": {"path": "dataset"},
    "extract": {"data": "dataset"},
    "probe": {"data": "dataset"},
    "evaluate": {"data": "dataset", "run-dir": "run"},
    "export": {"run-dir": "run"},
    "finetune": {"data": "dataset"},
    "train": {"data": "dataset"},
    "augment-preview": {"data": "dataset"},
    "compare": {"data": "dataset", "run-a": "scored", "run-b": "scored"},
    "viz-suspects": {"data": "dataset"},
    "label-suspects": {"data": "dataset"},
    "predict": {"images": "path", "model": "run"},
    "viz-filters": {"model": "run"},
    "viz-layers": {"model": "run"},
    "viz-activations": {"image": "path", "model": "run"},
    "viz-gradcam": {"images": "path", "model": "run"},
    "collect-import": {"sources": "sources"},
    "linear": {"features": "features"},
    "learning-curve": {"features": "features"},
    "viz-embedding": {"features": "features"},
}
WRITTEN_EVERYWHERE = ("out",)
STEP_OUTPUTS: dict[str, tuple[str, ...]] = {  # outputs besides `out`: the feature caches
    "probe": ("features",),
    "label-suspects": ("features",),
    "viz-suspects": ("features",),
}
# the kind of output folder each command's `out` is (a feature cache at any other key); every other command's is a run
OUT_KINDS: dict[str, str] = {"extract": "features", "export": "export", "label-export": LABEL_EXPORT_KIND,
                             "data-make-sample": SAMPLE_KIND, "data-digits": "digits", "collect-import": COLLECTED,
                             "data-split": "manifest"}  # a CSV file: a later step's photos (it was called a run)
REUSED_KINDS = ("features", "dataset")  # written into again (caches), never replaced: force does not apply
Option = Callable[[str], Any]  # a step's value of a key, or its command's default


def _features_default(data: str, option: Option) -> Path:
    return default_features_dir(data, option("backbone"), option("image-size"), option("resize"), option("weights"))


# where a command writes when a key is not given: (that key, the key the place derives from, the place)
DEFAULT_OUTPUTS: dict[str, tuple[str, str, Callable[[str, Option], Path]]] = {
    "label-export": ("out", "dataset", lambda dataset, option: default_export_dir(dataset)),
    "export": ("out", "run-dir",
               lambda run, option: default_export_out(Path(run), option("format"), option("quantize"))),
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


def output_kind_of(command: str, key: str) -> str:
    """The kind of tltool output folder (:mod:`tltool.outputs`) that ``command`` writes at its key ``key``."""
    return OUT_KINDS.get(command, "run") if key in WRITTEN_EVERYWHERE else "features"


def step_output_kinds(command: str, params: dict[str, click.Parameter], values: dict[str, Any]) -> dict[Path, str]:
    """The paths a step writes that a later step can name, each with the kind of output folder it is."""
    keys = [k for k in WRITTEN_EVERYWHERE if k in params] + list(STEP_OUTPUTS.get(command, ()))
    out = {_absolute(text): output_kind_of(command, key)
           for key in keys if key in values for text in _texts(values[key])}
    out |= {_absolute(str(place)): output_kind_of(command, key)
            for key, place in default_outputs(command, params, values)}
    if command in RUN_KINDS and "resume" in params:  # a resumed run is finished where it is (a later step reads it)
        out |= {_absolute(text): "run" for text in _texts(values.get("resume"))}
    return out


def default_outputs(command: str, params: dict[str, click.Parameter], values: dict[str, Any]
                    ) -> list[tuple[str, Path]]:
    """``(key, place)`` of each folder a step writes where it does not name one (probe's default features folder,
    export's ``RUN/export/FORMAT``)."""
    absent, source, default = DEFAULT_OUTPUTS.get(command, ("", "", None))
    if default is None or absent in values:
        return []
    option = _option(params, values)
    return [(absent, default(text, option)) for text in _texts(values.get(source))]


def _option(params: dict[str, click.Parameter], values: dict[str, Any]) -> Option:
    """A step's value of a key, or its command's default."""
    return lambda key: values[key] if key in values else (params[key].default if key in params else None)


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
    missing = []
    for index, command, params, values, made in with_earlier_outputs(steps):
        kinds = input_kinds(command, params)
        missing += [StepInput(index, command, key, text) for key, text in step_inputs(command, params, values)
                    if not _found(INPUT_KINDS[kinds[key]], text, list(made))]
    return missing


def refused_outputs(steps: Iterable[tuple[int, str, dict[str, click.Parameter], dict[str, Any]]],
                    not_going_on: dict[int, str] | None = None) -> list[StepRefusal]:
    """The output folders ``steps`` name (as :func:`unmade_inputs` takes them) that their commands will refuse: one
    that is now, or that an earlier step makes, another kind of tltool folder (``extract --out feats``, then ``linear
    --out feats``), a folder tltool did not make, a file, a link, and an earlier output of the same kind replaced
    without ``force: true``. One inside or around an earlier step's output is left out (it may be tltool's by then).
    Without this, the refusal came when the step was reached, after every step before it had run. ``not_going_on``:
    by step, why the recipe does not go on with the unfinished run in its ``out``."""
    refused = []
    for index, command, params, values, made in with_earlier_outputs(steps):
        keys = [k for k in (*WRITTEN_EVERYWHERE, *STEP_OUTPUTS.get(command, ())) if k in params and k in values]
        force = values.get("force") is True
        if values.get("resume"):  # a resumed run is written where it is: the step's --out is not used
            keys = [k for k in keys if k != "out"]
        places = [(key, text, f"--{key}") for key in keys for text in _texts(values[key])]
        if command == "export":  # its default folder is replaced only with force, as every export
            places += [(key, str(place), f"--{key} (its default)")
                       for key, place in default_outputs(command, params, values)]
        for key, text, option in places:
            if not isinstance(params[key].type, click.Path) or params[key].type.file_okay:
                continue  # a file written (a split's CSV): its command says what it replaces
            try:
                if "resume" in params:
                    _refuse_resumable(text, key, index, made, (not_going_on or {}).get(index))
                _check_output(text, output_kind_of(command, key), force, option, made, RUN_KINDS.get(command, command))
            except TltoolError as exc:  # `tltool run` has no --force: the step's force: true is what to add
                reason = str(exc).replace("pass --force", f"add force: true to the step (--set {index}.force=true)")
                refused.append(StepRefusal(index, command, reason.replace("--force", "force: true")))
    return refused


# the kind of run (tltool.runs.new_run_dir) each training command writes; another command's run is a report
RUN_KINDS = {"probe": "linear", "linear": "linear", "finetune": "finetune", "train": "scratch"}


def _refuse_resumable(text: str, key: str, index: int, made: Made, why: str | None) -> None:
    """A training step's run that did not finish (the recipe was interrupted in it, or it stopped on an error) is
    never replaced by a recipe: ``force: true`` deleted its checkpoints and trained again from epoch 1 without a word.
    The recipe goes on with one started with the step's settings; this refuses the others, ``why`` says why when it
    is known (other settings, a config.json that cannot be read, data an earlier step writes again)."""
    if made_before(text, made) is None and resumable_run(text):
        differ = f", {why}" if why else ""
        raise TltoolError(f"--{key} {text}: holds the run of a training that did not finish (interrupted, or stopped "
                          f"on an error){differ}, with checkpoints; a recipe never replaces it. Go on from its last "
                          f"epoch, with the settings it started with, by --from {index} --set {index}.resume={text} "
                          f"(the same run command otherwise), or delete {text} to train it again with the step's.")


Made = dict[Path, tuple[int, str, str]]  # each place the earlier steps write: that step, its command, the kind


def with_earlier_outputs(steps: Iterable[tuple[int, str, dict[str, click.Parameter], dict[str, Any]]]
                          ) -> Iterator[tuple[int, str, dict[str, click.Parameter], dict[str, Any], Made]]:
    """Each step with what the steps before it write."""
    made: Made = {}
    for index, command, params, values in steps:
        yield index, command, params, values, made
        made = {**made, **{path: (index, command, kind)
                           for path, kind in step_output_kinds(command, params, values).items()}}


def made_before(text: str, made: Made) -> int | None:
    """The earlier step (``made``: what the steps before write) that writes the place ``text`` names, or None."""
    found = made.get(_absolute(text))
    return found[0] if found else None


def _check_output(text: str, kind: str, force: bool, option: str, made: Made, run_kind: str) -> None:
    """Raise what the step's command will, reached after the steps before it (which write ``made``)."""
    place = _absolute(text)
    if place in made:
        index, command, earlier = made[place]
        if earlier != kind:
            raise TltoolError(f"{option} {text}: step {index} ({command}) makes it a tltool {earlier} folder, and "
                              f"tltool never writes a {kind} into or over such a folder; choose another folder.")
        if not (force or kind in REUSED_KINDS):
            raise TltoolError(f"{option} {text}: step {index} ({command}) writes a tltool {kind} there first, which "
                              "this step replaces only with force: true; choose another folder, or add force: true.")
        return
    if any(_related(place, m) for m in made):
        return
    if kind == "run":
        check_run_dir(text, force, kind=run_kind)
    else:
        check_output_dir(text, kind, reuse=kind in REUSED_KINDS or holds_no_output(text), force=force, option=option)


# the ExtractConfig field each recipe key of an extracting step sets (the network its features come from)
EXTRACTION_KEYS = {"backbone": "backbone", "weights": "weights", "image-size": "image_size", "resize": "resize"}


def refused_feature_settings(steps: Iterable[tuple[int, str, dict[str, click.Parameter], dict[str, Any]]]
                             ) -> list[StepRefusal]:
    """The steps (as :func:`unmade_inputs` takes them) that extract into a features folder holding the features of
    another network, size or resize (now, or written by an earlier step) without ``force: true``: the extraction
    refuses them when reached, after every step before it had run."""
    refused, extracted = [], {}
    for index, command, params, values in steps:
        places = [p for p, kind in step_output_kinds(command, params, values).items() if kind == "features"]
        option = _option(params, values)
        try:
            config = replace(ExtractConfig(), **{field: option(key) for key, field in EXTRACTION_KEYS.items()
                                                 if key in params and option(key) is not None})
            settings = extraction_settings(config)
            reasons = [] if values.get("force") is True else [
                other_settings_refusal(place, config, extracted.get(place)) for place in places]
        except TltoolError:  # a bad backbone or size: the step's own checks name it
            continue
        refused += [StepRefusal(index, command, f"--{'out' if command == 'extract' else 'features'} {reason}"
                                .replace("pass --force", f"add force: true to the step (--set {index}.force=true)"))
                    for reason in reasons if reason]
        extracted |= {place: settings for place in places}
    return refused


def misread_inputs(steps: Iterable[tuple[int, str, dict[str, click.Parameter], dict[str, Any]]]) -> list[StepRefusal]:
    """The inputs of ``steps`` that exist, or that an earlier step writes, but are of a kind their command refuses:
    an earlier step's features where photos go (``probe`` on ``extract``'s folder), photos where features go
    (``linear`` on a photo folder). Without this, the refusal came when the step was reached."""
    refused = []
    for index, command, params, values, made in with_earlier_outputs(steps):
        kinds = input_kinds(command, params)
        for key, text in step_inputs(command, params, values):
            check = INPUT_CHECKS.get(kinds[key])
            try:
                if check is not None:
                    check(text, made.get(_absolute(text)))
            except TltoolError as exc:
                refused.append(StepRefusal(index, command, str(exc)))
    return refused


def _check_photos(text: str, earlier: tuple[int, str, str] | None) -> None:
    """A dataset input: never a run, features or export folder (now, or made so by an earlier step)."""
    if earlier is not None and earlier[2] in NOT_PHOTOS:
        raise TltoolError(f"{text}: step {earlier[0]} ({earlier[1]}) makes it a tltool {earlier[2]} folder, not "
                          "photos; give the folder (or manifest) of the photos.")
    if earlier is None and os.path.isdir(text):
        refuse_tltool_output(text, text)
    if earlier is None and os.path.isfile(text) and text.lower().endswith((".csv", ".tsv")):
        with warnings.catch_warnings():  # a manifest's oddities are warned of when its step runs
            warnings.simplefilter("ignore")
            load_manifest(text)  # its header and rows: a bad one was found only when its step was reached


def _check_features(text: str, earlier: tuple[int, str, str] | None) -> None:
    """A features input: the folder extract (or probe's --features) writes, now or by an earlier step."""
    if earlier is not None and earlier[2] != "features":
        raise TltoolError(f"{text}: step {earlier[0]} ({earlier[1]}) makes it a tltool {earlier[2]} folder, not "
                          "features; give the folder `tltool extract` (or probe's --features) writes.")
    if earlier is None and os.path.isdir(text) and not os.path.exists(os.path.join(text, "features.json")):
        raise TltoolError(f"{text}: no features.json here: this takes the folder `tltool extract` (or probe's "
                          "--features) writes, not photos.")


def _check_run(text: str, earlier: tuple[int, str, str] | None, also: tuple[str, ...] = (),
               files: tuple[str, ...] = ("model.json",)) -> None:
    """A trained run input (evaluate, export, predict's and viz's --model): the finished folder a training command
    writes (``also``: other commands whose runs it takes; ``files``: one of them must be there), now or by an
    earlier step. Before, a features folder or an interrupted run was refused when the step was reached."""
    if earlier is not None:
        if earlier[1] not in (*RUN_KINDS, *also):
            raise TltoolError(f"{text}: step {earlier[0]} ({earlier[1]}) makes it a tltool {earlier[2]} folder, which "
                              "holds no model; give the folder a probe, linear, finetune or train step writes.")
        return
    if not os.path.isdir(text):
        return  # a missing input is named by unmade_inputs, a file by its command's Click type
    if not any(os.path.isfile(os.path.join(text, name)) for name in files):
        raise TltoolError(missing_file_message(Path(text), files[0]))
    if finished_state(text) is False:
        raise TltoolError(f"{text}: its command did not finish (it was interrupted, or is running now), so its "
                          "model may not be the run's; run that command again (a fine-tune or train: a step with "
                          f"resume: {text} before this one) and use the run it finishes.")


INPUT_CHECKS: dict[str, Callable[[str, tuple[int, str, str] | None], None]] = {
    "dataset": _check_photos, "features": _check_features, "run": _check_run,
    "scored": lambda text, earlier: _check_run(text, earlier, ("evaluate",), ("model.json", "predictions.csv"))}
