"""What a client of an export needs without reading tltool's code: ``labels.txt``, ``input.json``, ``README.md`` with
a decode function that reproduces tltool's pixels exactly, and an in-graph decode for a SavedModel server.

tltool decodes with Pillow (a JPEG at least twice the input size on both sides in libjpeg's reduced-size "draft"
mode), applies the EXIF orientation, converts to 8-bit RGB (transparency composited on white, 16-bit grey scaled),
takes the centre square (``crop``), and resizes with OpenCV: area averaging when shrinking, bilinear when enlarging.
The README's ``load_pixels`` does exactly these steps, so a client gets the same pixels bit for bit (tested on every
flowers val photo and on transparent, palette, 16-bit and CMYK images).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .images import DEFAULT_MAX_PIXELS, MIN_SIDE
from .utils import write_json, write_text_atomic

if TYPE_CHECKING:
    import tensorflow as tf

DECODE_STEPS = [
    "Open the file with Pillow. For a JPEG call im.draft('RGB', (size, size)) before loading: libjpeg then decodes "
    "at 1/2, 1/4 or 1/8 scale when both sides are at least 2, 4 or 8 times size (no change otherwise).",
    "Apply the EXIF orientation (PIL.ImageOps.exif_transpose).",
    "Convert to 8-bit RGB. RGBA, LA, PA (and premultiplied RGBa, La) and palette (P) images with a transparency "
    "entry: convert to RGBA and paste it through its alpha onto opaque white, so transparent pixels are white. "
    "Greyscale I;16 (any byte order): v * 255 / 65535; I and F: the same when any value is above 255, else v as "
    "is; then rounded half to even, clipped to 0..255 and copied to R, G and B. Any other mode (RGB, L, P, CMYK, "
    "1, ...): Pillow's im.convert('RGB').",
    "Resize with OpenCV (cv2.resize): INTER_AREA on the uint8 image when it shrinks; when it grows, INTER_LINEAR on "
    "the image as float32, then rounded half to even and clipped to 0..255 (uint8).",
]
RESIZE_STEPS = {
    "crop": "crop: take the centred square of side min(w, h) (top = (h - side) // 2, left = (w - side) // 2), "
            "then resize it to size x size.",
    "pad": "pad: scale so the longer side is size (new side = max(1, round(side * size / max(w, h)))), paste it "
           "centred on a black size x size canvas (top = (size - new_h) // 2).",
    "stretch": "stretch: resize to size x size, ignoring the aspect ratio.",
}
# The README's resize lines per policy; ``a`` is the (h, w, 3) uint8 array, ``size`` the input size.
RESIZE_CODE = {
    "crop": ("    h, w = a.shape[:2]; s = min(h, w)\n"
             "    a = np.ascontiguousarray(a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s])\n"
             "    return scale(a, size, size)\n"),
    "stretch": "    return scale(a, size, size)\n",
    "pad": ("    h, w = a.shape[:2]; k = size / max(w, h); nw, nh = max(1, round(w * k)), max(1, round(h * k))\n"
            "    out = np.zeros((size, size, 3), np.uint8); t, l = (size - nh) // 2, (size - nw) // 2\n"
            "    out[t:t + nh, l:l + nw] = scale(a, nw, nh)\n    return out\n"),
}


def input_spec(image_size: int, resize: str, model_file: str, signatures: dict | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    return {
        "model": model_file, "size": image_size, "shape": [None, image_size, image_size, 3], "layout": "NHWC",
        "min_side": MIN_SIDE, "max_pixels": max_pixels,  # the photos tltool refuses (the client does not check)
        "dtype": "float32", "pixel_range": [0, 255], "channel_order": "RGB", "resize_policy": resize,
        "normalisation": "none by the client: the model normalises inside", "decode": DECODE_STEPS[:3]
        + [RESIZE_STEPS[resize], DECODE_STEPS[3]], "output": "probabilities (softmax) in the order of labels.txt",
        **({"savedmodel_signatures": signatures} if signatures else {}),
    }


# The README's decode up to the resize: tltool.images._decode and _to_rgb, line for line (a test checks every mode).
DECODE_CODE = """\
import json, numpy as np, cv2
from PIL import Image, ImageOps

