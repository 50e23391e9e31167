"""Dataset validation: every file hashed and checked (once per content: cached), bad files named with their
reason, duplicates and leakage found.

:func:`check_dataset` is what every command runs before it touches a network (:func:`prepare_dataset` adds the
split); :func:`inspect_dataset` is ``tltool data inspect``, which the CLI shows as a table beside its report.
"""
from __future__ import annotations

import os
import statistics
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from .dataset import (SPLIT_NOTE, TEST_AS_VAL, TRAIN_ONLY, Dataset, Record, SkippedFile, end_sentence, load_dataset,
                      lost_photos, require_training_images, stratified_split, tltool_output_around, write_manifest)
from . import filecache
from .errors import (BadFilesWarning, BadImageError, EmptyClassWarning, HeldOutWarning, IgnoredOptionsWarning,
                     ImbalanceWarning, LabelConflictWarning, LeakageWarning, NoValSplitWarning, SmallClassWarning,
                     TltoolError, TooFewClassesWarning)
from .images import BOMB, DEFAULT_MAX_PIXELS, SCALED_SIDE, UNREADABLE, check_image, read_header
from .plotting import cached_figure, pyplot
from .progress import Bar, say
from .outputs import output_kind
from .runs import check_run_dir, new_run_dir, writes_runs
from .settings import DEFAULT_VAL_FRACTION, check_range
from .utils import md_cell, read_json, sha256_file, shown_name, write_json, write_text_atomic

IMBALANCE_RATIO = 3.0


def lowercase_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# what a class-level finding means for a run, and what to do about it
CLASS_FINDINGS = {
    EmptyClassWarning: ("they are left out of every run", "add images, fix the bad files, or remove the folder"),
    TooFewClassesWarning: ("every training command refuses this data",
                           "put each class's images in its own sub-folder"),
}


@dataclass
class FileCheck:
    record: Record
    sha256: str | None = None
    width: int = 0
    height: int = 0
    conversions: list[str] = field(default_factory=list)
    reason: str | None = None  # None: usable
    detail: str = ""
    stage: str = filecache.HEADER  # how far the file was read: its header, or every pixel (filecache.DECODE)

    @property
    def ok(self) -> bool:
        return self.reason is None


T = TypeVar("T")


def same_content_groups(items: Iterable[T], digest: Callable[[T], str], differs: Callable[[T], object]) -> list[list[T]]:
    """The groups of ``items`` with one content ``digest`` (items without a digest are left out) in which
    ``differs`` takes more than one value: the same photo in two splits (a leak) or under two classes (a label
    conflict). Shared by the check and by a features folder's report (:func:`tltool.linear.data_warnings`)."""
    groups: dict[str, list[T]] = defaultdict(list)
    for item in items:
        if digest(item):
            groups[digest(item)].append(item)
    return [group for group in groups.values() if len({differs(item) for item in group}) > 1]


