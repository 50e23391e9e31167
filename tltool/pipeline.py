"""The one tf.data input pipeline: file list -> parallel decode -> resize -> optional augmentation -> batch.

Extraction, fine-tuning, training from scratch and evaluation all read images through :func:`image_dataset`.
Images come out as float32 in 0..255; each backbone's own preprocessing is a layer inside the model, so a saved
model takes raw pixels and cannot be fed the wrong normalisation.
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import numpy as np
from ._tf import tf

from .images import DEFAULT_MAX_PIXELS, DecodeLog, decode_or_blank
from .utils import usable_cpus

Transform = Callable[[np.ndarray, int], np.ndarray]  # (uint8 image, seed) -> uint8 image
OnBad = Literal["raise", "skip", "zeros"]


def pipeline_options(cpu_count: int | None = None) -> tf.data.Options:
    """Thread settings that keep the pipeline from fighting the model for a small CPU.

    Measured on 2 cores: AUTOTUNE everywhere ran at 0.60-0.89x of pure compute, a private pool of 2 threads with
    intra-op parallelism 1 at 0.94-1.01x. With many cores (a GPU host) AUTOTUNE is left in charge.
    """
    cpu_count = cpu_count or usable_cpus()
    options = tf.data.Options()
    options.deterministic = True
    if cpu_count <= 4:
        options.threading.private_threadpool_size = 2
        options.threading.max_intra_op_parallelism = 1
    return options


def map_parallelism(cpu_count: int | None = None) -> int:
    cpu_count = cpu_count or usable_cpus()
    return 2 if cpu_count <= 4 else tf.data.AUTOTUNE


def image_dataset(
    paths: Sequence[str],
    labels: Sequence[int] | np.ndarray | None = None,
    *,
    image_size: int,
    resize: str = "crop",
    batch_size: int = 32,
    transform: Transform | None = None,
    output_size: int | None = None,
    num_classes: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
    cache: bool | str = False,
    drop_remainder: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_bad: OnBad = "raise",
    log: DecodeLog | None = None,
    shard: tuple[int, int] | None = None,
    shard_block: int = 1,
    mixup: float = 0.0,
) -> tf.data.Dataset:
    """Batches of ``(images, labels)`` (or images alone when ``labels`` is None).

    ``image_size``/``resize``: every file is decoded by the shared decode function and resized once to
    ``image_size`` x ``image_size``. ``transform`` (train only) maps that uint8 image to ``output_size`` x
    ``output_size`` with its own per-image seed, so a run is repeatable given ``seed``. ``num_classes`` turns labels
    into one-hot vectors (needed for label smoothing). ``cache`` keeps decoded images in memory (True) or in a file.

    A file the decode cannot read (when the check before the split read headers only) is named in ``log`` and, by
    ``on_bad``: ``raise``d (the output stays aligned with ``paths``), replaced by a black image (``zeros``: aligned;
    the caller drops it by ``log``, as extraction does), or ``skip``ped (a training set loses one example; the
    dataset's length becomes unknown, which changes how ``tf.distribute`` splits the last batch and what a schedule
    counts as an epoch, so the training loop must be ready for it before it uses ``skip``).

    ``shard=(I, N)``: this worker decodes only its files (:func:`_keep_share`); ``mixup``: :func:`_with_mixup`.
    """
    output_size = output_size or image_size
    parallel = map_parallelism()
    items: dict[str, object] = {"path": tf.constant([str(p) for p in paths], dtype=tf.string)}
    if labels is not None:
        items["label"] = tf.constant(np.asarray(labels, dtype=np.int64))
    ds = tf.data.Dataset.from_tensor_slices(items)
    decode = _decode_fn(image_size, resize, max_pixels, on_bad, log if log is not None else DecodeLog())
    if cache:  # decoded once, then shuffled from memory each epoch
        ds = _decoded(_keep_share(ds, shard, shard_block), decode, parallel, on_bad)
        ds = ds.cache(cache if isinstance(cache, str) else "")
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True) if shuffle else ds
        ds = _with_seeds(ds, seed) if transform is not None else ds
    else:  # shuffled and seeded as paths: a shard decodes only its own files, in the order one machine would
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True) if shuffle else ds
        ds = _with_seeds(ds, seed) if transform is not None else ds
        ds = _decoded(_keep_share(ds, shard, shard_block), decode, parallel, on_bad)
    if transform is not None:
        ds = ds.map(_augment_fn(transform, output_size), num_parallel_calls=parallel, deterministic=True)
    ds = ds.repeat() if repeat else ds
    ds = ds.map(_model_inputs_fn(labels is not None, num_classes), num_parallel_calls=parallel, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = _with_mixup(ds, mixup, seed, parallel, one_hot=labels is not None and bool(num_classes)) if mixup else ds
    return ds.prefetch(2).with_options(pipeline_options())


def _with_mixup(ds: tf.data.Dataset, alpha: float, seed: int, parallel: int, one_hot: bool) -> tf.data.Dataset:
    """Each ``(images, one-hot labels)`` batch blended with itself reversed, images and labels alike, by a weight
    drawn from Beta(alpha, alpha) per batch, seeded (mixup, Zhang et al. 2018)."""
    if not one_hot:
        raise ValueError("mixup needs labels as one-hot vectors (num_classes)")
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)))

    def mix(batch, seed):
        images, labels = batch
        a = tf.random.stateless_gamma([], seed=tf.stack([seed, tf.constant(0, tf.int64)]), alpha=alpha)
        b = tf.random.stateless_gamma([], seed=tf.stack([seed + 1, tf.constant(1, tf.int64)]), alpha=alpha)
        weight = a / (a + b)
        return (weight * images + (1 - weight) * tf.reverse(images, [0]),
                weight * labels + (1 - weight) * tf.reverse(labels, [0]))

    return ds.map(mix, num_parallel_calls=parallel, deterministic=True)


def _model_inputs_fn(labelled: bool, num_classes: int | None) -> Callable:
    """``item -> images`` (float32), or ``(images, labels)`` with one-hot labels when ``num_classes`` is given."""

    def to_model_inputs(item: dict):
        image = tf.cast(item["image"], tf.float32)
        if not labelled:
            return image
        label = item["label"]
        return (image, tf.one_hot(label, num_classes)) if num_classes else (image, label)

    return to_model_inputs


def _with_seeds(ds: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Each element with its own augmentation seed, by its position in the epoch: ``(item, seed)``."""
    return tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)))


