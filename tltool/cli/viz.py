"""``tltool viz ...``: pictures of what a network learned, and ``suspects``: labels the features disagree with."""
from __future__ import annotations

from typing import Any, Callable

import click

from ..configs import LinearConfig
from ..settings import DEFAULT_BACKBONE
from ..labeler.suspects import find_suspects, terminal_lines
from ..viz import (layer_table, open_network, visualize_activations, visualize_embedding, visualize_filters,
                   visualize_gradcam)
from .options import (FEATURES_DIR, Choice, backbone_options, choice, compose, engine_option, force_features_option,
                      force_option, out_option, split_options)

network_options = compose(
    click.option("--backbone", default=None, help=f"Pretrained network [default: {DEFAULT_BACKBONE} unless --model]."),
    click.option("--model", "run_dir", default=None, type=click.Path(file_okay=False),
                 help="A run folder (linear, probe, finetune or train) instead of --backbone."),
    click.option("--weights", default="imagenet", show_default=True, help="With --backbone: imagenet, none or a file."),
    click.option("--image-size", type=int, default=None, help="With --backbone: input size [default: the backbone's]."),
)


def viz_out_option(default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--out`` of a picture: the run folder of its PNG and JSON (an earlier one is replaced with ``--force``)."""
    return compose(out_option(default, "Folder to write the PNG and JSON into"), force_option)


@click.group("viz")
def viz() -> None:
    """Look inside: first-layer filters, activation maps, Grad-CAM, a 2-D map of the features, suspect labels."""


@viz.command("filters")
@network_options
@click.option("--layer", default=None, help="Another conv layer (name or index; see `tltool viz layers`).")
@viz_out_option("runs/viz-filters-NET-LAYER-TIME, NET the backbone or the run's name")
def filters_cmd(backbone: str | None, run_dir: str | None, weights: str, image_size: int | None, layer: str | None,
                out: str | None, force: bool) -> None:
    """The first convolution's filters as an RGB grid (or --layer's, per input channel in grey)."""
    grid = visualize_filters(backbone, run_dir, weights, image_size, layer, out, force=force)
    click.echo(f"{grid.layer}: {grid.n_tiles} tiles of kernel {'x'.join(map(str, grid.kernel_shape))} -> {grid.png}")


@viz.command("layers")
@network_options
@click.option("--conv", "conv_only", is_flag=True, help="Only the convolutions (what `viz filters --layer` takes).")
def layers_cmd(backbone: str | None, run_dir: str | None, weights: str, image_size: int | None,
               conv_only: bool) -> None:
    """List the layers --layer accepts: index, name, type, output shape and kernel."""
    network = open_network(backbone, run_dir, weights, image_size)
    rows = [r for r in layer_table(network) if r["kernel"] or not conv_only]
    width = max(len(r["name"]) for r in rows) if rows else 4
    click.echo(f"{'index':>5}  {'name':<{width}}  {'type':<22}  {'output':<16}  kernel")
    for r in rows:
        click.echo(f"{r['index']:>5}  {r['name']:<{width}}  {r['type']:<22}  {r['output']:<16}  {r['kernel']}")


@viz.command("activations")
@click.argument("image", type=click.Path(dir_okay=False))
@network_options
@click.option("--layer", default=None,
              help="Layer name or index [default: the first activation after the first convolution].")
@click.option("--max-maps", type=int, default=64, show_default=True, help="Show the strongest N maps.")
@viz_out_option("runs/viz-activations-NET-LAYER-TIME, NET the backbone or the run's name")
def activations_cmd(image: str, backbone: str | None, run_dir: str | None, weights: str, image_size: int | None,
                    layer: str | None, max_maps: int, out: str | None, force: bool) -> None:
    """One layer's activation maps for IMAGE as a grid, the image beside it."""
    grid = visualize_activations(image, backbone, run_dir, weights, image_size, layer, max_maps, out, force=force)
    h, w, c = grid.shape
    click.echo(f"layer {grid.index} {grid.layer}: {c} maps of {h}x{w}, {len(grid.maps)} shown -> {grid.png}")


