"""Options shared by several commands, declared once so every command spells them the same way."""
from __future__ import annotations

import click

from ..configs import ExtractConfig, RunConfig
from ..settings import choices

# Defaults come from the config dataclasses (tltool.configs) and legal values from tltool.settings, so the CLI and
# the library cannot disagree; the feature-extraction commands share them with fine-tuning.


def choice(setting: str) -> click.Choice:
    """The ``click.Choice`` of a setting of :data:`tltool.settings.CHOICES`."""
    return click.Choice(choices(setting))


def compose(*decorators):
    """Several option decorators as one, applied in the order they are listed (the first is the first shown)."""
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn
    return apply


split_options = compose(
    click.option("--val-fraction", type=float, default=ExtractConfig.val_fraction, show_default=True,
                 help="Share of each class held out for validation when the data has no split of its own."),
    click.option("--seed", type=int, default=ExtractConfig.seed, show_default=True,
                 help="Seed of the split and of training."),
    click.option("--max-pixels", type=int, default=ExtractConfig.max_pixels, show_default=True,
                 help="Images with more pixels are rejected as decompression bombs."),
)

strict_option = click.option(
    "--strict", is_flag=True, default=ExtractConfig.strict,
    help="Stop with an error when a class has no usable image (an empty class folder, or every file bad) instead "
         "of leaving it out with an EmptyClassWarning.")

backbone_options = compose(
    click.option("--backbone", default=ExtractConfig.backbone, show_default=True,
                 help="Pretrained network (see `tltool backbones`)."),
    click.option("--weights", default=ExtractConfig.weights, show_default=True,
                 help="imagenet (Keras cache; offline for efficientnet_lite0), none, or a weights file."),
    click.option("--image-size", type=int, default=ExtractConfig.image_size,
                 help="Input size in pixels [default: the backbone's]."),
    click.option("--resize", type=choice("resize"), default=ExtractConfig.resize, show_default=True,
                 help="crop: shorter side + centre crop; pad: letterbox; stretch: ignore aspect ratio."),
    click.option("--batch-size", type=int, default=ExtractConfig.batch_size, show_default=True,
                 help="Images per batch on each replica (the global batch is this x the replicas of --strategy)."),
)

out_option = click.option("--out", type=click.Path(file_okay=False), default=None,
                          help="Run folder to write [default: runs/<kind>-<names>-<time>].")
force_option = click.option("--force", is_flag=True, help="Replace a finished run in --out.")
tta_option = click.option("--tta", type=choice("tta"), default=RunConfig.tta,
                          show_default=True,
                          help="Test-time augmentation at evaluation: mirror, or 4 corners + centre and mirrors.")
engine_option = click.option(
    "--engine", type=choice("engine"), default=ExtractConfig.engine, show_default=True,
    help="What runs the network for inference: tf, litert (ai-edge-litert, converted once and cached), or auto "
         "(the faster of the two for this backbone on this machine, measured once; tf on a GPU). "
         "$TLTOOL_ENGINE pins what auto means.")
strategy_option = click.option(
    "--strategy", type=choice("strategy"), default=RunConfig.strategy, show_default=True,
    help="tf.distribute: auto (mirrored when more than one GPU is visible, else none), none (one device), mirrored "
         "(every local GPU), multiworker (the cluster in the TF_CONFIG environment variable).")