@dataclass
class CheckedDataset:
    """A dataset after validation: ``dataset`` holds only usable files; ``bad`` names the others."""

    dataset: Dataset
    files: list[FileCheck]
    issues: list[tuple[str, type[Warning]]] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [message for message, _ in self.issues]

    @property
    def bad(self) -> list[FileCheck]:
        return [f for f in self.files if not f.ok]

    @property
    def hashes(self) -> dict[str, str]:
        return {f.record.path: f.sha256 for f in self.files if f.ok and f.sha256}

    def duplicates(self) -> list[list[FileCheck]]:
        return same_content_groups(self._usable(), lambda f: f.sha256, lambda f: f.record.path)

    def leaks(self) -> list[list[FileCheck]]:
        """Duplicate groups that span two splits: validation images the model has seen in training."""
        return same_content_groups(self._usable(), lambda f: f.sha256, lambda f: f.record.split)

    def label_conflicts(self) -> list[list[FileCheck]]:
        return same_content_groups(self._usable(), lambda f: f.sha256, lambda f: f.record.label)

    def _usable(self) -> list[FileCheck]:
        return [f for f in self.files if f.ok]

    def to_json(self) -> dict[str, Any]:
        ds = self.dataset
        good = [f for f in self.files if f.ok]
        sizes: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        by_group: dict[tuple[str, str], list[FileCheck]] = defaultdict(list)
        for f in good:
            by_group[(f.record.split or "all", f.record.label)].append(f)
        for (split, label), fs in sorted(by_group.items()):
            ws, hs = [f.width for f in fs], [f.height for f in fs]
            sizes[split][label] = {
                "count": len(fs),
                "width": {"min": min(ws), "median": statistics.median(ws), "max": max(ws)},
                "height": {"min": min(hs), "median": statistics.median(hs), "max": max(hs)},
            }
        return {
            "dataset": ds.name,
            "source": ds.source,
            "classes": ds.classes,
            "counts": ds.counts(),
            "sizes": sizes,
            "n_files": len(self.files),
            "n_usable": len(good),
            "bad_files": [{"path": f.record.path, "reason": f.reason, "detail": f.detail,
                           "label": f.record.label, "split": f.record.split} for f in self.bad],
            "skipped_files": [{"path": s.path, "reason": s.reason} for s in ds.skipped],
            "converted_files": [{"path": f.record.path, "conversions": f.conversions} for f in good if f.conversions],
            "duplicates": [[f.record.path for f in g] for g in self.duplicates()],
            "train_val_leaks": [[{"path": f.record.path, "split": f.record.split} for f in g] for g in self.leaks()],
            "label_conflicts": [[{"path": f.record.path, "label": f.record.label} for f in g]
                                for g in self.label_conflicts()],
            "warnings": self.warnings,
            "notes": ds.notes,
        }


def _check_one(record: Record, max_pixels: int, decode: bool) -> FileCheck:
    """Hash the file's bytes; what its content is (header, or full decode with ``decode``) comes from the content
    cache when a full decode of this content was cached before, else from reading it."""
    result = FileCheck(record)
    try:
        result.sha256 = sha256_file(record.path)
    except OSError as exc:
        result.reason, result.detail = UNREADABLE, exc.strerror or str(exc)
        return result
    entry = filecache.lookup(result.sha256)
    if entry is None or (decode and entry.get("stage") != filecache.DECODE):
        entry = _examine(record.path, max_pixels, decode)
        # a header is read as fast as a cache entry (0.035 vs 0.037 ms) and storing one cost 0.24 ms, most of the
        # check: only what a full decode found is worth keeping. A bomb depends on --max-pixels: never stored.
        if decode and entry.get("reason") != BOMB:
            filecache.store(result.sha256, entry)
    _apply_entry(result, entry, max_pixels)
    return result


def _examine(path: str, max_pixels: int, decode: bool) -> dict:
    """What reading the file finds: its header only, or (``decode``) every pixel."""
    try:
        info = check_image(path, max_pixels=max_pixels) if decode else read_header(path, max_pixels=max_pixels)
    except BadImageError as exc:
        return {"stage": filecache.DECODE if decode else filecache.HEADER, "reason": exc.reason, "detail": exc.detail}
    return {"stage": filecache.DECODE if decode else filecache.HEADER, "reason": None, "width": info.width,
            "height": info.height, "format": info.format, "mode": info.mode, "conversions": info.conversions}


def _apply_entry(result: FileCheck, entry: dict, max_pixels: int) -> None:
    """Fill ``result`` from a cache entry; the pixel limit is the current ``max_pixels``, not the cached run's."""
    result.stage = entry.get("stage", filecache.HEADER)
    if entry.get("reason"):
        result.reason, result.detail = entry["reason"], entry.get("detail", "")
        return
    result.width, result.height = entry["width"], entry["height"]
    result.conversions = list(entry.get("conversions", []))
    pixels = result.width * result.height
    if pixels > max_pixels:
        result.reason = BOMB
        result.detail = f"{result.width}x{result.height} = {pixels:,} pixels > --max-pixels {max_pixels:,}"