@viz.command("gradcam")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", "run_dir", required=True, type=click.Path(file_okay=False),
              help="A run folder written by linear, probe, finetune or train.")
@click.option("--class", "class_name", default=None, help="Explain this class [default: the predicted one].")
@viz_out_option("runs/viz-gradcam-RUN-TIME, RUN the name of --model")
def gradcam_cmd(images: tuple[str, ...], run_dir: str, class_name: str | None, out: str | None, force: bool) -> None:
    """Grad-CAM heat maps over IMAGES for the predicted (or named) class, its probability in the title."""
    result = visualize_gradcam(images, run_dir, class_name, out, force=force)
    for cam in result.cams:
        click.echo(f"{cam.path}\t{result.classes[cam.class_index]} {cam.probability:.3f}")
    click.echo(f"-> {result.png}")


@viz.command("embedding")
@click.argument("features", type=click.Path(file_okay=False))
@click.option("--pool", type=choice("pool"), default=LinearConfig.pool, show_default=True)
@click.option("--method", type=Choice(["auto", "tsne", "pca"]), default="auto", show_default=True,
              help="auto: t-SNE, or PCA when there are fewer than 30 images.")
@click.option("--perplexity", type=float, default=30.0, show_default=True)
@click.option("--thumbnails", is_flag=True, help="Draw a small copy of each image at its point.")
@click.option("--seed", type=int, default=0, show_default=True)
@viz_out_option("runs/viz-embedding-DATASET-BACKBONE-TIME")
def embedding_cmd(features: str, pool: str, method: str, perplexity: float, thumbnails: bool, seed: int,
                  out: str | None, force: bool) -> None:
    """A 2-D map of extracted FEATURES (t-SNE), one colour per class, train filled and val hollow."""
    emb = visualize_embedding(features, out, pool, method, perplexity, thumbnails, seed, force=force)
    click.echo(f"{emb.method} of {len(emb.coords)} images; nearest neighbour in the map has the same label for "
               f"{emb.neighbour_agreement:.1%} -> {emb.png}")


@click.command("suspects")
@click.argument("data")
@backbone_options
@split_options
@click.option("--features", "features_dir", type=click.Path(file_okay=False), default=None,
              help=f"Features folder (cache), shared with probe [default: {FEATURES_DIR}].")
@click.option("--top", type=int, default=30, show_default=True, help="How many suspects to write.")
@click.option("--neighbours", type=int, default=10, show_default=True, help="k of the nearest-neighbour check.")
@out_option("runs/suspects-DATASET-BACKBONE-TIME", "Folder to write suspects.csv and the contact sheet into")
@force_features_option
@engine_option
def suspects_cmd(data: str, backbone: str, weights: str, image_size: int | None, resize: str, batch_size: int,
                 val_fraction: float, seed: int, max_pixels: int, features_dir: str | None, top: int, neighbours: int,
                 out: str | None, force: bool, engine: str) -> None:
    """Images of DATA whose label the rest of the data disagrees with: suspects.csv and a contact sheet.

    Every image (all splits) is scored by a cross-validated linear head on its CNN features and by its nearest
    neighbours: little support for its own label makes it a suspect. DATA is a dataset folder, a CSV manifest, or
    a labeler folder (its labels.csv is read); fix the suspects with `tltool label serve DATA --review
    <out>/suspects.csv`.
    """
    result = find_suspects(data, out, backbone=backbone, weights=weights, image_size=image_size, resize=resize,
                           batch_size=batch_size, features_dir=features_dir, top=top, neighbours=neighbours,
                           val_fraction=val_fraction, seed=seed, max_pixels=max_pixels, force=force, engine=engine)
    for line in terminal_lines(result):
        click.echo(line)


viz.add_command(suspects_cmd)

COMMANDS = [viz]
