"""The one image decode function, shared by inspection, the tf.data pipeline, prediction and the labeler.

Every path that turns a file into pixels goes through :func:`load_image`, so a CMYK JPEG, a 16-bit PNG or a
rotated phone photo looks the same to ``data inspect``, to extraction, to fine-tuning and to ``predict``.
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import struct
import threading
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import filecache
from .errors import BadFilesWarning, BadImageError
from .settings import CHOICES
from .utils import atomic_path, open_regular, sha256_file, shown_name

DEFAULT_MAX_PIXELS = 64_000_000  # about 8000 x 8000: far above most cameras, far below a decompression bomb

# tltool checks the pixel count itself (``max_pixels``, on the header, before any pixel is decoded). Pillow's own
# guard (``Image.MAX_IMAGE_PIXELS``: a warning above 89.5 MP, an error above twice that) stays on for all other code
# in the process; only when a user allows more than Pillow does, tltool raises Pillow's limit to --max-pixels for
# the one call that reads a header, under a lock, and puts it back.
_PILLOW_LIMIT_LOCK = threading.Lock()
MIN_SIDE = 32
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

ResizePolicy = Literal["crop", "pad", "stretch"]
RESIZE_POLICIES: tuple[str, ...] = CHOICES["resize"]

# Reasons a file is rejected. Stable strings: they appear in data inspect's metrics.json and tests assert on them.
EMPTY = "empty file"
NOT_AN_IMAGE = "not an image"
CORRUPT = "truncated or corrupt"
BOMB = "decompression bomb"
TOO_SMALL = "too small"
UNREADABLE = "unreadable"


@dataclass
class ImageInfo:
    """What :func:`check_image` learned about a file that can be used."""

    width: int
    height: int
    format: str | None
    mode: str
    conversions: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _pillow_limit_at_least(max_pixels: int):
    """Pillow's pixel limit, raised to ``max_pixels`` for the block if it is lower (and put back after)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or max_pixels <= limit:
        yield
        return
    with _PILLOW_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


# what Pillow's format plugins raise on a malformed file: a TIFF page without dimensions is a TypeError, a short
# struct a struct.error, a bad table index an IndexError or KeyError
PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, TypeError, struct.error, IndexError, KeyError,
                 ZeroDivisionError)


# ISO media brands of HEIF photos (an iPhone's default, HEIC) and AVIF: images tltool's Pillow does not decode
HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"avif",
               b"avis"}