def check_dataset(dataset: Dataset, max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None,
                  emit_warnings: bool = True, decode: bool = True, pooled: bool = False) -> CheckedDataset:
    """Hash every file and check it (in threads; Pillow releases the GIL), then drop the bad ones with a warning.
    ``pooled``: every split is scored alike (evaluate, compare): see :func:`split_warnings`.

    ``decode``: decode every pixel (``data inspect``, evaluation); without it only the headers are read and a file
    whose data is bad is found by the decode that feeds the network. Either way, what a file's content was found
    to be is cached (:mod:`tltool.filecache`), and files an earlier decode found bad are dropped here.
    """
    check_range("max_pixels", max_pixels)
    files: list[FileCheck] = [None] * len(dataset.records)  # type: ignore[list-item]
    # a header read is Python-bound, and threads fighting for the GIL only slow it (850 photos on 2 cores: 0.26 s in
    # one thread, 0.32 s in 2, 0.41-0.52 s in 4); a full decode releases the GIL and gains from threads
    workers = workers or (4 if decode else 1)
    with ThreadPoolExecutor(max_workers=workers) as pool, Bar(len(files), f"checking {dataset.name}") as bar:
        futures = {pool.submit(_check_one, r, max_pixels, decode): i for i, r in enumerate(dataset.records)}
        for future, i in futures.items():
            files[i] = future.result()
            bar.update()
    usable = replace(dataset, records=[f.record for f in files if f.ok])
    checked = CheckedDataset(usable, files)
    _collect_warnings(checked, pooled)
    if emit_warnings:
        warn_about(checked)
    return checked


def warn_about(checked: CheckedDataset) -> None:
    """Emit the named warnings: every skipped file, imbalance, leakage across splits."""
    if checked.bad:
        named = "\n  ".join(f"{f.record.path}: {f.reason}" + (f" ({f.detail})" if f.detail else "")
                            for f in checked.bad)
        warnings.warn(f"{len(checked.bad)} file(s) skipped:\n  {named}", BadFilesWarning, stacklevel=3)
    for message, category in checked.issues:
        warnings.warn(message, category, stacklevel=3)


def with_split(checked: CheckedDataset, dataset: Dataset, pooled: bool = False) -> CheckedDataset:
    """The same checked files, with the records (splits) of ``dataset`` (``pooled``: see :func:`split_warnings`)."""
    by_path = {r.path: r for r in dataset.records}
    files = [replace(f, record=by_path.get(f.record.path, f.record)) for f in checked.files]
    result = CheckedDataset(dataset, files)
    _collect_warnings(result, pooled)
    result.issues += held_out_warning(dataset.counts())  # a run's data (evaluate scores every split it is given)
    return result


NAMED_IN_NOTE = 10  # files a run's report names per kind of left-out file (metrics.json, features.json: every one)


def left_out_notes(bad: Iterable[tuple[str, str, str]], not_read: Iterable[SkippedFile]) -> list[str]:
    """What a run's report says of the files it could not use: the terminal's BadFilesWarning scrolls away, and
    report.md named none of them. ``bad``: ``(path, reason, detail)`` of each unusable file; ``not_read``: the
    walk's :func:`~tltool.dataset.lost_photos`."""
    notes = []
    # names shown as tltool prints them: a newline in one split the report's line, an undecodable byte (a name
    # that is not UTF-8, kept as a lone surrogate) stopped the report from being written
    for what, items in (("file(s) left out as unusable", [f"{shown_name(path, None)}: {reason}"
                                                          + (f" ({detail})" if detail else "")
                                                          for path, reason, detail in bad]),
                        ("file(s) or folder(s) not read", [f"{shown_name(s.path, None)}: {s.reason}"
                                                           for s in not_read])):
        if items:
            more = f"; and {len(items) - NAMED_IN_NOTE} more" if len(items) > NAMED_IN_NOTE else ""
            notes.append(f"{len(items)} {what}: {'; '.join(items[:NAMED_IN_NOTE])}{more}")
    return notes


def checked_left_out_notes(checked: CheckedDataset) -> list[str]:
    """:func:`left_out_notes` of a check (a fine-tune's report; a probe's reads its features folder's record)."""
    return left_out_notes(((f.record.path, f.reason or "", f.detail or "") for f in checked.bad),
                          lost_photos(checked.dataset.skipped))


