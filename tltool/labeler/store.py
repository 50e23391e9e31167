"""The labels of a dataset folder, persisted on every change: ``labels.csv`` (``path,label``) and ``skipped.csv``.

``labels.csv`` is a manifest :func:`tltool.dataset.load_dataset` reads as it is (paths relative to the dataset root).
Every change is a read-modify-write under a lock (a thread lock, plus an ``flock`` on ``.labels.lock`` so two
processes cannot interleave either) and lands with an atomic rename, so no label is ever lost or half-written.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from ..errors import TltoolError
from ..images import IMAGE_EXTENSIONS
from ..utils import write_text_atomic

try:  # POSIX; elsewhere the thread lock alone serialises one server's writes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LABELS_CSV = "labels.csv"
SKIPPED_CSV = "skipped.csv"
LOCK_FILE = ".labels.lock"
UNLABELED = "unlabeled"
EXPORT_MARKER = ".tltool/export.json"  # a folder holding this is an export, never listed for labelling
MAX_KEYED_CLASSES = 9


def check_class_name(name: str) -> str:
    """A class name must be usable as a folder name on every system (export writes train/<class>/)."""
    name = name.strip()
    bad = set('/\\:*?"<>|') & set(name)
    if not name or name in (".", "..") or name.startswith(".") or bad or any(ord(c) < 32 for c in name):
        raise TltoolError(f"class name {name!r} cannot be a folder name: use letters, digits, spaces, - or _ "
                          "(no / \\ : * ? \" < > |, not starting with a dot).")
    return name


def parse_classes(text: str | None) -> list[str]:
    """``"cat,dog"`` -> ``["cat", "dog"]``: checked, without repeats, at most nine (keys 1-9)."""
    if not text:
        return []
    classes = [check_class_name(c) for c in text.split(",") if c.strip()]
    repeated = sorted(c for c, n in Counter(classes).items() if n > 1)
    if repeated:
        raise TltoolError(f"--classes names {repeated} more than once.")
    if len(classes) > MAX_KEYED_CLASSES:
        raise TltoolError(f"--classes has {len(classes)} classes; the keys 1-9 label at most {MAX_KEYED_CLASSES}. "
                          "Label in rounds, or merge classes.")
    return classes


def inside_root(root: Path, path: str, allow_absolute: bool = False) -> str | None:
    """``path`` as a POSIX path relative to ``root`` (a resolved folder), or None when it is empty, absolute (unless
    ``allow_absolute``), climbs with ``..``, or resolves outside ``root`` (symlinks are followed)."""
    if not path or "\x00" in path:
        return None
    posix = path.replace("\\", "/")
    if os.path.isabs(path) or posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        if not allow_absolute:
            return None
        full = Path(path)
    elif ".." in PurePosixPath(posix).parts:
        return None
    else:
        full = root / posix
    real = Path(os.path.realpath(full))
    if real != root and root not in real.parents:
        return None
    try:
        return full.relative_to(root).as_posix()
    except ValueError:
        return real.relative_to(root).as_posix()


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def list_images(root: Path) -> list[str]:
    """Images to label: those under ``root/unlabeled`` when it exists, else every image under ``root``.

    Hidden folders and the folders ``label export`` wrote are left out.
    """
    base = root / UNLABELED if (root / UNLABELED).is_dir() else root
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (here / d / EXPORT_MARKER).exists())
        for name in sorted(filenames):
            rel = (here / name).relative_to(root).as_posix()
            if is_image_name(name) and inside_root(root, rel) is not None:  # not a symlink leaving the folder
                found.append(rel)
    return found


def _write_csv(path: Path, header: list[str], rows) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


@dataclass(frozen=True)
class ReviewItem:
    """A row of a review list (``tltool label suspects`` writes one): an image to look at first."""

    path: str
    label: str = ""
    suggested: str = ""
    score: str = ""


def read_review(root: Path, csv_path: str | os.PathLike) -> tuple[list[ReviewItem], list[str]]:
    """Rows of a review CSV (``path`` required; ``label``, ``suggested``, ``score`` optional) and notes on the
    rows left out (a path that is missing or outside the dataset)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise TltoolError(f"--review {csv_path}: no such file.")
    items, notes, seen = [], [], set()
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        if "path" not in header:
            raise TltoolError(f"--review {csv_path}: no 'path' column (found {header}). Expected columns: "
                              "path[,label,suggested,score], paths relative to the dataset folder.")
        reader.fieldnames = header
        for row in reader:
            raw = (row.get("path") or "").strip()
            rel = inside_root(root, raw, allow_absolute=True)
            if rel is None:
                notes.append(f"row {reader.line_num}: {raw!r} is outside {root}")
            elif not (root / rel).is_file():
                notes.append(f"row {reader.line_num}: {raw!r} not found under {root}")
            elif rel not in seen:
                seen.add(rel)
                items.append(ReviewItem(rel, *((row.get(k) or "").strip() for k in ("label", "suggested", "score"))))
    return items, notes


