"""The shared decode function: every bad file gets its reason, awkward files are converted the same way."""
from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from helpers import build_bad_corpus, solid
from tltool import images
from tltool.errors import BadImageError


def test_bad_corpus_each_file_gets_its_reason(tmp_path):
    expected = build_bad_corpus(tmp_path)
    for rel, outcome in expected.items():
        path = tmp_path / rel
        if outcome == "ok":
            info = images.check_image(path, max_pixels=4_000_000)
            assert info.width >= 32 and info.height >= 32, rel
        else:
            with pytest.raises(BadImageError) as err:
                images.check_image(path, max_pixels=4_000_000)
            assert err.value.reason == outcome, rel
            assert str(path) in str(err.value)


def test_rgba_is_composited_on_white(tmp_path):
    p = solid(tmp_path / "t.png", mode="RGBA", colour=(255, 0, 0, 0), fmt="PNG")
    assert (images.load_image(p) == 255).all()  # fully transparent red -> white
    p2 = solid(tmp_path / "o.png", mode="RGBA", colour=(255, 0, 0, 255), fmt="PNG")
    assert tuple(images.load_image(p2)[0, 0]) == (255, 0, 0)


def test_16_bit_and_grayscale_and_cmyk_become_rgb(tmp_path):
    arr = np.full((40, 40), 65535, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "w.png")
    out = images.load_image(tmp_path / "w.png")
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8 and (out == 255).all()
    gray = images.load_image(solid(tmp_path / "g.png", mode="L", colour=77, fmt="PNG"))
    assert gray.shape == (48, 64, 3) and (gray == 77).all()
    cmyk = images.load_image(solid(tmp_path / "c.jpg", mode="CMYK", colour=(0, 0, 0, 0)))
    assert cmyk.shape[-1] == 3 and cmyk.mean() > 240  # no ink -> white
    info = images.check_image(tmp_path / "c.jpg")
    assert any("CMYK" in c for c in info.conversions)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (80, 40), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 40, 40))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = images.load_image(tmp_path / "r.jpg")
    assert out.shape[:2] == (80, 40)  # portrait after rotation
    assert out[:30].mean() > 200 and out[-30:].mean() < 50  # the white half is now on top
    assert any("EXIF" in c for c in images.check_image(tmp_path / "r.jpg").conversions)


@pytest.mark.parametrize("policy", images.RESIZE_POLICIES)
def test_resize_policies_give_square_output(tmp_path, policy):
    p = solid(tmp_path / "wide.png", size=(200, 100), fmt="PNG", colour=(0, 200, 0))
    out = images.load_image(p, 64, policy)
    assert out.shape == (64, 64, 3)
    if policy == "pad":  # letterbox: black bars above and below
        assert out[0].max() == 0 and out[32, 32, 1] == 200
    else:
        assert (out[..., 1] == 200).all()


