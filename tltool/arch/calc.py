"""The arithmetic of the CNN lectures, in plain Python (no TensorFlow): output sizes, parameter counts, receptive
fields and dilated kernels.

- output size of a convolution or pooling: ``(W - F + 2P) / S + 1``; a layer whose filter does not tile the
  padded input evenly "does not fit" (e.g. a 3x3 filter at stride 3 on a 7x7 input: 7 - 3 = 4 is not a multiple
  of 3) and raises :class:`~tltool.errors.TltoolError`;
- parameters of a convolution with ``K`` filters of ``F x F`` over ``D1`` input channels: ``(F * F * D1) * K``
  weights and ``K`` biases (ten 5x5 filters on a 32x32x3 input: 5*5*3 + 1 = 76 each, 760 in all);
- effective size of a dilated filter: ``F + (F - 1)(D - 1)``;
- receptive field of a stack: ``r += (F_eff - 1) * j`` and ``j *= S`` for each layer, from ``r = j = 1``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import TltoolError


def parse_shape(text: str, what: str = "--input", channels: int | None = None) -> tuple[int, ...]:
    """``"227x227x3"`` -> (227, 227, 3); ``"32"`` -> (32, 32[, channels]); ``"32x32"`` -> (32, 32[, channels])."""
    parts = re.split(r"\s*[x×X,]\s*", text.strip())
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise TltoolError(f"{what} {text!r} is not a shape: write HxWxC, e.g. 227x227x3 (or HxW, or one size N).") from None
    if len(dims) == 1:
        dims = (dims[0], dims[0])
    if len(dims) == 2 and channels is not None:
        dims = (*dims, channels)
    if len(dims) not in (2, 3) or min(dims) < 1:
        raise TltoolError(f"{what} {text!r} is not a shape: write HxWxC with positive sizes, e.g. 227x227x3.")
    return dims


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Size a dilated filter spans: ``F + (F - 1)(D - 1)`` (3x3 with dilation 2 spans 5x5)."""
    _positive(kernel=kernel, dilation=dilation)
    return kernel + (kernel - 1) * (dilation - 1)


def output_size(size: int, kernel: int, stride: int = 1, pad: int = 0, dilation: int = 1, what: str = "filter",
                floor: bool = False, where: str | None = None) -> int:
    """``(W - F + 2P) / S + 1`` for one spatial dimension.

    Raises "does not fit" unless it is a whole number >= 1; with ``floor`` the leftover pixels are dropped instead
    (``floor((W - F + 2P) / S) + 1``), as Keras, PyTorch and Caffe convolutions do. ``where`` names the input in
    the message (default: "a W-pixel input")."""
    _positive(size=size, kernel=kernel, stride=stride, dilation=dilation)
    if pad < 0:
        raise TltoolError(f"padding must be 0 or more, got {pad}.")
    span = effective_kernel(kernel, dilation)
    covered = size - span + 2 * pad
    where = where or f"a {size}-pixel input"
    name = f"{kernel}x{kernel} {what}" + (f" (dilation {dilation}, spans {span}x{span})" if dilation > 1 else "")
    if covered < 0:
        raise TltoolError(f"A {name} does not fit {where} with padding {pad}: it is larger than the padded input "
                          f"({size} + 2*{pad} = {size + 2 * pad}). Pad more or use a smaller filter.")
    if covered % stride and not floor:
        raise TltoolError(
            f"A {name} at stride {stride} does not fit {where} with padding {pad}: "
            f"({size} - {span} + 2*{pad})/{stride} + 1 = {covered / stride + 1:.2f} is not an integer. "
            f"{_fitting_hint(size, span, stride, pad)} (Keras and PyTorch would silently drop the last "
            f"{covered % stride} row(s)/column(s) and give {covered // stride + 1}: --floor computes that.)"
        )
    return covered // stride + 1


def _fitting_hint(size: int, span: int, stride: int, pad: int) -> str:
    strides = [s for s in range(1, span + 1) if (size - span + 2 * pad) % s == 0]
    pads = [p for p in range(0, span) if (size - span + 2 * p) >= 0 and (size - span + 2 * p) % stride == 0]
    hints = [f"strides that fit with padding {pad}: {', '.join(map(str, strides))}"]
    if pads:
        hints.append(f"paddings that fit at stride {stride}: {', '.join(map(str, pads))}")
    return "; ".join(hints).capitalize() + "."


def conv_parameters(kernel: int, in_channels: int, filters: int, bias: bool = True) -> tuple[int, int]:
    """(weights, biases) of ``filters`` filters of ``kernel x kernel x in_channels``: ``(F*F*D1)*K`` and ``K``."""
    _positive(kernel=kernel, in_channels=in_channels, filters=filters)
    return kernel * kernel * in_channels * filters, filters if bias else 0


