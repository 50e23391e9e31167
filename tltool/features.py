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
import inspect
import os
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from . import __version__, filecache
from .backbones import get_backbone_spec, weights_digest
from .batches import batches_for
from .configs import ExtractConfig, InputConfig
from .dataset import Dataset, Record, label_indices, lost_photos
from .distribute import extraction_shard, inference_strategy
from .engines import create_runner, feature_source
from .errors import TltoolError
from .images import DecodeLog
from .inspection import CheckedDataset, prepare_dataset, say_upsampling, upsampling
from .outputs import claim_output_dir, output_kind
from .progress import Bar, say
from .settings import CHOICES, RANGES, check_choice
from .utils import atomic_path, is_whole, open_regular, read_json, sha256_text, shown_name, write_json

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

FEATURES_FORMAT = 2  # 2: enlarging resizes in float32 (pixels of small photos changed); chunks carry an ok mask
POOLS = CHOICES["pool"]
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
        return select_pool(self.avg, self.max, pool)

    def mask(self, split: str) -> np.ndarray:
        return self.splits == split


def select_pool(avg: np.ndarray | tf.Tensor | keras.KerasTensor, mx: np.ndarray | tf.Tensor | keras.KerasTensor,
                pool: str, concat: Callable | None = None) -> np.ndarray | tf.Tensor | keras.KerasTensor:
    """The features a head reads under ``pool``: ``avg``, ``max`` or both side by side (``avgmax``). ``avg`` and
    ``mx`` are numpy arrays, or tensors/Keras outputs with their own ``concat(parts, axis)``."""
    check_choice("pool", pool)
    if pool == "avg":
        return avg
    if pool == "max":
        return mx
    return (concat or np.concatenate)([avg, mx], axis=1)


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

    @property
    def usable_images(self) -> int:
        """The images with features: a file the feeding decode found bad keeps a row without (``n_images`` counts
        it, so learning it is bad does not change the cache key); `extract` counted it as extracted."""
        decode_bad = {s.get("path") for s in self.meta.get("skipped") or [] if isinstance(s, dict)
                      and s.get("found_by") == filecache.DECODE}
        return sum(f["path"] not in decode_bad for f in self.meta["files"])


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


def checked_settings(config: ExtractConfig) -> tuple[tuple[int, int] | None, InputConfig]:
    """``config``'s shard and resolved input, every bad setting refused (a bad --shard or TF_CONFIG too): before
    any work, by extract and by probe before its data check."""
    config.validate()
    return extraction_shard(config.strategy, config.shard), config.resolve_input()


def extract_features(data: str | Dataset, out_dir: str | Path, config: ExtractConfig | None = None, *,
                     checked: CheckedDataset | None = None, option: str = "--out", force: bool = False,
                     **settings: Any) -> ExtractResult:
    """Extract avg- and max-pooled features of every usable image of ``data`` into ``out_dir``.

    ``config`` (or its fields as keywords, which replace those of ``config``): see :class:`ExtractConfig`;
    ``strategy``: see :mod:`tltool.distribute` (``batch_size`` is per replica); ``shard``: ``"I/N"``, this
    process's share of the chunks (under ``multiworker`` the worker index gives it). ``option``: the command's
    name for ``out_dir`` in its errors (``--features`` for probe). ``force``: replace the features of other data
    found in ``out_dir`` (refused otherwise).
    """
    config = replace(config or ExtractConfig(), **settings)
    part, inputs = checked_settings(config)
    start = time.perf_counter()
    checked = checked or prepare_dataset(data, config.val_fraction, config.seed, config.max_pixels,
                                         strict=config.strict, decode=False)
    records, hashes = _keyed_records(checked)
    key = extraction_key(_key_settings(_cache_settings(inputs, config)), records, hashes)
    out = claim_output_dir(out_dir, "features", reuse=True, option=option)
    earlier = _earlier_meta(out)  # read once: the other-data check and the cache both look at it
    if not force:
        _refuse_other_data(out, earlier, key, _network_settings(inputs, config), checked.dataset.source,
                           set(hashes.values()), option)
    chunks = _Chunks(out, key, config.chunk_size, len(records))
    if _reuse_cached(chunks, earlier, checked, records, hashes):  # before TensorFlow is imported: instant
        return ExtractResult(out, True, time.perf_counter() - start, None, checked)
    # inference needs no collective ops: under multiworker each worker runs its share on its own devices
    tf_strategy, info = inference_strategy("auto" if config.strategy == "multiworker" else config.strategy)
    say(info.describe() + (f"; shard {part[0]}/{part[1]} of the chunks" if part else ""))
    log = DecodeLog(known=frozenset(f.record.path for f in checked.bad))  # the check named them already
    pending = _pending_chunks(chunks, part)
    # the network is built before features.json is written: a --weights file of another architecture is refused
    # while the folder holds nothing a later command would read as an unfinished extraction
    feed = _network_feed(records, chunks, pending, inputs, config.weights, config.batch_size * info.replicas,
                         tf_strategy if info.distributed else None, log, config.engine) if pending else None
    meta = _start_meta(chunks, inputs, config, checked, records, hashes, info, part)
    n_computed, seconds = _compute_chunks(records, chunks, pending, feed, inputs.backbone, log)
    missing = chunks.missing() if part else []
    meta["complete"] = not missing  # the last shard to finish completes the folder
    meta["throughput_images_per_second"] = n_computed / seconds if seconds > 0 and n_computed else None
    meta["skipped"] += _decode_skipped(log)
    write_json(out / "features.json", meta)
    _say_shard_state(out, part, missing, chunks.count)
    total = time.perf_counter() - start
    return ExtractResult(out, False, total, meta["throughput_images_per_second"], checked, not missing, part)


