"""Datasets: one abstraction (records of path, label, split; a stable sorted class list) over three sources.

Sources are looked up in a registry, first match wins: ``tfds:NAME[:SPLIT]``, a ``.csv`` manifest, or a folder
with one sub-folder per class (optionally under ``train/`` and ``val/``).
"""
from __future__ import annotations

import csv
import io
import os
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from .errors import TltoolError
from .images import is_candidate_file

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test",
}
HIDDEN = "hidden file (ignored)"
OUTSIDE_CLASS = "not inside a class folder (ignored)"
NOT_UTF8 = "file name is not valid UTF-8 (ignored; rename it)"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes in a name arrive as surrogates
        return False


@dataclass(frozen=True)
class Record:
    path: str
    label: str
    split: str | None = None


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass
class Dataset:
    """Labelled image files. ``classes`` is sorted, so a label's index never depends on file order."""

    name: str
    source: str
    records: list[Record]
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted({r.label for r in self.records})

    @property
    def has_split(self) -> bool:
        return bool(self.records) and all(r.split for r in self.records)

    def split_names(self) -> list[str]:
        return sorted({r.split for r in self.records if r.split}, key=["train", "val", "test"].index)

    def subset(self, split: str) -> list[Record]:
        return [r for r in self.records if r.split == split]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split or 'all': {class: count}}``."""
        out: dict[str, Counter] = {}
        for r in self.records:
            out.setdefault(r.split or "all", Counter())[r.label] += 1
        return {s: dict(sorted(c.items())) for s, c in out.items()}

    def require_classes(self, minimum: int = 2) -> None:
        if len(self.classes) < minimum:
            raise TltoolError(
                f"{self.name}: found {len(self.classes)} class(es) {self.classes}; a classifier needs at least "
                f"{minimum}. Put each class's images in its own sub-folder."
            )


def label_indices(records: Sequence[Record], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([index[r.label] for r in records], dtype=np.int64)
    except KeyError as exc:
        raise TltoolError(f"label {exc.args[0]!r} is not one of the known classes {list(classes)}") from None


# ----------------------------------------------------------------------------------------------- sources
Loader = Callable[[str], Dataset]
_SOURCES: list[tuple[str, Callable[[str], bool], Loader]] = []


def register_source(name: str, matches: Callable[[str], bool]) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        _SOURCES.append((name, matches, fn))
        return fn
    return deco


def load_dataset(spec: str | os.PathLike) -> Dataset:
    """Open a dataset from a folder, a CSV manifest or ``tfds:NAME[:SPLIT]``."""
    spec = str(spec)
    for _name, matches, loader in _SOURCES:
        if matches(spec):
            return loader(spec)
    if not os.path.exists(spec):
        raise TltoolError(f"{spec}: no such file or folder.")
    raise TltoolError(
        f"{spec}: not a dataset. Give a folder with one sub-folder per class, a CSV manifest (path,label[,split]) "
        "or tfds:NAME."
    )


def _walk_files(folder: Path) -> tuple[list[Path], list[SkippedFile]]:
    files, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not is_candidate_file(name):
                skipped.append(SkippedFile(str(path), HIDDEN))
            elif not _utf8(str(path)):
                skipped.append(SkippedFile(str(path).encode("utf-8", "replace").decode(), NOT_UTF8))
            else:
                files.append(path)
    return files, skipped


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@register_source("tfds", lambda spec: spec.startswith("tfds:"))
def _load_tfds_spec(spec: str) -> Dataset:
    from .tfds_source import load_tfds

    return load_tfds(spec)


@register_source("csv", lambda spec: spec.lower().endswith((".csv", ".tsv")) and os.path.isfile(spec))
def load_manifest(spec: str) -> Dataset:
    """A CSV manifest ``path,label[,split]``; paths are relative to the manifest's folder."""
    manifest = Path(spec).resolve()
    base = manifest.parent
    # "assisted": the labeler marks labels that were accepted suggestions (tltool/labeler/store.py); not used here
    allowed, required = {"path", "label", "split", "assisted"}, {"path", "label"}
    problems: list[str] = []
    records: list[Record] = []
    seen_rows: dict[str, int] = {}
    with open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t" if spec.lower().endswith(".tsv") else ",")
        header = [h.strip() for h in (reader.fieldnames or [])]
        unknown = [h for h in header if h not in allowed]
        missing = sorted(required - set(header))
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown column(s) {unknown}")
            if missing:
                parts.append(f"missing column(s) {missing}")
            raise TltoolError(f"{spec}, row 1 (header): {' and '.join(parts)}. Expected columns: path,label[,split].")
        reader.fieldnames = header
        for row in reader:
            line = reader.line_num
            path = (row.get("path") or "").strip()
            label = (row.get("label") or "").strip()
            split = (row.get("split") or "").strip().lower() or None
            if not path:
                problems.append(f"row {line}: empty path")
                continue
            full = (base / path).resolve() if not os.path.isabs(path) else Path(path)
            if not label:
                problems.append(f"row {line}: empty label for {path}")
            if not full.is_file():
                problems.append(f"row {line}: file not found: {path}")
            if split is not None and split not in SPLIT_ALIASES:
                problems.append(f"row {line}: unknown split {split!r} (use train, val or test)")
            if str(full) in seen_rows:
                problems.append(f"row {line}: {path} is listed again (first on row {seen_rows[str(full)]})")
                continue
            seen_rows[str(full)] = line
            records.append(Record(str(full), label, SPLIT_ALIASES.get(split) if split else None))
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise TltoolError(f"{spec}: {len(problems)} problem(s) in the manifest:\n  {shown}{more}")
    if any(r.split for r in records) and not all(r.split for r in records):
        raise TltoolError(f"{spec}: the split column is filled for some rows only; fill it for all rows or none.")
    return Dataset(name=manifest.stem, source=f"csv:{manifest}", records=records)


