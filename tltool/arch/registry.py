"""The registry of from-scratch reference nets: name -> a plain builder function (like ``keras.applications``).

Every builder takes ``(input_shape, classes, initializer, batch_norm, dropout, classifier_activation)`` (plus its
own extras, e.g. GoogLeNet's ``aux_heads``) and returns a ``keras.Model`` on raw pixels 0..255. Its defaults are
the paper's: the default input size is read from the builder's signature, never written twice.
:func:`build_arch` checks a user's options and is the one entry point.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import TltoolError, did_you_mean
from ..settings import RANGES

if TYPE_CHECKING:
    import keras

INITIALIZERS = ("glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal", "lecun_uniform")


@dataclass(frozen=True)
class ArchSpec:
    name: str
    build: Callable[..., Any]
    min_size: int  # smallest height/width the net accepts (every layer still has an output of at least 1x1)
    description: str
    aliases: tuple[str, ...] = field(default=())

    def default(self, option: str) -> Any:
        return inspect.signature(self.build).parameters[option].default

    @property
    def default_input(self) -> tuple[int, int, int]:
        return tuple(self.default("input_shape"))


_REGISTRY: dict[str, ArchSpec] = {}


def register_arch(name: str, build: Callable[..., Any], min_size: int, description: str,
                  aliases: Sequence[str] = ()) -> Callable[..., Any]:
    """Register ``build`` under ``name`` (and ``aliases``) and return it unchanged."""
    taken = {_squash(n) for spec in _REGISTRY.values() for n in (spec.name, *spec.aliases)}
    clash = taken & {_squash(n) for n in (name, *aliases)}
    if clash:
        raise ValueError(f"architecture name(s) {sorted(clash)} registered twice")
    _REGISTRY[name] = ArchSpec(name, build, min_size, description, tuple(aliases))
    return build


def arch(name: str, min_size: int, description: str, aliases: Sequence[str] = ()) -> Callable:
    """Decorator form of :func:`register_arch`."""
    return lambda build: register_arch(name, build, min_size, description, aliases)


def _ensure_loaded() -> None:
    if not _REGISTRY:
        from . import classic, googlenet, mobilenet, resnet, vgg  # noqa: F401  (they register on import)


def list_archs() -> list[ArchSpec]:
    _ensure_loaded()
    return list(_REGISTRY.values())


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


# every net's name and aliases, known without importing the builders (they import TensorFlow, ~9 s on 2 cores): a
# recipe's check looks a name up here. tests/test_arch.py keeps it equal to what the builders register.
ARCH_NAMES: dict[str, tuple[str, ...]] = {
    "lenet5": ("lenet",), "alexnet": (), "nin": ("network_in_network",), "googlenet": ("inception_v1",),
    "mobilenet_v1": ("mobilenet",), "resnet18": (), "resnet34": (), "vgg_a": ("vgg11",), "vgg_a_lrn": ("vgg11_lrn",),
    "vgg_b": ("vgg13",), "vgg_c": (), "vgg_d": ("vgg16",), "vgg_e": ("vgg19",),
}


def check_arch_name(name: str) -> None:
    """Refuse a name no net has, as :func:`get_arch` does, without importing TensorFlow."""
    names = [*ARCH_NAMES, *(alias for aliases in ARCH_NAMES.values() for alias in aliases)]
    if _squash(name) not in {_squash(n) for n in names}:
        raise did_you_mean(name, names, "architecture")


def get_arch(name: str) -> ArchSpec:
    """The net called ``name`` or one of its aliases; case, '-' and '_' do not matter (``VGG-16``, ``ResNet18``)."""
    _ensure_loaded()
    key = _squash(name)
    for spec in _REGISTRY.values():
        if key in {_squash(n) for n in (spec.name, *spec.aliases)}:
            return spec
    raise did_you_mean(name, [*_REGISTRY, *(a for s in _REGISTRY.values() for a in s.aliases)], "architecture")


def build_arch(name: str, input_shape: Sequence[int] | None = None, classes: int | None = None,
               initializer: str | None = None, batch_norm: bool | None = None, dropout: float | None = None,
               **extra: Any) -> keras.Model:
    """Build a registered net from scratch; an option left as None takes the architecture's (paper's) default.

    Raises :class:`TltoolError` for an unknown name, an input smaller than the net allows, or a bad option.
    """
    spec = get_arch(name)
    options: dict[str, Any] = {}
    if input_shape is not None:
        if len(input_shape) == 2:
            input_shape = (*input_shape, spec.default_input[2])
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise TltoolError(f"--input must be HxWxC with positive sizes, got {'x'.join(map(str, input_shape))}.")
        options["input_shape"] = tuple(int(v) for v in input_shape)
    h, w, c = options.get("input_shape", spec.default_input)
    largest = int(RANGES["image_size"].high)
    if max(h, w, c) > largest:  # 100000x100000 asked TensorFlow for terabytes (ResourceExhaustedError)
        raise TltoolError(f"--input {h}x{w}x{c}: each size must be at most {largest}.")
    if min(h, w) < spec.min_size:
        raise TltoolError(f"{spec.name} needs inputs of at least {spec.min_size}x{spec.min_size} pixels (its "
                          f"layers shrink smaller ones to nothing); got {h}x{w}. Give it at least "
                          f"{max(h, spec.min_size)}x{max(w, spec.min_size)} (--image-size of `tltool train`, "
                          "--input of the arch commands).")
    if classes is not None:
        if classes < 1:
            raise TltoolError(f"--classes must be at least 1, got {classes}.")
        options["classes"] = int(classes)
    if initializer is not None:
        if initializer not in INITIALIZERS:
            raise did_you_mean(initializer, INITIALIZERS, "initializer")
        options["initializer"] = initializer
    if batch_norm is not None:
        options["batch_norm"] = bool(batch_norm)
    if dropout is not None:
        if not 0.0 <= dropout < 1.0:
            raise TltoolError(f"--dropout is the fraction of units dropped and must be in [0, 1), got {dropout}.")
        options["dropout"] = float(dropout)
    unknown = set(extra) - set(inspect.signature(spec.build).parameters)
    if unknown:
        raise TltoolError(f"{spec.name} has no option(s) {sorted(unknown)}.")
    try:
        return spec.build(**options, **extra)
    except Exception as exc:  # TensorFlow's out-of-memory (not imported here) or Python's
        if not (isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError"):
            raise
        raise TltoolError(f"{spec.name} at {h}x{w}x{c} does not fit in memory; give it a smaller --input.") from None