def held_out_warning(counts: dict[str, dict[str, int]]) -> list[tuple[str, type[Warning]]]:
    """A run's data with a test split (``counts``: ``{split: {class: n}}``): no run uses it, and nothing said so
    or how to score it (evaluate scored every split)."""
    held_out = sum((counts.get("test") or {}).values())
    if not held_out:
        return []
    return [(f"{held_out} image(s) of the test split are held out: no run trains, chooses or is scored on them; "
             "once the settings are chosen, score the run on them with `tltool evaluate RUN DATA --split test`",
             HeldOutWarning)]


def _collect_warnings(checked: CheckedDataset, pooled: bool = False) -> None:
    leaks = [[f.record.path for f in group] for group in checked.leaks()]
    conflicts = [[f.record.path for f in group] for group in checked.label_conflicts()]
    checked.issues = split_warnings(checked.dataset.counts(), leaks, conflicts, pooled=pooled,
                                    notes=checked.dataset.notes)


def split_warnings(counts: dict[str, dict[str, int]], leaks: list[list[str]],
                   conflicts: list[list[str]] = (), pooled: bool = False,
                   notes: Iterable[str] = ()) -> list[tuple[str, type[Warning]]]:
    """What a split's numbers warn of: class imbalance per split (``counts``: ``{split: {class: n}}``), images
    of identical content in two splits (``leaks``: the paths of each such group) or in two classes (``conflicts``),
    a test split used as the val split (the dataset's ``notes`` say so: said only in features.json before, to a
    user keeping test/ as a final hold-out). Warned at the check, and written into every run's report. ``pooled``:
    the splits are pooled (a ``--cv``, an evaluation on every image), so every class is scored: a class without val
    images is measured all the same."""
    pending: list[tuple[str, type[Warning]]] = []
    if TEST_AS_VAL in notes:
        pending.append(("the data has train and test splits but no val split: its test images are used as the val "
                        "split (scored, a fine-tune's early stopping and refit use them, --cv trains on them); to "
                        "keep a final test set, move it out of the data folder and score it once with `tltool "
                        "evaluate`", NoValSplitWarning))
    if TRAIN_ONLY in notes and not pooled:  # a manifest's every row said train: some were scored as val unsaid
        pending.append(("every image is marked train, and there is no val split: tltool drew --val-fraction of each "
                        "class as val (--seed draws others), and scores those; to choose the val images yourself, "
                        "mark them val", NoValSplitWarning))
    for split, per_class in counts.items():
        if len(per_class) >= 2:
            lo, hi = min(per_class.values()), max(per_class.values())
            if hi / lo >= IMBALANCE_RATIO:
                rare = min(per_class, key=per_class.get)
                pending.append((f"class imbalance in {split}: {hi} vs {lo} images ({rare!r} is rarest); "
                                "read balanced accuracy and per-class recall, not only accuracy", ImbalanceWarning))
    unseen = [] if pooled or not counts.get("val") else sorted(set(counts.get("train", {})) - set(counts["val"]))
    if unseen:
        pending.append((f"class(es) {unseen} have no val images: the model still predicts them, but their recall is "
                        "not measured and balanced accuracy leaves them out; add val images of them",
                        ImbalanceWarning))
    untrained = [] if pooled or "train" not in counts else sorted(
        {c for split, per_class in counts.items() if split != "train" for c in per_class} - set(counts["train"]))
    if untrained:  # training refuses such data; `data inspect` said nothing of it
        pending.append((f"class(es) {untrained} have no training images, only val or test ones: no model can learn "
                        "them, and probe, linear and finetune refuse this split; add training images of them, or "
                        "remove the class", ImbalanceWarning))
    if leaks:  # pooled: "validation accuracy" was said of evaluate, which scores every image
        what = ("a cross-validation may train on one copy and score the other, so its accuracy will be optimistic "
                "(an evaluation scores each copy)" if pooled else "validation accuracy will be optimistic")
        pending.append((f"{len(leaks)} image(s) appear in more than one split (identical content): {what}. "
                        f"First: {leaks[0]}", LeakageWarning))
    if conflicts:
        pending.append((f"{len(conflicts)} image(s) are filed under more than one class (identical content): the "
                        f"model learns and is scored on contradictory labels; keep each in one class. First: "
                        f"{conflicts[0]}", LabelConflictWarning))
    return pending


