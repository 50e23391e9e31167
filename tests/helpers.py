"""Builders of small image corpora for tests: real files written with Pillow, nothing downloaded."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def solid(path: Path, colour=(200, 30, 30), size=(64, 48), fmt="JPEG", mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, fmt, **save)
    return path


def noise_image(path: Path, seed: int, size=(80, 60), fmt="JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, fmt)
    return path


def jpeg_bytes(size=(64, 64), colour=(10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build_bad_corpus(root: Path) -> dict[str, str]:
    """A dataset folder with every kind of bad and awkward file. Returns {relative path: expected reason or 'ok'}."""
    from tltool import images

    expected: dict[str, str] = {}

    def put(rel: str, outcome: str) -> Path:
        expected[rel] = outcome
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    for i in range(3):
        noise_image(put(f"cats/cat_{i}.jpg", "ok"), seed=i)
        noise_image(put(f"dogs/dog_{i}.jpg", "ok"), seed=10 + i)
    put("cats/empty.jpg", images.EMPTY).write_bytes(b"")
    data = jpeg_bytes((200, 200))
    put("cats/truncated.jpg", images.CORRUPT).write_bytes(data[: len(data) // 2])
    put("dogs/notes.jpg", images.NOT_AN_IMAGE).write_text("this is not a picture")
    put("dogs/readme.txt", images.NOT_AN_IMAGE).write_text("hello")
    solid(put("dogs/tiny.png", images.TOO_SMALL), size=(20, 200), fmt="PNG")
    solid(put("cats/huge.png", images.BOMB), size=(3000, 3000), fmt="PNG", mode="L", colour=0)
    # awkward but fine: converted the same way everywhere
    solid(put("cats/cmyk.jpg", "ok"), mode="CMYK", colour=(0, 255, 255, 0))
    solid(put("cats/rgba.png", "ok"), mode="RGBA", colour=(255, 0, 0, 0), fmt="PNG")
    solid(put("dogs/gray.png", "ok"), mode="L", colour=128, fmt="PNG")
    arr16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    Image.fromarray(arr16).save(put("dogs/depth16.png", "ok"), "PNG")
    solid(put("dogs/palette.gif", "ok"), mode="P", colour=3, fmt="GIF")
    noise_image(put("cats/café_ünïcode.jpg", "ok"), seed=99)
    (root / "cats" / ".DS_Store").write_bytes(b"\0\0junk")
    (root / "dogs" / "._dog_0.jpg").write_bytes(b"\0\5\26\7")
    (root / "empty_class").mkdir(parents=True, exist_ok=True)
    return expected