@register_source("folder", os.path.isdir)
def load_folder(spec: str) -> Dataset:
    """``root/<class>/*`` or ``root/{train,val,test}/<class>/*`` (an existing split is kept)."""
    root = Path(spec).resolve()
    subdirs = _subdirs(root)
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES and _subdirs(d)]
    records: list[Record] = []
    skipped: list[SkippedFile] = []
    notes: list[str] = []
    empty: set[str] = set()
    seen_classes: set[str] = set()
    layout = [(d, SPLIT_ALIASES[d.name.lower()]) for d in split_dirs] if split_dirs else [(root, None)]
    if split_dirs:
        others = [d.name for d in subdirs if d not in split_dirs]
        if others:
            notes.append(f"folders {others} are not splits (train/val/test) and were ignored")
    for folder, split in layout:
        for entry in sorted(folder.iterdir()):
            if entry.is_file():
                reason = HIDDEN if entry.name.startswith(".") else OUTSIDE_CLASS
                skipped.append(SkippedFile(str(entry), reason))
        for class_dir in _subdirs(folder):
            files, hidden = _walk_files(class_dir)
            skipped.extend(hidden)
            seen_classes.add(class_dir.name)
            if not files:
                empty.add(class_dir.name)
            records.extend(Record(str(p), class_dir.name, split) for p in files)
    labelled = {r.label for r in records}
    for name in sorted(seen_classes - labelled):
        notes.append(f"class folder {name!r} has no images and was ignored")
    for name in sorted(empty & labelled):
        notes.append(f"class {name!r} has no images in one of the splits")
    if not records:
        raise TltoolError(
            f"{spec}: no images found. Expected one sub-folder per class (root/<class>/*.jpg) "
            "or root/train/<class>/* and root/val/<class>/*."
        )
    return Dataset(name=root.name, source=f"folder:{root}", records=records, skipped=skipped, notes=notes)


