"""Training-time augmentation with albumentations: named presets or any pipeline in albumentations' own format.

Presets cover the lectures' list: horizontal flip, random resized crop/scale, rotation, shear,
brightness/contrast, hue/saturation, PCA colour (FancyPCA) and blur. Augmentation applies to the train split
only; images are decoded once at :func:`load_size` and cropped to the network's input size by the transform.
"""
from __future__ import annotations

import copy
import math
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from . import safe_yaml
from .dataset import load_dataset
from .errors import AugmentationWarning, TltoolError, did_you_mean
from .images import load_image
from .plotting import pyplot, save_figure
from .report import write_picture_report
from .runs import check_run_dir, new_run_dir, writes_runs
from .settings import FILE_SUFFIXES, PREVIEW_DRAWS, PREVIEW_SIZE, RANGES, check_range
from .utils import shown_name


class SeededTransform:
    """Wrap an albumentations pipeline as a :data:`Transform`: one private copy per thread, seeded per image."""

    def __init__(self, compose) -> None:
        self.compose = compose
        self._local = threading.local()

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        compose = getattr(self._local, "compose", None)
        if compose is None:
            compose = self._local.compose = copy.deepcopy(self.compose)
        compose.set_random_seed(seed)
        return compose(image=image)["image"]


CROP_HEADROOM = 1.143  # decode at 256 for a 224 input: room for random crops, as in the ImageNet recipe


def _light(size: int) -> list:
    import albumentations as A

    return [A.RandomResizedCrop((size, size), scale=(0.6, 1.0)), A.HorizontalFlip()]


def _standard(size: int) -> list:
    import albumentations as A

    return [A.RandomResizedCrop((size, size), scale=(0.35, 1.0)), A.HorizontalFlip(),
            A.Affine(rotate=(-15, 15), shear=(-8, 8), p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=0.8)]


def _heavy(size: int) -> list:
    import albumentations as A

    return [A.RandomResizedCrop((size, size), scale=(0.2, 1.0)), A.HorizontalFlip(),
            A.Affine(rotate=(-25, 25), shear=(-12, 12), scale=(0.9, 1.1), p=0.7),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.06, p=0.9),
            A.FancyPCA(alpha=0.1, p=0.5), A.GaussianBlur(blur_limit=(3, 5), p=0.2)]


PRESETS: dict[str, Callable[[int], list] | None] = {"none": None, "light": _light, "standard": _standard,
                                                    "heavy": _heavy}


def build_augmentation(spec: str | None, size: int, seed: int = 0) -> SeededTransform | None:
    """A preset name or a YAML file in albumentations' ``to_dict`` format; None for no augmentation.

    The result always outputs ``size`` x ``size`` (a final resize is added when a custom pipeline does not).
    """
    import albumentations as A

    if spec in (None, "", "none"):
        return None
    compose = A.Compose(PRESETS[spec](size), seed=seed) if spec in PRESETS else _from_file(_file_of(spec), seed)
    if _probe(compose, spec, size).shape[:2] != (size, size):
        compose = A.Compose([compose, A.Resize(size, size)], seed=seed)
    return SeededTransform(compose)


def check_augmentation(spec: str | None) -> None:
    """Refuse an ``--augment`` that is neither a preset nor a readable albumentations file, without TensorFlow (a
    training run starts it first: a typo in the file was refused ~10 s later). Its output on an image is checked when
    training builds it (:func:`build_augmentation`), at the size the network takes."""
    if spec not in (None, "", "none") and spec not in PRESETS:
        _from_file(_file_of(spec), seed=0)


def _file_of(spec: str) -> Path:
    if not spec.lower().endswith(FILE_SUFFIXES["augment"]):
        raise did_you_mean(spec, list(PRESETS), "augmentation preset")
    if not os.path.isfile(spec):
        raise TltoolError(f"--augment {spec}: no such file.")
    return Path(spec)


