"""``finetune``, ``export`` and ``augment preview``."""
from __future__ import annotations

import click

from .options import backbone_options, force_option, out_option, split_options, strategy_option, tta_option

AUGMENT_HELP = "none, light, standard, heavy, or an albumentations pipeline file (YAML/JSON from A.save)."


def training_options(augment: str = "standard", label_smoothing: float = 0.1):
    """Options of the training loop, named exactly as the fields of tltool.supervised.RunConfig."""
    options = [
        click.option("--optimizer", default="adam", show_default=True,
                     help="sgd, momentum, nesterov, adagrad, adadelta, rmsprop, adam, adamw."),
        click.option("--weight-decay", type=float, default=None, help="Decoupled weight decay."),
        click.option("--schedule", default="cosine", show_default=True,
                     help="constant, step, exponential, cosine (with --warmup-epochs), plateau."),
        click.option("--warmup-epochs", type=float, default=0.0, show_default=True),
        click.option("--step-epochs", type=int, default=10, show_default=True, help="step: decay every N epochs."),
        click.option("--gamma", type=float, default=0.1, show_default=True,
                     help="step: factor per step; exponential: factor per epoch."),
        click.option("--label-smoothing", type=float, default=label_smoothing, show_default=True),
        click.option("--early-stopping", type=int, default=0, show_default=True,
                     help="Stop after N epochs without a better val loss (and keep the best weights); 0: off."),
        click.option("--class-weight", type=click.Choice(["none", "balanced"]), default="none", show_default=True),
        click.option("--augment", default=augment, show_default=True, help=AUGMENT_HELP),
        click.option("--mixed-precision", is_flag=True, help="float16 compute on a GPU (refused on CPU)."),
        strategy_option,
        click.option("--scale-lr", is_flag=True,
                     help="Multiply the learning rates by the number of replicas (linear scaling rule)."),
    ]

    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def _print_run(result) -> None:
    from ..report import accuracy_line

    if not result.chief:
        click.echo("this worker's share of training is done; the chief (worker 0) writes the run folder and report")
        return
    click.echo(accuracy_line(result.evaluation))
    for name, tta in (result.metrics.get("tta") or {}).items():
        acc = tta["accuracy"]
        click.echo(f"val accuracy with TTA {name} {acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] "
                   f"(n={acc['n']})")
    click.echo(f"report: {result.run_dir / 'report.md'}")


@click.command("finetune")
@click.argument("data", required=False)
@backbone_options
@split_options
@training_options()
@click.option("--head-init", type=click.Choice(["probe", "random"]), default="probe", show_default=True,
              help="Start the classifier as the linear probe (LP-FT) or at random.")
@click.option("--head-epochs", type=int, default=10, show_default=True, help="Stage 1: the new head alone.")
@click.option("--head-lr", type=float, default=1e-3, show_default=True)
@click.option("--epochs", type=int, default=15, show_default=True, help="Stage 2: with the top unfrozen.")
@click.option("--lr", type=float, default=3e-4, show_default=True)
@click.option("--unfreeze", default="3", show_default=True,
              help="N (last N blocks, or layers when the backbone has no named blocks), all, none, or a block name.")
@click.option("--dropout", type=float, default=0.2, show_default=True)
@tta_option
@click.option("--cv", type=int, default=0, show_default=True,
              help="K-fold cross-validation over train+val: K full fine-tunings (the estimated time is shown first).")
@click.option("--resume", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue a killed run from its last checkpoint (its own settings are used; --strategy "
                   "chooses this session's devices, a run started on 2 replicas resumes on 1).")
@out_option
@force_option
def finetune_cmd(data, cv, resume, out, force, **options) -> None:
    """Fine-tune a pretrained backbone on DATA: new head first, then the top of the network."""
    from ..errors import TltoolError
    from ..finetune import FinetuneConfig, finetune, finetune_cv
    from ..report import accuracy_line

    if not data and not resume:
        raise TltoolError("give DATA (a folder, CSV manifest or tfds:NAME) or --resume RUN_DIR.")
    if cv:
        run_dir, evaluation, _ = finetune_cv(FinetuneConfig(data=data, **options), cv, out=out, force=force)
        click.echo(accuracy_line(evaluation, split=f"{cv}-fold cross-validated"))
        click.echo(f"report: {run_dir / 'report.md'}")
        return
    _print_run(finetune(FinetuneConfig(data=data or "", **options), out=out, resume=resume, force=force))


@click.command("train")
@click.argument("data", required=False)
@click.option("--arch", default="lenet5", show_default=True, help="A from-scratch net (see `tltool arch list`).")
@click.option("--image-size", type=int, default=None, help="Input size [default: the architecture's].")
@click.option("--resize", type=click.Choice(["crop", "pad", "stretch"]), default="crop", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Images per batch on each replica.")
@split_options
@training_options(augment="none", label_smoothing=0.0)
@click.option("--epochs", type=int, default=20, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--initializer", default=None, help="glorot_uniform, he_normal, lecun_normal, ... [default: the net's].")
@click.option("--batch-norm/--no-batch-norm", default=None, help="Batch normalisation after convolutions.")
@click.option("--dropout", type=float, default=None, help="Dropout before the classifier [default: the net's].")
@tta_option
@click.option("--resume", type=click.Path(exists=True, file_okay=False), default=None,
              help="Continue a killed run from its last checkpoint (--strategy chooses this session's devices).")
@out_option
@force_option
def train_cmd(data, resume, out, force, **options) -> None:
    """Train a classic CNN from scratch on DATA with the same machinery (and report) as fine-tuning."""
    from ..errors import TltoolError
    from ..scratch import ScratchConfig, train_from_scratch

    if not data and not resume:
        raise TltoolError("give DATA (a folder, CSV manifest or tfds:NAME) or --resume RUN_DIR.")
    _print_run(train_from_scratch(ScratchConfig(data=data or "", **options), out=out, resume=resume, force=force))


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["keras", "savedmodel", "tflite"]), default="keras",
              show_default=True)
@click.option("--out", type=click.Path(), default=None, help="Target path [default: RUN_DIR/export/...].")
def export_cmd(run_dir, fmt, out) -> None:
    """Export a trained run (fine-tuned or linear) as .keras, SavedModel or .tflite; input: RGB pixels 0..255."""
    from ..export import export_run

    click.echo(f"wrote {export_run(run_dir, fmt, out)}")


@click.group("augment")
def augment() -> None:
    """Look at augmentation before training with it."""


@augment.command("preview")
@click.argument("data")
@click.option("--augment", "preset", default="standard", show_default=True, help=AUGMENT_HELP)
@click.option("--image-size", type=int, default=224, show_default=True)
@click.option("--draws", type=int, default=17, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--index", type=int, default=0, show_default=True, help="Which image (in path order).")
@click.option("--out", type=click.Path(), default="augment_preview.png", show_default=True)
def augment_preview_cmd(data, preset, image_size, draws, seed, index, out) -> None:
    """Write a PNG grid of one image of DATA under many random draws of an augmentation."""
    from ..augment import preview

    click.echo(f"wrote {preview(data, out, preset, image_size, draws, seed, index)}")


COMMANDS = [finetune_cmd, train_cmd, export_cmd, augment]