@dataclass(frozen=True)
class LayerResult:
    """One conv or pooling layer applied to an ``H x W x D`` input."""

    kind: str  # "conv" or "pool"
    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    kernel: int
    stride: int
    pad: int
    dilation: int = 1
    weights: int = 0
    biases: int = 0

    @property
    def parameters(self) -> int:
        return self.weights + self.biases

    @property
    def per_filter(self) -> int:
        depth = self.output_shape[2]
        return self.parameters // depth if self.kind == "conv" else 0


def conv_layer(input_shape: Sequence[int], filters: int, kernel: int, stride: int = 1, pad: int = 0,
               dilation: int = 1, bias: bool = True, floor: bool = False) -> LayerResult:
    """Output shape and parameters of a conv layer with ``filters`` filters on an ``H x W x D`` input."""
    h, w, d = _hwd(input_shape)
    out = (*_output_hw(h, w, kernel, stride, pad, dilation, "filter", floor), filters)
    weights, biases = conv_parameters(kernel, d, filters, bias)
    return LayerResult("conv", (h, w, d), out, kernel, stride, pad, dilation, weights, biases)


def pool_layer(input_shape: Sequence[int], kernel: int, stride: int | None = None, pad: int = 0,
               floor: bool = False) -> LayerResult:
    """Output shape of a pooling layer (no parameters, depth unchanged); the stride defaults to the pool size."""
    h, w, d = _hwd(input_shape)
    stride = kernel if stride is None else stride
    out = (*_output_hw(h, w, kernel, stride, pad, 1, "pool", floor), d)
    return LayerResult("pool", (h, w, d), out, kernel, stride, pad)


# ------------------------------------------------------------------------------------------- stacks of layers
@dataclass(frozen=True)
class StackLayer:
    """One layer of a stack, written ``[conv|pool]F[sS][pP][dD]``: ``conv3``, ``conv3s2p1``, ``3d2``, ``pool2s2``."""

    kind: str
    kernel: int
    stride: int
    pad: int = 0
    dilation: int = 1

    @property
    def text(self) -> str:
        extra = (f"s{self.stride}" + (f"p{self.pad}" if self.pad else "")
                 + (f"d{self.dilation}" if self.dilation > 1 else ""))
        return f"{self.kind}{self.kernel}{extra}"


_TOKEN = re.compile(r"^(conv|pool)?(\d+)((?:[spd]\d+)*)$")


def parse_stack(text: str) -> list[StackLayer]:
    """``"conv3,conv3,conv3"`` or ``"conv7s2p3,pool3s2p1,conv3d2"`` -> layers (``s`` stride, ``p`` padding, ``d``
    dilation, in any order; a conv's stride defaults to 1, a pool's to its size)."""
    layers = []
    for token in [t.strip().lower() for t in text.split(",") if t.strip()]:
        m = _TOKEN.match(token)
        options = dict(re.findall(r"([spd])(\d+)", m.group(3))) if m else {}
        if not m or len(options) != len(re.findall(r"[spd]", m.group(3))):
            raise TltoolError(
                f"--stack layer {token!r} is not understood: write [conv|pool]F[sS][pP][dD] separated by commas, "
                "e.g. conv3,conv3,conv3 or conv7s2p3,pool3s2p1 or conv3d2."
            )
        kind, kernel = m.group(1) or "conv", int(m.group(2))
        stride = int(options.get("s", kernel if kind == "pool" else 1))
        layers.append(StackLayer(kind, kernel, stride, int(options.get("p", 0)), int(options.get("d", 1))))
    if not layers:
        raise TltoolError("--stack is empty: give layers such as conv3,conv3,conv3.")
    for layer in layers:
        _positive(kernel=layer.kernel, stride=layer.stride, dilation=layer.dilation)
    return layers


@dataclass(frozen=True)
class StackRow:
    layer: StackLayer
    effective_kernel: int
    jump: int  # distance in input pixels between neighbouring outputs of this layer
    receptive_field: int
    output_size: tuple[int, int] | None = None  # when an input size is given


def receptive_field(layers: Iterable[StackLayer], input_size: tuple[int, int] | None = None,
                    floor: bool = False) -> list[StackRow]:
    """Receptive field (in input pixels) after each layer of a stack; three 3x3 stride-1 convs see 7x7.

    With ``input_size`` (H, W) the output size of every layer is computed too (checked to fit unless ``floor``)."""
    rows, field, jump, size = [], 1, 1, input_size
    for layer in layers:
        span = effective_kernel(layer.kernel, layer.dilation)
        field += (span - 1) * jump
        jump *= layer.stride
        if size is not None:
            size = _output_hw(*size, layer.kernel, layer.stride, layer.pad, layer.dilation,
                              "pool" if layer.kind == "pool" else "filter", floor, f"layer {layer.text}")
        rows.append(StackRow(layer, span, jump, field, size))
    return rows


