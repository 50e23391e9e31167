"""Datasets: one abstraction (records of path, label, split; a stable sorted class list) over three sources.

Sources are looked up in a registry, first match wins: ``tfds:NAME[:SPLIT]``, a ``.csv`` manifest, or a folder
with one sub-folder per class (optionally under ``train/`` and ``val/``).
"""
from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
import random
import shlex
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, TextIO

import numpy as np

from .errors import ClassNameWarning, TltoolError, TltoolWarning
from .images import is_candidate_file, is_image_name
from .outputs import MARKER, output_kind
from .utils import (BIDI_CONTROLS, readable_csv, record_line, shortened, shown_name, unprinted_character,
                    write_text_atomic)

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test",
}
HIDDEN = "hidden file (ignored)"
OUTSIDE_CLASS = "not inside a class folder (ignored)"
NOT_UTF8 = "file name is not valid UTF-8 (ignored; rename it)"
UNREADABLE_FOLDER = "folder cannot be read (ignored)"
# Linked folders a walk does not follow (stable strings; the real target follows in parentheses).
LINK_BACK_UP = "link to a folder above it, not followed"
LINK_INSIDE = "link to a folder inside the dataset, not followed: its images are found there"
LINK_AGAIN = "link to a folder already walked, not followed again"
# a run, features or export folder tltool wrote inside the dataset (`--out PHOTOS/run1`): its plots are no photos
TLTOOL_OUTPUT = "a tltool {kind} folder, not photos (ignored)"
UNLABELLED_DATASET = "a dataset `tltool collect import` made: photos not labelled yet, not a class (ignored)"
NOT_PHOTOS = ("run", "features", "export")
TLTOOL_OUTPUTS = {TLTOOL_OUTPUT.format(kind=kind) for kind in NOT_PHOTOS}


def is_utf8(text: str) -> bool:
    """Whether ``text`` (a file name) can be written as UTF-8 (a manifest, labels.csv)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes in a name arrive as surrogates
        return False


def label_problem(label: str) -> str | None:
    """Why ``label`` cannot name a class (None: it can), said after the label. A control character, line separator
    or undecodable byte in a class name became a class folder of ``label export``, split a report's table, or
    printed the terminal escapes it holds in tltool's messages (the one check for manifests, labels.csv and
    ``--classes``)."""
    bad = unprinted_character(label)
    if bad is None:
        return None
    if 0xDC80 <= ord(bad) <= 0xDCFF:  # Python's stand-in for a byte of a file name that is not UTF-8
        return f"holds a byte that is not UTF-8 (0x{ord(bad) - 0xDC00:02x}), which a class name cannot hold"
    if bad in BIDI_CONTROLS:
        return (f"holds the bidirectional control U+{ord(bad):04X}, which reorders how the text after it is shown "
                "(a report's numbers included) and which a class name cannot hold")
    what = {"Cs": "an undecodable byte", "Zl": "a line separator", "Zp": "a paragraph separator"}.get(
        unicodedata.category(bad), "a control character")
    return f"holds {what} ({bad!r}), which a class name cannot hold"


@dataclass(frozen=True)
class Record:
    path: str
    label: str
    split: str | None = None


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


def lost_photos(skipped: Iterable[SkippedFile], links: bool = True) -> list[SkippedFile]:
    """The skipped entries a user should hear of, because photos may be among them: a name that is not UTF-8, a
    folder that cannot be read, an image file outside every class folder (a photo left beside the class folders),
    and (``links``) a linked folder not followed. Not hidden files, tltool's own folders, `collect import`'s
    unlabelled ones, or a README beside the classes."""
    def worth_naming(s: SkippedFile) -> bool:
        if s.reason == OUTSIDE_CLASS:  # a HEIC one too: named so, it is named as one to convert
            name = os.path.basename(s.path)
            return is_image_name(name) or os.path.splitext(name)[1].lower() in (".heic", ".heif")
        return (s.reason == NOT_UTF8 or s.reason.startswith(UNREADABLE_FOLDER)
                or (links and s.reason.startswith((LINK_BACK_UP, LINK_INSIDE, LINK_AGAIN))))
    return [s for s in skipped if worth_naming(s)]


@dataclass
class Dataset:
    """Labelled image files. ``classes`` is sorted, so a label's index never depends on file order."""

    name: str
    source: str
    records: list[Record]
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    class_folders: list[str] = field(default_factory=list)  # every class folder a folder source saw, even empty

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

    def empty_class_folders(self) -> list[str]:
        """Class folders the source saw that hold no image file at all."""
        return sorted(set(self.class_folders) - {r.label for r in self.records})

    def require_classes(self, minimum: int = 2) -> None:
        if len(self.classes) < minimum:
            empty = self.empty_class_folders()
            also = f" (class folder(s) {empty} hold no images)" if empty else ""
            raise TltoolError(
                f"{self.name}: found {len(self.classes)} class(es) {self.classes}{also}; a classifier needs at "
                f"least {minimum}. {end_sentence(self.how_to_get_classes())}"
            )

    def how_to_get_classes(self) -> str:
        """What to do about too few classes: a folder of ``tltool collect import`` is labelled and exported first;
        any other folder needs one sub-folder per class."""
        if self.source.startswith("csv:"):  # a manifest (header only, or one class): folder advice did not apply
            return (f"List the images of at least 2 classes in {shown_name(self.source[len('csv:'):])}, one row "
                    "each: path,label")
        folder = Path(self.source[len("folder:"):]) if self.source.startswith("folder:") else None
        if folder is None:
            return "Put each class's images in its own sub-folder"
        inner = _classes_one_level_down(folder, self.classes)
        if inner:  # photos/myflowers/{daisy,roses}: the advice was to label every photo again in the browser
            return (f"{shown_name(inner)} holds {len(_image_subdirs(inner))} folders of images "
                    f"({', '.join(d.name for d in _image_subdirs(inner)[:5])}); if they are your classes, give that "
                    "folder as the data")
        if output_kind(folder) != COLLECTED:  # photos not sorted yet (a single day1/ of them) are labelled instead
            return ("Put each class's images in its own sub-folder, or label them (your class names): "
                    + label_commands(folder))
        quoted = shlex.quote(str(folder))
        return (f"It is what `tltool collect import` wrote (unlabeled/ + manifest.csv), not one folder per class: "
                f"label it with `tltool label serve {quoted} --classes NAME1,NAME2,...`, export the labels with "
                f"`tltool label export {quoted}`, and give the folder that writes (train/ and val/ class folders)")


