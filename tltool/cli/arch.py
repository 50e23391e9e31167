"""``tltool arch ...``: the lectures' reference nets built from scratch, and their shape/parameter arithmetic."""
from __future__ import annotations

import click

from ..arch import build_arch, calc, get_arch, list_archs
from ..arch.calc import parse_shape
from ..arch.summary import arch_summary, summary_table, totals_text
from ..errors import TltoolError


@click.group("arch")
def arch() -> None:
    """Classic CNNs from scratch (list, layer-by-layer summary) and conv-layer arithmetic."""


@arch.command("list")
def list_cmd() -> None:
    """List the reference nets, their default input and the smallest input they accept."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="reference nets (build with `tltool arch summary NAME`)")
    for column in ("name", "aliases", "input", "min", "description"):
        table.add_column(column, no_wrap=column != "description")
    for spec in list_archs():
        table.add_row(spec.name, ", ".join(spec.aliases), "x".join(map(str, spec.default_input)), str(spec.min_size),
                      spec.description)
    Console(highlight=False).print(table)


@arch.command("summary")
@click.argument("name")
@click.option("--input", "input_text", default=None, help="Input shape HxWxC (or HxW, or N) [default: the paper's].")
@click.option("--classes", type=int, default=None, help="Number of classes [default: the paper's].")
@click.option("--batch-norm/--no-batch-norm", default=None, help="Batch-normalise every conv [default: the paper's].")
def summary_cmd(name: str, input_text: str | None, classes: int | None, batch_norm: bool | None) -> None:
    """Layer-by-layer output shape, weights, biases and parameters of NAME, with the totals."""
    from rich.console import Console

    shape = parse_shape(input_text, channels=get_arch(name).default_input[2]) if input_text else None
    summary = arch_summary(build_arch(name, input_shape=shape, classes=classes, batch_norm=batch_norm))
    Console(highlight=False).print(summary_table(summary))
    click.echo(totals_text(summary))


@arch.command("conv-calc")
@click.option("--input", "input_text", default=None, help="Input volume HxWxD, e.g. 32x32x3 (HxW for --stack).")
@click.option("--filters", type=int, default=None, help="Number of filters K [default: show per-filter figures].")
@click.option("--kernel", type=int, default=None, help="Filter (or pool) size F.")
@click.option("--stride", type=int, default=None, help="Stride S [default: 1; for --pool, the pool size].")
@click.option("--pad", type=int, default=0, show_default=True, help="Zero padding P on every side.")
@click.option("--dilation", type=int, default=1, show_default=True, help="Dilation D (effective size F+(F-1)(D-1)).")
@click.option("--pool", is_flag=True, help="A pooling layer (no parameters) instead of a conv layer.")
@click.option("--floor", is_flag=True,
              help="Round down like Keras/PyTorch (drop leftover pixels) instead of failing with 'does not fit'.")
@click.option("--stack", default=None,
              help="Receptive field of a stack, e.g. conv3,conv3,conv3 or conv7s2p3,pool3s2p1,conv3d2 "
                   "([conv|pool]F[sS][pP][dD]); with --input, every layer's output size too.")
def conv_calc_cmd(input_text: str | None, filters: int | None, kernel: int | None, stride: int | None, pad: int,
                  dilation: int, pool: bool, floor: bool, stack: str | None) -> None:
    """Output size (W - F + 2P)/S + 1 ("does not fit" when not an integer), parameters (F*F*D1)*K + K,
    dilated filter size and the receptive field of a stack of layers.

    \b
      tltool arch conv-calc --input 32x32x3 --filters 10 --kernel 5 --stride 1 --pad 2
      tltool arch conv-calc --input 7x7x1 --kernel 3 --stride 3
      tltool arch conv-calc --input 55x55x96 --pool --kernel 3 --stride 2
      tltool arch conv-calc --kernel 3 --dilation 2
      tltool arch conv-calc --stack conv3,conv3,conv3
    """
    if kernel is None and not stack:
        raise TltoolError("give --kernel F (and --input HxWxD for output sizes), or --stack for a receptive field.")
    use = calc.conv_calc_use({"input": input_text, "filters": filters, "kernel": kernel, "stride": stride, "pad": pad,
                              "dilation": dilation, "pool": pool, "floor": floor, "stack": stack})
    if use == "stack":
        _print_stack(calc, stack, input_text, floor)
        return
    if use == "kernel":
        span = calc.effective_kernel(kernel, dilation)
        click.echo(f"effective kernel  {kernel} + ({kernel} - 1)*({dilation} - 1) = {span}  ({span}x{span})")
        return
    shape = calc.parse_shape(input_text)
    if len(shape) != 3:
        raise TltoolError(f"--input needs a depth for a single layer: write HxWxD, e.g. {input_text}x3.")
    if use == "pool":
        result = calc.pool_layer(shape, kernel, stride, pad, floor)
    else:
        result = calc.conv_layer(shape, 1 if filters is None else filters, kernel, 1 if stride is None else stride, pad,
                                 dilation, floor=floor)
    for label, text in calc.explain_layer(result, filters_given=filters is not None):
        click.echo(f"{label:<17} {text}")


def _print_stack(calc, stack: str, input_text: str | None, floor: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    size = calc.parse_shape(input_text)[:2] if input_text else None
    rows = calc.receptive_field(calc.parse_stack(stack), size, floor)
    table = Table(title="receptive field: r += (F_eff - 1) * jump; jump *= S")
    for column in ("layer", "F", "F_eff", "S", "jump", "receptive field") + (("output",) if size else ()):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for r in rows:
        cells = [r.layer.text, str(r.layer.kernel), str(r.effective_kernel), str(r.layer.stride), str(r.jump),
                 f"{r.receptive_field}x{r.receptive_field}"]
        table.add_row(*cells, *(("x".join(map(str, r.output_size)),) if size else ()))
    Console(highlight=False).print(table)
    field = rows[-1].receptive_field
    click.echo(f"receptive field of the stack: {field}x{field} input pixels")


COMMANDS = [arch]
