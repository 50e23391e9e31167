"""Inference engines: the same network run by TensorFlow or by LiteRT, behind one small interface.

A :class:`ModelSource` says what to run (a backbone's pooled features, or a Keras model's probabilities) and what
its numbers depend on; :func:`create_runner` turns it into a :class:`Runner`, a callable that maps a batch of RGB
pixels (0..255, float32 or uint8, ``(n, size, size, 3)``) to a dict of numpy outputs (``avg`` and ``max`` for
features, ``probabilities`` for a classifier). Engines are a registry (:data:`ENGINES`):

- ``tf``: the Keras model in one ``tf.function`` (XLA off), one graph for every batch size.
- ``litert``: the model converted once with ``tf.lite.TFLiteConverter.from_keras_model`` and cached in
  ``cache_dir()/litert`` under a key of what the numbers depend on, run by ``ai_edge_litert``'s interpreter (XNNPACK,
  one single-threaded interpreter per CPU, one image at a time: :class:`LiteRTRunner`). Loading a cached file
  does not import TensorFlow.
- ``auto``: TF when a GPU is visible; else the engine declared for the backbone (:data:`DECLARED`, from
  ``benchmarks/engines.py``); else the faster of the two measured once on this machine (a few batches each) and
  remembered in ``cache_dir()/engine-choice.json``. A model not yet converted is run by TF when the job is smaller
  than :data:`LITERT_PAYS_FROM` images: its conversion would cost more time than LiteRT saves.

The engine is not part of the feature cache key: both engines give the same features within 1e-4 (tested).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from . import __version__
from .backbones import create_backbone, get_backbone_spec, weights_digest
from .distribute import gpu_visible
from .errors import TltoolError, did_you_mean
from .progress import say
from .settings import CHOICES, pinned_engine
from .utils import atomic_path, cache_dir, read_json, sha256_file, sha256_json, usable_cpus, write_json

if TYPE_CHECKING:
    import keras

ENGINE_CHOICES = CHOICES["engine"]
# Backbones whose engine is known without measuring: on a quiet 2-core machine LiteRT ran VGG16 at 0.68x TF's
# speed (issue 15; benchmarks/engines.py measures it again), so ``auto`` must never pick it there.
DECLARED: dict[str, str] = {"vgg16": "tf", "vgg19": "tf"}
CHOICE_FILE = "engine-choice.json"
# Below this many images (TTA views counted) a model with no LiteRT file yet runs on TF. The conversion takes 6-17 s
# on 2 cores (Lite0, 224-288 px), as long as TF takes for 500-1,500 images: a fine-tune's own val evaluation
# (100 photos) converted its new model and measured both engines, 30-37 s, to save 1-3 s of TF.
LITERT_PAYS_FROM = 1000


class Runner(Protocol):
    engine: str

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def map(self, batches: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]: ...


@dataclass(frozen=True)
class ModelSource:
    """What to run. ``build()`` returns a Keras model from pixels (0..255) to a dict of named outputs; ``key``
    holds everything the numbers depend on (it names the converted file); ``backbone`` selects a declared engine."""

    name: str
    image_size: int
    key: dict
    build: Callable[[], object] = field(compare=False, repr=False)
    backbone: str | None = None

    @property
    def digest(self) -> str:
        return sha256_json(self.key)[:24]


def feature_source(backbone: str, weights: str = "imagenet", image_size: int = 224,
                   weights_named: str = "--weights") -> ModelSource:
    """Avg- and max-pooled features of a backbone (the numbers ``tltool extract`` stores).

    The key holds the backbone, the weights' digest (as the feature cache has it), input size, pooling,
    preprocessing and tltool version; reading the registry imports no TensorFlow.
    """
    spec = get_backbone_spec(backbone)
    name = spec.name
    key = {"kind": "features", "backbone": name, "weights": weights_digest(spec, str(weights)),
           "image_size": image_size, "pooling": "avg+max", "preprocessing": spec.preprocess, "tltool": __version__}

    def build():
        from ._tf import keras

        extractor = create_backbone(backbone, weights=weights, image_size=image_size, weights_named=weights_named)
        fmap = extractor.output
        outputs = {"avg": keras.layers.GlobalAveragePooling2D(name="avg")(fmap),
                   "max": keras.layers.GlobalMaxPooling2D(name="max")(fmap)}
        return keras.Model(extractor.input, outputs, name=f"{name}_features")

    return ModelSource(f"{name} features", image_size, key, build, backbone=name)


def probability_source(model: keras.Model, image_size: int, key: dict, name: str = "classifier") -> ModelSource:
    """Probabilities of an in-memory Keras model (pixels in, one softmax out); ``key`` says what it is."""

    def build():
        from ._tf import keras

        return keras.Model(model.inputs, {"probabilities": model.outputs[0]}, name="probabilities")

    return ModelSource(name, image_size, {"kind": "probabilities", **key, "tltool": __version__}, build)


def keras_file_source(path: str | Path, image_size: int, backbone: str | None = None) -> ModelSource:
    """Probabilities of a ``.keras`` file tltool wrote (a fine-tuned or from-scratch run), keyed by its content;
    ``backbone`` (the run's) lets ``auto`` use an engine declared for it."""
    path = Path(path)
    key = {"kind": "probabilities", "model_sha256": sha256_file(path), "image_size": image_size,
           "tltool": __version__}

    def build():
        from ._tf import keras
        from .keras_files import load_keras_model

        model = load_keras_model(path, compile=False, image_size=image_size)
        return keras.Model(model.inputs, {"probabilities": model.outputs[0]}, name="probabilities")

    return ModelSource(path.name, image_size, key, build, backbone=backbone)


# ------------------------------------------------------------------------------------------------------- engines
class TFRunner:
    engine = "tf"

    def __init__(self, source: ModelSource) -> None:
        from ._tf import tf

        self.model = source.build()
        size = source.image_size
        # one graph for every batch size: a shorter last batch must not cost a second trace
        self._step = tf.function(lambda x: self.model(x, training=False),
                                 input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in self._step(np.asarray(batch, np.float32)).items()}

    def map(self, batches: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        return map(self, batches)


class LiteRTRunner:
    """A ``.tflite`` file in ai-edge-litert's interpreter: one single-threaded interpreter per core ("lane"), the
    lanes taking images one at a time from a shared queue; the outputs are the same numbers, in order.

    Measured on 2 cores (Lite0 at 288 px, images/s): one 2-thread interpreter ran 169 on batches of 32 and 215 on
    single images (a batch of 32 makes activations of hundreds of MB that miss every cache); two 1-thread lanes
    ran 220-227, and kept more of that when fed from JPEG files (a 2-thread XNNPACK pool spins while the decoding
    threads hold a core). Fed from the photos in one process, lanes with a fixed half of each batch each ran
    184-188, lanes taking the next image 198-201, streamed across batches as below 197-212. Each image is written
    as float32 straight into the interpreter's input (no copy, no resize and allocation per call as the signature
    runner makes: 2 % of the compute), and :meth:`map` hands the lanes the next batch before this one's rows are
    collected, so no lane waits at the end of a batch for the other.
    """

    engine = "litert"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        with without_delegate_banner():
            first = _Lane(self.path)
            self.lanes = lane_count(first.memory_bytes(self.path.stat().st_size), threads or usable_cpus())
            lanes = [first] + [_Lane(self.path) for _ in range(self.lanes - 1)]
        self.image_shape, self._empty = lanes[0].image_shape, lanes[0].empty_outputs()
        self._free = queue.SimpleQueue()  # lanes not yet owned by a pool thread
        for lane in lanes:
            self._free.put(lane)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="tltool-litert")

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._collect(self._submit(batch))

    def map(self, batches: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """The outputs of each batch, in order; batch k+1 is queued before batch k's outputs are collected, so
        ``batches`` must yield a new array each time (not one buffer refilled). Stopped early (or failing), it
        cancels the images it queued that no lane has started. When ``batches`` itself fails, the batch already
        queued is handed back first (its rows are computed; the caller keeps them), then the error is raised."""
        queued: list[list[Future]] = []  # at most two batches: the one handed back next, and the one after it
        source = iter(batches)
        try:
            while True:
                try:
                    batch = next(source)
                except StopIteration:
                    break
                except Exception:  # Ctrl-C and the like stop at once
                    while queued:
                        yield self._collect(queued.pop(0))
                    raise
                queued.append(self._submit(batch))
                if len(queued) == 2:
                    yield self._collect(queued.pop(0))
            while queued:
                yield self._collect(queued.pop(0))
        finally:
            for future in itertools.chain.from_iterable(queued):
                future.cancel()

    def close(self) -> None:
        """Stop the lanes' threads (queued images are dropped); the runner cannot run afterwards."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, batch: np.ndarray) -> list[Future]:
        batch = np.asarray(batch)
        if batch.ndim != 4 or batch.shape[1:] != self.image_shape:
            raise ValueError(f"{self.path.name} takes batches of shape (n, {', '.join(map(str, self.image_shape))}), "
                             f"got {batch.shape}")
        return [self._pool.submit(self._run_one, batch[i]) for i in range(len(batch))]

    def _collect(self, futures: list[Future]) -> dict[str, np.ndarray]:
        if not futures:
            return {name: empty.copy() for name, empty in self._empty.items()}
        try:
            rows = [f.result() for f in futures]
        except BaseException:  # a lane's error or Ctrl-C: the rest of this batch must not run on (nor hold up exit)
            for future in futures:
                future.cancel()
            raise
        return {name: np.stack([row[name] for row in rows]) for name in rows[0]}

    def _run_one(self, image: np.ndarray) -> dict[str, np.ndarray]:
        lane = getattr(self._local, "lane", None)
        if lane is None:  # the first image of this pool thread: it owns one lane from now on
            lane = self._local.lane = self._free.get_nowait()
        return lane.run(image)


class _Lane:
    """One single-threaded interpreter sized for one image; LiteRT releases the GIL while it computes."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=1)
        except ValueError as exc:  # "not a valid Flatbuffer buffer", "Could not open ..."
            raise TltoolError(f"{path}: not a LiteRT model LiteRT can load ({str(exc).splitlines()[0]}).") from None
        runner = self.interpreter.get_signature_runner()  # for the outputs' names (avg, max, probabilities)
        ((_name, entry),) = runner.get_input_details().items()
        self.outputs = {name: (d["index"], d["shape"][1:], d["dtype"])
                        for name, d in runner.get_output_details().items()}
        del runner  # it holds the interpreter's buffers, and invoke() refuses to run while anything does
        # pixels are written into the input as they are: a quantized input would need its scale and zero point
        # (tltool's own files keep float32 inputs in every quantization), and a free height or width a resize
        if entry["dtype"] != np.float32 or -1 in list(entry["shape_signature"][1:]):
            raise TltoolError(f"{path.name}: LiteRT input {entry['dtype'].__name__} "
                              f"{list(entry['shape_signature'])}; tltool runs float32 inputs of a fixed size.")
        self.image_shape = tuple(int(d) for d in entry["shape"][1:])
        self.interpreter.resize_tensor_input(entry["index"], [1, *self.image_shape])
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.tensor(entry["index"])

    def empty_outputs(self) -> dict[str, np.ndarray]:
        return {name: np.zeros((0, *shape), dtype) for name, (_index, shape, dtype) in self.outputs.items()}

    def memory_bytes(self, file_bytes: int) -> int:
        """What one lane holds of the model: the file, plus its float16 weights again, which XNNPACK keeps
        unpacked as float32 on a CPU (twice their size in the file)."""
        half = sum(int(np.prod(d["shape"])) * 2 for d in self.interpreter.get_tensor_details()
                   if d["dtype"] == np.float16)
        return file_bytes + 2 * half

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        np.copyto(self.input()[0], image, casting="unsafe")  # uint8 or float32 pixels, made float32 in place
        self.interpreter.invoke()
        return {name: self.interpreter.get_tensor(index)[0] for name, (index, _shape, _dtype) in self.outputs.items()}


LANE_MEMORY = 1 << 30  # bytes of model weights all lanes together may hold (each lane loads its own copy)


def lane_count(model_bytes: int, cores: int) -> int:
    """One lane per core, as many as :data:`LANE_MEMORY` holds copies of the model (VGG16's 59 MB features on 64
    cores would otherwise take 3.8 GB), at least one."""
    return max(1, min(cores, LANE_MEMORY // max(1, model_bytes)))


def to_tflite(model: keras.Model, quantize: str = "none", calibration: Callable[[], object] | None = None) -> bytes:
    """Convert a Keras model to LiteRT flatbuffer bytes; ``quantize`` is one of :data:`QUANTIZATIONS`.

    ``int8`` needs ``calibration``: a generator of ``[batch]`` lists of float32 pixel batches (one image each).
    Inputs and outputs stay float32 in every mode, so a client feeds the same pixels whatever the quantization.
    """
    from ._tf import tf

    if quantize not in QUANTIZATIONS:
        raise did_you_mean(quantize, QUANTIZATIONS, "quantization")
    try:
        with quiet_output():
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            QUANTIZATIONS[quantize](converter, calibration)
            return converter.convert()
    except TltoolError:
        raise
    except Exception as exc:  # the converter raises many kinds; the user needs one line
        raise TltoolError(f"LiteRT conversion failed ({exc.__class__.__name__}: {str(exc)[:300]}).") from None


_FD_LOCK = threading.Lock()  # one redirection of fds 1/2 at a time: overlapping ones would leave fd 2 on a temp file


@dataclass
class _Captured:
    data: bytes = b""  # what the block wrote to the redirected fds, once it has ended


@contextlib.contextmanager
def _redirected(fds: tuple[int, ...], captured: _Captured) -> Iterator[None]:
    """Send ``fds`` to one temporary file for the block, then put them back whatever happens (an interrupt
    included) and leave what was written in ``captured``."""
    with _FD_LOCK, tempfile.TemporaryFile() as file:
        sys.stdout.flush()
        sys.stderr.flush()
        saved: list[tuple[int, int]] = []
        try:
            for fd in fds:
                saved.append((fd, os.dup(fd)))
                os.dup2(file.fileno(), fd)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            file.seek(0)
            captured.data = file.read()


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """Hold back what the converter prints to file descriptors 1 and 2 (its saved-function dump, MLIR lines);
    shown only if it fails (not when Ctrl-C stops it: 71 lines of TensorSpec came before "interrupted"), or with
    ``TLTOOL_TF_VERBOSE=1``."""
    if os.environ.get("TLTOOL_TF_VERBOSE") == "1":
        yield
        return
    captured = _Captured()
    try:
        with _redirected((1, 2), captured):
            yield
    except KeyboardInterrupt:
        raise
    except BaseException:
        sys.stderr.write(captured.data.decode("utf-8", "replace")[-5000:])
        raise


DELEGATE_BANNER = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


@contextlib.contextmanager
def without_delegate_banner() -> Iterator[None]:
    """Drop LiteRT's "INFO: Created ... XNNPACK delegate" line, which its C++ logger writes to file descriptor 2 on
    every interpreter's first allocation (no setting turns it off); anything else written meanwhile is passed on."""
    captured = _Captured()
    try:
        with _redirected((2,), captured):
            yield
    finally:
        kept = [line for line in captured.data.splitlines(keepends=True) if line.strip() != DELEGATE_BANNER]
        if kept:
            os.write(2, b"".join(kept))


def _no_quantization(converter, calibration) -> None:
    pass


def _float16(converter, calibration) -> None:
    from ._tf import tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _dynamic_range(converter, calibration) -> None:
    from ._tf import tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _int8(converter, calibration) -> None:
    from ._tf import tf

    if calibration is None:
        raise TltoolError("int8 quantization needs calibration images (the run's training images).")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration


# float16 halves the weights (compute stays float32 on CPU); dynamic stores int8 weights and quantizes activations
# on the fly; int8 calibrates activation ranges on real images and runs integer kernels.
QUANTIZATIONS: dict[str, Callable] = {"none": _no_quantization, "float16": _float16, "dynamic": _dynamic_range,
                                      "int8": _int8}


def litert_dir() -> Path:
    path = cache_dir() / "litert"
    path.mkdir(parents=True, exist_ok=True)
    return path


def converted_model(source: ModelSource) -> Path:
    """The cached ``.tflite`` of ``source``, converted (with TensorFlow) only the first time, and again when the
    cached file is not the one written (cut short, changed, replaced by a link or a pipe): its digest is kept in
    the ``.json`` beside it. Before, a damaged file failed every command as "not a valid Flatbuffer buffer"."""
    path = _converted_path(source)
    if _conversion_intact(path):
        return path
    if os.path.lexists(path):
        say(f"the cached LiteRT model {path} is damaged or was written by an older tltool: converting again")
    start = time.perf_counter()
    data = to_tflite(source.build())
    # the digest first: another process that looks meanwhile finds no model (not a "damaged" one) and converts too;
    # the conversion is repeatable, so two at once write the same bytes
    write_json(path.with_suffix(".json"), {**source.key, "converter": "tf.lite.TFLiteConverter.from_keras_model",
                                           "seconds": round(time.perf_counter() - start, 2),
                                           "sha256": hashlib.sha256(data).hexdigest()})
    with atomic_path(path, suffix=".tflite.tmp") as tmp:
        tmp.write_bytes(data)
    say(f"converted {source.name} to LiteRT once ({time.perf_counter() - start:.1f} s): {path}")
    return path


def _converted_path(source: ModelSource) -> Path:
    return litert_dir() / f"{source.digest}.tflite"


def _conversion_intact(path: Path) -> bool:
    try:
        recorded = read_json(path.with_suffix(".json")).get("sha256")
        return not path.is_symlink() and recorded == sha256_file(path)
    except (OSError, ValueError, AttributeError):
        return False


def _tf_runner(source: ModelSource) -> Runner:
    return TFRunner(source)


def _litert_runner(source: ModelSource) -> Runner:
    return LiteRTRunner(converted_model(source))


ENGINES: dict[str, Callable[[ModelSource], Runner]] = {"tf": _tf_runner, "litert": _litert_runner}


def create_runner(source: ModelSource, engine: str = "auto", images: int | None = None) -> Runner:
    """A runner of ``source`` on ``engine`` (``auto``, ``tf`` or ``litert``); ``images``: how many the job runs
    (TTA views counted), where known (see :func:`resolve_engine`)."""
    name, measured = _resolve(source, engine, images)
    return measured or ENGINES[name](source)


# ---------------------------------------------------------------------------------------------------------- auto
def resolve_engine(source: ModelSource, engine: str = "auto", images: int | None = None) -> str:
    """``engine`` itself, or for ``auto`` the faster one for ``source`` on this machine; for a job of fewer than
    :data:`LITERT_PAYS_FROM` ``images``, TF unless the choice and the conversion are already made (the faster
    engine for the whole job, its conversion counted).

    ``$TLTOOL_ENGINE`` (``tf`` or ``litert``), where set, is what ``auto`` means: one engine for every command.
    """
    return _resolve(source, engine, images)[0]


def _resolve(source: ModelSource, engine: str, images: int | None) -> tuple[str, Runner | None]:
    """The engine's name, and its runner where a first measurement just made one (built again, it cost a second
    network build and, for TF, a second trace)."""
    if engine not in ENGINE_CHOICES:
        raise did_you_mean(engine, ENGINE_CHOICES, "engine")
    pinned = pinned_engine()
    if engine == "auto" and pinned != "auto":
        engine = pinned
    if engine != "auto":
        return engine, None
    if gpu_visible():
        return "tf", None
    if source.backbone in DECLARED:
        return DECLARED[source.backbone], None
    remembered = _remembered_choice(source)
    if images is not None and images < LITERT_PAYS_FROM:  # a conversion would cost more than LiteRT saves
        made = remembered == "litert" and _conversion_intact(_converted_path(source))
        return ("litert" if made else "tf"), None
    return (remembered, None) if remembered else measured_choice(source)


def _choice_key(source: ModelSource) -> str:
    return f"{source.digest}:cpus={usable_cpus()}"


def _remembered_choice(source: ModelSource) -> str | None:
    entry = _read_choices(cache_dir() / CHOICE_FILE).get(_choice_key(source))
    if isinstance(entry, dict) and entry.get("engine") in ENGINES:  # anything else (edited, damaged): measure again
        return entry["engine"]
    return None


def measured_choice(source: ModelSource) -> tuple[str, Runner | None]:
    """The faster engine for ``source`` on this machine, measured and remembered (:func:`_remembered_choice`), and
    the runner the measurement made of it."""
    path = cache_dir() / CHOICE_FILE
    choices = _read_choices(path)
    rates, runners = measure_engines(source)
    best = max(rates, key=rates.get)
    choices[_choice_key(source)] = {"engine": best, "images_per_second": rates, "name": source.name,
                                    "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(path, choices)
    say(f"engine for {source.name} on this machine: {best} ("
        + ", ".join(f"{k} {v:.0f} images/s" for k, v in rates.items()) + "; measured once, remembered)")
    return best, runners.get(best)


def _read_choices(path: Path) -> dict:
    try:
        data = read_json(path)
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def measure_engines(source: ModelSource, batch_size: int = 8,
                    rounds: int = 3) -> tuple[dict[str, float], dict[str, Runner]]:
    """Images/s of each engine on random pixels: one warm-up call, then ``rounds`` alternating timed calls (best);
    and the runners measured. The network is built once for both (the TF runner and the conversion)."""
    once = replace(source, build=functools.cache(source.build))
    runners = {name: make(once) for name, make in ENGINES.items()}
    batch = np.random.default_rng(0).uniform(0, 255, (batch_size, source.image_size, source.image_size, 3))
    batch = batch.astype(np.float32)
    return best_rates(runners, batch, rounds), runners


def best_rates(runners: dict[str, Callable], batch: np.ndarray, rounds: int) -> dict[str, float]:
    """Best-of-``rounds`` images/s of each runner on ``batch``, the runners alternating (same machine load)."""
    for run in runners.values():
        run(batch)  # warm-up: graph trace, delegate set-up
    best = {name: 0.0 for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run(batch)
            best[name] = max(best[name], len(batch) / (time.perf_counter() - start))
    return best