def _keyed_records(checked: CheckedDataset) -> tuple[list[Record], dict[str, str]]:
    """The files the features are stored for, in path order, and their content hashes: the usable files and those
    an earlier feeding decode found bad (their rows are stored as not usable), so learning that a file is bad does
    not change the cache key and a second run stays cached."""
    decode_bad = [f.record for f in checked.bad if f.stage == filecache.DECODE and f.sha256]
    records = sorted([*checked.dataset.records, *decode_bad], key=lambda r: r.path)  # splits can change, chunks stay
    return records, {f.record.path: f.sha256 for f in checked.files if f.sha256}


def _decode_skipped(log: DecodeLog) -> list[dict]:
    return [{"path": path, "reason": reason, "detail": detail, "found_by": "decode"}
            for path, (reason, detail) in sorted(log.unnamed.items())]


@dataclass(frozen=True)
class _Chunks:
    """The chunk files of one extraction: ``count`` files of ``size`` rows (the last one shorter)."""

    out: Path
    key: str
    size: int
    total: int

    @property
    def count(self) -> int:
        return (self.total + self.size - 1) // self.size

    def rows(self, index: int) -> int:
        return _chunk_rows(index, self.size, self.total)

    def done(self, index: int) -> bool:
        return _chunk_done(self.out, index, self.key, self.rows(index))

    def missing(self) -> list[int]:
        return [i for i in range(self.count) if not self.done(i)]


def _cache_settings(inputs: InputConfig, config: ExtractConfig) -> dict:
    """The settings the stored numbers depend on (part of the cache key)."""
    spec = get_backbone_spec(inputs.backbone)
    return {"format": FEATURES_FORMAT, "backbone": inputs.backbone, "weights": str(config.weights),
            "weights_digest": weights_digest(spec, str(config.weights)), "image_size": inputs.image_size,
            "resize": inputs.resize, "preprocess": inputs.preprocess, "chunk_size": config.chunk_size}


def _key_settings(stored: dict) -> dict:
    """The cache key's settings: ``ImageNet`` and ``imagenet`` are one network (it was extracted again), and a
    weights file's content is its digest, wherever the file lies and however its path is spelled."""
    weights = str(stored["weights"]).lower()
    return {**stored, "weights": weights if weights in ("imagenet", "none") else "file"}


def _network_settings(inputs: InputConfig, config: ExtractConfig) -> dict:
    """The settings that make other numbers of the same photos (a changed weights file, chunk size or format
    does not: the same setting, extracted again)."""
    stored = _cache_settings(inputs, config)  # once: it hashes a weights file
    settings = {name: stored[name] for name in ("backbone", "image_size", "resize", "preprocess")}
    return {**settings, "weights": _same_weights(str(config.weights))}


