"""TFDS datasets as a dataset source: ``tfds:NAME`` or ``tfds:NAME:SPLIT``.

The images are written once as files under tltool's cache, so a TFDS dataset is a folder dataset like any other
(the same decode function, hashing, inspection and pipeline), in a folder per class number, and listed in each
split's index.json with a stamp of the data's files: an index of data prepared again is written again, and so is
one that cannot be trusted (a :class:`TfdsCacheWarning`). Loading never downloads unless asked: offline,
``tfds.load`` retries for minutes before failing, so ``download=False`` is tried first and fails in well under a
second with a message that says where to put the data.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NoReturn

from .dataset import SPLIT_ALIASES, Dataset, Record, label_problem
from .errors import TltoolError, TltoolWarning
from .utils import (atomic_path, cache_dir, file_lock, read_json_object, remove_temp_leftovers, sha256_json,
                    sha256_text, shortened, shown_name, write_json)

INDEX, INDEX_FORMAT, LOCK = "index.json", 2, ".lock"
# the one form of an example's path that _write_examples writes: class number / example number and extension
EXAMPLE_PATH = re.compile(r"[0-9]{4,}/[0-9]{6,}\.(jpg|png|img)", re.ASCII)


class TfdsCacheWarning(TltoolWarning):
    """The index of a TFDS split's examples in tltool's cache could not be used (damaged, edited, or naming files
    outside its folder): the examples are written again from the TFDS data."""


class _Unusable(Exception):
    """Why a cached index cannot be used."""


def tfds_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _parse(spec: str) -> tuple[str, str | None]:
    parts = spec.split(":", 2)
    if len(parts) < 2 or not parts[1]:
        raise TltoolError(f"{spec!r}: write tfds:NAME or tfds:NAME:SPLIT, e.g. tfds:tf_flowers or tfds:beans:train.")
    return parts[1], (parts[2] if len(parts) == 3 and parts[2] else None)


def _extension(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    return ".img"


def _require_classification(spec: str, features: Any, class_label: type) -> None:
    """tltool reads a dataset's ``image`` and its class ``label``: one without them (coco, celeb_a, smallnorb) was a
    KeyError traceback once its data was there."""
    names = list(features.keys())
    if "image" not in names or "label" not in names or not isinstance(features["label"], class_label):
        raise TltoolError(f"{spec}: not an image-classification dataset tltool can read: it needs an 'image' and a "
                          f"class 'label' feature, and has {names}.")


def _load_error(spec: str, name: str, builder: Any, data_dir: str, split: str | None,
                exc: Exception) -> TltoolError:
    """Why ``tfds.load`` failed: a split the data that is there does not have (it said "the data is not in DIR", and
    how to download it), or the data is missing."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    why = f"{exc.__class__.__name__}: {shortened(first, 400)}"  # cut at 200 before, mid-word
    available = list(builder.info.splits.keys())
    if split and available and split.split("[")[0].strip() not in available:  # `train[:50%]` is of split train
        return TltoolError(f"{spec}: the TFDS data for {name!r} in {data_dir} has no split {split!r}; its splits are "
                           f"{available}, e.g. tfds:{name}:{available[0]} or tfds:{name}:{available[0]}[:50%] ({why})")
    return TltoolError(
        f"{spec}: the TFDS data for {name!r} is not in {data_dir} and tltool does not download it at run time "
        f"(offline, tfds.load retries for minutes). On a machine with internet run\n"
        f"  python -c \"import tensorflow_datasets as tfds; tfds.load('{name}', data_dir='tfds_data')\"\n"
        f"then copy the folder tfds_data/{name} into {data_dir} (or set TFDS_DATA_DIR). ({why})")


def _cache_root(name: str, builder: Any) -> Path:
    """Where the examples of ``builder``'s data are written as files: by name, version and the folder its data is
    read from (two data dirs holding the same name and version reused one index: the other's photos and labels)."""
    source = os.path.realpath(os.path.expanduser(str(builder.data_dir)))
    return cache_dir() / "tfds" / name / str(builder.info.version) / sha256_text(source)[:16]


def _class_names(spec: str, builder: Any) -> list[str]:
    """The dataset's class names; one holding a control character is refused (the data dir's features.json names
    them: a name of terminal escapes was printed as such)."""
    names = [str(n) for n in builder.info.features["label"].names]
    for label in names:
        problem = label_problem(label)
        if problem:
            raise TltoolError(f"{spec}: the class name '{shown_name(label)}' of the TFDS data in "
                              f"{shown_name(str(builder.data_dir), None)} {problem}.")
    return names