def stored_augment(spec: str) -> str:
    """``--augment`` as a run's config.json stores it: an augmentation file by its absolute path (a ``--resume``
    from another working directory found no ``aug.yaml``), a preset as it is."""
    return os.path.abspath(spec) if spec not in PRESETS and os.path.isfile(spec) else spec


PROBE_DRAWS = 8  # a transform that fires with p < 1 must show its output too


def _probe(compose, spec: str, size: int) -> np.ndarray:
    """The pipeline's output for a blank image of the size training decodes at, drawn a few times: a pipeline that
    fails on it, or gives what the network cannot take (not 3 channels, not 0..255 bytes), is refused now, not
    with TensorFlow's error in the middle of training."""
    side = load_size(size, spec)
    blank = np.zeros((side, side, 3), np.uint8)
    for _ in range(PROBE_DRAWS):
        try:
            out = compose(image=blank)["image"]
        except Exception as exc:
            raise TltoolError(f"--augment {spec}: the pipeline fails on a {side}x{side} training image "
                              f"({exc.__class__.__name__}: {exc}).") from None
        shape = getattr(out, "shape", ())
        if len(shape) != 3 or shape[2] != 3 or getattr(out, "dtype", None) != np.uint8:
            raise TltoolError(f"--augment {spec}: the pipeline turns an RGB image of bytes into "
                              f"{'x'.join(map(str, shape)) or type(out).__name__} {getattr(out, 'dtype', '')}; "
                              "the network takes 3 channels of 0..255 bytes (it normalises them itself): leave out "
                              "transforms such as ToGray(num_output_channels=1), Normalize or ToFloat.")
    return out


# the parameters of albumentations' transforms that set an output size in pixels (Resize, crops, pads, max sizes)
SIZE_PARAMETERS = ("height", "width", "size", "max_size", "min_height", "min_width", "min_max_height")
MAX_SIDE = RANGES["image_size"].high  # no input is larger; a transform's output is resized to the input anyway


def _check_sizes(data: object, path: Path) -> None:
    """Refuse a transform that makes images larger than any input tltool takes: a Resize to 20000x20000 px held
    1.2 GB per image (2.4 GB for one preview) before the pipeline's output was resized to the input."""
    if isinstance(data, list):
        for item in data:
            _check_sizes(item, path)
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        sides = value if isinstance(value, (list, tuple)) else [value]
        large = [v for v in sides if isinstance(v, (int, float)) and not isinstance(v, bool) and v > MAX_SIDE]
        if key in SIZE_PARAMETERS and large:
            raise TltoolError(f"--augment {path}: {data.get('__class_fullname__', 'a transform')} {key} "
                              f"{large[0]:g} px is larger than any input tltool takes ({MAX_SIDE} px); the pipeline's "
                              "output is resized to the network's input anyway: give a size up to that.")
        _check_sizes(value, path)


def _from_file(path: Path, seed: int):
    import albumentations as A

    try:
        data = safe_yaml.read_yaml(path.read_text(encoding="utf-8"), "an augmentation file")
        _check_sizes(data, path)  # before albumentations builds (and tltool probes) it
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            transform = A.from_dict(data)
        _check_what_albumentations_said(said, path)
    except TltoolError:
        raise
    except Exception as exc:
        raise TltoolError(f"--augment {path}: not an albumentations pipeline ({exc.__class__.__name__}: {exc}). "
                          "Write it with albumentations' own format, e.g. A.save(pipeline, 'aug.yaml', "
                          "data_format='yaml').") from None
    if not isinstance(transform, A.Compose):
        transform = A.Compose([transform])
    transform.set_random_seed(seed)
    return transform


def _check_what_albumentations_said(said: list[warnings.WarningMessage], path: Path) -> None:
    """A misspelt argument (``limt: 5`` for Rotate's ``limit``) is only a warning of albumentations', which leaves
    the transform at its default (±90°) and was never shown: refused. Its other warnings are shown, named."""
    for warning in said:
        text = str(warning.message)
        invalid = re.match(r"Argument\(s\) (.*) are not valid for transform", text)
        if invalid and set(re.findall(r"'([^']*)'", invalid.group(1))) - RETIRED_ARGUMENTS:
            raise TltoolError(f"--augment {path}: {text}; albumentations would leave them at its defaults. Write the "
                              "argument names as the transform's documentation gives them.")
        if (str(path), text) not in _SHOWN:  # once a process: a file is read again for each build (a --cv fold)
            _SHOWN.add((str(path), text))
            warnings.warn(f"--augment {path}: {text}", AugmentationWarning, stacklevel=4)