def lost_classes(checked: CheckedDataset) -> dict[str, str]:
    """The classes the source declared that kept no usable image, each with why: ``{class: reason}``."""
    usable = set(checked.dataset.classes)
    listed = Counter(f.record.label for f in checked.files)
    lost = {name: "empty folder" for name in checked.dataset.class_folders if name not in listed}
    lost.update({name: (f"all {n} of its files are bad" if n > 1 else "its only file is bad")
                 for name, n in listed.items() if name not in usable})
    return dict(sorted(lost.items()))


def check_classes(checked: CheckedDataset, strict: bool = False, for_training: bool = False) -> TltoolError | None:
    """The class-level checks, after the file checks: a class that vanished (an empty class folder, or every file
    bad) and fewer than two classes left. Findings go to ``checked.issues`` as named warnings
    (:class:`EmptyClassWarning`, :class:`TooFewClassesWarning`), unless they must stop the caller: then they are
    returned as one error naming the classes, for the caller to raise after its other warnings. They must with
    ``strict``, and too few classes must ``for_training``."""
    classes = checked.dataset.classes
    lost = lost_classes(checked)
    findings: list[tuple[str, type[Warning]]] = []
    if len(classes) < 2:
        findings.append((f"only {len(classes)} class(es) {classes} have usable images; a classifier needs at least 2",
                         TooFewClassesWarning))
    if lost:
        named = ", ".join(f"{c!r} ({why})" for c, why in lost.items())
        findings.append((f"{len(lost)} class(es) have no usable image: {named}", EmptyClassWarning))
    name = checked.dataset.name
    fixes = {**{c: fix for c, (_, fix) in CLASS_FINDINGS.items()},
             TooFewClassesWarning: lowercase_first(checked.dataset.how_to_get_classes())}
    if findings and (strict or (for_training and len(classes) < 2)):
        refused = " (--strict refuses it)" if strict else ""
        return TltoolError(end_sentence(f"{name}: " + "; ".join(f"{message}: {fixes[category]}"
                                                                for message, category in findings) + refused))
    checked.issues.extend((end_sentence(f"{name}: {message}; {CLASS_FINDINGS[category][0]}: {fixes[category]}"),
                           category) for message, category in findings)
    return None


def prepare_dataset(data: str | Dataset, val_fraction: float = 0.2, seed: int = 0,
                    max_pixels: int = DEFAULT_MAX_PIXELS, strict: bool = False, decode: bool = True,
                    pooled: bool = False) -> CheckedDataset:
    """Open, split (an existing split is kept) and validate a dataset; bad files are dropped with a warning, and
    so is a class left without usable images (an error with ``strict``).

    ``decode=False`` (extraction): headers only; the decode that feeds the network finds the rest (see
    :func:`check_dataset`). Training keeps the full check until its report drops what its own decode skipped.
    """
    dataset = load_dataset(data) if not isinstance(data, Dataset) else data
    dataset.require_classes(2)
    checked = check_dataset(dataset, max_pixels=max_pixels, emit_warnings=False, decode=decode)
    if not checked.dataset.records:
        reasons = Counter(f.reason for f in checked.bad).most_common()
        said = "; ".join(f"{n} {reason}" for reason, n in reasons[:3]) or "no image files"
        example = f" (e.g. {checked.bad[0].record.path}: {checked.bad[0].detail or checked.bad[0].reason})" \
            if checked.bad else ""
        raise TltoolError(f"{dataset.name}: none of the {len(checked.files)} files is a usable image: {said}{example}.")
    checked = with_split(checked, _split_usable(checked, val_fraction, seed), pooled)
    refusal = check_classes(checked, strict=strict, for_training=True)
    warn_about(checked)
    _warn_unread(dataset)
    if refusal is not None:
        raise refusal
    require_training_images(checked.dataset)
    return checked