# ----------------------------------------------------------------------------------------------------- helpers
# what each use of ``conv-calc`` reads: (the use in words, its options); any other option given would do nothing
CONV_CALC_USES = {
    "stack": ("a receptive field of --stack (each layer's F, S, P and D are written in the stack)",
              {"stack", "input", "floor"}),
    "kernel": ("--kernel without --input (only the dilated filter size is computed)", {"kernel", "dilation"}),
    "pool": ("a pooling layer (--pool has no filters and no dilation; the depth stays D)",
             {"pool", "input", "kernel", "stride", "pad", "floor"}),
    "conv": ("a conv layer", {"input", "filters", "kernel", "stride", "pad", "dilation", "floor"}),
}
_CONV_CALC_DEFAULTS = {"pad": 0, "dilation": 1}  # an option left at its default is not a request


def conv_calc_use(options: dict[str, object]) -> str:
    """Which use of ``conv-calc`` ``options`` (its option names -> values, None or False when not given) ask for.
    An option that use ignores is an error: ``--pool --filters 4`` printed a pooling layer as if ``--filters`` had
    not been typed."""
    if options.get("stack"):
        use = "stack"
    elif options.get("input") is None:
        use = "kernel"
    else:
        use = "pool" if options.get("pool") else "conv"
    what, reads = CONV_CALC_USES[use]
    ignored = [f"--{name}" for name, value in options.items() if value is not None and value is not False
               and value != _CONV_CALC_DEFAULTS.get(name) and name not in reads]
    if ignored:
        one = len(ignored) == 1
        raise TltoolError(f"{', '.join(ignored)} {'does' if one else 'do'} nothing for {what}; leave "
                          f"{'it' if one else 'them'} out.")
    return use


def _output_hw(h: int, w: int, kernel: int, stride: int, pad: int, dilation: int, what: str, floor: bool,
               owner: str = "") -> tuple[int, int]:
    of = f" of {owner}" if owner else ""
    if h == w:
        size = output_size(h, kernel, stride, pad, dilation, what, floor, f"the {h}x{w} input{of}")
        return size, size
    return (output_size(h, kernel, stride, pad, dilation, what, floor, f"the height ({h}) of the {h}x{w} input{of}"),
            output_size(w, kernel, stride, pad, dilation, what, floor, f"the width ({w}) of the {h}x{w} input{of}"))


def _positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise TltoolError(f"{name.replace('_', ' ')} must be a whole number of at least 1, got {value}.")


def _hwd(shape: Sequence[int]) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise TltoolError(f"the input needs height, width and depth (HxWxD), got {'x'.join(map(str, shape))}.")
    return int(shape[0]), int(shape[1]), int(shape[2])


# ------------------------------------------------------------------------------------------------ explanations
def _size_formula(size: int, r: LayerResult, out: int) -> str:
    span = effective_kernel(r.kernel, r.dilation)
    fraction = f"({size} - {span} + 2*{r.pad})/{r.stride}"
    if (size - span + 2 * r.pad) % r.stride:
        return f"floor({fraction}) + 1 = {out} (the last pixels are dropped)"
    return f"{fraction} + 1 = {out}"


def explain_layer(r: LayerResult, filters_given: bool = True) -> list[tuple[str, str]]:
    """(label, text) lines showing the working, as on the slides. Without ``filters_given`` the depth is 'K' and
    only the parameters per filter are shown."""
    (h, w, d), (oh, ow, k) = r.input_shape, r.output_shape
    if r.kind == "pool":
        what = f"{r.kernel}x{r.kernel} pooling, stride {r.stride}, pad {r.pad}"
    else:
        count = f"{k} filter{'s' if k > 1 else ''}" if filters_given else "K filters"
        what = (f"{count} {r.kernel}x{r.kernel}x{d}, stride {r.stride}, pad {r.pad}"
                + (f", dilation {r.dilation}" if r.dilation > 1 else ""))
    lines = [("input", f"{h}x{w}x{d}"), (r.kind, what)]
    if r.dilation > 1:
        lines.append(("effective kernel", f"{r.kernel} + ({r.kernel} - 1)*({r.dilation} - 1) = "
                                          f"{effective_kernel(r.kernel, r.dilation)}"))
    if h == w:
        lines.append(("output size", _size_formula(h, r, oh)))
    else:
        lines += [("output height", _size_formula(h, r, oh)), ("output width", _size_formula(w, r, ow))]
    depth = str(k) if (filters_given or r.kind == "pool") else "K"
    lines.append(("output", f"{oh}x{ow}x{depth}"))
    if r.kind == "pool":
        lines.append(("parameters", "0 (pooling learns nothing; the depth stays the same)"))
        return lines
    per_filter = f"{r.kernel}*{r.kernel}*{d} + 1 = {r.kernel * r.kernel * d + 1} per filter"
    if not filters_given:
        lines.append(("parameters", f"{per_filter} (K filters: {r.kernel * r.kernel * d + 1}*K)"))
        return lines
    lines += [("weights", f"({r.kernel}*{r.kernel}*{d})*{k} = {r.weights:,}"), ("biases", f"{r.biases:,}"),
              ("parameters", f"{r.parameters:,} ({per_filter})")]
    return lines