def end_sentence(text: str) -> str:
    """``text`` ending with a full stop, added only where it has none (after a command's ``NAME1,NAME2,...`` a
    fourth dot would be a typo)."""
    return text if text.endswith(".") else text + "."


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


class SymlinkWarning(TltoolWarning):
    """A linked folder was not followed (it leads back up, into the dataset itself, or was walked already)."""


class LinkGuard:
    """Which linked folders a walk follows: each real folder once, never one that leads back up (to the walked root
    or to a folder the walk is inside of), never one inside the root (its files are found there anyway). A link to
    a folder outside the root is followed, once."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.path.realpath(root)
        self.walked: set[str] = {self.root}
        self.skipped: list[SkippedFile] = []

    def admits(self, path: str, chain: tuple[str, ...], is_link: bool) -> str | None:
        """The real path of the folder ``path`` if the walk should enter it (``chain``: real paths of the folders
        the walk is inside of); otherwise None, and the refusal is recorded in :attr:`skipped`."""
        real = os.path.realpath(path)
        reason = None
        if is_link and any(_contains(real, inner) for inner in (self.root, *chain)):
            reason = LINK_BACK_UP
        elif is_link and _contains(self.root, real):
            reason = LINK_INSIDE
        elif real in self.walked:
            reason = LINK_AGAIN
        if reason is not None:
            self.skipped.append(SkippedFile(path, f"{reason} ({real})"))
            return None
        self.walked.add(real)
        return real

    def warn(self, name: str) -> None:
        """One named warning listing every link that was not followed."""
        if self.skipped:
            named = "\n  ".join(f"{s.path}: {s.reason}" for s in self.skipped)
            warnings.warn(f"{name}: {len(self.skipped)} linked folder(s) not followed:\n  {named}", SymlinkWarning,
                          stacklevel=3)


def _contains(outer: str, inner: str) -> bool:
    """Is the real path ``outer`` the same folder as ``inner`` or one above it?"""
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def is_hidden_folder(name: str) -> bool:
    """A folder left out of every walk: a dot folder (.git, .ipynb_checkpoints) or macOS's zip metadata (__MACOSX,
    which holds a ``._`` twin of every photo and would read as a class of hidden files)."""
    return name.startswith(".") or name == "__MACOSX"


def _scan(folder: str, skipped: list[SkippedFile]) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    """The sub-folders and the files of ``folder``, each sorted by name; hidden folders left out."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        skipped.append(SkippedFile(folder, f"{UNREADABLE_FOLDER}: {exc.strerror or exc}"))
        return [], []
    kinds = [(e, _is_folder(e)) for e in entries]
    folders = [e for e, folder in kinds if folder and not is_hidden_folder(e.name)]
    return folders, [e for e, folder in kinds if not folder]


def _is_folder(entry: os.DirEntry) -> bool:
    """A link to itself (ELOOP) raised from ``is_dir()`` and stopped the whole walk: it is a file here, named
    unreadable by whoever reads it."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # a link to itself
        return False


def tltool_output(folder: str | os.PathLike, skipped: list[SkippedFile]) -> bool:
    """Whether ``folder`` is a run, features or export folder of tltool's (named in ``skipped`` if so). Before, a
    run written inside the data (`train PHOTOS --out PHOTOS/circle/run`) gave the next run on PHOTOS its
    confusion_matrix.png and misclassified.png as photos of the class, and a class named after the run."""
    if not os.path.isfile(os.path.join(folder, MARKER)):
        return False
    kind = output_kind(folder)
    if kind not in NOT_PHOTOS:
        return False
    skipped.append(SkippedFile(str(folder), TLTOOL_OUTPUT.format(kind=kind)))
    return True


def tltool_output_around(path: str | os.PathLike) -> Path | None:
    """The run, features or export folder of tltool's (marked) that ``path`` is, or is inside; None if none."""
    path = Path(os.path.abspath(path))
    return next((folder for folder in (path, *path.parents) if tltool_output(folder, [])), None)


