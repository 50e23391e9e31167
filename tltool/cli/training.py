"""``finetune``, ``export`` and ``augment preview``."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import click

from ..augment import preview
from ..configs import FinetuneConfig, RunConfig, ScratchConfig, stored_run_kind
from ..errors import IgnoredOptionsWarning, TltoolError
from ..export import EXIT_TOO_COSTLY, export_run, measurement_lines
from ..finetune import finetune, finetune_cv
from ..report import accuracy_line, resolution_line
from ..scratch import train_from_scratch
from ..settings import PREVIEW_DRAWS, PREVIEW_SIZE, choices
from .options import (backbone_options, choice, compose, force_option, out_option, split_options, strategy_option,
                      strict_option, tta_option)
from .output import echo_tta

AUGMENT_HELP = f"{', '.join(choices('augment'))}, or an albumentations pipeline file (YAML/JSON from A.save)."


def training_options(config: type[RunConfig]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Options of the training loop, named exactly as the fields of ``config``, with its defaults."""
    options = [
        click.option("--optimizer", type=choice("optimizer"), default=config.optimizer, show_default=True),
        click.option("--weight-decay", type=float, default=config.weight_decay, help="Decoupled weight decay."),
        click.option("--schedule", type=choice("schedule"), default=config.schedule, show_default=True,
                     help="cosine goes with --warmup-epochs; plateau with --plateau-patience/--plateau-factor."),
        click.option("--warmup-epochs", type=float, default=config.warmup_epochs, show_default=True,
                     help="cosine: epochs of linear warm-up from 1% of the learning rate, in each stage."),
        click.option("--step-epochs", type=int, default=config.step_epochs, show_default=True,
                     help="step: decay every N epochs."),
        click.option("--gamma", type=float, default=config.gamma, show_default=True,
                     help="step: factor per step; exponential: factor per epoch."),
        click.option("--plateau-patience", type=int, default=config.plateau_patience, show_default=True,
                     help="plateau: epochs without a better val loss before the learning rate drops."),
        click.option("--plateau-factor", type=float, default=config.plateau_factor, show_default=True,
                     help="plateau: factor of each drop."),
        click.option("--label-smoothing", type=float, default=config.label_smoothing, show_default=True),
        click.option("--early-stopping", type=int, default=config.early_stopping, show_default=True,
                     help="End a stage after N epochs without a better val loss (with that stage's best weights; "
                          "the next stage still runs); 0: off."),
        click.option("--class-weight", type=choice("class_weight"), default=config.class_weight,
                     show_default=True),
        click.option("--augment", type=choice("augment"), default=config.augment, show_default=True,
                     help=AUGMENT_HELP),
        click.option("--mixup", type=float, default=config.mixup, show_default=True,
                     help="Blend each training batch with itself reversed, weight ~ Beta(A, A); 0: off."),
        click.option("--mixed-precision", is_flag=True, default=config.mixed_precision,
                     help="float16 compute on a GPU (refused on CPU)."),
        click.option("--refit/--no-refit", default=config.refit, show_default=True,
                     help="After the val estimate, train the shipped model again on train+val for the same epochs "
                          "(the accuracy reported stays the one measured before the refit)."),
        strategy_option,
        click.option("--scale-lr", is_flag=True, default=config.scale_lr,
                     help="Multiply the learning rates by the number of replicas (linear scaling rule)."),
    ]
    return compose(*options)


