"""Feature extraction: pretrained backbone -> pooled CNN codes, streamed to disk in chunks and cached.

A features folder holds ``features.json`` (backbone, weights fingerprint, input size, preprocessing, classes and
every file with its content hash) and ``chunks/chunk-NNNNN.npz`` with ``avg`` and ``max`` pooled features. Memory
stays flat as the dataset grows (one chunk at a time), a killed run resumes at the first missing chunk, and a
second run on the same inputs reuses everything without running the network.

Extraction scales out by chunks: ``--shard I/N`` (or the worker index under ``--strategy multiworker``) computes
only the chunks ``i`` with ``i % N == I``; whichever process finds every chunk present marks the folder complete
(or ``tltool extract`` without ``--shard`` computes what is missing), so the stored features are the ones a single
process writes. ``--strategy mirrored`` splits each batch over the local GPUs.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import __version__
from .dataset import Dataset, Record, label_indices, load_dataset, stratified_split
from .errors import TltoolError
from .outputs import claim_output_dir
from .images import DEFAULT_MAX_PIXELS
from .inspection import CheckedDataset, check_dataset
from .progress import Bar, say
from .utils import atomic_path, read_json, sha256_text, write_json

FEATURES_FORMAT = 1
POOLS = ("avg", "max", "avgmax")
DEFAULT_CHUNK = 1024


@dataclass
class FeatureSet:
    """Features loaded from a features folder, aligned with ``paths``, ``labels`` and ``splits``."""

    directory: Path
    meta: dict
    avg: np.ndarray
    max: np.ndarray
    paths: list[str]
    labels: np.ndarray
    splits: np.ndarray
    hashes: list[str]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def features(self, pool: str = "avg") -> np.ndarray:
        if pool == "avg":
            return self.avg
        if pool == "max":
            return self.max
        if pool == "avgmax":
            return np.concatenate([self.avg, self.max], axis=1)
        raise TltoolError(f"unknown pooling {pool!r}; choose one of {POOLS}")

    def mask(self, split: str) -> np.ndarray:
        return self.splits == split


@dataclass
class ExtractResult:
    directory: Path
    cached: bool
    seconds: float
    images_per_second: float | None
    checked: CheckedDataset
    complete: bool = True  # False: this shard is done, others are still missing
    shard: tuple[int, int] | None = None

    @functools.cached_property
    def features(self) -> FeatureSet:
        """Loaded on first use: extraction itself keeps one chunk in memory, whatever the dataset's size."""
        return load_features(self.directory)

    @functools.cached_property
    def meta(self) -> dict:
        return read_json(self.directory / "features.json")