def refuse_tltool_output(folder: str | os.PathLike, given: str) -> None:
    """Refuse a run, features or export folder of tltool's given as the photos: its plots were taken for photos
    (`data inspect RUN` found a class named refit/, and suggested `collect import RUN`, which imported the plots)."""
    kind = output_kind(folder) if os.path.isfile(os.path.join(folder, MARKER)) else None
    if kind in NOT_PHOTOS:
        raise TltoolError(f"{shown_name(given)}: is a tltool {kind} folder (what a command wrote: reports, plots, "
                          "models), not photos; give the folder of your photos.")


def walk_files(folder: str | os.PathLike, guard: LinkGuard | None = None) -> tuple[list[Path], list[SkippedFile]]:
    """Every file under ``folder`` in a stable order (a folder's files, then each sub-folder in turn), with the
    hidden and badly named ones set aside. Linked folders are followed as :class:`LinkGuard` allows; the links it
    refuses are in ``guard.skipped``."""
    guard = guard or LinkGuard(folder)
    files, skipped = [], []
    stack = [(str(folder), (os.path.realpath(folder),))]
    while stack:
        current, chain = stack.pop()
        folders, entries = _scan(current, skipped)
        for entry in entries:
            path = Path(entry.path)
            if not is_candidate_file(entry.name):
                skipped.append(SkippedFile(str(path), HIDDEN))
            elif not is_utf8(str(path)):
                skipped.append(SkippedFile(str(path).encode("utf-8", "replace").decode(), NOT_UTF8))
            else:
                files.append(path)
        inner = [(e.path, real) for e in folders if not tltool_output(e.path, skipped)
                 and (real := guard.admits(e.path, chain, e.is_symlink()))]
        stack.extend((path, (*chain, real)) for path, real in reversed(inner))
    return files, skipped


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden_folder(p.name))


@register_source("tfds", lambda spec: spec.startswith("tfds:"))
def _load_tfds_spec(spec: str) -> Dataset:
    from .tfds_source import load_tfds

    return load_tfds(spec)


class ManifestWarning(TltoolWarning):
    """A CSV manifest was read, but something in it may not mean what its author meant: extra cells, labels with
    surrounding spaces, labels that differ only in case."""


CSV_COLUMNS = ("path", "label", "split")
LABELS_CSV = "labels.csv"  # the labeler's file (tltool/labeler/store.py): read by `label export`, kept columns too
# read too: the labeler marks labels that were accepted suggestions (tltool/labeler/store.py); not used for training
OPTIONAL_COLUMNS = ("assisted",)
MAX_NAMED = 10  # rows named in one problem or warning message


def _manifest_header(fieldnames: Sequence[str] | None, spec: str, labels_file: bool = False) -> list[str]:
    """The header's column names: any case (a spreadsheet's Path,Label), an unnamed one (a trailing separator) let
    be; an unknown, missing or repeated name is refused."""
    header = [h.strip().lower() for h in (fieldnames or [])]
    unknown = [] if labels_file else [h for h in header if h and h not in CSV_COLUMNS + OPTIONAL_COLUMNS]
    missing = sorted({"path", "label"} - set(header))
    # csv.DictReader keeps the last cell of a repeated name: `path,label,label` read every label from the 3rd column
    repeated = sorted({h for h in header if header.count(h) > 1 and h in CSV_COLUMNS + OPTIONAL_COLUMNS})
    if unknown or missing or repeated:
        parts = [f"unknown column(s) {unknown}"] if unknown else []
        parts += [f"missing column(s) {missing}"] if missing else []
        parts += [f"column(s) {repeated} named more than once"] if repeated else []
        raise TltoolError(f"{spec}, row 1 (header): {' and '.join(parts)}. Expected columns: path,label[,split]."
                          + _labeler_hint(Path(spec), labels_file))
    return header


def _labeler_hint(manifest: Path, labels_file: bool) -> str:
    """What to do with the labeler's ``labels.csv`` given as a manifest: its own columns and undone labels (empty)
    are the labeler's, and ``label export`` reads them."""
    if labels_file or manifest.name != LABELS_CSV:
        return ""
    folder = shown_name(shlex.quote(str(manifest.parent)))
    return (f"\nIf this is the labeler's {LABELS_CSV} (it keeps columns you added, and an undone label leaves its "
            f"row empty), make a dataset of it with `tltool label export {folder}`.")


