"""``tltool label export``: ``labels.csv`` into the class-per-folder layout ``OUT/{train,val}/<class>/``.

The split is :func:`tltool.dataset.stratified_split` (seeded, per class). Files are hard-linked (copied across
file systems or with ``copy=True``). The export is built in a hidden sibling folder and renamed into place, so an
interrupted export leaves the previous one (or none) and a rerun finishes the job.
"""
from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from ..dataset import Dataset, stratified_split
from ..errors import BadFilesWarning, BadImageError, TltoolError
from ..images import read_header
from ..outputs import claim_output_dir, replace_output_dir, staging_dir
from ..utils import write_json
from .store import EXPORT_MARKER, LABELS_CSV, check_class_name, load_labelled, read_labels_csv

DEFAULT_SUFFIX = "-split"  # mydata -> mydata-split, so runs on it are named after the dataset


@dataclass
class ExportResult:
    out: Path
    dataset: Dataset  # the split records, paths in the labelled dataset

    def counts(self) -> dict[str, dict[str, int]]:
        return self.dataset.counts()


def _place(src: str, dest: Path, copy: bool) -> None:
    if not copy:
        try:
            os.link(src, dest)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copy2(src, dest)


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


def export_labels(dataset: str | os.PathLike, out: str | os.PathLike | None = None, val_fraction: float = 0.2,
                  seed: int = 0, copy: bool = False) -> ExportResult:
    """Write ``out`` (default ``DATASET-split`` beside the dataset) with ``train/<class>/`` and ``val/<class>/`` from ``labels.csv``."""
    root = Path(dataset).resolve()
    labels = root / LABELS_CSV
    if not labels.is_file():
        raise TltoolError(f"{labels}: no labels yet. Label the images first: tltool label serve {dataset} "
                          "--classes a,b,c")
    labelled = _readable(load_labelled(root))
    if not labelled.records:
        raise TltoolError(f"{labels}: no image has a label yet. Label some with tltool label serve {dataset}.")
    for name in labelled.classes:
        check_class_name(name)
    labelled.require_classes(2)
    split = stratified_split(labelled, val_fraction=val_fraction, seed=seed)

    target = Path(out).resolve() if out is not None else root.with_name(f"{root.name or 'dataset'}{DEFAULT_SUFFIX}")
    if target == root or target in root.parents:
        raise TltoolError(f"--out {target}: would replace the dataset folder itself; choose a new folder.")
    claim_output_dir(target, "label-export", reuse=True)  # an earlier export is replaced; any other folder refused
    partial = staging_dir(target, "label-export")
    used: set[Path] = set()
    for record in split.records:
        folder = partial / str(record.split) / record.label
        folder.mkdir(parents=True, exist_ok=True)
        src = Path(record.path)
        dest, n = folder / src.name, 1
        while dest in used:  # same file name from two source folders
            n += 1
            dest = folder / f"{src.stem}-{n}{src.suffix}"
        used.add(dest)
        _place(record.path, dest, copy)
    _, assisted = read_labels_csv(labels)
    write_json(partial / EXPORT_MARKER, {
        "labels": str(labels), "val_fraction": val_fraction, "seed": seed, "counts": split.counts(),
        "assisted": sorted(assisted),  # labels that were accepted suggestions (paths relative to the dataset)
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    replace_output_dir(partial, target, "label-export")
    return ExportResult(target, split)