def prepare_dataset(data: str | Dataset, val_fraction: float = 0.2, seed: int = 0,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> CheckedDataset:
    """Open, split (an existing split is kept) and validate a dataset; bad files are dropped with a warning."""
    from .dataset import require_training_images
    from .inspection import warn_about, with_split

    dataset = load_dataset(data) if not isinstance(data, Dataset) else data
    dataset.require_classes(2)
    checked = check_dataset(dataset, max_pixels=max_pixels, emit_warnings=False)
    if not checked.dataset.records:
        raise TltoolError(f"{dataset.name}: none of the {len(checked.files)} files is a usable image.")
    # split after the check: only usable files are split, and identical files stay on one side
    checked = with_split(checked, stratified_split(checked.dataset, val_fraction, seed, groups=checked.hashes))
    warn_about(checked)
    checked.dataset.require_classes(2)
    require_training_images(checked.dataset)
    return checked


def extraction_key(config: dict, records: Sequence[Record], hashes: dict[str, str]) -> str:
    """What the stored numbers depend on: settings, chunking, and each file's path and content, in order.

    Labels and splits are not in it: the features of a photo do not depend on them, so a new ``--seed`` or a
    relabelled file reuses the cache (the metadata is rewritten with the current labels and splits).
    """
    lines = [repr(sorted(config.items()))]
    lines += [f"{r.path}\t{hashes[r.path]}" for r in records]
    return sha256_text("\n".join(lines))


def _file_rows(records: Sequence[Record], hashes: dict[str, str]) -> list[dict]:
    return [{"path": r.path, "label": r.label, "split": r.split, "sha256": hashes[r.path]} for r in records]


def extract_features(
    data: str | Dataset,
    out_dir: str | Path,
    backbone: str = "efficientnet_lite0",
    weights: str = "imagenet",
    image_size: int | None = None,
    resize: str = "crop",
    batch_size: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    checked: CheckedDataset | None = None,
    strategy: str = "auto",
    shard: str | None = None,
) -> ExtractResult:
    """Extract avg- and max-pooled features of every usable image of ``data`` into ``out_dir``.

    ``strategy``: see :mod:`tltool.distribute` (``batch_size`` is per replica); ``shard``: ``"I/N"``, this
    process's share of the chunks (under ``multiworker`` the worker index gives it).
    """
    from .backbones import get_backbone_spec, weights_digest
    from .distribute import extraction_shard, resolve_strategy

    part = extraction_shard(strategy, shard)  # a bad --shard or TF_CONFIG fails before any work
    # inference needs no collective ops: under multiworker each worker runs its share on its own devices
    tf_strategy, info = resolve_strategy("auto" if strategy == "multiworker" else strategy)
    say(info.describe() + (f"; shard {part[0]}/{part[1]} of the chunks" if part else ""))
    start = time.perf_counter()
    spec = get_backbone_spec(backbone)
    image_size = image_size or spec.default_size
    checked = checked or prepare_dataset(data, val_fraction, seed, max_pixels)
    dataset = checked.dataset
    if chunk_size < 1 or batch_size < 1:
        raise TltoolError(f"--chunk-size and --batch-size must be at least 1 (got {chunk_size} and {batch_size}).")
    records = sorted(dataset.records, key=lambda r: r.path)  # file order only: splits can change, chunks stay
    hashes = checked.hashes
    config = {
        "format": FEATURES_FORMAT, "backbone": spec.name, "weights": str(weights),
        "weights_digest": weights_digest(spec, str(weights)), "image_size": image_size, "resize": resize,
        "preprocess": spec.preprocess, "chunk_size": chunk_size,
    }
    key = extraction_key(config, records, hashes)
    out = claim_output_dir(out_dir, "features", reuse=True)
    meta_path = out / "features.json"
    n_chunks = (len(records) + chunk_size - 1) // chunk_size
    if meta_path.exists():
        old = read_json(meta_path)
        intact = all(_chunk_done(_chunk_path(out, i), key, _chunk_rows(i, chunk_size, len(records)))
                     for i in range(n_chunks))
        if old.get("key") == key and old.get("complete") and intact:
            old.update(classes=dataset.classes, files=_file_rows(records, hashes),
                       dataset={"name": dataset.name, "source": dataset.source, "notes": dataset.notes})
            write_json(meta_path, old)  # the current labels and split; the numbers are reused
            write_json(out / "classes.json", dataset.classes)
            say(f"[green]cached[/green]: features for {len(records)} images already in {out} (same files, backbone "
                "and settings); the network was not run")
            return ExtractResult(out, True, time.perf_counter() - start, None, checked)
    classes = dataset.classes
    meta = {
        **config, "key": key, "complete": False, "tltool_version": __version__, "classes": classes,
        "dataset": {"name": dataset.name, "source": dataset.source, "notes": dataset.notes},
        "chunk_size": chunk_size, "n_images": len(records), "max_pixels": max_pixels,
        "files": _file_rows(records, hashes),
        "skipped": [{"path": f.record.path, "reason": f.reason} for f in checked.bad],
        "distribute": {**info.to_json(), "shard": f"{part[0]}/{part[1]}" if part else None},
    }
    write_json(out / "classes.json", classes)
    write_json(meta_path, meta)
    n_computed, seconds = _compute_chunks(records, key, out, spec.name, weights, image_size, resize,
                                          batch_size * info.replicas, chunk_size, max_pixels, part,
                                          tf_strategy if info.distributed else None)
    missing = [i for i in range(n_chunks)
               if not _chunk_done(_chunk_path(out, i), key, _chunk_rows(i, chunk_size, len(records)))] if part else []
    meta["complete"] = not missing  # the last shard to finish completes the folder
    meta["throughput_images_per_second"] = n_computed / seconds if seconds > 0 and n_computed else None
    write_json(meta_path, meta)
    if missing:
        say(f"shard {part[0]}/{part[1]} done; {len(missing)} of {n_chunks} chunk(s) belong to other shards that "
            f"have not finished. The last shard to finish completes {out} (or run `tltool extract` without --shard).")
    elif part:
        say(f"every chunk is present: {out} is complete")
    total = time.perf_counter() - start
    return ExtractResult(out, False, total, meta["throughput_images_per_second"], checked, not missing, part)


def _chunk_path(out: Path, index: int) -> Path:
    return out / "chunks" / f"chunk-{index:05d}.npz"


def _chunk_rows(index: int, chunk_size: int, total: int) -> int:
    return min(chunk_size, total - index * chunk_size)


def _chunk_done(path: Path, key: str, rows: int) -> bool:
    """A chunk counts only if it belongs to this extraction and holds the rows it should."""
    if not path.exists():
        return False
    try:
        with np.load(path) as z:
            return str(z["key"]) == key and len(z["avg"]) == rows == len(z["max"])
    except Exception:  # a damaged chunk is recomputed
        return False


def build_feature_extractor(backbone: str, weights: str, image_size: int):
    """The backbone with both poolings as outputs, and a compiled step function (XLA off: it is slower on CPU)."""
    from ._tf import tf

    from .backbones import create_backbone

    model = create_backbone(backbone, weights=weights, image_size=image_size)

    # one graph for every batch size: a last, shorter batch must not cost a second trace (seconds on a CPU)
    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def step(images):
        fmap = model(images, training=False)
        return tf.reduce_mean(fmap, axis=[1, 2]), tf.reduce_max(fmap, axis=[1, 2])

    return model, step


def _distributed_step(step, strategy):
    """``step`` on every replica's share of a distributed batch; the outputs concatenated in batch order."""
    from ._tf import tf

    per_replica = step.python_function  # inside strategy.run, not the single-device graph with its signature

    @tf.function(reduce_retracing=True)
    def run(images):
        outputs = strategy.run(per_replica, args=(images,))
        return tuple(tf.concat(strategy.experimental_local_results(o), axis=0) for o in outputs)

    return run


def _compute_chunks(records, key, out: Path, backbone, weights, image_size, resize, batch_size, chunk_size,
                    max_pixels, shard: tuple[int, int] | None = None, strategy=None) -> tuple[int, float]:
    from .pipeline import image_dataset

    n_chunks = (len(records) + chunk_size - 1) // chunk_size
    mine = [i for i in range(n_chunks) if shard is None or i % shard[1] == shard[0]]
    pending = [i for i in mine if not _chunk_done(_chunk_path(out, i), key, _chunk_rows(i, chunk_size, len(records)))]
    if len(pending) < len(mine):
        say(f"resuming: {len(mine) - len(pending)} of {len(mine)} chunk(s) already extracted"
            + (f" (shard {shard[0]}/{shard[1]})" if shard else ""))
    if not pending:
        return 0, 0.0
    todo = [j for i in pending for j in range(i * chunk_size, min((i + 1) * chunk_size, len(records)))]
    ds = image_dataset([records[j].path for j in todo], image_size=image_size, resize=resize,
                       batch_size=batch_size, max_pixels=max_pixels)
    if strategy is None:
        _model, step = build_feature_extractor(backbone, weights, image_size)
    else:
        with strategy.scope():
            _model, step = build_feature_extractor(backbone, weights, image_size)
        step, ds = _distributed_step(step, strategy), strategy.experimental_distribute_dataset(ds)
    buffers: tuple[list, list] = ([], [])
    chunk_iter = iter(pending)
    current = next(chunk_iter)
    want = min((current + 1) * chunk_size, len(records)) - current * chunk_size
    have = 0
    t0 = first = None
    with Bar(len(todo), f"extracting {backbone}") as bar:
        for images in _iterate(ds):
            avg, mx = step(images)
            n = len(avg)
            first = n if first is None else first
            buffers[0].append(avg.numpy())
            buffers[1].append(mx.numpy())
            if t0 is None:  # throughput counts from the end of the first batch: tracing the graph is not speed
                t0 = time.perf_counter()
            have += n
            bar.update(n)
            while current is not None and have >= want:
                avg_all, max_all = np.concatenate(buffers[0]), np.concatenate(buffers[1])
                _write_chunk(out, current, key, avg_all[:want], max_all[:want])
                buffers = ([avg_all[want:]], [max_all[want:]])
                have -= want
                current = next(chunk_iter, None)
                if current is not None:
                    want = min((current + 1) * chunk_size, len(records)) - current * chunk_size
    seconds = time.perf_counter() - t0 if t0 else 0.0
    return len(todo) - first, seconds


def _iterate(ds):
    from ._tf import tf

    iterator = iter(ds)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
            raise TltoolError(f"an image could not be read during extraction (was it changed after the check?): "
                              f"{exc.message.splitlines()[0]}") from None


def _write_chunk(out: Path, index: int, key: str, avg: np.ndarray, mx: np.ndarray) -> None:
    target = _chunk_path(out, index)
    with atomic_path(target, suffix=".npz.tmp") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, avg=avg.astype(np.float32), max=mx.astype(np.float32), key=np.array(key))