COLLECTED = "dataset"  # the kind of folder `collect import` makes (unlabeled/ + manifest.csv), the labeler's home
UNLABELED = "unlabeled"  # where `collect import` puts the photos of its folder
LABEL_CLASSES = "NAME1,NAME2,..."  # the --classes of a suggested `label serve`, for a user who named none yet


def labeler_may_write(folder: str | os.PathLike) -> bool:
    """Whether ``label serve`` may write its labels.csv (and skipped.csv, its lock) into ``folder``: a dataset folder
    ``collect import`` made (tltool's marker says so), or one that holds a labels.csv already (labelled before
    tltool refused other folders: those labels keep working). Any other folder is the user's, never written into."""
    folder = Path(folder)
    labels = folder / LABELS_CSV
    return output_kind(folder) == COLLECTED or labels.is_file() or labels.is_symlink()


def collected_parent(folder: Path) -> Path | None:
    """The dataset folder ``collect import`` made whose ``unlabeled/`` ``folder`` (absolute) is, else None."""
    return folder.parent if folder.name == UNLABELED and output_kind(folder.parent) == COLLECTED else None


def label_commands(folder: str | os.PathLike, classes: str = LABEL_CLASSES) -> str:
    """The command line that labels the photos of ``folder`` (as the user gave it): ``label serve`` itself where
    it may write; the dataset folder an ``unlabeled/`` of it belongs to; any other folder is first copied into a new
    dataset folder by ``collect import`` (the folder itself stays as it is)."""
    path = Path(os.path.abspath(folder))
    options = f" --classes {shlex.quote(classes)}" if classes else ""
    if labeler_may_write(path):
        return f"tltool label serve {_quoted(folder)}{options}"
    if collected_parent(path):
        return f"tltool label serve {_quoted(path.parent)}{options}"
    new = _new_dataset_beside(path, relative=not os.path.isabs(folder))
    return f"tltool collect import {_quoted(folder)} --out {_quoted(new)} && tltool label serve {_quoted(new)}{options}"


def _new_dataset_beside(path: Path, relative: bool) -> str:
    """A name not yet taken beside ``path`` (``trip`` -> ``trip-dataset``), relative to the working directory
    where the user gave a relative path; in the working directory when nothing can be written beside it (a
    read-only camera card). Before, it was always in the working directory: for ``~/Pictures/trip`` tltool
    suggested ``trip-dataset`` wherever the user happened to be, and for ``.`` a folder inside the photos."""
    stem = f"{path.name or 'photos'}-dataset"
    beside = dataset_of_class_folder(path) or path  # never inside a dataset: its photos were read as a class
    parent = beside.parent if os.access(beside.parent, os.W_OK) else Path(os.getcwd())
    names = (stem, *(f"{stem}-{i}" for i in range(2, 100)))
    new = next((parent / n for n in names if not os.path.lexists(parent / n)), parent / stem)
    return os.path.relpath(new) if relative else str(new)


def dataset_of_class_folder(folder: Path) -> Path | None:
    """The dataset whose class ``folder`` (absolute) looks like: a folder of images whose parent holds other
    folders of images (``fl/train`` for ``fl/train/daisy``), or the folder above that parent when it is a split
    (``fl``); else None (a folder of class folders is a dataset itself; a src/ of code beside photos/ is no class)."""
    parent = folder.parent
    if parent == folder or not _holds_images(folder):
        return None
    try:
        siblings = [d for d in _subdirs(parent) if d != folder and not os.path.isfile(d / MARKER)]  # not tltool's
    except OSError:
        return None
    if not any(_holds_images(d) for d in siblings[:100]):
        return None
    return parent.parent if parent.name.lower() in SPLIT_ALIASES and parent.parent != parent else parent


def _image_subdirs(folder: Path) -> list[Path]:
    with contextlib.suppress(OSError):
        return [d for d in _subdirs(folder)[:100] if _holds_images(d)]
    return []


def _classes_one_level_down(folder: Path, classes: list[str]) -> Path | None:
    """The one class folder of a one-class dataset, when its own sub-folders of images look like the classes (the
    data was given one level too high)."""
    if len(classes) != 1 or output_kind(folder) == COLLECTED:
        return None
    inner = folder / classes[0]
    return inner if inner.is_dir() and len(_image_subdirs(inner)) >= 2 else None


def _holds_images(folder: Path) -> bool:
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        return any(is_image_name(e.name) and _is_file(e) for e in itertools.islice(entries, 1000))
    return False


def _quoted(path: str | os.PathLike) -> str:
    return shown_name(shlex.quote(str(path)))


def _named(items: Sequence[str]) -> str:
    more = f"; ... and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else ""
    return "; ".join(items[:MAX_NAMED]) + more


SPLIT_NOTE = "stratified split"  # a dataset's note when tltool drew its split (--val-fraction, --seed)
# a dataset's note when its 'test' split is its val split (no 'val' split): warned of, and in every run's report
TEST_AS_VAL = "no 'val' split: the 'test' split is used for validation"
TRAIN_ONLY = "only a 'train' split: val is drawn from it"
MAX_FOLDER_LABEL = 100  # characters (and at most 255 bytes in UTF-8, a folder name's limit on Linux and macOS)


