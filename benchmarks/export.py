"""The price of each ``--quantize`` on a flowers run: validation accuracy (Wilson interval), paired difference to
the float model (Newcombe interval, exact McNemar), file size and images/s of the .tflite on this CPU.

    python benchmarks/export.py                     # a linear probe on ../shared/datasets/flowers, made once
    python benchmarks/export.py --run runs/finetune-flowers-...

Every number comes from ``tltool export RUN --format tflite --quantize Q`` itself (its export.json). The speed is
the LiteRT interpreter on one batch of 32 validation images, best of 3, on a machine shared with other jobs.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TLTOOL_NO_PROGRESS", "1")

from _common import RESULTS, SHARED, emit  # noqa: E402

QUANTIZE = ("none", "float16", "dynamic", "int8")


def flowers_run(work: Path) -> Path:
    from tltool.linear import probe

    data = SHARED / "flowers"
    if not (data / "train").is_dir():
        sys.exit(f"{data} is absent: pass --run RUN_DIR")
    return probe(str(data), features_dir=work / "features", out=work / "run").run_dir


def model_config(run: Path) -> dict:
    from tltool.utils import read_json

    return read_json(run / "model.json")


def measure_all(run: Path, work: Path, max_drop: float) -> list[dict]:
    from tltool.export import QuantizationCostWarning, export_run

    rows = []
    for quantize in QUANTIZE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", QuantizationCostWarning)  # recorded in the row instead
            result = export_run(run, "tflite", work / f"export-{quantize}", quantize=quantize, max_drop=max_drop)
        rows.append(result.measurement)
        print({k: result.measurement[k] for k in ("quantize", "size_bytes", "drop_points", "images_per_second")},
              flush=True)
    return rows


def _interval(p: dict) -> str:
    return f"{p['value']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]"


def markdown(rows: list[dict], run: str, machine: dict) -> str:
    lines = [f"# Export price per --quantize ({run})", "",
             f"{machine['cpus']} CPUs, TensorFlow {machine['tensorflow']}, {machine['date']}; validation images: "
             f"{rows[0]['accuracy']['n']}. Shared machine: speeds are noisy.", "",
             "| --quantize | size MB | accuracy [95 %] | float model | difference [95 %] | McNemar p | same top-1 "
             "| images/s (.tflite) | images/s (float, TF) | within --max-drop |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in rows:
        paired = m["paired_difference"]
        lo, hi = paired["ci95"]
        lines.append(f"| {m['quantize']} | {m['size_bytes'] / 1e6:.2f} | {_interval(m['accuracy'])} | "
                     f"{_interval(m['float_accuracy'])} | {paired['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                     f"{paired['p_value']:.3g} | {m['agreement_with_float']:.0%} | "
                     f"{m['images_per_second']['export']:.0f} | {m['images_per_second']['float_tf']:.0f} | "
                     f"{'yes' if m['within_max_drop'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a finished run [default: a linear probe on flowers]")
    parser.add_argument("--max-drop", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tltool-export-bench-") as tmp:
        work = Path(tmp)
        run = Path(args.run) if args.run else flowers_run(work)
        rows = measure_all(run, work, args.max_drop)
        label = args.run or (f"linear probe, efficientnet_lite0 {model_config(run)['image_size']} px, "
                             "flowers train 250 / val 100")
        result = emit("export", {"run": label, "rows": rows})
    (RESULTS / "export.md").write_text(markdown(rows, label, result["machine"]))


if __name__ == "__main__":
    main()
