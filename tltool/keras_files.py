"""Loading the ``.keras`` files tltool writes: safe mode always, tltool's own layers registered first."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TltoolError
from .utils import shown_name

if TYPE_CHECKING:
    import keras


def load_keras_model(path: str | Path, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` file tltool wrote, with safe_mode on; tltool's own layers are registered first.

    A file that does not load (not a zip, truncated, a layer safe mode refuses such as a Lambda, a layer tltool does
    not know) is a :class:`TltoolError` naming it: a run folder given as ``--model`` is input, possibly edited."""
    from ._tf import keras

    from .arch import layers as _arch_layers  # noqa: F401  (registration happens on import)
    from .backbones import layers as _backbone_layers  # noqa: F401

    try:
        return keras.models.load_model(path, safe_mode=True, compile=compile)
    except Exception as exc:  # Keras says "File not found" for a file that is not a zip, which misleads
        text = str(exc).strip()
        detail = ("not a readable .keras zip file" if text.startswith("File not found") else
                  shown_name(text.splitlines()[0] if text else "", limit=200))
        raise TltoolError(f"{shown_name(path)}: cannot be loaded as a Keras model tltool wrote "
                          f"({type(exc).__name__}: {detail}); it is damaged, truncated or was replaced. Keras files "
                          "are loaded in safe mode: a Lambda layer or other custom code is never run.") from None