def folder_name_problem(label: str) -> str | None:
    """Why ``label`` cannot be a class folder on every system (``label export`` writes train/<class>/), None when
    it can. A 300-character class was labelled with, then ``label export`` failed with a traceback (File name too
    long), leaving its folder behind."""
    if not label or label in (".", "..") or label.startswith(".") or set('/\\:*?"<>|') & set(label):
        return ("cannot be a folder name: use letters, digits, spaces, - or _ (no / \\ : * ? \" < > |, not starting "
                "with a dot)")
    if len(label) > MAX_FOLDER_LABEL or len(label.encode("utf-8")) > 255:
        return f"is too long for a folder name ({len(label)} characters): at most {MAX_FOLDER_LABEL}"
    return None


@dataclass
class _ManifestRows:
    """The records of a manifest as its rows are read, with every problem (an error) and oddity (a warning)."""

    base: Path
    records: list[Record] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    extra_cells: list[str] = field(default_factory=list)
    spaced_labels: list[str] = field(default_factory=list)
    first_row: dict[str, int] = field(default_factory=dict)
    labels_file: bool = False  # the labeler's labels.csv: a row without a label is an image not labelled (yet)
    gone: list[str] = field(default_factory=list)  # labels.csv: photos deleted or renamed since they were labelled
    unsplit: list[int] = field(default_factory=list)  # the lines of the records without a split

    def add(self, line: int, row: dict) -> None:
        cells = [c for key, value in row.items() for c in (value if key is None else [value]) if c is not None]
        if not any(cell.strip() for cell in cells):  # a spreadsheet's blank row (",,"), as an empty line is
            return
        # blank trailing cells lose nothing; cells under an unnamed column (a trailing separator) are extra too
        extra = [cell for cell in [*(row.get(None) or []), row.get("") or ""] if cell.strip()]
        if extra:
            self.extra_cells.append(f"row {line}: {extra}")
        path = (row.get("path") or "").strip()
        raw_label = row.get("label") or ""
        label = raw_label.strip()
        # labels.csv: label export draws its own split, so a split column there is the user's, kept and not read
        split = None if self.labels_file else (row.get("split") or "").strip().lower() or None
        if not path:
            self.problems.append(f"row {line}: empty path")
            return
        if "\0" in path:  # no file name holds one; resolve() would raise ValueError
            self.problems.append(f"row {line}: the path holds a NUL byte: {shown_name(path)}")
            return
        if self.labels_file and not label:  # an undone label on a row that keeps the user's own cells
            return
        # labels.csv: its labels are the class folders of label export
        problem = label_problem(label) or (folder_name_problem(label) if self.labels_file else None)
        if problem:
            self.problems.append(f"row {line}: the label {shortened(label)!r} {problem}")
            return
        if label != raw_label and label:
            self.spaced_labels.append(f"row {line}: {raw_label!r} -> {label!r}")
        try:  # absolute ones too: a photo has one name, however it is spelled
            full = (self.base / path).resolve()
        except RuntimeError:  # Python 3.11: a link that leads to itself (a -> b -> a) was a traceback
            self.problems.append(f"row {line}: cannot be looked up (a loop of symbolic links): {shown_name(path)}")
            return
        if not label:
            self.problems.append(f"row {line}: empty label for {shown_name(path)}")
        try:
            found = full.is_file() or (full := _unicode_twin(full)).is_file()  # looked for only when not found
        except OSError as exc:  # a name too long for the filesystem: Python 3.11 raises instead of saying False
            self.problems.append(f"row {line}: cannot be looked up ({exc.strerror}): {shown_name(path)}")
        else:
            if not found and self.labels_file and label:  # deleted or renamed after labelling: left out, named
                self.gone.append(f"row {line}: {shown_name(path)}")
                return
            if not found:
                self.problems.append(f"row {line}: {_not_found(full)}: {shown_name(path)}")
        if split is not None and split not in SPLIT_ALIASES:
            self.problems.append(f"row {line}: unknown split {split!r} (use train, val or test)")
        if str(full) in self.first_row:
            self.problems.append(f"row {line}: {shown_name(path)} is listed again (first on row "
                                 f"{self.first_row[str(full)]})")
            return
        self.first_row[str(full)] = line
        if split is None:
            self.unsplit.append(line)
        self.records.append(Record(str(full), label, SPLIT_ALIASES.get(split) if split else None))

    def oddities(self, header: list[str]) -> list[str]:
        """What a :class:`ManifestWarning` says: extra cells, stripped spaces, labels that differ only in case."""
        found = []
        if self.gone:
            found.append(f"{len(self.gone)} labelled photo(s) are no longer in the folder (deleted or renamed since) "
                         f"and are left out: {_named(self.gone)}")
        if self.extra_cells:
            found.append(f"{len(self.extra_cells)} row(s) have more cells than the header ({','.join(header)}); "
                         f"the extra cells are ignored (quote a path that holds a comma): {_named(self.extra_cells)}")
        if self.spaced_labels:
            found.append(f"surrounding spaces were stripped from {len(self.spaced_labels)} label(s): "
                         f"{_named(self.spaced_labels)}")
        counts = Counter(r.label for r in self.records)
        for spellings in case_clashes(sorted(counts)):
            named = ", ".join(f"{label!r} ({counts[label]} row{'s' if counts[label] > 1 else ''})"
                              for label in spellings)
            found.append(f"labels that differ only in case or in how an accent is encoded (one character, or a "
                         f"letter and a combining mark) are kept as separate classes: {named}; write them the same "
                         "way if they name one class")
        return found