class LabelStore:
    """The images of a dataset folder, their labels and skips; every change persisted at once (thread-safe)."""

    def __init__(self, root: str | os.PathLike, classes: list[str] | None = None,
                 review: str | os.PathLike | None = None) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise TltoolError(f"{root}: no such dataset folder. Create one with `tltool collect import SRC --out "
                              f"{root}`.")
        self.labels_path = self.root / LABELS_CSV
        self.skipped_path = self.root / SKIPPED_CSV
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self.notes: list[str] = []
        self.labels: dict[str, str] = {}
        self.skipped: set[str] = set()
        self._load()
        self.review: dict[str, ReviewItem] = {}
        review_items: list[ReviewItem] = []
        if review is not None:
            review_items, notes = read_review(self.root, review)
            self.notes += notes
            self.review = {r.path: r for r in review_items}
        self.classes = list(classes or [])
        if not self.classes:
            found = set(self.labels.values()) | {v for r in review_items for v in (r.label, r.suggested) if v}
            self.classes = parse_classes(",".join(sorted(found)))
        if not self.classes:
            raise TltoolError("no classes: pass --classes a,b,c (keys 1-9 follow that order).")
        listed = list_images(self.root)
        extra = sorted(p for p in self.labels if p not in set(listed) and inside_root(self.root, p) is not None
                       and (self.root / p).is_file())
        order = [r.path for r in review_items] + listed + extra
        self.items = list(dict.fromkeys(order))
        if not self.items:
            raise TltoolError(f"{self.root}: no images to label (looked in {self.root / UNLABELED} and below the "
                              "folder). Add some with `tltool collect import SRC --out DATASET`.")
        self._item_set = set(self.items)

    # ------------------------------------------------------------------ persistence
    def _file_stamp(self) -> tuple:
        stamps = []
        for p in (self.labels_path, self.skipped_path):
            try:
                st = p.stat()
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                stamps.append(None)
        return tuple(stamps)

    def _load(self) -> None:
        labels: dict[str, str] = {}
        if self.labels_path.is_file():
            with open(self.labels_path, newline="", encoding="utf-8-sig") as f:
                for row in csv.DictReader(f):
                    path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                    if path and label:
                        labels[path] = label
        skipped: set[str] = set()
        if self.skipped_path.is_file():
            with open(self.skipped_path, newline="", encoding="utf-8-sig") as f:
                skipped = {(row.get("path") or "").strip() for row in csv.DictReader(f)} - {""}
        self.labels, self.skipped = labels, skipped
        self._stamp = self._file_stamp()

    def _save(self, labels: bool = True, skipped: bool = True) -> None:
        if labels:
            _write_csv(self.labels_path, ["path", "label"], sorted(self.labels.items()))
        if skipped:
            _write_csv(self.skipped_path, ["path"], [[p] for p in sorted(self.skipped)])
        self._stamp = self._file_stamp()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, open(self.root / LOCK_FILE, "a") as lock_file:
            if fcntl is not None:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                if self._file_stamp() != self._stamp:  # another process (or a person) changed the files
                    self._load()
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ the one change
    def set(self, path: str, label: str | None, skipped: bool = False) -> dict:
        """Give ``path`` its whole state: a label (or none) and whether it is skipped. Returns :meth:`summary`.

        Raises ``KeyError`` for a path that is not one of the items and ``ValueError`` for an unknown label.
        """
        if path not in self._item_set:
            raise KeyError(path)
        with self._locked():
            if label is not None and label not in self.classes and label not in self.labels.values():
                raise ValueError(f"unknown class {label!r}; classes: {', '.join(self.classes)}")
            before = (self.labels.get(path), path in self.skipped)
            if label is None:
                self.labels.pop(path, None)
            else:
                self.labels[path] = label
            (self.skipped.add if skipped else self.skipped.discard)(path)
            self._save(labels=before[0] != label or not self.labels_path.exists(),
                       skipped=before[1] != skipped or not self.skipped_path.exists())
            return self.summary()

    # ------------------------------------------------------------------ views
    def summary(self) -> dict:
        counts = Counter(label for path, label in self.labels.items() if path in self._item_set)
        return {
            "total": len(self.items),
            "labelled": sum(counts.values()),
            "skipped": sum(1 for p in self.skipped if p in self._item_set and p not in self.labels),
            "counts": {c: counts.get(c, 0) for c in self.classes} | {c: n for c, n in sorted(counts.items())
                                                                   if c not in self.classes},
        }

    def state(self) -> dict:
        with self._locked():
            items = []
            for path in self.items:
                item = {"path": path, "label": self.labels.get(path), "skipped": path in self.skipped}
                if path in self.review:
                    r = self.review[path]
                    item["review"] = {"label": r.label, "suggested": r.suggested, "score": r.score}
                items.append(item)
            start = 0 if self.review else next(
                (i for i, it in enumerate(items) if it["label"] is None and not it["skipped"]), len(items))
            return {"dataset": self.root.name, "classes": self.classes, "items": items, "start": start,
                    **self.summary()}
