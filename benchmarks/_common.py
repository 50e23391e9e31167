"""Shared bits of the benchmark scripts: where the photos are, machine facts, one JSON line per result."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(os.environ.get("TLTOOL_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def machine() -> dict:
    from tltool._tf import tf

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
            "tensorflow": tf.__version__, "gpus": len(tf.config.list_physical_devices("GPU")),
            "date": time.strftime("%Y-%m-%d"), "cpu": cpu_model()}


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo names it, with its family and model numbers: the same name ("AMD EPYC") has covered
    machines whose LiteRT rate differed 2x. Empty where there is no /proc/cpuinfo."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}; "
            f"{', '.join(f for f in ('avx2', 'fma', 'avx512f', 'avx512_vnni') if f in flags) or 'no avx2'})")


def jpeg_corpus(n: int, folder: Path, size: int = 320, seed: int = 0) -> Path:
    """``n`` photo-like JPEGs (rendered shapes on noisy gradients) in two class folders, made once."""
    import random

    from tltool.sample import SHAPES, render_shape

    marker = folder / f".complete-{n}-{size}-{seed}"
    if marker.exists():
        return folder
    rng = random.Random(seed)
    for i in range(n):
        kind = SHAPES[i % 2]
        target = folder / kind / f"{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        render_shape(kind, rng, size).save(target, quality=90)
    marker.touch()
    return folder


def emit(name: str, result: dict) -> dict:
    """Print one JSON line and keep it under benchmarks/results/NAME.json."""
    result = {"benchmark": name, **result, "machine": machine()}
    line = json.dumps(result, sort_keys=False)
    print(line)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
