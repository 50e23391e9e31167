"""The labels of a dataset folder, persisted on every change: ``labels.csv`` (``path,label[,assisted]``; any other
column a person added is kept) and ``skipped.csv``.

``labels.csv`` is a manifest :func:`tltool.dataset.load_dataset` reads as it is (paths relative to the dataset root)
until a person adds a column or undoes a label on a row that has one (the row stays, its label empty); ``label export``
reads it either way, and load_dataset's error then says so.
Its ``assisted`` column (written once any label is an accepted suggestion) holds ``1`` for those labels, so
suspects and reviews can look at them first.
Every change is a read-modify-write under a lock (a thread lock, plus an ``flock`` on ``.labels.lock`` so two
processes cannot interleave either) and lands with an atomic rename, so no label is ever lost or half-written.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import threading
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Iterator

from ..dataset import (LABEL_CLASSES, LABELS_CSV, UNLABELED, Dataset, ManifestWarning, case_clashes,
                       collected_parent, folder_name_problem, is_utf8, label_commands, label_problem, labeler_may_write,
                       load_manifest)
from ..errors import BadFilesWarning, TltoolError
from ..images import is_image_name
from ..outputs import output_kind
from ..utils import file_lock, readable_csv, record_line, refuse_link, shortened, shown_name, write_text_atomic


ASSISTED = "assisted"  # labels.csv column: 1 when the label was an accepted suggestion
SKIPPED_CSV = "skipped.csv"
LOCK_FILE = ".labels.lock"
EXPORT_MARKER = ".tltool/export.json"  # a folder holding this is an export, never listed for labelling
MAX_KEYED_CLASSES = 9


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class of the labeler (None: it can): a class is a folder of ``label export``."""
    return label_problem(name) or folder_name_problem(name)


def check_class_name(name: str) -> str:
    """A class name must be usable as a folder name on every system (export writes train/<class>/)."""
    name = name.strip()
    problem = class_name_problem(name)
    if problem:
        raise TltoolError(f"class name {shortened(name)!r} {problem}.")
    return name


def check_distinct_folders(classes: list[str], where: str) -> None:
    """Class names that differ only in case are one folder on macOS and Windows: an export would merge them."""
    clashing = case_clashes(classes)
    if clashing:
        raise TltoolError(f"{where}: the classes {', '.join(' and '.join(map(repr, n)) for n in clashing)} differ only "
                          "in case or in how an accent is encoded: on macOS and Windows they are one folder, and an "
                          "export would merge them. Rename one.")


def parse_classes(text: str | None) -> list[str]:
    """``"cat,dog"`` -> ``["cat", "dog"]``: checked, without repeats, at most nine (keys 1-9)."""
    if not text:
        return []
    return check_classes([c for c in text.split(",") if c.strip()], "--classes")


def check_classes(names: list[str], where: str) -> list[str]:
    """``names`` as classes: checked, without repeats, at most nine; ``where`` they come from, for the errors."""
    classes = [check_class_name(c) for c in names]
    repeated = sorted(c for c, n in Counter(classes).items() if n > 1)
    if repeated:
        raise TltoolError(f"{where} names {repeated} more than once.")
    check_distinct_folders(classes, where)
    if len(classes) > MAX_KEYED_CLASSES:
        raise TltoolError(f"{where} has {len(classes)} classes; the keys 1-9 label at most {MAX_KEYED_CLASSES}. "
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


def list_images(root: Path) -> list[str]:
    """Images to label: those under ``root/unlabeled`` when it exists, else every image under ``root``.

    Hidden folders and the folders ``label export`` wrote are left out; so are names that are not UTF-8 (labels.csv
    cannot hold them) and names with a backslash (labels.csv reads it as a folder separator, so the label went to
    another path at the next read), named in a :class:`BadFilesWarning`.
    """
    base = root / UNLABELED if (root / UNLABELED).is_dir() else root
    found, not_utf8, backslash = [], [], []
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not (here / d / EXPORT_MARKER).exists())
        for name in sorted(filenames):
            rel = (here / name).relative_to(root).as_posix()
            if not is_image_name(name) or inside_root(root, rel) is None:  # a symlink leaving the folder
                continue
            if not is_utf8(rel):  # undecodable bytes in a name arrive as surrogates
                not_utf8.append(rel.encode("utf-8", "replace").decode())
            elif "\\" in rel:
                backslash.append(rel)
            else:
                found.append(rel)
    _left_out(not_utf8, "their names are not valid UTF-8")
    _left_out(backslash, "their names hold a backslash, which labels.csv reads as a folder separator")
    return found