FILE_NOT_FOUND = "file not found"


def _unicode_twin(full: Path) -> Path:
    """``full``, or the file of its name in the other Unicode form: a spreadsheet typed on macOS can spell "été" as
    e + U+0301 where the disk has é (or the reverse), and "file not found" then named a file that prints alike."""
    if os.path.lexists(full):  # a folder or a pipe of this name: named as what it is
        return full
    for form in ("NFC", "NFD"):
        twin = Path(unicodedata.normalize(form, str(full)))
        if twin != full and os.path.lexists(twin):
            return twin
    return full


def _not_found(full: Path) -> str:
    """Why a row's path is no photo file: a folder or a device was "file not found" of a path that is there."""
    if full.is_dir():
        return "a folder, not a file"
    return "not a regular file (a named pipe, a device or a socket)" if full.exists() else FILE_NOT_FOUND


def case_clashes(names: Sequence[str]) -> list[list[str]]:
    """The groups of ``names`` that differ only in case (one folder on macOS and Windows) or in their Unicode form
    (``café`` typed, and ``cafe`` + U+0301 as macOS spells a folder name: two classes that print alike), each in
    given order."""
    by_case: dict[str, list[str]] = {}
    for name in names:
        by_case.setdefault(unicodedata.normalize("NFC", name).casefold(), []).append(name)
    return [spellings for spellings in by_case.values() if len(spellings) > 1]


@register_source("csv", lambda spec: spec.lower().endswith((".csv", ".tsv")) and os.path.isfile(spec))
def load_manifest(spec: str, labels_file: bool = False) -> Dataset:
    """A CSV manifest ``path,label[,split]``; paths are relative to the manifest's folder. Labels lose surrounding
    spaces; extra cells, stripped spaces and labels that differ only in case are named in a
    :class:`ManifestWarning`. ``labels_file``: the labeler's ``labels.csv``, which keeps a user's own columns (not
    read) and rows whose label was undone (skipped)."""
    manifest = Path(spec).resolve()
    rows = _ManifestRows(manifest.parent, labels_file=labels_file)
    with readable_csv(spec), open(manifest, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=_delimiter(f, spec))
        reader.fieldnames = header = _manifest_header(reader.fieldnames, spec, labels_file)
        for row in reader:
            rows.add(record_line(reader, row), row)
    if rows.problems:
        shown = "\n  ".join(rows.problems[:20])
        more = f"\n  ... and {len(rows.problems) - 20} more" if len(rows.problems) > 20 else ""
        relative = ("\n  (a relative path is read from the manifest's own folder, "
                    f"{shown_name(manifest.parent, None)}, not from where the command runs)"
                    if any(f": {FILE_NOT_FOUND}: " in p for p in rows.problems) and not labels_file else "")
        raise TltoolError(f"{spec}: {len(rows.problems)} problem(s) in the manifest:\n  {shown}{more}{relative}"
                          + _labeler_hint(Path(spec), labels_file))
    if any(r.split for r in rows.records) and not all(r.split for r in rows.records):
        empty = ", ".join(map(str, rows.unsplit[:10])) + (" ..." if len(rows.unsplit) > 10 else "")
        raise TltoolError(f"{spec}: the split column is filled for some rows only (empty on {len(rows.unsplit)} "
                          f"row(s): {empty}); fill it for all rows or none.")
    for message in rows.oddities(header):
        warnings.warn(f"{spec}: {message}", ManifestWarning, stacklevel=3)
    return Dataset(name=manifest.stem, source=f"csv:{manifest}", records=rows.records)


def _delimiter(f: TextIO, spec: str) -> str:
    """A tab for .tsv; else a comma, or a semicolon where the header names its columns with them (a spreadsheet
    in a locale whose decimal mark is the comma exports ``path;label;split``)."""
    if spec.lower().endswith(".tsv"):
        return "\t"
    first = f.readline()
    f.seek(0)
    names = [name.strip().strip('"').lower() for name in first.split(";")]  # "path";"label": all cells quoted
    return ";" if "," not in first and {"path", "label"} <= set(names) else ","


def _layout(root: Path, notes: list[str]) -> list[tuple[Path, str | None]]:
    """The folders that hold class folders, with their split: ``root`` itself, or its train/val/test folders."""
    subdirs = _subdirs(root)
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES and _subdirs(d)]
    if not split_dirs:
        return [(root, None)]
    others = [d.name for d in subdirs if d not in split_dirs]
    if others:
        notes.append(f"folders {others} are not splits (train/val/test) and were ignored")
    return [(d, SPLIT_ALIASES[d.name.lower()]) for d in split_dirs]


