"""Decoded batches without TensorFlow, for an engine that runs outside it (LiteRT); :func:`batches_for` picks the
feed of an engine (tf.data for TensorFlow).

The same decode as the tf.data pipeline (:func:`tltool.images.decode_or_blank`: the same pixels, the same bad-file
handling), scheduled by a small thread pool instead of tf.data: Pillow and OpenCV release the GIL, so the next
batch decodes while the engine runs this one. Measured on 2 cores (EfficientNet-Lite0 at 288 px, 850 flower
JPEGs, LiteRT with 2 threads, 3 processes each): fed by tf.data, LiteRT ran at 83 images/s, half its pure
compute (TensorFlow's thread pools take the cores it needs); fed by this pool, 154-164 images/s, 0.88-0.94 of
it (since then LiteRT runs one lane per core, and this feed keeps 184-188 of its 217-222 in one process). And an
extraction on LiteRT no longer imports TensorFlow.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from .images import DEFAULT_MAX_PIXELS, DecodeLog, ResizePolicy, decode_or_blank
from .utils import usable_cpus

if TYPE_CHECKING:
    import tensorflow as tf


def decode_threads(cpu_count: int | None = None) -> int:
    """As many decoding threads as cores, at most 4: decode is about 1 ms a photo, the engine the slow part."""
    return max(1, min(4, cpu_count or usable_cpus()))


def image_batches(paths: Sequence[str], *, image_size: int, resize: ResizePolicy = "crop", batch_size: int = 32,
                  max_pixels: int = DEFAULT_MAX_PIXELS, on_bad: str = "zeros", log: DecodeLog | None = None,
                  threads: int | None = None) -> Iterator[np.ndarray]:
    """uint8 batches ``(B, image_size, image_size, 3)``, in the order of ``paths`` (a runner makes its own float32,
    a few images at a time).

    ``on_bad``: ``zeros`` keeps a black image in place of a file the decode cannot read (named in ``log``; the
    caller drops its row), ``raise`` stops with its :class:`~tltool.errors.BadImageError`.
    """
    if on_bad not in ("zeros", "raise"):
        raise ValueError(f"on_bad must be 'zeros' or 'raise' (batches stay aligned with paths), got {on_bad!r}")
    log = log if log is not None else DecodeLog()
    starts = range(0, len(paths), batch_size)
    with ThreadPoolExecutor(threads or decode_threads(), thread_name_prefix="tltool-decode") as pool:

        def submit(start: int) -> list[Future]:
            return [pool.submit(decode_or_blank, str(p), image_size, resize, max_pixels, on_bad, log)
                    for p in paths[start:start + batch_size]]

        pending = submit(0) if len(paths) else []
        for start in starts:
            current, pending = pending, submit(start + batch_size) if start + batch_size < len(paths) else []
            yield np.stack([f.result()[0] for f in current])


def batches_for(engine: str, paths: Sequence[str], *, image_size: int, resize: ResizePolicy = "crop",
                batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS, on_bad: str = "raise",
                log: DecodeLog | None = None) -> Iterator[np.ndarray] | tf.data.Dataset:
    """The decoded batches that feed ``engine``: the tf.data pipeline for TensorFlow (``tf.Tensor`` batches), this
    module's thread pool for any other engine (NumPy batches; TensorFlow is not imported)."""
    if engine != "tf":
        return image_batches(paths, image_size=image_size, resize=resize, batch_size=batch_size,
                             max_pixels=max_pixels, on_bad=on_bad, log=log)
    from .pipeline import image_dataset  # imports TensorFlow

    return image_dataset(list(paths), image_size=image_size, resize=resize, batch_size=batch_size,
                         max_pixels=max_pixels, on_bad=on_bad, log=log)