def _left_out(names: list[str], why: str) -> None:
    if names:
        warnings.warn(f"{len(names)} image(s) left out, {why} (rename them): "
                      + ", ".join(map(shown_name, names[:5]))
                      + (" ..." if len(names) > 5 else ""), BadFilesWarning, stacklevel=4)


def refuse_linked_csv(path: Path) -> None:
    """A TltoolError when the dataset's ``path`` (labels.csv, skipped.csv) is a link: reading it would read a file
    outside the dataset, and its rows would be written back into it."""
    refuse_link(path, "label files", "replace it with the file itself, or remove it.")


LABEL_COLUMNS = ("path", "label", ASSISTED)  # the columns the labeler writes; any other is the user's, kept


@dataclass
class LabelsTable:
    """``labels.csv`` as read: the labels of the rows inside its folder, keyed by their path relative to it (as
    :func:`list_images` names the images, so ``./x.jpg`` or an absolute path is the same image); the header and each
    row's cells, so a rewrite changes the labeler's cells only and keeps the user's own columns; and the paths of
    the rows outside the folder (never written back)."""

    labels: dict[str, str] = field(default_factory=dict)
    assisted: set[str] = field(default_factory=set)
    header: list[str] = field(default_factory=lambda: ["path", "label"])
    cells: dict[str, list[str]] = field(default_factory=dict)
    outside: list[str] = field(default_factory=list)

    def add(self, root: Path, cells: list[str], where: str) -> None:
        """One row of the file (the last row of a path wins, as a manifest is read); ``where``: the file and row, for
        the TltoolError of a label no class may have."""
        at = {name: self.header.index(name) for name in LABEL_COLUMNS if name in self.header}
        cell = (lambda name: cells[at[name]].strip() if name in at and at[name] < len(cells) else "")
        raw, label = cell("path"), cell("label")
        problem = class_name_problem(label) if label else None
        if problem:  # with --classes it was taken as a class of its own, shown and counted, and accepted in POSTs
            raise TltoolError(f"{where}: the label {shortened(label)!r} {problem}; rename it in the file.")
        rel = inside_root(root, raw, allow_absolute=True) if raw else None
        if rel is None:
            if raw and label:
                self.outside.append(raw)
            return
        if label or rel not in self.labels:
            self.cells[rel] = cells
        if label:
            self.labels[rel] = label
            (self.assisted.add if cell(ASSISTED) in ("1", "true", "yes") else self.assisted.discard)(rel)

    def rewritten(self, labels: dict[str, str], assisted: set[str]) -> tuple[list[str], list[list[str]]]:
        """The header and rows of ``labels.csv`` with these labels: the labeler's cells set, the others as read, the
        rows in the order read and new ones after them (the first save sorted a user's file). A row leaves the file
        when it has no label and nothing but its path (an undone label); one with the user's own cells stays, its
        label empty."""
        header = self.header + ([ASSISTED] if assisted and ASSISTED not in self.header else [])
        at = {name: header.index(name) for name in LABEL_COLUMNS if name in header}
        rows = []
        for path in [*self.cells, *sorted(set(labels) - set(self.cells))]:  # the user's rows keep their order
            cells = list(self.cells.get(path, ()))
            cells += [""] * (len(header) - len(cells))
            cells[at["path"]], cells[at["label"]] = path, labels.get(path, "")
            if ASSISTED in at:
                cells[at[ASSISTED]] = "1" if path in assisted else ""
            if path in labels or any(c.strip() for i, c in enumerate(cells) if i not in at.values()):
                rows.append(cells)
        return header, rows