@dataclass
class _FolderWalk:
    """What walking a class-per-folder dataset found."""

    guard: LinkGuard
    records: list[Record] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    seen_classes: set[str] = field(default_factory=set)
    empty: set[str] = field(default_factory=set)
    misnamed: list[str] = field(default_factory=list)  # class folders whose name cannot name a class, and why

    def add_split(self, folder: Path, split: str | None) -> None:
        for entry in sorted(folder.iterdir()):
            if entry.is_file():
                reason = HIDDEN if entry.name.startswith(".") else OUTSIDE_CLASS
                self.skipped.append(SkippedFile(str(entry), reason))
        class_dirs = _subdirs(folder)
        beside_classes = _collected_beside_classes(class_dirs)
        for class_dir in class_dirs:
            if tltool_output(class_dir, self.skipped) or not self.guard.admits(str(class_dir), (),
                                                                                class_dir.is_symlink()):
                continue
            if class_dir in beside_classes:
                self.skipped.append(SkippedFile(str(class_dir), UNLABELLED_DATASET))
                continue
            # a newline in a folder's name split report.md's table, an escape coloured the terminal, and
            # `data split` wrote a manifest tltool itself then refused
            problem = label_problem(class_dir.name)
            if problem:
                self.misnamed.append(f"the name of class folder {shown_name(class_dir, None)} {problem}")
                continue
            files, hidden = walk_files(class_dir, self.guard)
            self.skipped.extend(hidden)
            if not files and any(s.reason in TLTOOL_OUTPUTS for s in hidden):
                continue  # only tltool's outputs (`runs/` of `cd PHOTOS; tltool train .`): no class, nor an empty one
            self.seen_classes.add(class_dir.name)
            if not files:
                self.empty.add(class_dir.name)
            self.records.extend(Record(str(p), class_dir.name, split) for p in files)


def _collected_beside_classes(class_dirs: list[Path]) -> set[Path]:
    """The folders `collect import` made among class folders of the user's: its unlabelled photos were read as a
    class (`--out fl/train/daisy-dataset`, once tltool's own advice). Where every class folder is one (a dataset of
    one import a class: `collect import cats --out data/cats`), they are the classes."""
    collected = {d for d in class_dirs if os.path.isfile(d / MARKER) and output_kind(d) == COLLECTED}
    plain = [d for d in class_dirs if not os.path.isfile(d / MARKER)]
    return collected if plain else set()


@register_source("folder", os.path.isdir)
def load_folder(spec: str) -> Dataset:
    """``root/<class>/*`` or ``root/{train,val,test}/<class>/*`` (an existing split is kept). Linked folders are
    followed as :class:`LinkGuard` allows; the others are named in a :class:`SymlinkWarning` and in ``skipped``."""
    root = Path(spec).resolve()
    refuse_tltool_output(root, spec)
    notes: list[str] = []
    walk = _FolderWalk(LinkGuard(root))
    for folder, split in _layout(root, notes):
        walk.add_split(folder, split)
    if walk.misnamed:
        raise TltoolError(f"{spec}: {_named(walk.misnamed)}; rename the folder{'s' * (len(walk.misnamed) > 1)}.")
    labelled = {r.label for r in walk.records}  # an empty class folder is an EmptyClassWarning of the inspection
    for name in sorted(walk.empty & labelled):
        notes.append(f"class {name!r} has no images in one of the splits")
    walk.guard.warn(root.name)
    _warn_case_clashes(spec, walk.seen_classes)
    if not walk.records:
        loose = sum(1 for p in root.iterdir() if p.is_file() and is_candidate_file(p.name)) if root.is_dir() else 0
        above = dataset_of_class_folder(root)
        give = (f"it looks like one class of {_quoted(os.path.relpath(above) if not os.path.isabs(spec) else above)}"
                ": give that folder" if above else "give the folder above it (one sub-folder per class)")
        here = (f" Its {loose} file(s) sit in {root.name}/ itself, which names no class: {give}, or label them "
                f"(your class names): {label_commands(spec)}" if loose else "")
        raise TltoolError(f"{spec}: no images found. Expected one sub-folder per class (root/<class>/*.jpg) "
                          f"or root/train/<class>/* and root/val/<class>/*.{here}")
    return Dataset(name=root.name, source=f"folder:{root}", records=walk.records,
                   skipped=walk.skipped + walk.guard.skipped, notes=notes, class_folders=sorted(walk.seen_classes))