def _warn_unread(dataset: Dataset) -> None:
    """Photos the walk could not take (a name that is not UTF-8, a folder that cannot be read, a photo beside the
    class folders): only `data inspect` and `predict` named them; probe and `data split` left them out unsaid.
    Hidden files stay unsaid (.DS_Store); links not followed have their own SymlinkWarning."""
    unread = lost_photos(dataset.skipped, links=False)
    if unread:
        named = "\n  ".join(f"{s.path}: {s.reason}" for s in unread)
        warnings.warn(f"{len(unread)} file(s) or folder(s) not read:\n  {named}", BadFilesWarning, stacklevel=3)


def _split_usable(checked: CheckedDataset, val_fraction: float, seed: int) -> Dataset:
    """The usable files with their splits, drawn over every file found (identical files on one side), the unusable
    ones left out afterwards: a file's side never depends on which other files are readable, so a truncated photo
    that the first extraction finds (and every later check already knows) does not move the others.

    A class that this leaves without a usable photo on one side (most of its files bad) is split again over its
    usable files alone, as a class of only usable files would be."""
    usable = {r.path for r in checked.dataset.records}
    classes = {r.label for r in checked.dataset.records}  # a class with no usable file is dropped, not split
    every = replace(checked.dataset, records=[f.record for f in checked.files if f.record.label in classes])
    content = {f.record.path: f.sha256 for f in checked.files if f.sha256}  # bad copies of one photo stay together
    split = stratified_split(every, val_fraction, seed, groups=content)
    kept = [r for r in split.records if r.path in usable]
    if every.has_split and {"val", "test"} & set(every.split_names()):  # it came split: nothing was drawn
        if val_fraction != DEFAULT_VAL_FRACTION:  # given, and silently unused
            warnings.warn(f"--val-fraction {val_fraction:g} is not used: {every.name} has a split of its own, kept "
                          "as it is", IgnoredOptionsWarning, stacklevel=4)
        return replace(split, records=kept)
    sides = defaultdict(set)
    for r in kept:
        sides[r.label].add(r.split)
    lopsided = {label for label, seen in sides.items() if seen != {"train", "val"}}
    if lopsided:
        alone = replace(checked.dataset, records=[r for r in checked.dataset.records if r.label in lopsided])
        redrawn = stratified_split(alone, val_fraction, seed, groups=content).records
        kept = sorted([r for r in kept if r.label not in lopsided] + list(redrawn),
                      key=lambda r: (r.split != "train", r.label, r.path))  # stratified_split's order
    return replace(split, records=kept)


def write_split_manifest(spec: str, out_csv: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0,
                         max_pixels: int = DEFAULT_MAX_PIXELS, force: bool = False) -> Path:
    """Freeze the split a run on ``spec`` draws (:func:`prepare_dataset`: identical photos on one side, bad files
    named and left out) as a manifest (paths relative to the CSV) plus ``classes.json`` beside it; files already
    there are replaced only with ``force``. Before, it split every file found, bad ones included, without the
    content hash: copies of a photo landed in train and val (`data inspect` of the CSV then found the leak)."""
    check_range("seed", seed)  # a run refuses the seed: the split it drew could not be drawn again by one
    _check_split_out(Path(out_csv))
    existing = [p for p in (Path(out_csv), Path(out_csv).parent / "classes.json") if p.exists() or p.is_symlink()]
    if existing and not force:
        raise TltoolError(f"{', '.join(map(str, existing))} already exist(s); tltool does not overwrite a file "
                          "unless asked: choose another --out, or pass --force to replace it.")
    _refuse_users_classes_json(Path(out_csv).parent / "classes.json")
    dataset = prepare_dataset(spec, val_fraction, seed, max_pixels=max_pixels).dataset
    target = write_manifest(dataset.records, out_csv, relative=True)
    write_json(target.parent / "classes.json", dataset.classes)
    _warn_small_training_classes(dataset)
    return target


