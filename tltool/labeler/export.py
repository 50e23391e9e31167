"""``tltool label export``: ``labels.csv`` into the class-per-folder layout ``OUT/{train,val}/<class>/``.

The split is :func:`tltool.dataset.stratified_split` (seeded, per class). Files are hard-linked (copied across
file systems or with ``copy=True``). The output folder follows :mod:`tltool.outputs`: a new or empty one is created
and marked as tltool's; an earlier export is replaced only with ``force``, and a folder tltool did not make is
never written into or deleted, ``force`` or not. The export is built in a hidden sibling folder and renamed into
place, so an interrupted export leaves the previous one (or none) and a rerun finishes the job (an export
interrupted before its first rename leaves a marked, empty folder, which a rerun takes without ``force``).
"""
from __future__ import annotations

import os
import shlex
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from ..dataset import Dataset, label_commands, stratified_split
from ..errors import BadFilesWarning, BadImageError, TltoolError
from ..images import read_header
from ..outputs import (MARKER, check_output_dir, claim_output_dir, holds_no_output, output_kind, refuse_added_entries,
                       staged_output)
from ..settings import check_range
from ..utils import read_json, write_json
from .store import (EXPORT_MARKER, LABELS_CSV, check_class_name, check_distinct_folders, inside_root, load_labelled,
                    read_labels_csv)

DEFAULT_SUFFIX = "-split"  # mydata -> mydata-split, so runs on it are named after the dataset
KIND = "label-export"  # the kind of output folder (tltool.outputs) an export is
SPLITS = ("train", "val")


@dataclass
class ExportResult:
    out: Path
    dataset: Dataset  # the split records, paths in the labelled dataset

    def counts(self) -> dict[str, dict[str, int]]:
        return self.dataset.counts()


def _place(src: str, dest: Path, copy: bool) -> None:
    """A hard link to ``src`` (the photo itself), or a copy made as ``open()`` makes a file: the umask decides its
    mode (``copy2`` gave it the photo's, so a 0644 photo copied under umask 077 was readable by everyone), and it
    keeps the photo's times."""
    if not copy:
        try:
            os.link(src, dest)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copyfile(src, dest)
    source = os.stat(src)
    os.utime(dest, ns=(source.st_atime_ns, source.st_mtime_ns))


def _readable(labelled: Dataset) -> Dataset:
    """The labelled photos whose header reads as an image within the pixel limit; the others (a text file named
    .jpg, a decompression bomb) are named in a :class:`BadFilesWarning` and not exported."""
    kept, bad = [], []
    for record in labelled.records:
        try:
            read_header(record.path)
            kept.append(record)
        except BadImageError as error:
            bad.append(str(error))
    if bad:
        warnings.warn(f"{len(bad)} labelled file(s) not exported:\n  " + "\n  ".join(bad), BadFilesWarning,
                      stacklevel=3)
    return replace(labelled, records=kept)


def _added_files(target: Path) -> list[str]:
    """The files (and links) in the earlier export ``target`` that tltool did not write there: the user's.

    An export lists its files in its ``.tltool/export.json``; for one written before that list existed, only files
    at ``train|val/<class>/NAME`` pass for tltool's.
    """
    try:
        recorded = read_json(target / EXPORT_MARKER).get("files")
    except (OSError, ValueError, AttributeError, RecursionError):
        recorded = None
    known = {rel for rel in recorded if isinstance(rel, str)} if isinstance(recorded, list) else None
    added = []
    for here, dirnames, filenames in os.walk(target):  # links are listed, never followed
        folder = Path(here)
        links = [d for d in dirnames if (folder / d).is_symlink()]
        for name in sorted(filenames + links):
            rel = (folder / name).relative_to(target).as_posix()
            if rel in (MARKER, EXPORT_MARKER):
                continue
            if known is None:
                parts = rel.split("/")
                if len(parts) == 3 and parts[0] in SPLITS and not (folder / name).is_symlink():
                    continue
            elif rel in known:
                continue
            added.append(rel)
    return sorted(added)


def export_origin(split: Path) -> tuple[Path, dict[str, str]] | None:
    """The labeler folder the split ``split`` was exported from, and each exported file's path there (from its
    export record); None for any other folder, or an export written before the record kept the sources."""
    try:
        record = read_json(split / EXPORT_MARKER)
        labels, sources = record.get("labels"), record.get("sources")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    if not isinstance(labels, str) or not isinstance(sources, dict) or not labels:
        return None
    origin = Path(labels).parent.resolve()
    labels_csv = origin / LABELS_CSV
    if labels_csv.is_symlink() or not labels_csv.is_file():  # moved, renamed, or another machine's: not a review
        return None
    mapped = {k: inside_root(origin, v) for k, v in sources.items() if isinstance(k, str) and isinstance(v, str)}
    return origin, {k: v for k, v in mapped.items() if v is not None and (origin / v).is_file()}