def warn_ignored_on_resume(ctx: click.Context) -> None:
    """``--resume`` continues a run with the settings it started with (only ``--strategy`` is this session's):
    name every other option given on the command line, which it does not use."""
    if not ctx.params.get("resume"):
        return
    params = {param.name: param for param in ctx.command.params}
    given = [name.upper() if isinstance(params[name], click.Argument) else params[name].opts[0]
             for name in ctx.params if name not in ("resume", "strategy")
             and ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
    if given:
        warnings.warn(f"--resume continues {ctx.params['resume']} with the settings it started with: "
                      f"{', '.join(given)} ignored. Start a new run to change them.", IgnoredOptionsWarning,
                      stacklevel=2)


def _print_run(result) -> None:
    if not result.chief:
        click.echo("this worker's share of training is done; the chief (worker 0) writes the run folder and report")
        return
    click.echo(accuracy_line(result.evaluation))
    click.echo(resolution_line(result.evaluation.accuracy().to_json()))
    echo_tta(result.metrics)
    if result.metrics.get("refit"):
        click.echo(result.metrics["refit"]["note"])
    click.echo(f"report: {result.run_dir / 'report.md'}")


@click.command("finetune")
@click.argument("data", required=False)
@backbone_options
@split_options
@strict_option
@training_options(FinetuneConfig)
@click.option("--head-init", type=choice("head_init"), default=FinetuneConfig.head_init,
              show_default=True, help="Start the classifier as the linear probe (LP-FT) or at random.")
@click.option("--head-epochs", type=int, default=FinetuneConfig.head_epochs, show_default=True,
              help="Stage 1: the new head alone.")
@click.option("--head-lr", type=float, default=FinetuneConfig.head_lr, show_default=True)
@click.option("--epochs", type=int, default=FinetuneConfig.epochs, show_default=True,
              help="Stage 2: with the top unfrozen.")
@click.option("--lr", type=float, default=FinetuneConfig.lr, show_default=True)
@click.option("--unfreeze", default=FinetuneConfig.unfreeze, show_default=True,
              help="N (last N blocks, or layers when the backbone has no named blocks), all, none, or a block name.")
@click.option("--dropout", type=float, default=FinetuneConfig.dropout, show_default=True)
@tta_option
@click.option("--cv", type=int, default=0, show_default=True,
              help="K-fold cross-validation over train+val: K full fine-tunings (the estimated time is shown first).")
@click.option("--resume", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue a killed run from its last checkpoint, on the exact split it started with (its own "
                   "settings are used; --strategy chooses this session's devices, a run started on 2 replicas "
                   "resumes on 1). A killed --cv run keeps its finished folds.")
@out_option("runs/finetune-DATASET-BACKBONE-TIME; with --cv, runs/finetune-cv-DATASET-BACKBONE-TIME")
@force_option
@click.pass_context
def finetune_cmd(ctx: click.Context, data: str | None, cv: int, resume: str | None, out: str | None, force: bool,
                 **options: Any) -> None:
    """Fine-tune a pretrained backbone on DATA: new head first, then the top of the network."""
    if not data and not resume:
        raise TltoolError("give DATA (a folder, CSV manifest or tfds:NAME) or --resume RUN_DIR.")
    warn_ignored_on_resume(ctx)
    # a resumed run is of the kind it was started as: --cv with --resume is ignored (warned above), not a command
    # to resume a plain fine-tune as a cross-validation (refused: "resume it with `tltool finetune --resume`")
    if stored_run_kind(Path(resume)) == "finetune-cv" if resume else cv:
        run_dir, evaluation, metrics = finetune_cv(FinetuneConfig(data=data, **options), cv, out=out, force=force,
                                                   resume=resume)
        click.echo(accuracy_line(evaluation, split=f"{metrics['cv']['k']}-fold cross-validated"))
        click.echo(resolution_line(metrics["cv"]["accuracy"], cross_validated=True))
        click.echo(f"report: {run_dir / 'report.md'}")
        return
    _print_run(finetune(FinetuneConfig(data=data or "", **options), out=out, resume=resume, force=force))


@click.command("train")
@click.argument("data", required=False)
@click.option("--arch", default=ScratchConfig.arch, show_default=True,
              help="A from-scratch net (see `tltool arch list`).")
@click.option("--image-size", type=int, default=ScratchConfig.image_size,
              help="Input size [default: the architecture's].")
@click.option("--resize", type=choice("resize"), default=ScratchConfig.resize,
              show_default=True)
@click.option("--batch-size", type=int, default=ScratchConfig.batch_size, show_default=True,
              help="Images per batch on each replica.")
@split_options
@strict_option
@training_options(ScratchConfig)
@click.option("--epochs", type=int, default=ScratchConfig.epochs, show_default=True)
@click.option("--lr", type=float, default=ScratchConfig.lr, show_default=True)
@click.option("--initializer", default=ScratchConfig.initializer,
              help="glorot_uniform, he_normal, lecun_normal, ... [default: the net's].")
@click.option("--batch-norm/--no-batch-norm", default=ScratchConfig.batch_norm,
              help="Batch normalisation after convolutions.")
@click.option("--dropout", type=float, default=ScratchConfig.dropout,
              help="Dropout before the classifier [default: the net's].")
@tta_option
@click.option("--resume", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue a killed run from its last checkpoint, on the exact split it started with (its own "
                   "settings are used; --strategy chooses this session's devices).")
@out_option("runs/scratch-DATASET-ARCH-TIME")
@force_option
@click.pass_context
def train_cmd(ctx: click.Context, data: str | None, resume: str | None, out: str | None, force: bool,
              **options: Any) -> None:
    """Train a classic CNN from scratch on DATA with the same machinery (and report) as fine-tuning."""
    if not data and not resume:
        raise TltoolError("give DATA (a folder, CSV manifest or tfds:NAME) or --resume RUN_DIR.")
    warn_ignored_on_resume(ctx)
    _print_run(train_from_scratch(ScratchConfig(data=data or "", **options), out=out, resume=resume, force=force))


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=choice("export_format"), default="keras",
              show_default=True)
@click.option("--quantize", type=choice("quantize"), default="none", show_default=True,
              help="tflite only: float16 (half-size weights), dynamic (int8 weights), int8 (calibrated on the run's "
                   "training images).")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Accuracy points the export may lose against the float model on the validation images; more is "
                   "a QuantizationCostWarning and exit status 3 (the file is still written).")
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="tflite: run the written file on the validation images (accuracy, paired difference, speed).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Export folder: new, empty, or an earlier tltool export [default: RUN_DIR/export/FORMAT, or "
                   "RUN_DIR/export/FORMAT-QUANTIZE with --quantize: e.g. RUN_DIR/export/tflite-dynamic].")
