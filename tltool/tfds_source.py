"""TFDS datasets as a dataset source: ``tfds:NAME`` or ``tfds:NAME:SPLIT``.

The images are written once as files under tltool's cache, so a TFDS dataset is a folder dataset like any other
(the same decode function, hashing, inspection and pipeline). Loading never downloads unless asked: offline,
``tfds.load`` retries for minutes before failing, so ``download=False`` is tried first and fails in well under a
second with a message that says where to put the data.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .dataset import SPLIT_ALIASES, Dataset, Record
from .errors import TltoolError
from .utils import cache_dir, read_json, sha256_text, write_json


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
    why = f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
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


def load_tfds(spec: str, data_dir: str | None = None, download: bool = False) -> Dataset:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ._tf import tf  # noqa: F401  (quiet start-up)
    import tensorflow_datasets as tfds

    name, split = _parse(spec)
    data_dir = data_dir or tfds_data_dir()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as exc:  # DatasetNotFoundError and friends
        raise TltoolError(f"{spec}: TFDS has no dataset {name!r} ({exc.__class__.__name__}).") from None
    _require_classification(spec, builder.info.features, tfds.features.ClassLabel)
    splits = [split] if split else None
    try:
        if download:
            builder.download_and_prepare()
        # An unprepared dataset has no split info; tfds.load(download=False) below then fails in a fraction of a second.
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
    label_names = builder.info.features["label"].names
    image_key = "image"
    out_root = _cache_root(name, builder)
    records: list[Record] = []
    for split_name, ds in datasets.items():
        split_dir = out_root / split_name.replace("[", "_").replace("]", "_").replace(":", "_")
        index_file = split_dir / "index.json"
        if index_file.exists():
            records.extend(Record(**r) for r in read_json(index_file))
            continue
        split_records = []
        for i, example in enumerate(tfds.as_numpy(ds)):
            data = bytes(example[image_key])
            label = label_names[int(example["label"])]
            path = split_dir / label / f"{i:06d}{_extension(data)}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            split_records.append(Record(str(path), label, SPLIT_ALIASES.get(split_name.split("[")[0], split_name)))
        write_json(index_file, [r.__dict__ for r in split_records])
        records.extend(split_records)
    if len(datasets) == 1:  # a single split is data to split later, not a ready split
        records = [Record(r.path, r.label, None) for r in records]
    notes = [f"TFDS splits {unknown} are not train/validation/test and were left out (tfds:{name}:SPLIT takes "
             "one)"] if unknown and not split else []
    return Dataset(name=name, source=f"tfds:{name}", records=records, notes=notes)


__all__ = ["load_tfds", "tfds_data_dir"]