def shard_layout(total: int, block: int, count: int) -> tuple[int, int]:
    """``(full global batches, tail)`` of ``total`` elements dealt to ``count`` workers in blocks of ``block``.

    The tail (a last, shorter global batch) is split evenly, so every worker takes the same number of steps, as
    a collective all-reduce needs; a tail too short to give each worker one element is dropped (0)."""
    full, tail = divmod(total, block * count)
    return full, tail if tail >= count else 0


def _keep_share(ds: tf.data.Dataset, shard: tuple[int, int] | None, block: int) -> tf.data.Dataset:
    """This worker's elements: of every global batch (``block`` x workers elements) its ``block`` consecutive
    ones; of a last, shorter global batch its even part (see :func:`shard_layout`). Its length stays known, as a
    training loop and ``tf.distribute`` expect.

    ``image_dataset`` applies it after the (seeded, identical on every worker) shuffle and before anything is
    decoded. With ``batch_size`` = ``block`` = the per-worker batch, worker I's k-th batch is the I-th slice of the
    k-th global batch a single machine would see, with the same augmentation seeds (the caller turns the strategy's
    own auto-sharding off, e.g. ``strategy.distribute_datasets_from_function``)."""
    if shard is None:
        return ds
    index, count = shard
    full, tail = shard_layout(int(ds.cardinality()), block, count)
    first, last = full * block * count + (index * tail) // count, full * block * count + ((index + 1) * tail) // count

    def mine(position, element):
        in_full = tf.logical_and(position < full * block * count, (position // block) % count == index)
        return tf.logical_or(in_full, tf.logical_and(position >= first, position < last))

    length = full * block + (last - first)
    kept = ds.enumerate().filter(mine).map(lambda position, element: element)
    return kept.apply(tf.data.experimental.assert_cardinality(length))


def _decoded(ds: tf.data.Dataset, decode: Callable, parallel: int, on_bad: OnBad) -> tf.data.Dataset:
    """Decode each element's file (an ``(item, seed)`` pair keeps its seed); unreadable ones dropped under skip."""
    def decode_element(*element):
        return (decode(element[0]), *element[1:]) if len(element) > 1 else decode(element[0])

    ds = ds.map(decode_element, num_parallel_calls=parallel, deterministic=True)
    if on_bad == "skip":
        ds = ds.filter(lambda *element: element[0]["ok"])
    return ds


def _decode_fn(image_size: int, resize: str, max_pixels: int, on_bad: OnBad, log: DecodeLog) -> Callable:
    """The shared decode function as a tf.data map: ``{"path"}`` -> ``{"path", "image", "ok"}`` (uint8, bool)."""

    def decode(path: np.ndarray) -> tuple[np.ndarray, bool]:
        return decode_or_blank(path.decode("utf-8"), image_size, resize, max_pixels, on_bad, log)

    def decode_tf(item: dict) -> dict:
        image, ok = tf.numpy_function(decode, [item["path"]], (tf.uint8, tf.bool), stateful=False)
        image.set_shape((image_size, image_size, 3))
        ok.set_shape(())
        return {**item, "image": image, "ok": ok}

    return decode_tf


def _augment_fn(transform: Transform, output_size: int) -> Callable:
    def augment(image: np.ndarray, seed: np.ndarray) -> np.ndarray:
        out = transform(image, int(seed) & 0x7FFFFFFF)
        return np.ascontiguousarray(out, dtype=np.uint8)

    def augment_tf(item: dict, seed: tf.Tensor) -> dict:
        image = tf.numpy_function(augment, [item["image"], seed], tf.uint8, stateful=False)
        image.set_shape((output_size, output_size, 3))
        return {**item, "image": image}

    return augment_tf