def _warn_small_training_classes(dataset: Dataset) -> None:
    """A split that leaves a class fewer than 2 training images (2 photos, or a --val-fraction near 1) was written
    without a word, and probe then refused it."""
    counts = Counter(r.label for r in dataset.subset("train"))
    few = {c: counts[c] for c in dataset.classes if counts[c] < 2}
    if few:  # --val-fraction draws a split; a folder's or manifest's own split is the user's to change
        drawn = any(note.startswith(SPLIT_NOTE) for note in dataset.notes)
        fix = "Add images, or lower --val-fraction." if drawn else "Add training images of them."
        warnings.warn(f"{dataset.name}: class(es) {few} have fewer than 2 training images in this split: probe, "
                      "linear and finetune's default --head-init probe refuse it (a linear head's regularisation "
                      f"is chosen by cross-validation); train and finetune --head-init random take it. {fix}",
                      SmallClassWarning, stacklevel=2)


def _refuse_users_classes_json(path: Path) -> None:
    """--force names the CSV; the classes.json beside it, which the split writes too, is replaced only when it is
    one a split wrote (a list of class names): a file of the user's there was overwritten unnamed."""
    if not path.is_file():
        return
    try:
        classes = read_json(path)
    except (OSError, ValueError, RecursionError):
        classes = None
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise TltoolError(f"{shown_name(path)}: is not a classes.json a split wrote (a list of class names), and the "
                          "split writes one there: move it away, or choose an --out in another folder.")


def _check_split_out(out_csv: Path) -> None:
    """Refuse to write the split through a link (it was written into the link's target, and classes.json beside the
    target, unchecked), or inside a run, features or export folder: `--out RUN/split.csv --force` replaced the
    run's own record of its images, and `compare` then missed that the run was trained on some of them."""
    for path in (out_csv, out_csv.parent / "classes.json"):
        if path.is_symlink():
            raise TltoolError(f"--out {shown_name(out_csv)}: {shown_name(path)} is a link; tltool writes no file "
                              "through a link: choose another place.")
    owner = tltool_output_around(os.path.realpath(out_csv.parent))
    if owner is not None:
        raise TltoolError(f"--out {shown_name(out_csv)}: is inside the tltool {output_kind(owner)} folder "
                          f"{shown_name(owner)}, whose files only its own command writes; choose another place.")


COUNTS_PNG = "class_counts.png"
MAX_LISTED = 50  # files report.md names per kind; metrics.json names every one


def inspect_report_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / "metrics.json"


def write_inspect_report(checked: CheckedDataset, out_dir: str | Path) -> Path:
    """The folder of ``data inspect`` laid out as every run's: ``metrics.json`` (every finding), ``report.md`` (the
    table, the problems, the warnings) and ``class_counts.png``; returns the path of ``report.md``."""
    data = checked.to_json()
    write_json(inspect_report_path(out_dir), data)
    cached_figure(Path(out_dir) / COUNTS_PNG, {"kind": "class_counts", "counts": data["counts"],
                                               "dataset": data["dataset"]}, lambda: _counts_figure(data))
    report = Path(out_dir) / "report.md"
    write_text_atomic(report, inspect_markdown(data, checked.warnings))
    return report


def size_range(side: dict) -> str:
    """One side's sizes in a class, as the terminal table and report.md show them: ``min/median/max``."""
    return f"{side['min']}/{side['median']:g}/{side['max']}"