def _same_weights(weights: str) -> str:
    """``--weights`` as one spelling per network: imagenet and none in lower case, a file by its real path
    (``w.h5``, ``./w.h5`` and its absolute path were "other settings")."""
    return weights.lower() if weights.lower() in ("imagenet", "none") else os.path.realpath(weights)


def _dataset_meta(dataset: Dataset) -> dict:
    """The data source as features.json records it; ``not_read``: photos its walk could not take, for the report."""
    return {"name": dataset.name, "source": dataset.source, "notes": dataset.notes,
            "not_read": [{"path": s.path, "reason": s.reason} for s in lost_photos(dataset.skipped)]}


def _earlier_meta(out: Path) -> dict | None:
    """The ``features.json`` an earlier extraction left in ``out``; None when there is none or it is damaged (then
    extracted again, into tltool's own folder)."""
    try:
        old = read_json(out / "features.json")
    except (OSError, ValueError, RecursionError):
        return None
    return old if isinstance(old, dict) else None


def _reuse_cached(chunks: _Chunks, old: dict | None, checked: CheckedDataset, records: list[Record],
                  hashes: dict[str, str]) -> bool:
    """True when a complete extraction with the same key is in place (``old``: its features.json): its metadata
    gets the current labels."""
    meta_path = chunks.out / "features.json"
    if not (old is not None and old.get("key") == chunks.key and old.get("complete") and not chunks.missing()
            and old.get("chunk_size") == chunks.size and old.get("n_images") == chunks.total):
        return False  # an edited chunk size or count: the metadata is written again (the chunks are kept)
    dataset = checked.dataset
    known = {f.record.path for f in checked.bad}
    earlier = old.get("skipped") if isinstance(old.get("skipped"), list) else []
    skipped = _check_skipped(checked) + [s for s in earlier if isinstance(s, dict) and s.get("found_by")
                                         and isinstance(s.get("path"), str) and s["path"] not in known]
    old.update(classes=dataset.classes, files=_file_rows(records, hashes), dataset=_dataset_meta(dataset),
               skipped=skipped)
    write_json(meta_path, old)  # the current labels and split; the numbers are reused
    write_json(chunks.out / "classes.json", dataset.classes)
    say(f"cached: features for {len(dataset.records)} images already in {chunks.out} (same files, backbone and "
        "settings); the network was not run")
    return True


def _refuse_other_data(out: Path, old: dict | None, key: str, settings: dict, source: str, contents: set[str],
                       option: str) -> None:
    """A features folder is a cache of one data source and setting: extracting other data into it replaced those
    features (a second folder named ``train`` shares probe's default folder) without a word, and so did other
    ``settings`` (:func:`_network_settings`: ``--weights none`` after ImageNet's). The same data goes on: the same
    source changed, or the same photos found elsewhere (a moved folder, a manifest of them: at least half of the
    stored photos' contents among ``contents``). ``old``: the folder's features.json (None: none, or damaged,
    nothing of worth to keep)."""
    if old is None or old.get("key") == key:
        return
    changed = _changed_settings(old, settings)
    if changed:  # the same data: a run that named this folder (its metrics.json does) would read other numbers
        state = "" if old.get("complete") else "unfinished "
        raise TltoolError(f"{option} {out}: holds the {state}features of other settings ({'; '.join(changed)}); "
                          "extracting there would replace them, and a run that was fitted on them would be refitted "
                          "on these. Give another folder, or pass --force to replace them.")
    dataset = old.get("dataset")
    before = dataset.get("source") if isinstance(dataset, dict) else None
    if not isinstance(before, str) or before == source:
        return
    files = old.get("files") if isinstance(old.get("files"), list) else []
    stored = {f.get("sha256") for f in files if isinstance(f, dict)}
    if stored and 2 * len(stored & contents) >= len(stored):
        return
    state = "" if old.get("complete") else "unfinished "
    place = {name: shown_name(text.removeprefix("folder:").removeprefix("csv:")) for name, text in
             (("before", before), ("now", source))}
    raise TltoolError(f"{option} {out}: holds the {state}features of other data ({place['before']}: "
                      f"{old.get('n_images')} images, {old.get('backbone')}); extracting {place['now']} there would "
                      "replace them. Give another folder, or pass --force to replace them.")


