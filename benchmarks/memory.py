"""Does memory stay flat as the dataset grows? Peak RSS of `tltool extract` over 1,000 vs 10,000 generated images,
each in a fresh process. Goal: ratio <= 1.2.

    python benchmarks/memory.py
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, jpeg_corpus  # noqa: E402

CHILD = """
import resource, sys
from tltool.features import extract_features
extract_features(sys.argv[1], sys.argv[2], image_size=int(sys.argv[3]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(data: Path, size: int) -> float:
    with tempfile.TemporaryDirectory(prefix="tltool-mem-") as out:
        env = {**os.environ, "TLTOOL_NO_PROGRESS": "1"}
        proc = subprocess.run([sys.executable, "-c", CHILD, str(data), out, str(size)], capture_output=True,
                              text=True, env=env, check=True)
        return int(proc.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "tltool-bench-memory"))
    args = parser.parse_args()
    work = Path(args.workdir)
    small = jpeg_corpus(args.small, work / f"n{args.small}", size=256)
    large = jpeg_corpus(args.large, work / f"n{args.large}", size=256)
    rss_small, rss_large = peak_rss_mb(small, args.image_size), peak_rss_mb(large, args.image_size)
    emit("memory", {"images_small": args.small, "images_large": args.large, "image_size": args.image_size,
                    "peak_rss_mb_small": round(rss_small), "peak_rss_mb_large": round(rss_large),
                    "ratio": round(rss_large / rss_small, 3), "goal": "<= 1.2"})


if __name__ == "__main__":
    main()