size = json.load(open("input.json", encoding="utf-8"))["size"]
labels = open("labels.txt", encoding="utf-8").read().splitlines()

def scale(a, w, h):  # area average when shrinking; bilinear in float32, rounded, when enlarging
    if w < a.shape[1] or h < a.shape[0]:
        return cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA)
    up = cv2.resize(a.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(np.rint(up), 0, 255).astype(np.uint8)

def load_pixels(path):  # exactly tltool's decode: same pixels, bit for bit
    im = Image.open(path)
    if im.format == "JPEG":
        im.draft("RGB", (size, size))
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or im.mode == "P" and "transparency" in im.info:
        rgba = im.convert("RGBA")  # transparent pixels composited on white
        im = Image.new("RGB", im.size, (255, 255, 255))
        im.paste(rgba, mask=rgba)
    elif im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # 16/32-bit grey -> 8 bit
        g = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or g.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(g * (255.0 / top)), 0, 255).astype(np.uint8))
    a = np.asarray(im.convert("RGB"))  # other modes (CMYK, L, P, 1...): Pillow's own conversion
"""


def load_pixels_code(resize: str) -> str:
    """The README's decode function: tltool's decode steps, so a client gets identical pixels."""
    return DECODE_CODE + RESIZE_CODE[resize]


CLIENT_CODE = {
    "tflite": ("from ai_edge_litert.interpreter import Interpreter  # pip install ai-edge-litert\n\n"
               "run = Interpreter(model_path=\"model.tflite\").get_signature_runner()\n"
               "x = np.stack([load_pixels(p) for p in paths]).astype(np.float32)\n"
               "probs = next(iter(run(**{run.get_input_details().popitem()[0]: x}).values()))\n"
               "print([labels[i] for i in probs.argmax(1)])\n"),
    "keras": ("import keras  # no tltool needed\n\n"
              "model = keras.models.load_model(\"model.keras\", safe_mode=True)\n"
              "probs = model.predict(np.stack([load_pixels(p) for p in paths]).astype(np.float32), verbose=0)\n"
              "print([labels[i] for i in probs.argmax(1)])\n"),
    "savedmodel": ("import tensorflow as tf\n\n"
                   "served = tf.saved_model.load(\"saved_model\")\n"
                   "probs = served.serve(np.stack([load_pixels(p) for p in paths]).astype(np.float32)).numpy()\n"
                   "print([labels[i] for i in probs.argmax(1)])\n"
                   "# or send encoded files; the decode and resize run inside the graph:\n"
                   "probs = served.serve_image_bytes(tf.constant([open(p, \"rb\").read() for p in paths])).numpy()\n"
                   "print([labels[i] for i in probs.argmax(1)])\n"),
}


# What the client imports, for the README's pip line: a fresh Python has none of it (cv2 is opencv-python).
CLIENT_PACKAGES = {"tflite": "ai-edge-litert", "keras": "keras tensorflow", "savedmodel": "tensorflow"}
DECODE_PACKAGES = "numpy pillow opencv-python-headless"

# The README's code is a whole script: saved as client.py, it runs as it is on the files named after it.
ARGS_CODE = "import sys\n\npaths = sys.argv[1:]  # the image files to classify\n\n"


def readme(fmt: str, model_file: str, classes: list[str], image_size: int, resize: str, measured: str,
           max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    bytes_note = ("\nThe SavedModel's `serve_image_bytes` signature takes encoded files (JPEG, PNG, GIF, BMP, WebP) "
                  "and "
                  "decodes, draft-scales and resizes inside the graph: the JPEG decode is libjpeg's, identical to "
                  "Pillow's; the resize matches OpenCV's within one grey level (rounding). It does not apply EXIF "
                  "orientation or composite transparency on white: for such files use `serve` with `load_pixels`.\n"
                  if fmt == "savedmodel" else "")
    return (f"# {model_file}: an image classifier exported by tltool\n\n"
            f"- Input: float32 RGB pixels in 0..255, shape (n, {image_size}, {image_size}, 3); the model "
            "normalises inside.\n"
            f"- Output: probabilities over the {len(classes)} classes of `labels.txt`, in that order.\n"
            f"- Resize policy `{resize}`; every decode step is in `input.json`.\n"
            f"- tltool refuses photos whose shorter side is under {MIN_SIDE} px or with more than {max_pixels:,} "
            "pixels (`min_side`, `max_pixels` in `input.json`); the client below does not check them, and a file "
            "it cannot read stops the whole call (decode file by file where inputs may be bad).\n\n"
            "## Client (Python)\n\n"
            f"It needs `pip install {DECODE_PACKAGES} {CLIENT_PACKAGES[fmt]}` (no tltool). "
            "Save this as `client.py` in a folder of your own (not in this one: `tltool export --force` replaces "
            "this folder whole) and run it from this folder: `python PATH/TO/client.py photo1.jpg photo2.jpg`:\n\n"
            f"```python\n{load_pixels_code(resize)}\n{ARGS_CODE}{CLIENT_CODE[fmt]}```\n{bytes_note}"
            + (f"\n## Measured when exported\n\n{measured}\n" if measured else ""))


def write_client_files(folder: Path, fmt: str, model_file: str, classes: list[str], image_size: int, resize: str,
                       measured: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    signatures = ({"serve": "float32 pixels (n, size, size, 3) -> probabilities",
                   "serve_image_bytes": "encoded image files, string (n,) -> probabilities"}
                  if fmt == "savedmodel" else None)
    write_text_atomic(folder / "labels.txt", "\n".join(classes) + "\n")
    write_json(folder / "input.json", input_spec(image_size, resize, model_file, signatures, max_pixels))
    write_text_atomic(folder / "README.md", readme(fmt, model_file, classes, image_size, resize, measured,
                                                   max_pixels))


# ------------------------------------------------------------------------------------------- in-graph decode
def decode_graph(image_size: int, resize: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """A TF function: one encoded image (string scalar) -> float32 ``(size, size, 3)`` pixels as tltool makes them."""
    from ._tf import tf

    def draft_decode(data):
        shape = tf.image.extract_jpeg_shape(data)
        scale = tf.minimum(shape[0] // image_size, shape[1] // image_size)
        branch = tf.where(scale >= 8, 3, tf.where(scale >= 4, 2, tf.where(scale >= 2, 1, 0)))
        return tf.switch_case(branch, [lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r,
                                                                     dct_method="INTEGER_ACCURATE")
                                       for r in (1, 2, 4, 8)])

    def decode(data):
        image = tf.cond(tf.io.is_jpeg(data), lambda: draft_decode(data),
                        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
        return RESIZE_GRAPH[resize](tf, tf.ensure_shape(image, [None, None, 3]), image_size)

    return decode


def _scale(tf, image, height, width):
    """OpenCV's choice: area averaging when shrinking, bilinear when enlarging; rounded back to 8 bit."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    pixels = tf.cast(image, tf.float32)[None]
    shrink = tf.logical_or(width < w, height < h)
    out = tf.cond(shrink, lambda: tf.image.resize(pixels, [height, width], method="area"),
                  lambda: tf.image.resize(pixels, [height, width], method="bilinear"))
    return tf.clip_by_value(tf.round(out[0]), 0, 255)


def _crop_graph(tf, image, size):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return _scale(tf, image[top:top + side, left:left + side], size, size)


def _stretch_graph(tf, image, size):
    return _scale(tf, image, size, size)


def _pad_graph(tf, image, size):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    k = size / tf.cast(tf.maximum(h, w), tf.float64)
    nw = tf.maximum(1, tf.cast(tf.round(tf.cast(w, tf.float64) * k), tf.int32))
    nh = tf.maximum(1, tf.cast(tf.round(tf.cast(h, tf.float64) * k), tf.int32))
    scaled = _scale(tf, image, nh, nw)
    top, left = (size - nh) // 2, (size - nw) // 2
    return tf.pad(scaled, [[top, size - nh - top], [left, size - nw - left], [0, 0]])


RESIZE_GRAPH = {"crop": _crop_graph, "stretch": _stretch_graph, "pad": _pad_graph}
