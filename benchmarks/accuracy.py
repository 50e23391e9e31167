"""Linear probe vs fine-tuning vs TTA, for every backbone whose weights are available offline, on the real photos
in ../shared/datasets/*. Prints a Markdown table (95 % Wilson intervals) and a paired test of probe vs fine-tune.

    python benchmarks/accuracy.py                      # about 5 minutes per dataset on 2 CPU cores
    python benchmarks/accuracy.py --head-epochs 1 --epochs 1 --image-size 96   # a quick check
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TLTOOL_NO_PROGRESS", "1")

from _common import RESULTS, SHARED, emit  # noqa: E402


def fmt(p: dict) -> str:
    return f"{p['value']:.3f} [{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=None, help="names under ../shared/datasets [all]")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--head-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--unfreeze", default="2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "tltool-bench-accuracy"))
    args = parser.parse_args()

    from tltool.backbones import list_backbones
    from tltool.compare import compare_runs
    from tltool.finetune import FinetuneConfig, finetune
    from tltool.linear import probe

    datasets = args.datasets or sorted(p.name for p in SHARED.iterdir() if (p / "train").is_dir())
    backbones = [s.name for s in list_backbones() if s.weights_cached()]
    rows, table = [], ["| data | backbone | n val | linear probe | probe + flip TTA | fine-tune | fine-tune + "
                       "flip TTA | fine-tune + 10-crop | fine-tune vs probe (paired) |",
                       "|---|---|---|---|---|---|---|---|---|"]
    out = Path(args.out)
    for name in datasets:
        data = SHARED / name
        for backbone in backbones:
            start = time.perf_counter()
            linear = probe(str(data), backbone=backbone, image_size=args.image_size, tta="flip", seed=args.seed,
                           features_dir=out / f"{name}-{backbone}-features", out=out / f"{name}-{backbone}-linear",
                           force=True)
            probe_seconds = time.perf_counter() - start
            start = time.perf_counter()
            config = FinetuneConfig(data=str(data), backbone=backbone, image_size=args.image_size,
                                    head_epochs=args.head_epochs, epochs=args.epochs, lr=args.lr,
                                    warmup_epochs=args.warmup_epochs, unfreeze=args.unfreeze, seed=args.seed,
                                    tta="flip")
            tuned = finetune(config, out=out / f"{name}-{backbone}-finetune", force=True)
            from tltool.evaluation import Evaluation
            from tltool.models import load_run

            ten = load_run(tuned.run_dir).predict_paths([r for r in _val_paths(tuned.run_dir)], tta="10crop")
            ten_eval = Evaluation(tuned.evaluation.classes, tuned.evaluation.y_true, ten)
            finetune_seconds = time.perf_counter() - start
            comparison, _ = compare_runs(linear.run_dir, tuned.run_dir, out=out / f"{name}-{backbone}-compare",
                                         force=True)  # a rerun replaces its own comparison
            lm, fm = linear.metrics, tuned.metrics
            row = {"data": name, "backbone": backbone, "n_val": lm["val"]["accuracy"]["n"],
                   "probe": lm["val"]["accuracy"], "probe_flip": lm["tta"]["flip"]["accuracy"],
                   "finetune": fm["val"]["accuracy"], "finetune_flip": fm["tta"]["flip"]["accuracy"],
                   "finetune_10crop": ten_eval.accuracy().to_json(), "paired": comparison.to_json(),
                   "seconds": {"probe": round(probe_seconds), "finetune": round(finetune_seconds)},
                   "settings": {"head_epochs": args.head_epochs, "epochs": args.epochs, "lr": args.lr,
                                "warmup_epochs": args.warmup_epochs, "unfreeze": args.unfreeze,
                                "image_size": args.image_size, "seed": args.seed}}
            rows.append(row)
            table.append(f"| {name} | {backbone} | {row['n_val']} | {fmt(row['probe'])} | {fmt(row['probe_flip'])} | "
                         f"{fmt(row['finetune'])} | {fmt(row['finetune_flip'])} | {fmt(row['finetune_10crop'])} | "
                         f"{comparison.difference:+.3f} [{comparison.ci95[0]:+.3f}, {comparison.ci95[1]:+.3f}], "
                         f"p = {comparison.p_value:.2f} |")
    markdown = "\n".join(table) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "accuracy.md").write_text(markdown)
    print(markdown)
    emit("accuracy", {"rows": rows})


def _val_paths(run_dir: Path) -> list[str]:
    from tltool.report import read_predictions

    return read_predictions(run_dir / "predictions.csv")[0]


if __name__ == "__main__":
    main()