def _data_stamp(builder: Any) -> str:
    """The names, sizes and modification times of the prepared data's files: a dataset prepared again in the same
    data dir at the same version, with other examples, reused the index of the old examples."""
    try:
        with os.scandir(os.path.expanduser(str(builder.data_dir))) as entries:
            files = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries if e.is_file())
    except OSError:  # not a local folder (gs://): the data dir's name and the version key the cache alone
        return ""
    return sha256_json(files)


def _lock_file(split_dir: Path) -> Path:
    split_dir.mkdir(parents=True, exist_ok=True)
    return split_dir / LOCK


def _cached_records(split_dir: Path, stamp: str, label_names: list[str], split: str,
                    quiet: bool = False) -> list[Record] | None:
    """The examples the split's index lists, or None: there is none, it is of other data (prepared again), or it
    cannot be used (damaged, edited, naming a file outside ``split_dir`` or a class the dataset lacks: a
    :class:`TfdsCacheWarning` unless ``quiet``, and the examples are written again)."""
    index = split_dir / INDEX
    if not os.path.lexists(index):
        return None
    try:
        stored = read_json_object(index, _unusable)
        if stored.get("format") == INDEX_FORMAT and stored.get("data") != stamp:
            return None
        if stored.get("format") != INDEX_FORMAT or not isinstance(stored.get("examples"), list):
            _unusable(f"is not an index this tltool wrote (no format {INDEX_FORMAT} and list of examples: an older "
                      "tltool's, or edited)")
        return _listed_records(split_dir, stored["examples"], set(label_names), split)
    except _Unusable as why:
        if quiet:
            return None
        warnings.warn(f"{shown_name(index, None)}, tltool's index of cached TFDS examples, {why}; the examples are "
                      "written again from the TFDS data.", TfdsCacheWarning, stacklevel=5)
        return None


def _unusable(problem: str) -> NoReturn:
    raise _Unusable(problem)


def _listed_records(split_dir: Path, examples: list, classes: set[str], split: str) -> list[Record]:
    """The records of an index's examples (``{"path": relative path, "label": class}``), each checked: a path of
    the one form tltool writes (never ``..``, an absolute path or a name no file can have), a regular file there
    (not a link), and one of ``classes``. No real path per example: that cost 74 us each, 7 s for 100,000."""
    records = []
    for number, example in enumerate(examples, 1):
        if not isinstance(example, dict) or set(example) != {"path", "label"} or \
                not all(isinstance(value, str) and "\0" not in value for value in example.values()):
            _unusable(f"example {number} is not a path and a label")
        path, label = os.path.join(split_dir, example["path"]), example["label"]
        if label not in classes:
            _unusable(f"example {number}: '{shown_name(label)}' is not a class of the dataset")
        if not EXAMPLE_PATH.fullmatch(example["path"]) or not _is_regular_file(path):
            _unusable(f"example {number}: {shown_name(example['path'])} is not a file tltool wrote in "
                      f"{shown_name(split_dir, None)}")
        records.append(Record(path, label, split))
    return records