def _changed_settings(old: dict, settings: dict) -> list[str]:
    """The ``settings`` (:func:`_network_settings`) that differ from those of ``old`` (a features.json), each as
    ``"image_size 64 -> 48"``."""
    before = {name: _same_weights(str(old[name])) if name == "weights" else old[name]
              for name in settings if name in old}
    return [f"{name} {old.get(name)} -> {value}" for name, value in settings.items()
            if name in before and before[name] != value]


def other_settings_refusal(out: str | Path, config: ExtractConfig, earlier: dict | None = None) -> str | None:
    """Why extracting with ``config`` into ``out`` will be refused for other settings, said before any photo is
    read (``tltool run --check``), or None. ``earlier``: the :func:`extraction_settings` an earlier step extracts
    there with (else the features.json in ``out``, when there is one)."""
    old = earlier if earlier is not None else _earlier_meta(Path(out))
    changed = _changed_settings(old, extraction_settings(config)) if old is not None else []
    if not changed:
        return None
    return (f"{out}: holds the features of other settings ({'; '.join(changed)}); extracting there would "
            "replace them. Give another folder, or pass --force to replace them.")


def extraction_settings(config: ExtractConfig) -> dict:
    """The settings of the network that extracting with ``config`` runs (:func:`_network_settings`)."""
    return _network_settings(config.resolve_input(), config)


def _check_skipped(checked: CheckedDataset) -> list[dict]:
    return [{"path": f.record.path, "reason": f.reason, "detail": f.detail, "found_by": f.stage} for f in checked.bad]


def _start_meta(chunks: _Chunks, inputs: InputConfig, config: ExtractConfig, checked: CheckedDataset,
                records: list[Record], hashes: dict[str, str], info, part: tuple[int, int] | None) -> dict:
    """Write ``features.json`` (not yet complete) and ``classes.json``; return the metadata."""
    dataset = checked.dataset
    meta = {
        **_cache_settings(inputs, config), "key": chunks.key, "complete": False, "tltool_version": __version__,
        "classes": dataset.classes, "dataset": _dataset_meta(dataset), "chunk_size": config.chunk_size,
        "n_images": len(records), "max_pixels": inputs.max_pixels, "files": _file_rows(records, hashes),
        "skipped": _check_skipped(checked),
        "distribute": {**info.to_json(), "shard": f"{part[0]}/{part[1]}" if part else None},
        "upsampling": upsampling(checked, inputs.image_size, inputs.resize, size_given=config.image_size is not None),
    }
    say_upsampling(meta["upsampling"])
    write_json(chunks.out / "classes.json", dataset.classes)
    write_json(chunks.out / "features.json", meta)
    return meta


def _say_shard_state(out: Path, part: tuple[int, int] | None, missing: list[int], n_chunks: int) -> None:
    if missing:
        say(f"shard {part[0]}/{part[1]} done; {len(missing)} of {n_chunks} chunk(s) belong to other shards that "
            f"have not finished. The last shard to finish completes {out} (or run `tltool extract` without --shard).")
    elif part:
        say(f"every chunk is present: {out} is complete")


def _chunk_path(out: Path, index: int) -> Path:
    return out / "chunks" / f"chunk-{index:05d}.npz"


def _chunk_rows(index: int, chunk_size: int, total: int) -> int:
    return min(chunk_size, total - index * chunk_size)


def _chunk_done(out: Path, index: int, key: str, rows: int) -> bool:
    """A chunk counts only if it belongs to this extraction and holds the rows it should."""
    return _read_chunk(out, index, key, rows) is not None


