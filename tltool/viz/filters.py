"""What a convolutional base learned: its filters as images, and one layer's activation maps for one photo."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TltoolError
from ..images import load_image
from ..plotting import pyplot, save_figure
from ..report import write_picture_report
from ..runs import check_run_dir, new_run_dir, writes_runs
from ..utils import shown_name
from .network import Network, conv_kernel, first_conv, format_shape, is_depthwise, open_network
from .plots import grid_shape, mosaic, rescale_to_unit, show_tiles

MAX_GREY_FILTERS = 16  # rows of a per-input-channel grid
MAX_GREY_CHANNELS = 16  # its columns
MAX_DEPTHWISE = 256


# ------------------------------------------------------------------------------------------------------ layers
def layer_table(network: Network) -> list[dict]:
    """One row per layer of the base: index, name, type and output shape (what ``--layer`` accepts)."""
    rows = []
    for index, layer in enumerate(network.layers()):
        try:
            shape = format_shape(layer.output.shape)
        except (AttributeError, ValueError):  # a layer used several times has no single output
            shape = "?"
        kernel = conv_kernel(layer)
        rows.append({"index": index, "name": layer.name, "type": type(layer).__name__, "output": shape,
                     "kernel": "×".join(str(d) for d in kernel.shape) if kernel is not None else ""})
    return rows


# ----------------------------------------------------------------------------------------------------- filters
@dataclass
class FilterGrid:
    """The tiles of a filter picture, exactly as drawn (``tiles[i]`` is one tile)."""

    network: str
    layer: str
    index: int
    kernel_shape: tuple[int, ...]
    mode: str  # "rgb": one colour tile per filter; "grey": one tile per (filter, input channel) or per channel
    tiles: np.ndarray  # (N, kh, kw, 3) or (N, kh, kw), each scaled to 0..1
    cols: int
    title: str
    run_dir: Path | None = None
    png: Path | None = None

    @property
    def n_tiles(self) -> int:
        return int(len(self.tiles))


def filter_grid(network: Network, layer: str | int | None = None, max_filters: int = MAX_GREY_FILTERS,
                max_channels: int = MAX_GREY_CHANNELS) -> FilterGrid:
    """The first convolution's filters as RGB tiles, or ``layer``'s as grey tiles per input channel."""
    index, lyr = first_conv(network) if layer is None else network.find_layer(layer)
    kernel = conv_kernel(lyr)
    if kernel is None:
        raise TltoolError(f"--layer {layer}: {lyr.name!r} is a {type(lyr).__name__}, not a convolution; pick a layer "
                          f"whose kernel column is filled in `tltool viz layers {network.layer_hint}`.")
    kh, kw, c_in, c_out = kernel.shape
    depthwise = is_depthwise(lyr)
    if c_in == 3 and not depthwise:  # filters that look at the RGB image: one colour tile each
        tiles = rescale_to_unit(kernel.transpose(3, 0, 1, 2), axis=(1, 2, 3))
        if network.bgr:
            tiles = tiles[..., ::-1]
        cols = grid_shape(len(tiles))[1]
        title = (f"{network.name}: {lyr.name}, {c_out} filters of {kh}×{kw}×{c_in} "
                 "(each scaled to its own range)")
        return FilterGrid(network.name, lyr.name, index, kernel.shape, "rgb", tiles, cols, title)
    if depthwise:  # one kernel per channel (times the depth multiplier)
        flat = kernel.transpose(2, 3, 0, 1).reshape(-1, kh, kw)[:MAX_DEPTHWISE]
        tiles = rescale_to_unit(flat, axis=(1, 2))
        cols = grid_shape(len(tiles), 16)[1]
        title = (f"{network.name}: {lyr.name} (depthwise), {c_in * c_out} kernels of {kh}×{kw}, one per channel; "
                 f"showing {len(tiles)}")
        return FilterGrid(network.name, lyr.name, index, kernel.shape, "grey", tiles, cols, title)
    n_f, n_c = min(c_out, max_filters), min(c_in, max_channels)
    part = kernel[:, :, :n_c, :n_f].transpose(3, 2, 0, 1)  # (filter, input channel, kh, kw)
    tiles = rescale_to_unit(part, axis=(1, 2, 3)).reshape(-1, kh, kw)  # each filter scaled over all its channels
    title = (f"{network.name}: {lyr.name}, {c_out} filters of {kh}×{kw}×{c_in}; rows: filters 0..{n_f - 1}, "
             f"columns: input channels 0..{n_c - 1} (grey, each filter scaled to its own range)")
    return FilterGrid(network.name, lyr.name, index, kernel.shape, "grey", tiles, n_c, title)


def plot_filter_grid(grid: FilterGrid, target: Path) -> None:
    plt = pyplot()
    picture = mosaic(grid.tiles, grid.cols, pad=1)
    rows = picture.shape[0] / picture.shape[1]
    fig, ax = plt.subplots(figsize=(6.5, max(2.0, 6.5 * rows)))
    show_tiles(ax, picture)
    ax.set_title(_wrap(grid.title), fontsize=9)
    save_figure(fig, target)


@writes_runs
def visualize_filters(backbone: str | None = None, model: str | None = None, weights: str = "imagenet",
                      image_size: int | None = None, layer: str | None = None, out: str | Path | None = None,
                      network: Network | None = None, force: bool = False) -> FilterGrid:
    """``tltool viz filters``: write ``filters.png``, ``metrics.json`` and ``report.md`` into a run folder."""
    check_run_dir(out, force, reads=(model,), kind="viz")  # `--model RUN --out RUN --force` replaced the run it drew
    network = network or open_network(backbone, model, weights, image_size)
    grid = filter_grid(network, layer)
    run_dir = new_run_dir("viz", "filters", network.name, grid.layer, out=out, force=force)
    grid.run_dir, grid.png = run_dir, run_dir / "filters.png"
    plot_filter_grid(grid, grid.png)
    kernel = conv_kernel(network.layers()[grid.index])
    write_picture_report(run_dir, f"{network.name}: filters of {grid.layer}", {
        "network": network.name, "layer": grid.layer, "index": grid.index, "kernel_shape": list(grid.kernel_shape),
        "mode": grid.mode, "tiles": grid.n_tiles, "columns": grid.cols,
        "weights": {"min": float(kernel.min()), "max": float(kernel.max()), "mean_abs": float(np.abs(kernel).mean())},
        "config": network.config, "png": "filters.png",
    }, "filters.png", [f"layer {grid.layer} (index {grid.index}), kernel {tuple(grid.kernel_shape)}: "
                       f"{grid.n_tiles} tiles ({grid.mode})"])
    return grid


# ------------------------------------------------------------------------------------------------- activations
@dataclass
class ActivationGrid:
    network: str
    layer: str
    index: int
    shape: tuple[int, int, int]  # (h, w, channels) of the layer's output
    channels: list[int]  # the channels shown, strongest mean activation first
    maps: np.ndarray  # (n, h, w), as computed (not rescaled)
    image: np.ndarray  # the network's input, uint8
    stats: list[dict] = field(default_factory=list)
    run_dir: Path | None = None
    png: Path | None = None


def default_activation_layer(network: Network) -> int:
    """The first non-linearity after the first convolution (its output is an activation map), else that conv."""
    index, _ = first_conv(network)
    for i, layer in enumerate(network.layers()[index + 1:index + 4], start=index + 1):
        if type(layer).__name__ in ("ReLU", "Activation", "LeakyReLU", "ELU", "PReLU"):
            return i
    return index


def layer_activations(network: Network, image: np.ndarray, layer: str | int | None = None,
                      max_maps: int = 64) -> ActivationGrid:
    """One layer's activation maps for one ``image`` (uint8, the network's input size)."""
    from .._tf import tf

    if max_maps < 1:
        raise TltoolError(f"--max-maps must be at least 1, got {max_maps}.")
    index, lyr = network.find_layer(default_activation_layer(network) if layer is None else layer)
    sub = network.layer_model(lyr)
    batch = tf.convert_to_tensor(image[None].astype(np.float32))
    volume = np.asarray(sub(network.preprocess(batch), training=False), dtype=np.float32)[0]  # (h, w, c)
    strength = volume.mean(axis=(0, 1))
    order = np.argsort(-strength, kind="stable")[:max_maps]
    maps = volume.transpose(2, 0, 1)[order]
    stats = [{"channel": int(c), "mean": float(strength[c]), "max": float(volume[..., c].max()),
              "zero_fraction": float((volume[..., c] <= 0).mean())} for c in order]
    return ActivationGrid(network.name, lyr.name, index, volume.shape, [int(c) for c in order], maps, image, stats)


def plot_activation_grid(grid: ActivationGrid, target: Path, source: str = "") -> None:
    plt = pyplot()
    h, w, c = grid.shape
    cols = grid_shape(len(grid.maps), 8)[1]
    picture = mosaic(rescale_to_unit(grid.maps, axis=(1, 2), constant=0.0), cols, pad=max(1, h // 28))
    fig, (ax_img, ax_maps) = plt.subplots(1, 2, figsize=(13, 6.2), gridspec_kw={"width_ratios": [1, 2]})
    ax_img.imshow(grid.image)
    ax_img.set_title(_wrap(source or "input"), fontsize=9)
    ax_img.set_axis_off()
    show_tiles(ax_maps, picture, "viridis")
    ax_maps.set_title(f"{len(grid.maps)} of {c} maps ({h}×{w}), strongest mean activation first; "
                      "each scaled to its own range", fontsize=9)
    fig.suptitle(f"{grid.network}: layer {grid.index} {grid.layer}", fontsize=11)
    save_figure(fig, target)


@writes_runs
def visualize_activations(image_path: str | Path, backbone: str | None = None, model: str | None = None,
                          weights: str = "imagenet", image_size: int | None = None, layer: str | None = None,
                          max_maps: int = 64, out: str | Path | None = None,
                          network: Network | None = None, force: bool = False) -> ActivationGrid:
    """``tltool viz activations``: write ``activations.png``, ``metrics.json`` and ``report.md`` into a run folder."""
    check_run_dir(out, force, reads=(model, image_path), kind="viz")
    network = network or open_network(backbone, model, weights, image_size)
    image = load_image(image_path, network.image_size, network.resize, network.max_pixels)
    grid = layer_activations(network, image, layer, max_maps)
    run_dir = new_run_dir("viz", "activations", network.name, grid.layer, out=out, force=force)
    grid.run_dir, grid.png = run_dir, run_dir / "activations.png"
    plot_activation_grid(grid, grid.png, source=Path(image_path).name)
    write_picture_report(run_dir, f"{network.name}: activations of {grid.layer}", {
        "network": network.name, "image": str(image_path), "layer": grid.layer, "index": grid.index,
        "output_shape": list(grid.shape), "shown": grid.stats, "config": network.config, "png": "activations.png",
    }, "activations.png", [f"layer {grid.layer} (index {grid.index}), output {tuple(grid.shape)}, on "
                           f"{shown_name(image_path)}"])
    return grid


def _wrap(text: str, width: int = 90) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text