def _unknown_format(path: str | os.PathLike) -> str:
    """Why Pillow found no image format: a HEIC photo was "no known image format", as a text file is."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return "no known image format"
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        return ("a HEIC/HEIF or AVIF photo (an iPhone's default format), which tltool cannot decode: convert it to "
                "JPEG or PNG (or set the camera to 'Most Compatible')")
    return "no known image format"


def _open(path: str | os.PathLike, max_pixels: int) -> Image.Image:
    try:
        found = os.stat(path)
    except OSError as exc:
        raise BadImageError(path, UNREADABLE, exc.strerror or str(exc)) from None
    if not stat.S_ISREG(found.st_mode):  # a named pipe would block the read until something writes to it
        raise BadImageError(path, UNREADABLE, "not a regular file (a folder, a named pipe or a device)")
    if found.st_size == 0:
        raise BadImageError(path, EMPTY, "0 bytes")
    try:
        with _pillow_limit_at_least(max_pixels):
            im = Image.open(path)
    except Image.DecompressionBombError as exc:  # twice Pillow's limit, which is at least --max-pixels
        counted = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(counted[1]):,} pixels" if counted else "more pixels than Pillow allows"
        raise BadImageError(path, BOMB, f"{size} > --max-pixels {max_pixels:,}") from None
    except UnidentifiedImageError:
        raise BadImageError(path, NOT_AN_IMAGE, _unknown_format(path)) from None
    except PermissionError as exc:
        raise BadImageError(path, UNREADABLE, exc.strerror or str(exc)) from None
    except PILLOW_ERRORS as exc:
        raise BadImageError(path, CORRUPT, str(exc)) from None
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise BadImageError(path, BOMB, f"{w}x{h} = {w * h:,} pixels > --max-pixels {max_pixels:,}")
    if min(w, h) < MIN_SIDE:
        im.close()
        raise BadImageError(path, TOO_SMALL, f"{w}x{h}, the shorter side must be at least {MIN_SIDE} px")
    return im


def _to_rgb(im: Image.Image, conversions: list[str]) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        # pasting through the alpha band onto white gives exactly Image.alpha_composite on opaque white (checked
        # for every colour and alpha value) without its two full-size RGBA copies: 60 MP took 1.2 GB, now 0.6 GB
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba)
        conversions.append(f"{mode}->RGB (alpha composited on white)")
        return white
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        conversions.append(f"{mode}->RGB (scaled to 8 bit)")
        return Image.fromarray(arr8).convert("RGB")
    conversions.append(f"{mode}->RGB")
    return im.convert("RGB")


_DECODES = [0]
_DECODES_LOCK = threading.Lock()


def decode_count() -> int:
    """How many files this process has decoded so far (header reads do not count): tests assert that cached work
    decodes nothing and that a worker of a sharded run decodes only its share."""
    return _DECODES[0]


def read_header(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """What the file's header says (format, size, mode), checked like a decode would be, without decoding a pixel.

    Catches empty files, non-images, decompression bombs and too-small images; a file whose header is fine but whose
    data is truncated is found by the decode that feeds the network (:func:`load_image`).
    """
    im = _open(path, max_pixels)
    try:
        return ImageInfo(width=im.size[0], height=im.size[1], format=im.format, mode=im.mode)
    finally:
        im.close()


EXIF_TURNS = range(2, 9)  # the EXIF orientations that turn or mirror the stored pixels (1: as stored)


def _decode(path: str | os.PathLike, max_pixels: int, draft_size: int | None) -> tuple[np.ndarray, ImageInfo]:
    """Open, check and convert to an ``(H, W, 3)`` uint8 array (the file is closed on return)."""
    source = _open(path, max_pixels)
    with _DECODES_LOCK:
        _DECODES[0] += 1
    info = ImageInfo(width=source.size[0], height=source.size[1], format=source.format, mode=source.mode)
    try:
        if draft_size and source.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the photo is far larger than needed; the result
            # stays at least draft_size on both sides, so quality after the final resize is unchanged.
            source.draft("RGB", (draft_size, draft_size))
        source.load()
        if getattr(source, "n_frames", 1) > 1:
            info.conversions.append("first frame of an animation")
        im = source
        orientation = source.getexif().get(0x0112, 1) if "exif" in source.info else 1
        if orientation in EXIF_TURNS:
            im = ImageOps.exif_transpose(source)
            info.conversions.append(f"EXIF orientation {orientation} applied")
        elif orientation not in (None, 1):  # Pillow turns by 2-8 only: 99 was said to be "applied"
            info.conversions.append(f"EXIF orientation {shown_name(repr(orientation))} is not one of 1-8: ignored")
        return np.asarray(_to_rgb(im, info.conversions)), info
    except BadImageError:
        raise
    except Image.DecompressionBombError as exc:  # a GIF frame larger than its header said
        raise BadImageError(path, BOMB, str(exc)) from None
    except PILLOW_ERRORS as exc:
        raise BadImageError(path, CORRUPT, str(exc)) from None
    finally:
        source.close()


@dataclass
class DecodeLog:
    """The files the feeding decode could not read, ``{path: (reason, detail)}``, filled from tf.data's threads.

    Each one is also warned about (:class:`BadFilesWarning`, naming the file) and remembered in the content cache,
    so the next check drops it before the split without decoding it again.
    """

    failures: dict[str, tuple[str, str]] = field(default_factory=dict)
    announce: bool = True  # False: the caller names the failures itself (``tltool predict`` lists them at the end)
    known: frozenset[str] = frozenset()  # files the check already named (and cached): recorded, not named again
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def unnamed(self) -> dict[str, tuple[str, str]]:
        """The failures the check had not named already: the ones a report lists as found by the decode."""
        return {path: failure for path, failure in self.failures.items() if path not in self.known}

    def record(self, error: BadImageError) -> None:
        path = str(error.path)
        with self._lock:
            if path in self.failures:
                return
            self.failures[path] = (error.reason, error.detail)
        if path in self.known:
            return
        if self.announce:
            detail = f" ({error.detail})" if error.detail else ""
            warnings.warn(f"1 file(s) skipped:\n  {path}: {error.reason}{detail}", BadFilesWarning, stacklevel=2)
        if error.reason == BOMB:  # depends on --max-pixels, not on the file: never stored (as in the check)
            return
        try:
            sha = sha256_file(path)
        except OSError:
            return
        filecache.store(sha, {"stage": filecache.DECODE, "reason": error.reason, "detail": error.detail})


def check_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Fully decode ``path`` (so truncation is caught) and say what it is; raise :class:`BadImageError` if unusable."""
    return _decode(path, max_pixels, draft_size=256)[1]


