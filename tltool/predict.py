"""What a finished run is used for: ``tltool predict`` (top classes of image files) and ``tltool evaluate`` (a full
report on another labelled dataset); :func:`labelled_images` reads such a dataset for them and for ``compare``.
"""
from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .dataset import HIDDEN, Dataset, LinkGuard, load_dataset, tltool_output_around, walk_files
from .errors import BadFilesWarning, LeakageWarning, TltoolError
from .evaluation import Evaluation, ranked_classes
from .inspection import check_dataset
from .models import RunModel, load_finished_run, overlap_with_training
from .report import trained_on_line, write_run_report
from .runs import check_run_dir, new_run_dir, writes_runs
from .settings import check_choice, check_range
from .tta import n_views, predict_readable
from .utils import has_glob_magic, shown_name


def no_usable_images(name: str, n_files: int) -> str:
    return (f"{name}: no usable images: none of its {n_files} file(s) could be read as an image (see the warning "
            "above for each file's reason). Point DATA at a folder of class sub-folders with photos in them.")


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]


def predict_images(run_dir: str | Path, images: str | os.PathLike | Sequence[str | os.PathLike], top_k: int = 3,
                   tta: str = "none", max_pixels: int | None = None, engine: str = "auto") -> list[Prediction]:
    """The ``top_k`` classes of each readable image with their probabilities (``tltool predict``), in the order
    given. ``images``: files, folders (every image under them) or patterns, or one of them. A file that cannot be
    read is named with its reason in a :class:`BadFilesWarning` and the others are still predicted; when none can
    be read, the error names them all. ``max_pixels``: the decode limit (default: the run's)."""
    check_choice("tta", tta)
    check_range("max_pixels", max_pixels)
    check_range("top_k", top_k)
    if isinstance(images, (str, os.PathLike)):  # one path: as a sequence it was its characters ("/": every file)
        images = [images]
    files = image_arguments(images)
    if not files:
        raise TltoolError(f"no file to predict in {', '.join(map(str, images))} (hidden files are left out).")
    images = files
    model = load_finished_run(run_dir, engine)
    found = predict_readable(model.predict_views, images, model.image_size, model.resize, tta,
                             max_pixels=model.max_pixels if max_pixels is None else max_pixels,
                             engine=model.runner(len(images) * n_views(tta)).engine,
                             predict_stream=model.predict_stream)
    # each bad file named once, though given twice (by name and in its folder, `./photos ./photos/x.jpg` too): it was
    # listed, and counted, twice
    bad = list({os.path.abspath(error.path): error for error in found.bad}.values())
    given = len({os.path.abspath(image) for image in images})
    if not found.paths:
        raise TltoolError(f"none of the {given} image(s) could be read: " + "; ".join(map(str, bad)))
    if bad:
        named = "\n  ".join(map(str, bad))
        warnings.warn(f"{len(bad)} of {given} image(s) not predicted:\n  {named}", BadFilesWarning, stacklevel=2)
    out = []
    for path, p in zip(found.paths, found.probabilities):
        order = ranked_classes(p, top_k)
        out.append(Prediction(path, [(model.classes[i], float(p[i])) for i in order]))
    return out


def image_arguments(images: Sequence[str | os.PathLike]) -> list[str]:
    """``tltool predict``'s arguments as files: a folder stands for every file under it, in the dataset walk's
    order (hidden ones left out, links followed as a dataset's are), a quoted pattern for what it matches. A folder
    was one unreadable "image"."""
    files: list[str] = []
    given = list(map(str, images))
    unmatched = [text for text in given if not _matched(text)]
    if unmatched:  # was "unreadable (No such file or directory)", as if the pattern were a file's name
        outputs = [text for text in unmatched if glob.glob(os.path.expanduser(text), recursive=True)]
        empty = [text for text in unmatched if text not in outputs]
        said = "; ".join(
            [f"{', '.join(map(repr, outputs))}: matches only files of tltool's own run folders, not photos"]
            * bool(outputs)
            + [f"{', '.join(map(repr, empty))}: no file matches (patterns are case-sensitive: '*.jpg' does not match "
               "IMG_1.JPG)"] * bool(empty))
        if len(unmatched) == len(given):
            raise TltoolError(said + ".")
        warnings.warn(said, BadFilesWarning, stacklevel=2)
    for image in (path for text in given for path in _matched(text)):
        if os.path.isdir(image):
            guard = LinkGuard(image)
            found, skipped = walk_files(image, guard)
            guard.warn(image)
            named = [f"{s.path}: {s.reason}" for s in skipped if s.reason != HIDDEN]  # a name, a folder not read
            if named:
                warnings.warn(f"{image}: {len(named)} file(s) or folder(s) not predicted:\n  " + "\n  ".join(named),
                              BadFilesWarning, stacklevel=3)
            elif not found:  # among other arguments it was dropped without a word
                warnings.warn(f"{image}: a folder with no file to predict (hidden files are left out)",
                              BadFilesWarning, stacklevel=3)
            files += map(str, found)
        else:
            files.append(image)
    return files