def _refuse_unlabelled(root: Path, dataset: str | os.PathLike) -> None:
    """The error for a folder without ``labels.csv``: an export itself (given instead of the folder it came from)
    is named as such, anything else gets the labeler's command."""
    if output_kind(root) == KIND:
        origin = export_origin(root)
        source = shlex.quote(str(origin[0])) if origin else "DATASET (the folder you labelled)"
        raise TltoolError(f"{dataset}: is what `tltool label export` wrote, not a folder you labelled; export from "
                          f"the labelled folder: tltool label export {source} (or train on this one: tltool probe "
                          f"{shlex.quote(str(dataset))}).")
    raise TltoolError(f"{root / LABELS_CSV}: no labels yet. Label the images first: {label_commands(dataset)} "
                      "with your own class names (keys 1-9 follow their order).")


def _refuse_earlier_export(target: Path, force: bool) -> None:
    """The refusal to replace the earlier export ``target`` while it holds files tltool did not write there (named;
    ``force`` or not), or without ``force``."""
    refuse_added_entries(target, KIND, force, added=_added_files(target))
    if not force:
        raise TltoolError(f"--out {target}: holds an earlier label export; pass --force to replace it, or choose "
                          "another --out (--force deletes it whole; nothing was added to it).")


def default_export_dir(dataset: str | os.PathLike) -> Path:
    """Where ``label export`` writes without ``out``: ``DATASET-split`` beside the dataset folder."""
    root = Path(dataset).resolve()
    return root.with_name(f"{root.name or 'dataset'}{DEFAULT_SUFFIX}")


def export_labels(dataset: str | os.PathLike, out: str | os.PathLike | None = None, val_fraction: float = 0.2,
                  seed: int = 0, copy: bool = False, force: bool = False) -> ExportResult:
    """Write ``out`` (default ``DATASET-split`` beside the dataset) with ``train/<class>/`` and ``val/<class>/``
    from ``labels.csv``.

    ``out`` is a new or empty folder, or an earlier export, which is replaced (whole) only with ``force``. A folder
    tltool did not make is refused, ``force`` or not. The new export is complete before the earlier one is removed.
    """
    check_range("seed", seed)
    root = Path(dataset).resolve()
    labels = root / LABELS_CSV
    if not labels.is_file():
        _refuse_unlabelled(root, dataset)
    # not resolved: a link given as --out is refused like any other output's (it was followed, even dangling)
    target = Path(os.path.abspath(out)) if out is not None else default_export_dir(root)
    if target.resolve() == root or target.resolve() in root.parents:
        raise TltoolError(f"--out {target}: would replace the dataset folder itself; choose a new folder.")
    existing = target.is_dir() and not target.is_symlink()
    unfinished = holds_no_output(target)  # empty, or claimed, then killed
    if existing and not unfinished and output_kind(target) == KIND:
        _refuse_earlier_export(target, force)
    check_output_dir(target, KIND, reuse=unfinished, force=force)  # any other refusal, also before the work
    labelled = _readable(load_labelled(root))
    if not labelled.records:
        raise TltoolError(f"{labels}: no image has a label yet. Label some with tltool label serve {dataset}.")
    for name in labelled.classes:
        check_class_name(name)
    check_distinct_folders(labelled.classes, str(labels))
    labelled.require_classes(2)
    split = stratified_split(labelled, val_fraction=val_fraction, seed=seed)

    # a new folder is created and marked; an earlier export needs force; a folder tltool did not make is refused
    claim_output_dir(target, KIND, reuse=unfinished, force=force)
    with staged_output(target, KIND) as partial:  # the earlier export is removed only once this one is in place
        used: set[Path] = set()
        sources: dict[str, str] = {}  # each exported file's path in the labeler folder: suspects map back through it
        for record in split.records:
            folder = partial / str(record.split) / record.label
            folder.mkdir(parents=True, exist_ok=True)
            src = Path(record.path)
            dest, n = folder / src.name, 1
            while dest in used:  # same file name from two source folders
                n += 1
                dest = folder / f"{src.stem}-{n}{src.suffix}"
            used.add(dest)
            sources[dest.relative_to(partial).as_posix()] = Path(os.path.relpath(record.path, root)).as_posix()
            _place(record.path, dest, copy)
        _, assisted = read_labels_csv(labels)
        write_json(partial / EXPORT_MARKER, {
            "labels": str(labels), "val_fraction": val_fraction, "seed": seed, "counts": split.counts(),
            "assisted": sorted(assisted),  # labels that were accepted suggestions (paths relative to the dataset)
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "files": sorted(dest.relative_to(partial).as_posix() for dest in used),  # any other file here is the user's
            "sources": dict(sorted(sources.items())),
        })
    return ExportResult(target, split)
