"""Options shared by several commands, declared once so every command spells them the same way."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click

from ..configs import ExtractConfig, RunConfig
from ..errors import close_match_hint
from ..settings import FILE_SUFFIXES, choices, pinned_engine

# Defaults come from the config dataclasses (tltool.configs) and legal values from tltool.settings, so the CLI and
# the library cannot disagree; the feature-extraction commands share them with fine-tuning.


class Choice(click.Choice):
    """The type of every enumerated option: :class:`click.Choice` (a usage error, exit status 2, listing the legal
    values) whose refusal adds the library's "did you mean" when a legal value is close (``--head logregg``)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            raise click.BadParameter(self.refusal(value), ctx=ctx, param=param) from None

    def refusal(self, value: Any, alternative: str = "") -> str:
        """Why ``value`` is refused: the legal values (and ``alternative``), then the closest of them, if any."""
        legal = ", ".join(repr(str(c)) for c in self.choices)
        hint = close_match_hint(value, [str(c) for c in self.choices])
        return f"{value!r} is not one of {legal}{alternative}." + (f" {hint}" if hint else "")


class ChoiceOrFile(click.ParamType):
    """A :class:`Choice` that also takes a file name ending in one of ``suffixes`` (``--augment``: a preset or an
    albumentations pipeline file). The file is not opened here: whoever reads it says when it is missing or bad.

    Not a :class:`click.Choice` itself, since it accepts more than its choices."""

    name = "choice or file"

    def __init__(self, legal: Iterable[str], suffixes: Iterable[str]) -> None:
        self.choice = Choice(tuple(legal))
        self.suffixes = tuple(suffixes)

    @property
    def choices(self) -> tuple[str, ...]:
        return self.choice.choices

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"[{'|'.join(self.choices)}|FILE]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.lower().endswith(self.suffixes):
            return value
        if value in self.choices:
            return value
        files = ", ".join(self.suffixes)
        self.fail(self.choice.refusal(value, f", or a file ({files})"), param, ctx)

    def __repr__(self) -> str:
        return f"ChoiceOrFile({list(self.choices)}, {list(self.suffixes)})"


def choice(setting: str) -> Choice | ChoiceOrFile:
    """The type of the option of a setting of :data:`tltool.settings.CHOICES`: a :class:`Choice`, or a
    :class:`ChoiceOrFile` for a setting that also takes a file (:data:`tltool.settings.FILE_SUFFIXES`)."""
    if setting in FILE_SUFFIXES:
        return ChoiceOrFile(choices(setting), FILE_SUFFIXES[setting])
    return Choice(choices(setting))


def compose(*decorators: Callable[[Callable[..., Any]], Callable[..., Any]]
            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
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

# the features folder of probe and suspects without --features: tltool.linear.default_features_dir
FEATURES_DIR = ("runs/features-NAME-BACKBONE[-SIZE]-RESIZE[-w-WEIGHTS] (NAME: the last part of DATA; -SIZE: only "
                "with --image-size; -w-WEIGHTS: only with --weights other than imagenet), e.g. "
                "runs/features-shapes-efficientnet_lite0-crop")


def out_option(default: str, what: str = "Run folder to write") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--out``, the folder a command writes; ``default`` is the folder it writes without one, spelled as
    :func:`tltool.runs.new_run_dir` names it (``runs/KIND-PARTS-TIME``, TIME as in ``20261130-160920``)."""
    return click.option("--out", type=click.Path(file_okay=False), default=None, help=f"{what} [default: {default}].")


force_option = click.option("--force", is_flag=True, help="Replace a finished run in --out (a trained run only by "
                                                           "another training).")
# probe and suspects: their --features cache may hold another folder's features (a folder of the same last name)
force_features_option = click.option("--force", is_flag=True, help="Replace a finished run in --out, and the "
                                     "features of other data or other settings (backbone, weights, size, resize) in "
                                     "--features.")
tta_option = click.option("--tta", type=choice("tta"), default=RunConfig.tta,
                          show_default=True,
                          help="Test-time augmentation at evaluation: mirror, or 4 corners + centre and mirrors.")


def _engine_pinned_too(ctx: click.Context, param: click.Parameter, value: str) -> str:
    pinned_engine()  # a misspelt $TLTOOL_ENGINE is refused before any work, whatever --engine says
    return value


engine_option = click.option(
    "--engine", type=choice("engine"), default=ExtractConfig.engine, show_default=True, callback=_engine_pinned_too,
    help="What runs the network for inference: tf, litert (ai-edge-litert, converted once and cached), or auto "
         "(the faster of the two for this backbone on this machine, measured once; tf on a GPU). "
         "$TLTOOL_ENGINE pins what auto means.")
strategy_option = click.option(
    "--strategy", type=choice("strategy"), default=RunConfig.strategy, show_default=True,
    help="tf.distribute: auto (mirrored when more than one GPU is visible, else none), none (one device), mirrored "
         "(every local GPU), multiworker (the cluster in the TF_CONFIG environment variable).")
