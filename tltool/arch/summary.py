"""A layer-by-layer table of a Keras model as the lectures draw it: output shape, weights, biases, parameters.

Trainable weights and biases are what the lectures count (``(F*F*D1)*K + K`` for a conv). Batch norm's scale
(gamma) counts as a weight and its offset (beta) as a bias; its moving mean and variance are not learnt and are
reported apart as non-trainable state (Keras's own ``count_params`` includes them, torchvision's figures do not).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras
    from rich.table import Table

BIAS_NAMES = ("bias", "beta")


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str  # the Keras class name
    output_shape: tuple  # without the batch dimension; a tuple of shapes for layers with several outputs
    weights: int
    biases: int
    non_trainable: int = 0

    @property
    def parameters(self) -> int:
        return self.weights + self.biases


@dataclass(frozen=True)
class ArchSummary:
    name: str
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def weights(self) -> int:
        return sum(r.weights for r in self.rows)

    @property
    def biases(self) -> int:
        return sum(r.biases for r in self.rows)

    @property
    def parameters(self) -> int:
        """Trainable parameters: weights + biases."""
        return self.weights + self.biases

    @property
    def non_trainable(self) -> int:
        return sum(r.non_trainable for r in self.rows)

    @property
    def total(self) -> int:
        """Everything stored, as Keras's ``count_params``."""
        return self.parameters + self.non_trainable

    def row(self, name: str) -> LayerRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)


def _shape(layer) -> tuple:
    out = layer.output
    if isinstance(out, (list, tuple)):
        return tuple(tuple(o.shape[1:]) for o in out)
    return tuple(out.shape[1:])


def arch_summary(model: keras.Model) -> ArchSummary:
    """One row per layer of a (functional) Keras model, with its output shape and parameter counts."""
    rows = []
    for layer in model.layers:
        weights = biases = fixed = 0
        for variable in layer.weights:
            size = prod(variable.shape)
            if not variable.trainable:
                fixed += size
            elif variable.name.rsplit("/", 1)[-1] in BIAS_NAMES:
                biases += size
            else:
                weights += size
        rows.append(LayerRow(layer.name, type(layer).__name__, _shape(layer), weights, biases, fixed))
    return ArchSummary(model.name, rows)


def format_shape(shape: tuple) -> str:
    """(55, 55, 96) -> '55x55x96'; several outputs are joined with ' + '."""
    if shape and isinstance(shape[0], tuple):
        return " + ".join(format_shape(s) for s in shape)
    return "x".join("?" if d is None else str(d) for d in shape)


def summary_table(summary: ArchSummary) -> Table:
    """The summary as a ``rich`` table, with a totals row."""
    from rich.table import Table

    table = Table(title=f"{summary.name}: output shape and parameters per layer", show_footer=True)
    # In a narrow terminal the type column gives way; names, shapes and numbers stay whole.
    names, shapes = [r.name for r in summary.rows], [format_shape(r.output_shape) for r in summary.rows]
    table.add_column("layer", footer="total", min_width=max(map(len, names), default=5), no_wrap=True)
    table.add_column("type", overflow="ellipsis")
    table.add_column("output shape", footer=shapes[-1] if shapes else "", min_width=max(map(len, shapes), default=5),
                     no_wrap=True)
    for column, total in (("weights", summary.weights), ("biases", summary.biases),
                          ("parameters", summary.parameters)):
        table.add_column(column, justify="right", no_wrap=True, footer=f"{total:,}")
    for r, shape in zip(summary.rows, shapes):
        table.add_row(r.name, r.kind, shape, f"{r.weights:,}", f"{r.biases:,}", f"{r.parameters:,}")
    return table


def totals_text(summary: ArchSummary) -> str:
    """The totals as plain lines (printed under the table)."""
    lines = [f"total: {summary.parameters:,} parameters ({summary.weights:,} weights + {summary.biases:,} biases)"]
    if summary.non_trainable:
        lines.append(f"plus {summary.non_trainable:,} non-trainable values (batch-norm moving mean and variance): "
                     f"{summary.total:,} stored in all")
    return "\n".join(lines)
