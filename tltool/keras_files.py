"""Loading the ``.keras`` files tltool writes: safe mode always, tltool's own layers registered first."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras


def load_keras_model(path: str | Path, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` file tltool wrote, with safe_mode on; tltool's own layers are registered first."""
    from ._tf import keras

    from .arch import layers as _arch_layers  # noqa: F401  (registration happens on import)
    from .backbones import layers as _backbone_layers  # noqa: F401

    return keras.models.load_model(path, safe_mode=True, compile=compile)