@click.option("--force", is_flag=True,
              help="Replace an earlier tltool export in --out, or in the default folder (never any other folder).")
@click.pass_context
def export_cmd(ctx: click.Context, run_dir: str, fmt: str, quantize: str, max_drop: float, measure: bool,
               out: str | None, force: bool) -> None:
    """Export a trained run (fine-tuned or linear) as .keras, SavedModel or .tflite with labels.txt, input.json and
    a README for clients; input: RGB pixels 0..255. A .tflite export is measured on the validation images."""
    result = export_run(run_dir, fmt, out, force=force, quantize=quantize, max_drop=max_drop, measure=measure)
    for line in measurement_lines(result.measurement) if result.measurement else []:
        click.echo(line)
    click.echo(f"wrote {result.model_path} (with labels.txt, input.json, README.md"
               + (", export.json)" if result.measurement else ")"))
    if not result.within_max_drop:
        ctx.exit(EXIT_TOO_COSTLY)


@click.group("augment")
def augment() -> None:
    """Look at augmentation before training with it."""


@augment.command("preview")
@click.argument("data")
@click.option("--augment", "preset", type=choice("augment"), default=FinetuneConfig.augment, show_default=True,
              help=AUGMENT_HELP)
@click.option("--image-size", type=int, default=PREVIEW_SIZE, show_default=True)
@click.option("--draws", type=int, default=PREVIEW_DRAWS, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--index", type=int, default=0, show_default=True, help="Which image (in path order).")
@click.option("--out", type=click.Path(), default=None,
              help="Run folder to write augment_preview.png into [default: runs/augment-preview-DATASET-AUGMENT-"
                   "TIME, AUGMENT the preset, or the pipeline file's name without its suffix].")
@force_option
def augment_preview_cmd(data: str, preset: str, image_size: int, draws: int, seed: int, index: int, out: str | None,
                        force: bool) -> None:
    """Write a PNG grid of one image of DATA under many random draws of an augmentation, into a run folder."""
    click.echo(f"wrote {preview(data, out, preset, image_size, draws, seed, index, force=force)}")


COMMANDS = [finetune_cmd, train_cmd, export_cmd, augment]