def _is_regular_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _write_examples(spec: str, examples: Iterable[dict], split_dir: Path, stamp: str, label_names: list[str],
                    split: str) -> list[Record]:
    """Write each example's image as a file (temp name, then rename: a file another run is reading is never half
    written) in a folder per class number (a class name may hold a slash: sun397's are /a/abbey), then the index."""
    remove_temp_leftovers(split_dir, recursive=True)  # of a killed writer: the lock is held
    records, listed = [], []
    for i, example in enumerate(examples):
        data, number = bytes(example["image"]), int(example["label"])
        if not 0 <= number < len(label_names):  # -1: an unlabelled example (the test split of some datasets)
            raise TltoolError(f"{spec}: example {i} of split {split!r} has label {number}, not one of the "
                              f"{len(label_names)} classes (an unlabelled split?); name a labelled split.")
        relative = f"{number:04d}/{i:06d}{_extension(data)}"
        path = split_dir / relative
        path.parent.mkdir(exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        records.append(Record(str(path), label_names[number], split))
        listed.append({"path": relative, "label": label_names[number]})
    write_json(split_dir / INDEX, {"format": INDEX_FORMAT, "data": stamp, "examples": listed})
    return records


def _split_records(spec: str, examples: Callable[[], Iterable[dict]], split_dir: Path, stamp: str,
                   label_names: list[str], split: str) -> list[Record]:
    """The split's examples as files: those its index lists, or ``examples()`` written under the split's lock. A
    usable index is read without the lock (it is written whole, by temp name then rename): a cache another user
    wrote, readable but not writable, was used before the lock and then refused at the lock file."""
    cached = _cached_records(split_dir, stamp, label_names, split, quiet=True)  # named, if unusable, under the lock
    if cached is not None:
        return cached
    try:
        with file_lock(_lock_file(split_dir), f"waiting for another tltool to write the examples of {spec}"):
            cached = _cached_records(split_dir, stamp, label_names, split)
            return cached if cached is not None else _write_examples(spec, examples(), split_dir, stamp,
                                                                     label_names, split)
    except OSError as exc:  # a full disk, or something in the way (a folder named index.json)
        where = shown_name(exc.filename2 or exc.filename or split_dir, None)
        raise TltoolError(f"{spec}: its examples cannot be written into tltool's cache ({exc.strerror or exc}: "
                          f"{where}); free space there, or point TLTOOL_CACHE at another folder.") from None


_TEMPORARY = {"users": 0, "folder": None, "before": None}  # the folder tempfile hands out while TFDS runs
_TEMPORARY_LOCK = threading.Lock()


@contextlib.contextmanager
def _tfds_temporary_folders() -> Iterator[None]:
    """TFDS copies a dataset's metadata into ``tempfile.mkdtemp`` folders it never removes (two a run, left empty
    offline: 300 of them in /tmp here); while it runs they are made in a folder of tltool's, removed when the last
    load that uses it (loads in two threads share it) is done."""
    with _TEMPORARY_LOCK:
        if _TEMPORARY["users"] == 0:
            _TEMPORARY["before"], _TEMPORARY["folder"] = tempfile.tempdir, tempfile.mkdtemp(prefix="tltool-tfds-")
            tempfile.tempdir = _TEMPORARY["folder"]
        _TEMPORARY["users"] += 1
    try:
        yield
    finally:
        with _TEMPORARY_LOCK:
            _TEMPORARY["users"] -= 1
            if _TEMPORARY["users"] == 0:
                tempfile.tempdir = _TEMPORARY["before"]
                shutil.rmtree(_TEMPORARY["folder"], ignore_errors=True)


@contextlib.contextmanager
def _absl_quiet() -> Iterator[None]:
    """TFDS logs "Variant folder ... has no dataset_info.json" through absl when the data is not there yet, before
    tltool's own message says what to do: its warnings are left out for the block."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_tfds(spec: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ._tf import tf  # noqa: F401  (quiet start-up)
    import tensorflow_datasets as tfds

    name, split = _parse(spec)
    data_dir = data_dir or tfds_data_dir()
    with _tfds_temporary_folders(), _absl_quiet():
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as exc:  # DatasetNotFoundError and friends
            raise TltoolError(f"{spec}: TFDS has no dataset {name!r} ({exc.__class__.__name__}).") from None
        _require_classification(spec, builder.info.features, tfds.features.ClassLabel)
        splits = [split] if split else None
        try:
            if download:
                builder.download_and_prepare()
            # An unprepared dataset has no split info; tfds.load(download=False) below then fails in a fraction of a
            # second.
            available = list(builder.info.splits.keys()) or ["train"]
            unknown = [s for s in available if s not in SPLIT_ALIASES]
            splits = splits or [s for s in available if s in SPLIT_ALIASES]
            if not splits:
                raise TltoolError(f"{spec}: none of the splits {available} is train/validation/test; name one, e.g. "
                                  f"tfds:{name}:{available[0]}.")
            datasets = {s: tfds.load(name, split=s, data_dir=data_dir, download=False,
                                     decoders={"image": tfds.decode.SkipDecoding()}) for s in splits}
        except TltoolError:
            raise
        except Exception as exc:
            raise _load_error(spec, name, builder, data_dir, split, exc) from None
    label_names = _class_names(spec, builder)
    out_root, stamp = _cache_root(name, builder), _data_stamp(builder)
    records: list[Record] = []
    for split_name, ds in datasets.items():
        split_dir = out_root / split_name.replace("[", "_").replace("]", "_").replace(":", "_")
        tag = SPLIT_ALIASES.get(split_name.split("[")[0], split_name)
        records.extend(_split_records(spec, functools.partial(tfds.as_numpy, ds), split_dir, stamp, label_names, tag))
    if len(datasets) == 1:  # a single split is data to split later, not a ready split
        records = [Record(r.path, r.label, None) for r in records]
    notes = [f"TFDS splits {unknown} are not train/validation/test and were left out (tfds:{name}:SPLIT takes "
             "one)"] if unknown and not split else []
    return Dataset(name=name, source=f"tfds:{name}", records=records, notes=notes)


__all__ = ["TfdsCacheWarning", "load_tfds", "tfds_data_dir"]