def load_features(directory: str | Path) -> FeatureSet:
    directory = Path(directory)
    meta_path = directory / "features.json"
    if not meta_path.exists():
        raise TltoolError(f"{directory}: no features.json here. Run `tltool extract DATA --out {directory}` first.")
    meta = read_json(meta_path)
    if not meta.get("complete"):
        raise TltoolError(f"{directory}: the extraction did not finish. Run the same `tltool extract` again to resume.")
    n, chunk = meta["n_images"], meta["chunk_size"]
    avg, mx = [], []
    for i in range((n + chunk - 1) // chunk):
        path = _chunk_path(directory, i)
        if not _chunk_done(path, meta["key"], _chunk_rows(i, chunk, n)):
            raise TltoolError(f"{directory}: chunk {i} is missing, damaged or from another extraction; run the same "
                              "`tltool extract` again (it recomputes only what is missing).")
        with np.load(path) as z:
            avg.append(z["avg"])
            mx.append(z["max"])
    files = meta["files"]
    classes = meta["classes"]
    records = [Record(f["path"], f["label"], f["split"]) for f in files]
    return FeatureSet(
        directory=directory, meta=meta, avg=np.concatenate(avg), max=np.concatenate(mx),
        paths=[f["path"] for f in files], labels=label_indices(records, classes),
        splits=np.array([f["split"] for f in files]), hashes=[f["sha256"] for f in files],
    )