# what albumentations 1.x's own A.save wrote on every transform (`always_apply: false`), which 2.x no longer takes
RETIRED_ARGUMENTS = {"always_apply"}
_SHOWN: set[tuple[str, str]] = set()


def load_size(image_size: int, augment: str | None) -> int:
    """The size images are decoded at for training: larger than the input when the transform crops."""
    return image_size if augment in (None, "", "none") else int(round(image_size * CROP_HEADROOM))


PREVIEW_PNG = "augment_preview.png"


@writes_runs(finished=False)  # a preview is drawn again into its own folder without --force
def preview(data: str, out: str | Path | None = None, augment: str = "standard", image_size: int = PREVIEW_SIZE,
            draws: int = PREVIEW_DRAWS, seed: int = 0, index: int = 0, force: bool = False) -> Path:
    """A PNG grid of one training image under ``draws`` random augmentations (the first tile is the original).

    Written as ``augment_preview.png``, with ``metrics.json`` naming what it shows and ``report.md``, into a run
    folder: ``out`` (new, empty, or an earlier tltool run; a finished run needs ``force``) or
    ``runs/augment-preview-...``. Like every output of tltool's, it is never written over a user's file or into a
    folder tltool did not make.
    Returns the PNG's path.
    """
    _check_preview_out(out, force)
    check_range("draws", draws)
    check_range("image_size", image_size)
    check_range("seed", seed)
    dataset = load_dataset(data)
    records = sorted(dataset.records, key=lambda r: r.path)
    if not records:
        raise TltoolError(f"{data}: no images.")
    if not 0 <= index < len(records):
        raise TltoolError(f"--index {index}: {data} has {len(records)} images; give 0 to {len(records) - 1} (path "
                          "order).")
    record = records[index]
    transform = build_augmentation(augment, image_size, seed)
    original = load_image(record.path, load_size(image_size, augment))
    tiles = [original] + [transform(original, seed + i) if transform else original for i in range(draws)]
    fig = _preview_figure(tiles, f"augmentation '{augment}' on {Path(record.path).name}")
    run_dir = new_run_dir("augment", "preview", dataset.name, Path(augment).stem, out=out, force=force)
    target = run_dir / PREVIEW_PNG
    save_figure(fig, target)
    write_picture_report(run_dir, f"augmentation '{augment}'", {
        "data": str(data), "image": str(record.path), "label": record.label, "augment": augment,
        "image_size": image_size, "draws": draws, "seed": seed, "index": index, "png": PREVIEW_PNG}, PREVIEW_PNG,
        [f"{draws} draw(s) at {image_size} px (seed {seed}) of {shown_name(record.path)} ({record.label}), "
         "the first tile unchanged"])
    return target


def _check_preview_out(out: str | Path | None, force: bool) -> None:
    """Refuse a bad ``--out`` before any work: a PNG name (``--out`` is a folder) or what a run folder refuses."""
    if out is None:
        return
    check_run_dir(out, force=force, kind="augment")
    if Path(out).suffix.lower() == ".png" and not Path(out).is_dir():
        raise TltoolError(f"--out {out}: names the folder that {PREVIEW_PNG} is written into, not the PNG itself; "
                          "give a folder, e.g. --out runs/my-preview.")


def _preview_figure(tiles: list, title: str):
    """The tiles in a grid of at most six columns, the first titled ``original`` and the others ``draw N``."""
    cols = min(6, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, tile) in enumerate(zip(axes.flat, tiles)):
        ax.imshow(tile)
        ax.set_title("original" if i == 0 else f"draw {i}", fontsize=8)
    fig.suptitle(title)
    return fig