def _matched(image: str) -> list[str]:
    """A quoted pattern (``'photos/*.jpg'``; cmd.exe expands none) as the paths it matches, sorted, as ``collect
    import`` takes it (none: a pattern that matches nothing); a name that exists, or has no pattern, as it is."""
    if os.path.lexists(image) or not has_glob_magic(image):
        return [image]
    matches = sorted(glob.glob(os.path.expanduser(image), recursive=True))
    return [m for m in matches if tltool_output_around(m) is None]  # a run's plots ('**/*.png') are not photos


def labelled_images(data: str | Dataset, classes: list[str], max_pixels: int,
                    split: str | None = None) -> tuple[Dataset, list[str], np.ndarray]:
    """Every usable image of ``data`` (all splits, or those of ``split``) with its label index in ``classes``; clear
    errors otherwise."""
    dataset = load_dataset(data) if not isinstance(data, Dataset) else data
    if split is not None:
        check_choice("split", split)
        dataset = _only_split(dataset, split)
    checked = check_dataset(dataset, max_pixels=max_pixels, pooled=True)  # every split is scored
    records = checked.dataset.records
    if not records:
        raise TltoolError(no_usable_images(dataset.name, len(checked.files)))
    unknown = sorted({r.label for r in records} - set(classes))
    if unknown:
        raise TltoolError(f"{dataset.name}: labels {unknown} are not classes of the model {classes}.")
    index = {c: i for i, c in enumerate(classes)}
    return dataset, [r.path for r in records], np.array([index[r.label] for r in records])


def _only_split(dataset: Dataset, split: str) -> Dataset:
    """The records of one split of ``dataset`` (``test``: the photos kept out of every choice, scored once)."""
    found = sorted({str(r.split) for r in dataset.records if r.split})
    if split not in found:
        has = (f"its splits are {found}" if found
               else "it has no splits (one folder per class, or a manifest without a split column)")
        raise TltoolError(f"{dataset.name}: no {split!r} split to score ({has}); give the folder or manifest of "
                          f"the photos to score, without --split, or one with {split}/ (root/{split}/<class>/*).")
    return replace(dataset, records=[r for r in dataset.records if r.split == split])


@writes_runs
def evaluate_run(run_dir: str | Path, data: str | Dataset, out: str | Path | None = None, tta: str = "none",
                 force: bool = False, engine: str = "auto", split: str | None = None) -> tuple[Path, Evaluation, dict]:
    """Evaluate a finished run on a labelled dataset it never saw (all its splits, or ``split`` alone: a test split
    the runs held out); write a report.

    The returned :class:`Evaluation` (``metrics.json``'s ``val``) is the plain one; with ``tta`` the accuracy under
    test-time augmentation is reported beside it (``metrics.json``'s ``tta``), as a training run reports it."""
    check_choice("tta", tta)
    check_run_dir(out, force, reads=(run_dir, data), kind="eval")
    model = load_finished_run(run_dir, engine)
    dataset, paths, y = labelled_images(data, model.classes, model.max_pixels, split)
    seen = warn_if_trained_on(run_dir, model, paths)
    plain, augmented = model.predict_plain_and_tta(paths, tta)
    evaluation = Evaluation(model.classes, y, plain)
    with_tta = {tta: Evaluation(model.classes, y, augmented)} if augmented is not None else {}
    target = new_run_dir("eval", Path(run_dir).name, dataset.name, out=out, force=force)
    metrics = write_run_report(target, evaluation, paths, kind="evaluation",
                               title=f"{Path(run_dir).name} evaluated on {dataset.name}",
                               config={"run": str(run_dir), "data": dataset.source, "tta": tta, **model.config},
                               extra={"images_trained_on": seen}, tta=with_tta,
                               scored_on=f"{dataset.name} ({f'its {split} split' if split else 'every image'})")
    return target, evaluation, metrics


def warn_if_trained_on(run_dir: str | Path, model: RunModel, paths: Sequence[str]) -> int:
    """A :class:`LeakageWarning` naming the first of ``paths`` the run was trained on (or saying that its record of
    its training images cannot be read, so nobody can tell); returns how many (0 when unknown)."""
    try:
        seen = overlap_with_training(run_dir, model, paths)
    except TltoolError as exc:  # never read as "none of them": an edited split.csv would hide a leak
        warnings.warn(f"cannot tell which of these images {run_dir} was trained on ({exc}); if any were, its "
                      "accuracy on them is optimistic.", LeakageWarning, stacklevel=3)
        return 0
    if seen:  # named: a count alone left the user to find a copy saved under another name
        first = "; first: " + "; ".join(shown_name(p) for p in seen[:3]) + (f" and {len(seen) - 3} more"
                                                                             if len(seen) > 3 else "")
        warnings.warn(trained_on_line(len(seen), len(paths), str(run_dir)) + f"{first}. Score it on images it never "
                      "saw.", LeakageWarning, stacklevel=3)
    return len(seen)