def _read_chunk(out: Path, index: int, key: str,
                rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(avg, max, ok)`` of chunk ``index`` of this extraction holding ``rows`` finite float32 rows, else None
    (missing, damaged or another extraction's or chunk's: it is recomputed)."""
    path = _chunk_path(out, index)
    if not os.path.lexists(path):
        return None
    try:  # a link or a named pipe is not a chunk (np.load of a pipe hung): open_regular refuses both
        with open_regular(path, follow_links=False) as f, np.load(f) as z:  # no pickles: object arrays are refused
            avg, mx = z["avg"], z["max"]
            ok = z["ok"] if "ok" in z.files else np.ones(rows, bool)
            placed = "index" not in z.files or int(z["index"]) == index  # (older chunks have none)
            valid = (placed and str(z["key"]) == key and avg.ndim == 2 and avg.shape == mx.shape
                     and len(avg) == rows and avg.dtype == mx.dtype == np.float32 and ok.dtype == bool
                     and ok.shape == (rows,) and bool(np.isfinite(avg).all() and np.isfinite(mx).all()))
    except Exception:  # a damaged chunk is recomputed
        return None
    return (avg, mx, ok) if valid else None


def build_feature_extractor(backbone: str, weights: str,
                            image_size: int) -> tuple[keras.Model, tf.types.experimental.PolymorphicFunction]:
    """The feature network of :func:`tltool.engines.feature_source` (both poolings) and a compiled step function for
    TensorFlow and ``tf.distribute`` (XLA off: it is slower on CPU)."""
    from ._tf import tf

    model = feature_source(backbone, weights, image_size).build()  # the network every engine runs

    # one graph for every batch size: a last, shorter batch must not cost a second trace (seconds on a CPU)
    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def step(images):
        pooled = model(images, training=False)
        return pooled["avg"], pooled["max"]

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


def _engine_outputs(inputs: InputConfig, weights: str, engine: str):
    """``batches -> (avg, max) per batch``, numpy features on ``engine`` (the same numbers on each:
    tests/test_engines.py), and the engine it resolved to. The runner's ``map`` may start a batch before the last
    one's features are handed back (LiteRT's lanes do not wait at batch ends)."""
    runner = create_runner(feature_source(inputs.backbone, weights, inputs.image_size), engine)

    def outputs(batches):
        arrays = (b.numpy() if hasattr(b, "numpy") else b for b in batches)  # a runner makes its own float32
        for out in runner.map(arrays):
            yield out["avg"], out["max"]

    return outputs, runner.engine


def _numpy_outputs(step):
    return lambda batches: (tuple(t.numpy() for t in step(images)) for images in batches)


def _pending_chunks(chunks: _Chunks, shard: tuple[int, int] | None = None) -> list[int]:
    """The chunks (of this shard) not yet extracted."""
    mine = [i for i in range(chunks.count) if shard is None or i % shard[1] == shard[0]]
    pending = [i for i in mine if not chunks.done(i)]
    if len(pending) < len(mine):
        say(f"resuming: {len(mine) - len(pending)} of {len(mine)} chunk(s) already extracted"
            + (f" (shard {shard[0]}/{shard[1]})" if shard else ""))
    return pending


def _pending_rows(chunks: _Chunks, pending: list[int]) -> list[int]:
    return [j for i in pending for j in range(i * chunks.size, i * chunks.size + chunks.rows(i))]


def _network_feed(records, chunks: _Chunks, pending: list[int], inputs: InputConfig, weights: str, batch_size: int,
                  strategy=None, log: DecodeLog | None = None, engine: str = "auto"):
    """``(outputs, batches)`` for the images of the ``pending`` chunks: the network built (a weights file that does
    not fit is refused here) and its decoding pipeline, not yet started. Only these images are decoded; one that
    cannot be is named in ``log``."""
    paths = [records[j].path for j in _pending_rows(chunks, pending)]
    if strategy is None:
        outputs, engine = _engine_outputs(inputs, weights, engine)
        return outputs, batches_for(engine, paths, image_size=inputs.image_size, resize=inputs.resize,
                                    batch_size=batch_size, max_pixels=inputs.max_pixels, on_bad="zeros", log=log)
    with strategy.scope():  # a tf.distribute strategy runs on TensorFlow
        _model, graph = build_feature_extractor(inputs.backbone, weights, inputs.image_size)
    ds = strategy.experimental_distribute_dataset(batches_for(
        "tf", paths, image_size=inputs.image_size, resize=inputs.resize, batch_size=batch_size,
        max_pixels=inputs.max_pixels, on_bad="zeros", log=log))
    return _numpy_outputs(_distributed_step(graph, strategy)), ds


def _compute_chunks(records, chunks: _Chunks, pending: list[int], feed, backbone: str,
                    log: DecodeLog) -> tuple[int, float]:
    """Run ``feed`` (:func:`_network_feed`) over the ``pending`` chunks, writing each as its rows arrive; returns how
    many images it ran on after the first batch and the seconds that took (the throughput, without graph
    tracing). An image that could not be decoded has its row stored as not usable."""
    if not pending:
        return 0, 0.0
    outputs, ds = feed
    todo = _pending_rows(chunks, pending)
    writer = _ChunkWriter(chunks, pending, [r.path for r in records], log)
    t0 = first = None
    with Bar(len(todo), f"extracting {backbone}") as bar:
        for avg, mx in outputs(_iterate(ds)):
            first = len(avg) if first is None else first
            if t0 is None:  # throughput counts from the end of the first batch: tracing the graph is not speed
                t0 = time.perf_counter()
            writer.add(avg, mx)
            bar.update(len(avg))
    seconds = time.perf_counter() - t0 if t0 else 0.0
    return len(todo) - first, seconds


class _ChunkWriter:
    """Collects pooled features batch by batch and writes each pending chunk as soon as its rows are in."""

    def __init__(self, chunks: _Chunks, pending: list[int], paths: list[str], log: DecodeLog) -> None:
        self.chunks, self.pending = chunks, iter(pending)
        self.paths, self.log = paths, log
        self.buffers: tuple[list, list] = ([], [])
        self.have = 0
        self.current = next(self.pending, None)

    def add(self, avg: np.ndarray, mx: np.ndarray) -> None:
        self.buffers[0].append(avg)
        self.buffers[1].append(mx)
        self.have += len(avg)
        while self.current is not None and self.have >= self.chunks.rows(self.current):
            want = self.chunks.rows(self.current)
            avg_all, max_all = np.concatenate(self.buffers[0]), np.concatenate(self.buffers[1])
            first = self.current * self.chunks.size
            # every row of the chunk has been decoded by now (batches arrive after their decode): the log is complete
            ok = np.array([p not in self.log.failures for p in self.paths[first:first + want]])
            _write_chunk(self.chunks.out, self.current, self.chunks.key, avg_all[:want], max_all[:want], ok)
            self.buffers = ([avg_all[want:]], [max_all[want:]])
            self.have -= want
            self.current = next(self.pending, None)


def _iterate(ds):
    if inspect.isgenerator(ds):  # tltool.batches: no TensorFlow, its errors are tltool's own
        yield from ds
        return
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


def _write_chunk(out: Path, index: int, key: str, avg: np.ndarray, mx: np.ndarray, ok: np.ndarray) -> None:
    """``ok``: the rows whose image was decoded (a file found bad by the decode has a row of zeros, not used)."""
    target = _chunk_path(out, index)
    with atomic_path(target, suffix=".npz.tmp") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, avg=avg.astype(np.float32), max=mx.astype(np.float32), key=np.array(key), ok=ok,
                     index=np.array(index))  # a chunk copied or linked to another's name is not taken for it


# what extraction writes for each file: the check's split, or none for a file the feeding decode found bad
FEATURE_SPLITS = ("train", "val", "test", None, "")


def _describes_its_model(meta: dict) -> bool:
    """The settings a linear run copies into its model.json (and names its folder by) are of tltool's types."""
    size, dataset = meta.get("image_size"), meta.get("dataset")
    return (isinstance(meta.get("backbone"), str) and isinstance(meta.get("weights"), str)
            and is_whole(size, RANGES["image_size"].low, RANGES["image_size"].high)
            and meta.get("resize") in CHOICES["resize"]
            and isinstance(dataset, dict) and isinstance(dataset.get("name"), str)
            and (meta.get("max_pixels") is None or is_whole(meta["max_pixels"])))