def load_image(
    path: str | os.PathLike,
    size: int | None = None,
    resize: ResizePolicy = "crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``path`` to an ``(H, W, 3)`` uint8 RGB array, optionally resized to ``size`` x ``size``.

    ``resize``: ``crop`` scales the shorter side to ``size`` and takes the centre; ``pad`` scales the longer side
    and pads with black; ``stretch`` ignores the aspect ratio.
    """
    pixels, _ = _decode(path, max_pixels, draft_size=size)
    return pixels if size is None else resize_array(pixels, size, resize)


def decode_or_blank(path: str, image_size: int, resize: ResizePolicy, max_pixels: int, on_bad: str,
                    log: DecodeLog) -> tuple[np.ndarray, bool]:
    """The decode that feeds a network, for every pipeline: ``(image, True)``, or for a file it cannot read
    (named in ``log``) an error (``on_bad="raise"``) or ``(black image, False)``."""
    try:
        return load_image(path, image_size, resize, max_pixels=max_pixels), True
    except BadImageError as error:
        log.record(error)
        if on_bad == "raise":
            raise
        return np.zeros((image_size, image_size, 3), np.uint8), False


def load_thumbnail(path: str | os.PathLike, size: int, resize: ResizePolicy = "crop") -> np.ndarray:
    """:func:`load_image` at a small ``size``, cached by content: a report that shows the same photos again (a
    cached ``probe``) reads their bytes for the hash and decodes nothing."""
    try:
        target = filecache.thumbnail_path(sha256_file(path), size, resize)
    except OSError:
        return load_image(path, size, resize)  # names the unreadable file
    with contextlib.suppress(OSError, ValueError), open_regular(target, follow_links=False) as f:
        return np.load(f, allow_pickle=False)
    pixels = load_image(path, size, resize)
    with contextlib.suppress(OSError), atomic_path(target, suffix=".npy.tmp") as tmp:  # a full cache costs speed only
        with open(tmp, "wb") as f:
            np.save(f, pixels, allow_pickle=False)
    return pixels


def _scale(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV's area average when shrinking (anti-aliased, and 10x faster than Pillow's bilinear filter,
    which was half of all decode time: measured 0.66 ms of 1.3 ms per 320 px photo), bilinear when enlarging."""
    import cv2

    if cv2.getNumThreads() != 1:
        # OpenCV's own thread pool would compete with tf.data's threads and the model's for a small CPU; the
        # pipeline already decodes images in parallel.
        cv2.setNumThreads(1)
    if width < pixels.shape[1] or height < pixels.shape[0]:
        return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    # enlarging: bilinear in float32, then rounded, not OpenCV's 11-bit fixed-point uint8 path, so TensorFlow's
    # bilinear resize (the SavedModel's image-bytes signature) gives the same pixels. convertScaleAbs rounds half
    # to even and saturates, as np.clip(np.rint(x), 0, 255) does (the values are >= 0), in a quarter of the time.
    enlarged = cv2.resize(pixels.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return cv2.convertScaleAbs(enlarged)


# the side of a photo that each resize policy scales to the input size (``crop`` and ``stretch`` enlarge a photo
# whose shorter side is below it, ``pad`` one whose longer side is)
SCALED_SIDE = {"crop": min, "pad": max, "stretch": min}


def resize_array(pixels: np.ndarray, size: int, resize: ResizePolicy = "crop") -> np.ndarray:
    h, w = pixels.shape[:2]
    if resize == "stretch":
        return _scale(pixels, size, size)
    if resize == "crop":
        side = SCALED_SIDE["crop"](w, h)
        top, left = (h - side) // 2, (w - side) // 2
        return _scale(np.ascontiguousarray(pixels[top:top + side, left:left + side]), size, size)
    if resize == "pad":
        scale = size / SCALED_SIDE["pad"](w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = np.zeros((size, size, 3), np.uint8)
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas[top:top + nh, left:left + nw] = _scale(pixels, nw, nh)
        return canvas
    raise ValueError(f"unknown resize policy {resize!r}; choose one of {RESIZE_POLICIES}")


def resize_image(im: Image.Image, size: int, resize: ResizePolicy = "crop") -> Image.Image:
    """:func:`resize_array` for a Pillow image."""
    return Image.fromarray(resize_array(np.asarray(im.convert("RGB")), size, resize))


def is_candidate_file(name: str) -> bool:
    """A file a dataset folder may hold as an image: not hidden (``.DS_Store``, ``._x.jpg``)."""
    return not name.startswith(".")


def is_image_name(name: str) -> bool:
    """A file named as an image: not hidden, with an image extension (what the labeler lists)."""
    return is_candidate_file(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