# ------------------------------------------------------------------------------------------------ Pillow's guard
PILLOW_DEFAULT_LIMIT = int(1024 * 1024 * 1024 // 4 // 3)  # Image.MAX_IMAGE_PIXELS as Pillow ships it


def _png_header(path, width: int, height: int):
    """A PNG that declares ``width`` x ``height`` and holds no pixel data: Image.open sees only the size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_importing_tltool_leaves_pillows_own_guard_on():
    code = ("from PIL import Image; import tltool.images, tltool.cli, tltool.collect, tltool.inspection; "
            f"assert Image.MAX_IMAGE_PIXELS == {PILLOW_DEFAULT_LIMIT}, Image.MAX_IMAGE_PIXELS")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_max_pixels_is_what_rejects_and_pillows_limit_is_put_back(tmp_path):
    huge = _png_header(tmp_path / "huge.png", 20_000, 20_000)  # 400 MP: past Pillow's hard limit (2 x 89.5 MP)
    large = _png_header(tmp_path / "large.png", 10_000, 10_000)  # 100 MP: past Pillow's warning limit
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_LIMIT
    for path, max_pixels in ((huge, images.DEFAULT_MAX_PIXELS), (large, images.DEFAULT_MAX_PIXELS),
                             (large, 99_000_000)):
        with pytest.raises(BadImageError) as err, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # Pillow's own, for a file refused
            images.check_image(path, max_pixels=max_pixels)
        assert err.value.reason == images.BOMB
        assert err.value.detail.endswith(f"pixels > --max-pixels {max_pixels:,}")
        assert f"{(400 if path == huge else 100) * 10**6:,} pixels" in err.value.detail
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning for a size the user allowed
        for path, max_pixels in ((huge, 500_000_000), (large, 150_000_000)):
            with pytest.raises(BadImageError) as err:
                images.check_image(path, max_pixels=max_pixels)
            assert err.value.reason == images.CORRUPT  # past the size checks: only the missing pixels are wrong
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_LIMIT  # raised for one open only, then put back


def test_the_header_check_names_every_bad_file_but_the_truncated_one_without_decoding(tmp_path, monkeypatch):
    """Before the split only headers are read: everything but a truncated body is found there, and nothing is
    decoded (the truncated JPEG is left to the decode that feeds the network, tests/test_features.py)."""
    from tltool.dataset import load_dataset
    from tltool.inspection import check_dataset

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))  # no earlier decode of these bytes is known
    expected = build_bad_corpus(tmp_path / "data")
    before = images.decode_count()
    checked = check_dataset(load_dataset(tmp_path / "data"), max_pixels=4_000_000, emit_warnings=False, decode=False)
    assert images.decode_count() == before
    reasons = {f.record.path: f.reason for f in checked.files}
    for rel, outcome in expected.items():
        wanted = None if outcome in ("ok", images.CORRUPT) else outcome
        assert reasons[str(tmp_path / "data" / rel)] == wanted, rel
    assert all(f.width >= 32 and f.sha256 for f in checked.files if f.ok)


def test_a_photo_is_checked_once_per_content_across_runs(tmp_path, monkeypatch):
    from tltool.dataset import load_dataset
    from tltool.inspection import check_dataset

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    expected = build_bad_corpus(tmp_path / "data")
    first = check_dataset(load_dataset(tmp_path / "data"), max_pixels=4_000_000, emit_warnings=False)
    decoded = images.decode_count()
    opened, real_open = [], images._open
    monkeypatch.setattr(images, "_open", lambda path, *a: opened.append(str(path)) or real_open(path, *a))
    for decode in (True, False):  # a full check and a header check both come from the cache now
        again = check_dataset(load_dataset(tmp_path / "data"), max_pixels=4_000_000, emit_warnings=False, decode=decode)
        assert [(f.reason, f.width, f.sha256) for f in again.files] == [(f.reason, f.width, f.sha256)
                                                                         for f in first.files]
    assert images.decode_count() == decoded
    assert set(opened) == {str(tmp_path / "data" / "cats/huge.png")}  # only a bomb's header is read again
    # the truncated JPEG, found by the full decode, is now dropped by a header check too
    assert {f.record.path for f in again.bad} >= {str(tmp_path / "data" / "cats/truncated.jpg")}
    # a lower pixel limit applies to cached sizes as well: a bomb is a matter of --max-pixels, not of the cache
    strict = check_dataset(load_dataset(tmp_path / "data"), max_pixels=4_000, emit_warnings=False, decode=False)
    assert {f.reason for f in strict.files if f.record.path.endswith("cat_0.jpg")} == {images.BOMB}
    assert len(expected) == len(first.files)


def test_the_feeding_decode_remembers_a_broken_file_but_not_one_over_max_pixels(tmp_path):
    """A file the decode that feeds a network rejects is remembered by content, so the next check drops it without
    decoding it; a decompression bomb is not: it depends on --max-pixels, and a later run may allow it (as the check
    itself never stores one)."""
    from tltool import filecache
    from tltool.utils import sha256_file

    big, broken = solid(tmp_path / "big.jpg", size=(1200, 1200)), tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff truncated")
    log = images.DecodeLog(announce=False)
    for path in (big, broken):
        with pytest.raises(BadImageError):
            images.decode_or_blank(str(path), 64, "crop", 1_000_000, "raise", log)
    assert log.failures[str(big)][0] == images.BOMB
    assert filecache.lookup(sha256_file(big)) is None
    assert filecache.lookup(sha256_file(broken))["reason"] == log.failures[str(broken)][0]
    assert images.check_image(big, max_pixels=10_000_000).width == 1200  # a higher limit reads it


def test_a_folder_or_a_named_pipe_is_a_bad_file_at_once(tmp_path):
    """Read as photos, they are named as unreadable without waiting: opening a pipe for reading blocks until
    something writes to it, and `tltool predict` with one among its files hung."""
    import os

    from tltool.utils import sha256_file

    (tmp_path / "folder.jpg").mkdir()
    os.mkfifo(tmp_path / "pipe.jpg")
    for name in ("folder.jpg", "pipe.jpg"):
        with pytest.raises(BadImageError, match="not a regular file"):
            images.load_image(tmp_path / name, 64)
        with pytest.raises(OSError):
            sha256_file(tmp_path / name)


def test_a_tiff_whose_second_page_has_no_dimensions_is_corrupt_not_a_traceback(tmp_path):
    """Pillow raised TypeError('Missing dimensions') when the decode asked how many pages there are: a traceback
    in predict, evaluate, data inspect, collect and the labeler's image view."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    first = struct.unpack_from("<I", data, 4)[0]
    entries = struct.unpack_from("<H", data, first)[0]
    struct.pack_into("<I", data, first + 2 + 12 * entries, len(data))  # the next page: only a Compression tag
    data += struct.pack("<H", 1) + struct.pack("<HHII", 0x0103, 3, 1, 1) + struct.pack("<I", 0)
    path = tmp_path / "two-pages.tif"
    path.write_bytes(bytes(data))
    with pytest.raises(BadImageError) as err:
        images.load_image(path, 32)
    assert err.value.reason == images.CORRUPT and "Missing dimensions" in str(err.value)


@pytest.mark.parametrize("entry", [[1], {"stage": "decode"}, {"stage": "decode", "width": "wide", "height": 40},
                                   {"stage": "decode", "reason": 7}, {"stage": "x", "width": 40, "height": 40}])
def test_a_damaged_file_check_cache_entry_is_checked_again(tmp_path, monkeypatch, entry):
    """A cache entry of [1] was an AttributeError, one without a size a KeyError, in every command that checks a
    dataset; it is now a miss: the photo is read again and its entry written over."""
    import json

    from tltool import filecache
    from tltool.dataset import load_dataset
    from tltool.inspection import check_dataset

    monkeypatch.setenv("TLTOOL_CACHE", str(tmp_path / "cache"))
    for name, colour in (("a/one.png", (10, 200, 30)), ("b/two.png", (200, 10, 30))):
        solid(tmp_path / "data" / name, colour, size=(48, 40), fmt="PNG")
    first = check_dataset(load_dataset(tmp_path / "data"), emit_warnings=False)
    for entry_path in (tmp_path / "cache").rglob("*.json"):
        entry_path.write_text(json.dumps(entry))
    again = check_dataset(load_dataset(tmp_path / "data"), emit_warnings=False)
    assert [(f.reason, f.width, f.height) for f in again.files] == [(f.reason, f.width, f.height) for f in first.files]
    assert filecache.lookup(first.files[0].sha256)["width"] == 48


@pytest.mark.parametrize("orientation", [0, 9, 99])
def test_an_exif_orientation_pillow_does_not_turn_by_is_said_to_be_ignored_not_applied(tmp_path, orientation):
    """Orientation 99 was reported as "EXIF orientation 99 applied" while the pixels stayed as stored."""
    im = Image.new("RGB", (80, 40), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    assert images.load_image(tmp_path / "r.jpg").shape[:2] == (40, 80)  # as stored
    assert images.check_image(tmp_path / "r.jpg").conversions == [
        f"EXIF orientation {orientation} is not one of 1-8: ignored"]


def test_a_heic_photo_is_named_as_such_not_as_no_image(tmp_path):
    """From a review: an iPhone's HEIC photo was "not an image (no known image format)", as a text file is; a user
    needs to hear that it is a photo in a format to convert. A text file is still no known format."""
    from tltool.images import BadImageError, check_image, read_header

    heic = tmp_path / "IMG_2102.HEIC"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200))
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\n")
    for read in (check_image, read_header):
        with pytest.raises(BadImageError) as raised:
            read(str(heic))
        assert raised.value.reason == "not an image" and raised.value.detail.startswith(
            "a HEIC/HEIF or AVIF photo (an iPhone's default format), which tltool cannot decode: convert it to JPEG")
        with pytest.raises(BadImageError, match="no known image format"):
            read(str(text))
