"""How close the features of a photo and of its copy are, against those of two different photos: the threshold of
the near-copy leakage check (``tltool.leakage``).

A validation photo that is a re-saved, resized or recompressed copy of a training photo is missed by the content
hash (its bytes differ) and makes the reported accuracy optimistic. tltool compares the features it has already
extracted: the cosine similarity of average-pooled efficientnet_lite0 features (probe's default settings).

- distinct: every photo of flowers-tune (500, each a different photo) against its nearest other photo there;
  and each val photo of flowers and of pets against its nearest train photo (the splits tltool is scored on);
- copies: 100 photos of flowers-tune, each saved again as JPEG quality 60, at half size, as PNG, cropped to
  the central 90 %, mirrored, and 15 % brighter, against its original.

    python benchmarks/near_copies.py            # about 4 minutes on 2 cores

Writes ``benchmarks/results/near_copies.{json,md}``.
"""
from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, SHARED, emit  # noqa: E402
from tltool.leakage import NEAR_COPY_SIMILARITY  # noqa: E402

N_COPIED = 100
VARIANTS = {
    "jpeg q60": lambda im: (im, {"format": "JPEG", "quality": 60}),
    "half size": lambda im: (im.resize((im.width // 2, im.height // 2), Image.LANCZOS), {"format": "JPEG"}),
    "png": lambda im: (im, {"format": "PNG"}),
    "crop 90%": lambda im: (im.crop((im.width // 20, im.height // 20, im.width - im.width // 20,
                                     im.height - im.height // 20)), {"format": "JPEG", "quality": 90}),
    "mirrored": lambda im: (ImageOps.mirror(im), {"format": "JPEG", "quality": 90}),
    "brighter 15%": lambda im: (ImageEnhance.Brightness(im).enhance(1.15), {"format": "JPEG", "quality": 90}),
}


def _features(folder: Path, out: Path) -> tuple[list[str], np.ndarray, list[str]]:
    from tltool.features import extract_features

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fs = extract_features(str(folder), out).features
    return list(fs.paths), fs.features("avg"), [str(s) for s in fs.splits]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _make_copies(source: Path, target: Path) -> dict[str, tuple[str, str]]:
    """Copies of the first photos of each class, as ``target/<class>/<stem>__<variant>.<ext>``: {copy: (orig, v)}."""
    photos = sorted(source.glob("*/*.jpg"))
    per_class = N_COPIED // len({p.parent.name for p in photos})
    chosen = [p for c in sorted({p.parent.name for p in photos})
              for p in [q for q in photos if q.parent.name == c][:per_class]]
    made = {}
    for photo in chosen:
        with Image.open(photo) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            for name, make in VARIANTS.items():
                copy, options = make(im)
                ext = "png" if options["format"] == "PNG" else "jpg"
                path = target / photo.parent.name / f"{photo.stem}__{name.replace(' ', '-').replace('%', '')}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                copy.save(path, **options)
                made[str(path.resolve())] = (str(photo.resolve()), name)
    return made


def _stats(values: np.ndarray) -> dict:
    """The spread of ``values`` and the share at or above tltool's threshold (a distinct pair: a false alarm)."""
    return {"n": int(len(values)), "min": float(values.min()), "p01": float(np.quantile(values, 0.01)),
            "median": float(np.median(values)), "p99": float(np.quantile(values, 0.99)),
            "max": float(values.max()), "flagged": float(np.mean(values >= NEAR_COPY_SIMILARITY))}


def main() -> None:
    tune = SHARED / "flowers-tune"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        made = _make_copies(tune, tmp / "copies")
        paths, X, _ = _features(tune, tmp / "f-tune")
        unit = _unit(X)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -1)
        distinct = {"flowers-tune, nearest other photo": _stats(sims.max(1))}
        for name in ("flowers", "pets"):
            p, x, splits = _features(SHARED / name, tmp / f"f-{name}")
            u, s = _unit(x), np.array(splits)
            distinct[f"{name} val, nearest train photo"] = _stats((u[s == "val"] @ u[s == "train"].T).max(1))
        index = {path: i for i, path in enumerate(paths)}
        cpaths, CX, _ = _features(tmp / "copies", tmp / "f-copies")
        cunit = _unit(CX)
        copies = {}
        for variant in VARIANTS:
            rows = [(i, index[made[p][0]]) for i, p in enumerate(cpaths) if made[p][1] == variant]
            copies[variant] = _stats(np.array([float(cunit[i] @ unit[j]) for i, j in rows]))
    result = {"features": "efficientnet_lite0, probe's default settings, average-pooled, cosine similarity",
              "threshold": NEAR_COPY_SIMILARITY, "distinct": distinct, "copies": copies}
    emit("near_copies", result)
    lines = ["# Near copies: cosine similarity of features", "",
             f"{result['features']}; see benchmarks/near_copies.py.", "",
             f"| pairs | n | min | 1 % | median | 99 % | max | flagged (>= {NEAR_COPY_SIMILARITY}) |",
             "|---|---|---|---|---|---|---|---|"]
    for group in (distinct, copies):
        lines += [f"| {name} | {s['n']} | {s['min']:.4f} | {s['p01']:.4f} | {s['median']:.4f} | {s['p99']:.4f} | "
                  f"{s['max']:.4f} | {s['flagged']:.0%} |" for name, s in group.items()]
    (RESULTS / "near_copies.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