def _labels_header(path: Path, header: list[str]) -> list[str]:
    """The header of ``labels.csv``: a TltoolError when it lacks path or label (a file the labeler would otherwise
    read as empty and overwrite) or names one of the labeler's columns twice."""
    names = [h.strip() for h in header]
    missing = [c for c in ("path", "label") if c not in names]
    twice = [c for c in LABEL_COLUMNS if names.count(c) > 1]
    if missing or twice:
        problem = f"no {' or '.join(missing)} column" if missing else f"the column(s) {', '.join(twice)} twice"
        raise TltoolError(f"{path}: {problem} (its header: {','.join(names) or 'empty'}); the labeler keeps labels "
                          "in the columns path,label (paths relative to the dataset folder; other columns are kept). "
                          "Rename the columns, or move the file away to start a new one.")
    return names


def _labels_rows(path: Path) -> LabelsTable:
    """``labels.csv`` as a :class:`LabelsTable`; an empty one when the file is absent or empty."""
    table = LabelsTable()
    refuse_linked_csv(path)
    if path.is_file():
        root = path.parent.resolve()
        with readable_csv(path), open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = (cells for cells in reader if any(c.strip() for c in cells))  # blank lines mean nothing
            header = next(rows, None)
            if header is not None:
                table.header = _labels_header(path, header)
                for cells in rows:
                    table.add(root, cells, f"{path}, row {record_line(reader, cells)}")
    return table


def outside_rows_warning(csv_path: Path, outside: list[str]) -> str:
    return (f"{csv_path}: {len(outside)} row(s) left out, their paths are outside {csv_path.parent.resolve()}: "
            + ", ".join(map(shown_name, outside[:5])) + (" ..." if len(outside) > 5 else ""))


def read_labels_csv(path: Path) -> tuple[dict[str, str], set[str]]:
    """``labels.csv`` as ``({path: label}, {paths whose label was an accepted suggestion})``; none when absent.

    A linked ``labels.csv`` is refused (TltoolError); rows whose path is outside its folder are left out here without
    a word (:func:`load_labelled` and :class:`LabelStore` name them)."""
    table = _labels_rows(path)
    return table.labels, table.assisted


def load_labelled(root: Path) -> Dataset:
    """``root/labels.csv`` as a dataset, without the rows whose path is not a file inside ``root`` (named in a
    :class:`ManifestWarning`): the labeler writes only paths inside its folder, so another one is an edit, and
    export would hard-link it (``/etc/passwd``) into the class folders, as the labeler's server never serves it.
    A linked ``labels.csv`` is refused (TltoolError)."""
    root = root.resolve()
    refuse_linked_csv(root / LABELS_CSV)
    dataset = load_manifest(str(root / LABELS_CSV), labels_file=True)
    inside = [inside_root(root, r.path, allow_absolute=True) is not None for r in dataset.records]
    kept = [r for r, ok in zip(dataset.records, inside) if ok]
    outside = [r.path for r, ok in zip(dataset.records, inside) if not ok]
    if outside:
        warnings.warn(outside_rows_warning(root / LABELS_CSV, outside), ManifestWarning, stacklevel=2)
    return replace(dataset, records=kept)


def _write_csv(path: Path, header: list[str], rows) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue(), durable=True)  # labels survive a power cut


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
    with readable_csv(csv_path), open(csv_path, newline="", encoding="utf-8-sig") as f:
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
                notes.append(f"row {record_line(reader, row)}: {raw!r} is outside {root}")
            elif not (root / rel).is_file():
                notes.append(f"row {record_line(reader, row)}: {raw!r} not found under {root}")
            elif not is_image_name(PurePosixPath(rel).name):  # labels.csv, notes.txt: never an item to label
                notes.append(f"row {record_line(reader, row)}: {raw!r} is not an image")
            elif rel not in seen:
                seen.add(rel)
                items.append(ReviewItem(rel, *((row.get(k) or "").strip() for k in ("label", "suggested", "score"))))
    return items, notes


def _apply_label(labels: dict[str, str], assisted: set[str], path: str, label: str | None, accepted: bool) -> bool:
    """Set one label in ``labels`` and ``assisted``; True when labels.csv must be rewritten."""
    before = (labels.get(path), path in assisted)
    if label is None:
        labels.pop(path, None)
    else:
        labels[path] = label
    (assisted.add if accepted else assisted.discard)(path)
    return before != (label, accepted)


