"""Scaling out with TensorFlow's own ``tf.distribute``: one option, ``--strategy``, on extract, finetune and train.

* ``none``: the default strategy (one device), exactly the single-machine path.
* ``mirrored``: ``MirroredStrategy`` over every local GPU (or every logical CPU device when there is no GPU).
* ``multiworker``: ``MultiWorkerMirroredStrategy`` over the cluster named by the standard ``TF_CONFIG`` variable.
* ``auto``: ``mirrored`` when more than one GPU is visible, else ``none``.

The choice, the replica count and the devices are printed and written into the run's metadata. Under
``multiworker`` only the chief writes the run folder; every other worker writes to a temporary folder that is
removed when it finishes. ``MultiWorkerMirroredStrategy`` has to exist before TensorFlow runs its first operation,
so commands resolve the strategy first (:func:`resolve_strategy` remembers it for the rest of the process).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import TltoolError
from .settings import CHOICES
from .progress import say

if TYPE_CHECKING:
    import tensorflow as tf

STRATEGIES = CHOICES["strategy"]
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')
_JOBS = ("chief", "worker")


@dataclass
class Cluster:
    """What ``TF_CONFIG`` says: this process's job and index, and every worker's address (the chief first)."""

    task_type: str
    task_index: int
    addresses: list[str]
    worker_index: int  # 0 .. len(addresses)-1, the chief (or worker 0 when there is no chief job) is 0

    @property
    def num_workers(self) -> int:
        return len(self.addresses)

    @property
    def chief(self) -> bool:
        return self.worker_index == 0


def _tf_config_error(problem: str) -> TltoolError:
    return TltoolError(f"--strategy multiworker: {problem}. Set TF_CONFIG on every worker to the same cluster and "
                       f"that worker's own task, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' (index 1 on the second "
                       "machine).")


def read_tf_config(environ: dict | None = None) -> Cluster:
    """Parse and check ``TF_CONFIG``; a missing or malformed one is one :class:`TltoolError` naming the problem."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw.strip():
        raise _tf_config_error("the TF_CONFIG environment variable is not set")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise _tf_config_error(f"TF_CONFIG is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(config, dict):
        raise _tf_config_error("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise _tf_config_error("TF_CONFIG has no 'cluster' object (job name -> list of host:port)")
    if not isinstance(task, dict):
        raise _tf_config_error("TF_CONFIG has no 'task' object ({'type': 'worker', 'index': N})")
    for job, addresses in cluster.items():
        if job not in _JOBS:
            raise _tf_config_error(f"TF_CONFIG's cluster has a '{job}' job; MultiWorkerMirroredStrategy uses only "
                                   f"'chief' and 'worker'")
        if not isinstance(addresses, list) or not addresses:
            raise _tf_config_error(f"TF_CONFIG's cluster '{job}' must be a non-empty list of \"host:port\" strings")
        for address in addresses:
            host, _, port = str(address).rpartition(":") if isinstance(address, str) else ("", "", "")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise _tf_config_error(f"TF_CONFIG's cluster '{job}' has {address!r}, which is not \"host:port\"")
    if len(cluster.get("chief", [])) > 1:
        raise _tf_config_error("TF_CONFIG's cluster may have one 'chief' address at most")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        raise _tf_config_error(f"TF_CONFIG's task type is {task_type!r}, but the cluster has only "
                               f"{sorted(cluster)}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise _tf_config_error(f"TF_CONFIG's task index is {index!r}; the '{task_type}' job has "
                               f"{len(cluster[task_type])} address(es), so it must be 0..{len(cluster[task_type]) - 1}")
    addresses = [*cluster.get("chief", []), *cluster.get("worker", [])]
    offset = len(cluster.get("chief", [])) if task_type == "worker" else 0
    return Cluster(task_type, index, addresses, offset + index)


@dataclass
class DistributeInfo:
    """What was chosen; written as ``distribute`` into model.json, metrics.json's config and features.json."""

    requested: str
    strategy: str  # "default", "mirrored" or "multiworker"
    replicas: int
    devices: list[str]
    workers: int = 1
    worker_index: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def distributed(self) -> bool:
        """True when the training loop must go through the strategy (anything but the default strategy)."""
        return self.strategy != "default"

    @property
    def chief(self) -> bool:
        return self.worker_index == 0

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out

    def describe(self) -> str:
        devices = ", ".join(d.split("device:")[-1] for d in self.devices)
        where = f" on worker {self.worker_index} of {self.workers}" if self.workers > 1 else ""
        plural = "s" if self.replicas != 1 else ""
        return (f"strategy {self.strategy} (--strategy {self.requested}): {self.replicas} replica{plural}{where}, "
                f"devices {devices}")


_RESOLVED: dict[str, tuple[object, DistributeInfo]] = {}


def gpu_visible() -> bool:
    """A GPU TensorFlow can use. Without an NVIDIA device node TensorFlow is not imported to find out."""
    if "tensorflow" not in sys.modules and not any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/dxg")):
        return False
    from ._tf import tf

    return bool(tf.config.list_physical_devices("GPU"))


def inference_strategy(name: str = "auto") -> tuple[object | None, DistributeInfo]:
    """:func:`resolve_strategy` for inference. On a machine without a GPU, ``auto`` and ``none`` mean this CPU,
    known without importing TensorFlow: an engine outside it (LiteRT) then never loads it (3-5 s on 2 cores)."""
    if name in ("auto", "none") and not gpu_visible():
        return None, DistributeInfo(name, "default", 1, ["/device:CPU:0"])
    return resolve_strategy(name)


def resolve_strategy(name: str = "auto") -> tuple[object, DistributeInfo]:
    """The ``tf.distribute`` strategy for ``--strategy name`` and what it is; made once per process and name."""
    if name not in STRATEGIES:
        raise TltoolError(f"--strategy {name}: choose one of {', '.join(STRATEGIES)}.")
    if name in _RESOLVED:
        return _RESOLVED[name]
    cluster = read_tf_config() if name == "multiworker" else None  # a bad TF_CONFIG fails before TF starts
    from ._tf import tf

    gpus = tf.config.list_physical_devices("GPU")
    if name == "multiworker":
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as exc:
            raise TltoolError(f"--strategy multiworker: TensorFlow could not join the cluster ({exc}). The strategy "
                              "must be created before TensorFlow runs anything else in the process.") from None
        info = DistributeInfo(name, "multiworker", strategy.num_replicas_in_sync,
                              list(strategy.extended.worker_devices), cluster.num_workers, cluster.worker_index,
                              {"cluster": cluster.addresses, "task": f"{cluster.task_type}:{cluster.task_index}"})
    elif name == "mirrored" or (name == "auto" and len(gpus) > 1):
        kind = "GPU" if gpus else "CPU"
        devices = [d.name for d in tf.config.list_logical_devices(kind)]
        strategy = tf.distribute.MirroredStrategy(devices)
        info = DistributeInfo(name, "mirrored", strategy.num_replicas_in_sync, devices)
    else:
        strategy = tf.distribute.get_strategy()
        device = tf.config.list_logical_devices("GPU" if gpus else "CPU")[0].name
        info = DistributeInfo(name, "default", 1, [device])
        if name == "auto" and os.environ.get("TF_CONFIG"):
            say("TF_CONFIG is set, but --strategy auto trains on this machine alone; pass --strategy multiworker to "
                "train across the cluster it names")
    _RESOLVED[name] = (strategy, info)
    return strategy, info


MAX_SHARDS = 10_000


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard I/N`` -> ``(I, N)`` with ``0 <= I < N``."""
    if text is None or text == "":
        return None
    index, sep, count = str(text).partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise TltoolError(f"--shard {text}: write INDEX/COUNT, e.g. --shard 0/4 on the first of 4 machines.")
    i, n = int(index), int(count)
    if not 1 <= n <= MAX_SHARDS:
        raise TltoolError(f"--shard {text}: COUNT must be 1..{MAX_SHARDS} (the machines sharing the work).")
    if not 0 <= i < n:
        raise TltoolError(f"--shard {text}: INDEX must be 0..COUNT-1 (here 0..{n - 1}).")
    return i, n


def extraction_shard(strategy: str, shard: str | None) -> tuple[int, int] | None:
    """Which share of the chunks this process extracts: ``--shard I/N``, or its worker index under multiworker."""
    parsed = parse_shard(shard)
    if strategy == "multiworker":
        if parsed is not None:
            raise TltoolError("--shard and --strategy multiworker both choose this process's share; give one.")
        cluster = read_tf_config()
        return cluster.worker_index, cluster.num_workers
    return parsed


@contextlib.contextmanager
def worker_scratch_dir(info: DistributeInfo) -> Iterator[Path]:
    """Where a worker other than the chief writes its checkpoints: a temporary folder, removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=f"tltool-worker{info.worker_index}-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def shard_options(info: DistributeInfo) -> tf.data.Options:
    """``tf.data`` options for a worker's own share of the data (already sharded by tltool before decoding, see
    :func:`tltool.pipeline._keep_share`): the strategy's auto-sharding is off. (Its ``DATA`` policy, used before,
    had every worker decode every photo and keep its share.)"""
    from ._tf import tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options
