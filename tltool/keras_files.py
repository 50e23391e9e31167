"""Loading the ``.keras`` files tltool writes: safe mode always, tltool's own layers registered first."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .declared_sizes import check_declared_sizes
from .errors import TltoolError
from .utils import shown_name

if TYPE_CHECKING:
    import keras


def load_keras_model(path: str | Path, compile: bool = True, image_size: int | None = None) -> keras.Model:
    """Load a ``.keras`` file tltool wrote, with safe_mode on; tltool's own layers are registered first.

    A file that does not load (not a zip, truncated, a layer safe mode refuses such as a Lambda, a layer tltool does
    not know) is a :class:`TltoolError` naming it: a run folder given as ``--model`` is input, possibly edited.
    ``image_size`` (the run's model.json): a model that takes images of another size is refused the same way."""
    from ._tf import keras

    from .arch import layers as _arch_layers  # noqa: F401  (registration happens on import)
    from .backbones import layers as _backbone_layers  # noqa: F401

    try:
        check_declared_sizes(path)
        model = keras.models.load_model(path, safe_mode=True, compile=compile)
    except Exception as exc:  # Keras says "File not found" for a file that is not a zip, which misleads
        text = str(exc).strip()
        detail = ("not a readable .keras zip file" if text.startswith("File not found") else
                  shown_name(text.splitlines()[0] if text else "", limit=200))
        raise TltoolError(f"{shown_name(path)}: cannot be loaded as a Keras model tltool wrote "
                          f"({type(exc).__name__}: {detail}); it is damaged, truncated or was replaced. Keras files "
                          "are loaded in safe mode: a Lambda layer or other custom code is never run.") from None
    if image_size is not None:
        _check_input_size(model, image_size, path)
    return model


def _check_input_size(model: keras.Model, image_size: int, path: str | Path) -> None:
    """Refuse a model whose input is not ``(image_size, image_size, 3)`` pixels (a side of None takes any size):
    predict failed in Keras with a traceback, and an export's input.json told clients a size the model refuses."""
    shape = tuple(model.inputs[0].shape)[1:] if len(model.inputs) == 1 else ()
    if len(shape) != 3 or shape[2] != 3 or any(side not in (None, image_size) for side in shape[:2]):
        raise TltoolError(f"{shown_name(path)}: the model takes inputs of shape {shape} and model.json says "
                          f"image_size {image_size}: one of them was edited or replaced.")