def read_features_json(meta_path: Path) -> dict:
    """``features.json``, checked: complete, and with the fields and types extraction writes."""
    directory = meta_path.parent
    try:
        meta = read_json(meta_path)
        complete = meta.get("complete")
        n, chunk, files = meta["n_images"], meta["chunk_size"], meta["files"]
        valid = (isinstance(n, int) and isinstance(chunk, int) and n >= 1 and chunk >= 1 and isinstance(files, list)
                 and len(files) == n and isinstance(meta["classes"], list) and isinstance(meta["key"], str)
                 and _describes_its_model(meta)
                 and all(isinstance(c, str) for c in meta["classes"])
                 and all(isinstance(f, dict) and {"path", "label", "split", "sha256"} <= set(f)
                         and f["split"] in FEATURE_SPLITS
                         and all(isinstance(f[k], str) for k in ("path", "label", "sha256")) for f in files))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TltoolError(f"{directory}: features.json is damaged ({exc.__class__.__name__}: {exc}); extract again "
                          "into a new folder.") from None
    if not complete:
        raise TltoolError(f"{directory}: the extraction did not finish. Run the same `tltool extract` again to resume.")
    if not valid:
        raise TltoolError(f"{directory}: features.json is damaged (its image count, chunk size, settings or file "
                          "list, with each file's split, is not what extraction writes); extract again into a new "
                          "folder.")
    listed_twice = next((path for path, n in Counter(f["path"] for f in meta["files"]).items() if n > 1), None)
    if listed_twice is not None:  # one photo trained on and scored twice, or in training and validation at once
        raise TltoolError(f"{meta_path}: lists the file {shown_name(listed_twice)} more than once; extraction lists "
                          "each file once. Extract again into a new folder.")
    twice = sorted(c for c, n in Counter(meta["classes"]).items() if n > 1)
    if twice:  # label indices would shift: the files of a class named twice trained and scored as another
        raise TltoolError(f"{meta_path}: names the class(es) {twice} more than once in its classes; extraction writes "
                          "each class once. Extract again into a new folder.")
    return meta