# ------------------------------------------------------------------------------------------------ splitting
def stratified_split(dataset: Dataset, val_fraction: float = 0.2, seed: int = 0,
                     groups: Mapping[str, str] | None = None) -> Dataset:
    """Give every record a split. An existing split is kept; otherwise a seeded, per-class split into train/val.

    The order of files on disk does not matter: each class's files are sorted before the seeded shuffle.
    ``groups`` (path -> key, e.g. the content hash) keeps identical images on the same side, so a photo saved
    twice cannot be in training and validation at once.
    """
    if dataset.has_split:
        splits = set(dataset.split_names())
        if "train" not in splits:
            raise TltoolError(f"{dataset.name}: the dataset has splits {sorted(splits)} but no 'train' split.")
        if "val" in splits:
            return dataset
        if "test" in splits:
            dataset.notes.append("no 'val' split: the 'test' split is used for validation")
            return replace(dataset, records=[replace(r, split="val" if r.split == "test" else r.split)
                                             for r in dataset.records])
        # only a train split: split it
        dataset = replace(dataset, records=[replace(r, split=None) for r in dataset.records])
    if not 0.0 < val_fraction < 1.0:
        raise TltoolError(f"--val-fraction must be between 0 and 1, got {val_fraction}.")
    by_class: dict[str, dict[str, list[Record]]] = {}
    for r in dataset.records:
        key = groups.get(r.path, r.path) if groups else r.path
        by_class.setdefault(r.label, {}).setdefault(key, []).append(r)
    too_few = {c: len(g) for c, g in by_class.items() if len(g) < 2}
    if too_few:
        raise TltoolError(
            f"{dataset.name}: class(es) {too_few} have fewer than 2 distinct images; a train/val split needs at "
            "least one image of each class on each side. Add images or remove the class."
        )
    rng = random.Random(seed)
    out: list[Record] = []
    for label in sorted(by_class):
        members = sorted((sorted(rs, key=lambda r: r.path) for rs in by_class[label].values()),
                         key=lambda rs: rs[0].path)
        rng.shuffle(members)
        n_images = sum(len(rs) for rs in members)
        n_val = min(n_images - 1, max(1, round(n_images * val_fraction)))
        taken = 0
        for i, rs in enumerate(members):
            to_val = taken < n_val and i < len(members) - 1
            taken += len(rs) if to_val else 0
            out.extend(replace(r, split="val" if to_val else "train") for r in rs)
    out.sort(key=lambda r: (r.split != "train", r.label, r.path))
    return replace(dataset, records=out, notes=dataset.notes + [f"stratified split: val_fraction={val_fraction}, seed={seed}"])


def require_training_images(dataset: Dataset) -> None:
    """Every class must be in the training split, and it should be in validation too."""
    missing = sorted({r.label for r in dataset.records} - {r.label for r in dataset.subset("train")})
    if missing:
        raise TltoolError(f"{dataset.name}: class(es) {missing} have no usable training images; a classifier "
                          "cannot learn them. Add training images or remove the class.")


def write_manifest(records: Iterable[Record], target: str | os.PathLike, relative: bool = False) -> Path:
    """Write ``path,label,split`` rows that :func:`load_manifest` reads back (atomic write). Paths are absolute,
    or relative to the manifest's folder with ``relative``."""
    from .utils import write_text_atomic

    target = Path(target).resolve()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    for r in records:
        path = os.path.relpath(r.path, target.parent) if relative else os.path.abspath(r.path)
        writer.writerow([path, r.label, r.split or ""])
    write_text_atomic(target, buf.getvalue())
    return target


def write_split_manifest(spec: str, out_csv: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Freeze a split as a manifest (paths relative to the CSV) plus ``classes.json`` beside it."""
    from .utils import write_json

    dataset = stratified_split(load_dataset(spec), val_fraction, seed)
    target = write_manifest(dataset.records, out_csv, relative=True)
    write_json(target.parent / "classes.json", dataset.classes)
    return target