def inspect_markdown(data: dict, warned: list[str]) -> str:
    rows = [f"| {split} | {md_cell(label)} | {s['count']} | {size_range(s['width'])} | {size_range(s['height'])} |"
            for split, classes in data["sizes"].items() for label, s in classes.items()]
    not_read = lost_photos(SkippedFile(s["path"], s["reason"]) for s in data["skipped_files"])
    found = [("bad file(s), excluded from every run", [f"{b['path']}: {b['reason']}" + (f" ({b['detail']})" if
                                                        b["detail"] else "") for b in data["bad_files"]]),
             ("file(s) or folder(s) not read (photos may be among them)", [f"{s.path}: {s.reason}" for s in not_read]),
             ("file(s) converted as they are read", [f"{c['path']}: {', '.join(c['conversions'])}"
                                                     for c in data["converted_files"]]),
             ("group(s) of files with the same content", [", ".join(g) for g in data["duplicates"]]),
             ("image(s) in two splits (leakage)", [", ".join(f["path"] for f in g) for g in data["train_val_leaks"]]),
             ("label conflict(s)", [", ".join(f"{f['path']} ({f['label']})" for f in g)
                                    for g in data["label_conflicts"]])]
    lines = [f"# {data['dataset']}: {data['n_usable']} usable of {data['n_files']} files", "",
             "| split | class | images | width min/median/max | height min/median/max |", "|---|---|---|---|---|",
             *rows, ""]
    for title, items in found:
        lines += [f"- **{len(items)} {title}**" if items else f"- 0 {title}"]
        lines += [f"  - {shown_name(item, 400)}" for item in items[:MAX_LISTED]]  # a path, the reason, its detail
        lines += [f"  - ... and {len(items) - MAX_LISTED} more (metrics.json names them)"] * (len(items) > MAX_LISTED)
    lines += [f"- warning: {message}" for message in warned]
    return "\n".join(lines + ["", f"![images per class]({COUNTS_PNG})", ""])


def _counts_figure(data: dict):
    plt = pyplot()
    classes = data["classes"]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(classes) + 2), 3.2))
    bottom = [0] * len(classes)
    for split, counts in data["counts"].items():
        heights = [counts.get(c, 0) for c in classes]
        ax.bar(range(len(classes)), heights, bottom=bottom, label=split)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(range(len(classes)), [shown_name(c, 24) for c in classes], rotation=45 if len(classes) > 6 else 0,
                  ha="right" if len(classes) > 6 else "center")
    ax.set_ylabel("images")
    ax.set_title(f"{shown_name(data['dataset'], 60)}: images per class")
    ax.legend()
    return fig


@dataclass
class InspectResult:
    """What ``tltool data inspect`` found: the checked files and the ``report.md`` written (``metrics.json`` and
    ``class_counts.png`` beside it)."""

    checked: CheckedDataset
    report: Path

    @property
    def has_problems(self) -> bool:
        """A bad file, a warning (imbalance, leakage, a class without images, a single class), a duplicate across
        splits or a photo not read (a link not followed too: the SymlinkWarning): ``--strict`` fails on it."""
        checked = self.checked
        return bool(checked.bad or checked.warnings or checked.leaks() or lost_photos(checked.dataset.skipped))


@writes_runs
def inspect_dataset(path: str, max_pixels: int | None = None, out: str | Path | None = None,
                    force: bool = False) -> InspectResult:
    """Check every file of the dataset at ``path`` and write its report folder; the caller shows the result."""
    check_run_dir(out, force, kind="inspect")
    dataset = load_dataset(path)
    checked = check_dataset(dataset, max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels,
                            emit_warnings=False, decode=True)
    check_classes(checked)
    target = write_inspect_report(checked, new_run_dir("inspect", dataset.name, out=out, force=force))
    return InspectResult(checked, target)


def upsampling(checked: CheckedDataset, image_size: int, resize: str, size_given: bool = False) -> dict:
    """How many usable photos the resize to ``image_size`` enlarges; every run records it and says so.
    ``size_given``: the size is the user's ``--image-size``, not the backbone's default."""
    files = [f for f in checked.files if f.ok and f.width and f.height]
    enlarged = sum(SCALED_SIDE[resize](f.width, f.height) < image_size for f in files)
    return {"image_size": image_size, "resize": resize, "upsampled": enlarged, "of": len(files),
            "size_given": size_given}


def say_upsampling(record: dict) -> None:
    if record["upsampled"]:
        why = ("the --image-size given" if record.get("size_given") else
               "on purpose for the default size (see the README's accuracy section), or pass --image-size to change it")
        say(f"note: {record['upsampled']} of {record['of']} photos are smaller than the {record['image_size']} px "
            f"input and are enlarged to it (--resize {record['resize']}); that is {why}")