def refuse_foreign_folder(root: Path, given: str | os.PathLike, classes: list[str] | None = None) -> None:
    """A TltoolError, before anything is written, for a folder the labeler may not write its labels.csv,
    skipped.csv and lock into (:func:`tltool.dataset.labeler_may_write`), with the commands that label its photos.
    ``root``: the folder, resolved; ``given``: as the user named it."""
    if labeler_may_write(root):
        return
    shown = shown_name(given)
    commands = label_commands(given, ",".join(classes) if classes else LABEL_CLASSES)
    if collected_parent(root):
        raise TltoolError(f"{shown}: is the {UNLABELED}/ folder of the dataset folder {shown_name(root.parent)}, "
                          f"whose labels.csv goes beside it; label that folder: {commands}")
    kind = output_kind(root)
    what = f"is a tltool {kind} folder, not one `collect import` made" if kind else "is not a folder tltool made"
    raise TltoolError(f"{shown}: {what}, and labelling writes labels.csv into the folder it labels; import the "
                      f"photos into a new dataset folder first (copies, duplicates dropped; the folder stays as it "
                      f"is), then label that: {commands}")


class LabelStore:
    """The images of a dataset folder, their labels and skips; every change persisted at once (thread-safe)."""

    def __init__(self, root: str | os.PathLike, classes: list[str] | None = None,
                 review: str | os.PathLike | None = None) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise TltoolError(f"{root}: no such dataset folder. Create one with `tltool collect import SRC --out "
                              f"{root}`.")
        refuse_foreign_folder(self.root, root, classes)  # before the lock file or anything else is written
        self.labels_path = self.root / LABELS_CSV
        self.skipped_path = self.root / SKIPPED_CSV
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._outside_named: set[str] = set()  # labels.csv rows outside the folder already warned about
        self.notes: list[str] = []
        self._table = LabelsTable()  # labels.csv as read or last written
        self.labels: dict[str, str] = {}
        self.assisted: set[str] = set()  # labels that were accepted suggestions
        self.skipped: set[str] = set()
        refuse_link(self.root / LOCK_FILE)  # refused now, not at the first label (file_lock refuses it too)
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
            # each label whole: joined with commas and split again, "red, ripe" made the classes red and ripe
            self.classes = check_classes(sorted(found), f"{self.labels_path} (without --classes)")
        if not self.classes:
            raise TltoolError("no classes: pass --classes a,b,c (keys 1-9 follow that order).")
        listed = list_images(self.root)
        known = set(listed)  # once: built per label, it made 10,000 labels of 10,000 photos 10^8 steps
        extra = sorted(p for p in self.labels if p not in known and inside_root(self.root, p) is not None
                       and is_image_name(PurePosixPath(p).name) and (self.root / p).is_file())
        order = [r.path for r in review_items] + listed + extra
        self.items = list(dict.fromkeys(order))
        if not self.items:
            raise TltoolError(f"{self.root}: no images to label (looked in {self.root / UNLABELED} and below the "
                              "folder). Add some with `tltool collect import SRC --out DATASET`.")
        self._item_set = set(self.items)

    def listed(self, path: str) -> bool:
        """Whether ``path`` is one of the photos being labelled (a set lookup, not a scan of :attr:`items`)."""
        return path in self._item_set

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
        try:
            table, skipped = _labels_rows(self.labels_path), self._read_skipped()
        except OSError as exc:  # another user's file, say: a traceback and no answer while serving
            raise TltoolError(f"cannot read {exc.filename or self.labels_path} ({exc.strerror or exc}); the "
                              "labeler needs to read and replace it.") from None
        outside = table.outside
        if outside and set(outside) - self._outside_named:  # named once, not again on every reload
            self._outside_named |= set(outside)
            warnings.warn(outside_rows_warning(self.labels_path, outside) + "; they will not be written back",
                          ManifestWarning, stacklevel=3)
        self._table, self.labels, self.assisted, self.skipped = table, table.labels, table.assisted, skipped
        self._stamp = self._file_stamp()

    def _read_skipped(self) -> set[str]:
        refuse_linked_csv(self.skipped_path)
        if not self.skipped_path.is_file():
            return set()
        with readable_csv(self.skipped_path), open(self.skipped_path, newline="", encoding="utf-8-sig") as f:
            # named as labels.csv's rows are (`./x.jpg` or an absolute path is the image `x.jpg`)
            return {inside_root(self.root, (row.get("path") or "").strip(), allow_absolute=True)
                    for row in csv.DictReader(f)} - {None}

    def _save(self, labels: dict[str, str], assisted: set[str], skipped: set[str], write_labels: bool,
              write_skipped: bool) -> None:
        """Write the files that changed, then take the new state as the store's: a write that fails leaves the store
        as the files are (the next change is not refused for the one that failed)."""
        assisted = assisted & set(labels)
        target = self.labels_path
        try:
            if write_labels:
                header, rows = self._table.rewritten(labels, assisted)
                _write_csv(target, header, rows)
                path_at = header.index("path")
                self._table = LabelsTable(labels, assisted, header, {r[path_at]: r for r in rows})
            target = self.skipped_path
            if write_skipped:
                _write_csv(target, ["path"], [[p] for p in sorted(skipped)])
        except OSError as exc:
            raise TltoolError(f"cannot write {target} ({exc.strerror or exc}); the change was not saved.") from None
        self.labels, self.assisted, self.skipped = labels, assisted, skipped
        self._stamp = self._file_stamp()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock, file_lock(self.root / LOCK_FILE):
            if self._file_stamp() != self._stamp:  # another process (or a person) changed the files
                self._load()
            yield

    # ------------------------------------------------------------------ the one change
    def set(self, path: str, label: str | None, skipped: bool = False, assisted: bool = False) -> dict:
        """Give ``path`` its whole state: a label (or none), whether it is skipped, whether the label was an accepted
        suggestion. Returns :meth:`summary`.

        Raises ``KeyError`` for a path that is not one of the items and ``ValueError`` for an unknown label.
        """
        return self.set_many([(path, label, skipped, assisted)])

    def set_many(self, changes: list[tuple[str, str | None, bool, bool]],
                 expected: list[tuple[str | None, bool] | None] | None = None) -> dict:
        """Several :meth:`set` changes ``(path, label, skipped, assisted)`` in one locked read-modify-write (a
        confirmed grid is one write, all or nothing). ``expected``: per change, the ``(label, skipped)`` the sender
        believes the photo has (None: not checked); another state means another page or process changed it since,
        and nothing is written (a :class:`TltoolError`): a second tab's skip or undo sent its stale label and
        erased the first tab's."""
        for path, *_ in changes:  # a photo deleted or renamed while the page showed it: not one any more
            if path not in self._item_set or not (self.root / path).is_file():
                raise KeyError(path)
        with self._locked():
            for _, label, _, _ in changes:
                if label is not None and label not in self.classes and label not in self.labels.values():
                    raise ValueError(f"unknown class {shortened(label)!r}; classes: {', '.join(self.classes)}")
            for (path, *_), believed in zip(changes, expected or ()):
                if believed is not None and believed != (self.labels.get(path), path in self.skipped):
                    raise TltoolError(f"{path} was changed elsewhere (another tab or window) since this page read "
                                      "it; nothing was saved")
            labels, assisted, skipped = dict(self.labels), set(self.assisted), set(self.skipped)  # saved, then kept
            labels_changed = skips_changed = False
            for path, label, skip, accepted in changes:
                labels_changed |= _apply_label(labels, assisted, path, label, accepted and label is not None)
                skips_changed |= (path in skipped) != skip
                (skipped.add if skip else skipped.discard)(path)
            self._save(labels, assisted, skipped, write_labels=labels_changed or not self.labels_path.exists(),
                       write_skipped=skips_changed or not self.skipped_path.exists())
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
                item = {"path": path, "label": self.labels.get(path), "skipped": path in self.skipped,
                        "assisted": path in self.assisted}
                if path in self.review:
                    r = self.review[path]
                    item["review"] = {"label": r.label, "suggested": r.suggested, "score": r.score}
                items.append(item)
            start = 0 if self.review else next(
                (i for i, it in enumerate(items) if it["label"] is None and not it["skipped"]), len(items))
            return {"dataset": self.root.name, "dataset_id": self.dataset_id, "classes": self.classes,
                    "items": items, "start": start, **self.summary()}

    @property
    def dataset_id(self) -> str:
        """Which folder this is, without its path: the page keys its undo history by it, so a tab that another
        server of a folder with the same name answers later (the same --port) never replays this one's undos."""
        return hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