def _warn_case_clashes(spec: str, classes: set[str]) -> None:
    """Class folders ``Bengal/`` and ``bengal/`` were two classes without a word (a manifest's labels were warned
    of): on Linux both exist, on macOS and Windows they are one folder."""
    for spellings in case_clashes(sorted(classes)):
        warnings.warn(f"{spec}: the class folders {', '.join(map(repr, spellings))} differ only in case or in how "
                      "an accent is encoded, and are kept as separate classes (on macOS and Windows they are one "
                      "folder); merge them if they name one class", ClassNameWarning, stacklevel=3)


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
            dataset.notes.append(TEST_AS_VAL)
            return replace(dataset, records=[replace(r, split="val" if r.split == "test" else r.split)
                                             for r in dataset.records])
        # only a train split: split it
        dataset = replace(dataset, records=[replace(r, split=None) for r in dataset.records],
                          notes=dataset.notes + [TRAIN_ONLY])
    if not 0.0 < val_fraction < 1.0:
        raise TltoolError(f"--val-fraction must be above 0 and below 1 (a share of each class), got {val_fraction}.")
    by_class: dict[str, dict[str, list[Record]]] = {}
    for r in dataset.records:
        key = groups.get(r.path, r.path) if groups else r.path
        by_class.setdefault(r.label, {}).setdefault(key, []).append(r)
    too_few = {c: len(g) for c, g in sorted(by_class.items()) if len(g) < 2}
    if too_few:
        two = {c: 2 for c, g in sorted(by_class.items()) if len(g) == 2}
        also = f" (and {two} have 2, one short for the linear heads)" if two else ""
        raise TltoolError(
            f"{dataset.name}: class(es) {too_few} have too few distinct images for a train/val split{also}. Give "
            "each at least 3: one for the val side and 2 for the train side, where a linear head (probe, linear, and "
            "finetune's default --head-init probe) chooses its regularisation by cross-validation (2 in all are "
            "enough only for `train` and `finetune --head-init random`). Add images or remove the class."
        )
    rng = random.Random(seed)
    out: list[Record] = []
    shuffled = {}
    for label in sorted(by_class):  # shuffled in this order whatever the draw's: the seeds keep their splits
        shuffled[label] = sorted(((sorted(rs, key=lambda r: r.path), key) for key, rs in by_class[label].items()),
                                 key=lambda member: member[0][0].path)
        rng.shuffle(shuffled[label])
    sides: dict[str, bool] = {}  # each group's side (val: True), once a class has drawn it
    # the classes with fewest groups draw first: a class of nothing but copies of another's photos has no side left
    # to choose when it comes last (without copies across classes, the order changes nothing)
    for label in sorted(shuffled, key=lambda label: (len(shuffled[label]), label)):
        for rs, to_val in _draw_sides(shuffled[label], val_fraction, sides):
            out.extend(replace(r, split="val" if to_val else "train") for r in rs)
    out.sort(key=lambda r: (r.split != "train", r.label, r.path))
    note = f"{SPLIT_NOTE}: val_fraction={val_fraction}, seed={seed}"
    return replace(dataset, records=out, notes=dataset.notes + [note])


def _draw_sides(members: list[tuple[list[Record], str]], val_fraction: float,
                sides: dict[str, bool]) -> list[tuple[list[Record], bool]]:
    """One class's groups (shuffled), each with its side (val: True): about ``val_fraction`` of its images in val
    and a group on each side. A group an earlier class drew (copies of one photo filed under two classes) keeps
    that side: they went to train in one class and val in the other, a leak of tltool's own making."""
    n_images = sum(len(rs) for rs, _ in members)
    n_val = min(n_images - 1, max(1, round(n_images * val_fraction)))
    taken = sum(len(rs) for rs, key in members if sides.get(key) is True)
    in_train = any(sides.get(key) is False for _, key in members)
    free = [(rs, key) for rs, key in members if key not in sides]
    drawn = {}
    for i, (rs, key) in enumerate(free):
        drawn[key] = taken < n_val and (i < len(free) - 1 or in_train)
        taken += len(rs) if drawn[key] else 0
        in_train = in_train or not drawn[key]
    if not in_train:  # every group already in val elsewhere: the class needs one to train on (a named leak)
        drawn[members[-1][1]] = False
    sides.update((key, side) for key, side in drawn.items() if key not in sides)
    return [(rs, drawn[key] if key in drawn else sides[key]) for rs, key in members]


def require_training_images(dataset: Dataset) -> None:
    """Every class must be in the training split, and it should be in validation too."""
    missing = sorted({r.label for r in dataset.records} - {r.label for r in dataset.subset("train")})
    if missing:
        raise TltoolError(f"{dataset.name}: class(es) {missing} have no usable training images; a classifier "
                          "cannot learn them. Add training images or remove the class.")


def write_manifest(records: Iterable[Record], target: str | os.PathLike, relative: bool = False) -> Path:
    """Write ``path,label,split`` rows that :func:`load_manifest` reads back (atomic write). Paths are absolute,
    or relative to the manifest's folder with ``relative``."""
    target = Path(target).resolve()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    for r in records:
        path = os.path.relpath(r.path, target.parent) if relative else os.path.abspath(r.path)
        writer.writerow([path, r.label, r.split or ""])
    write_text_atomic(target, buf.getvalue())
    return target