def load_features(directory: str | Path) -> FeatureSet:
    directory = Path(directory)
    meta_path = directory / "features.json"
    if not meta_path.exists():
        if output_kind(directory) not in (None, "features"):
            raise TltoolError(f"{directory}: is a tltool {output_kind(directory)} folder, not features; give the "
                              "folder `tltool extract` (or probe's --features) wrote.")
        if directory.is_dir() and output_kind(directory) is None and any(directory.iterdir()):  # photos, likely
            raise TltoolError(f"{directory}: no features.json here: this takes the folder `tltool extract` wrote, not "
                              f"the photos. Run `tltool extract {directory} --out runs/{directory.name}-features` "
                              "first and give that folder (or run `tltool probe` on the photos).")
        raise TltoolError(f"{directory}: no features.json here. Run `tltool extract DATA --out {directory}` first.")
    meta = read_features_json(meta_path)
    n, chunk = meta["n_images"], meta["chunk_size"]
    avg, mx, ok = [], [], []
    for i in range((n + chunk - 1) // chunk):  # each chunk read once: checked and kept
        read = _read_chunk(directory, i, meta["key"], _chunk_rows(i, chunk, n))
        if read is None:
            raise TltoolError(f"{directory}: chunk {i} is missing, damaged or from another extraction; run the same "
                              "`tltool extract` again (it recomputes only what is missing).")
        for kept, array in zip((avg, mx, ok), read):
            kept.append(array)
    if len({a.shape[1] for a in avg}) > 1:
        raise TltoolError(f"{directory}: its chunks hold features of different widths; extract again into a new "
                          "folder.")
    usable = np.concatenate(ok)
    files = [f for f, keep in zip(meta["files"], usable) if keep]  # files the feeding decode found bad are left out
    classes = meta["classes"]
    known = set(classes)
    unknown = next((f for f in files if f["label"] not in known), None)
    if unknown is not None:  # (a file the decode found bad may keep the label of a class that lost all its photos)
        raise TltoolError(f"{meta_path}: the file {unknown['path']!r} has the label {unknown['label']!r}, not one of "
                          f"the {len(classes)} classes it lists; extract again into a new folder.")
    records = [Record(f["path"], f["label"], f["split"]) for f in files]
    return FeatureSet(
        directory=directory, meta=meta, avg=np.concatenate(avg)[usable], max=np.concatenate(mx)[usable],
        paths=[f["path"] for f in files], labels=label_indices(records, classes),
        splits=np.array([f["split"] for f in files]), hashes=[f["sha256"] for f in files],
    )
