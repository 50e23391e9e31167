"""The main job: ``backbones``, ``extract``, ``linear``, ``probe`` (both at once), ``predict``, ``evaluate``."""
from __future__ import annotations

from typing import Any

import click

from ..backbones import list_backbones
from ..configs import ExtractConfig, LinearConfig, split_settings
from ..features import extract_features
from ..linear import probe, train_linear
from ..predict import evaluate_run, predict_images
from ..report import accuracy_line, resolution_line
from ..stats import format_proportion
from ..utils import shown_name
from .options import (FEATURES_DIR, backbone_options, choice, compose, engine_option, force_features_option,
                      force_option, out_option, split_options, strategy_option, strict_option, tta_option)
from .output import echo_tta


@click.command("backbones")
def backbones_cmd() -> None:
    """List the pretrained networks, their preprocessing, input size and whether weights are available offline."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="backbones (weights: offline = ships with tltool's dependencies; cached = in the Keras cache)")
    for column in ("name", "family", "preprocess", "size", "min", "weights"):
        table.add_column(column)
    missing = []
    for spec in list_backbones():
        state = ("cached" if spec.weights_cached() else "download") if not spec.offline_weights else (
            "offline" if spec.weights_cached() else "not installed")
        if state == "not installed":
            missing.append(f"{spec.name}: {spec.install_hint()}")
        table.add_row(spec.name, spec.family, spec.preprocess, str(spec.default_size), str(spec.min_size), state)
    Console(highlight=False).print(table)
    for line in missing:
        click.echo(line)


@click.command("extract")
@click.argument("data")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Features folder to write.")
@backbone_options
@split_options
@strict_option
@click.option("--chunk-size", type=click.IntRange(min=1), default=ExtractConfig.chunk_size, show_default=True,
              help="Images per chunk file on disk.")
@strategy_option
@engine_option
@click.option("--shard", default=ExtractConfig.shard, metavar="I/N",
              help="Extract only chunks i with i % N == I (run I = 0..N-1 on N machines sharing --out); the last "
                   "to finish completes the folder. Under --strategy multiworker the worker index is the shard.")
@click.option("--force", is_flag=True, help="Replace the features of other data, or of other settings (backbone, "
              "weights, size, resize), found in --out (the same data and settings, photos changed, are extracted "
              "again without it).")
def extract_cmd(data: str, out: str, force: bool, **options: Any) -> None:
    """Extract pooled CNN features of every image in DATA (folder, CSV manifest or tfds:NAME) into --out."""
    result = extract_features(data, out, ExtractConfig(**options), force=force)
    meta = result.meta
    shard = f"shard {result.shard[0]}/{result.shard[1]}" if result.shard else ""
    if not result.complete:
        click.echo(f"{shard} extracted in {result.seconds:.1f} s -> {out} (waiting for the other shards)")
        return
    # the rate of the decode-and-network loop alone; the seconds also hold start-up, checks and a first conversion
    speed = f" ({result.images_per_second:.1f} images/s once running)" if result.images_per_second else ""
    state = "cached" if result.cached else (f"extracted ({shard}, folder complete)" if shard else "extracted")
    click.echo(f"{state}: {result.usable_images} images ({meta['backbone']}, {meta['image_size']} px) in "
               f"{result.seconds:.1f} s{speed} -> {out}")


LINEAR_RUN = "runs/linear-DATASET-BACKBONE-HEAD-TIME"  # where train_linear writes, for linear and probe alike

head_option = click.option("--head", type=choice("head"), default=LinearConfig.head, show_default=True,
                           help="Classifier on the features; its regularisation is chosen by cross-validation.")
pool_option = click.option("--pool", type=choice("pool"), default=LinearConfig.pool, show_default=True,
                           help="Pooling of the feature map: average, max, or both concatenated.")
linear_options = compose(
    head_option,
    pool_option,
    click.option("--standardize/--no-standardize", default=LinearConfig.standardize, show_default=True),
    click.option("--class-weight", type=choice("class_weight"), default=LinearConfig.class_weight,
                 show_default=True),
    click.option("--gradcam", is_flag=True, default=LinearConfig.gradcam,
                 help="Draw the misclassified images as Grad-CAM heat maps."),
    click.option("--refit/--no-refit", default=LinearConfig.refit, show_default=True,
                 help="After the val estimate, ship a head refit on train+val with the chosen regularisation "
                      "(the accuracy reported stays the one measured before the refit)."),
)


def _print_linear(result) -> None:
    cv = result.metrics.get("cv")
    if cv:
        click.echo("cross-validated accuracy " + format_proportion(
            cv["accuracy"], cv["description"], f"folds {cv['fold_mean']:.3f} ± {cv['fold_std']:.3f}"))
    else:
        click.echo(accuracy_line(result.evaluation))
    click.echo(resolution_line(cv["accuracy"] if cv else result.evaluation.accuracy().to_json(), bool(cv)))
    if result.metrics.get("refit"):
        click.echo(result.metrics["refit"]["note"])
    echo_tta(result.metrics)
    click.echo(f"report: {result.run_dir / 'report.md'}")


@click.command("linear")
@click.argument("features", type=click.Path(exists=True, file_okay=False))
@linear_options
@click.option("--seed", type=int, default=LinearConfig.seed, show_default=True)
@tta_option
@click.option("--cv", type=click.IntRange(min=0), default=LinearConfig.cv, show_default=True,
              help="Repeated stratified K-fold over train+val instead of the val split (nested; 0: off).")
@click.option("--repeats", type=click.IntRange(min=1), default=LinearConfig.repeats, show_default=True,
              help="Repeats of the --cv K-fold.")
@out_option(LINEAR_RUN)
@force_option
def linear_cmd(features: str, out: str | None, force: bool, **options: Any) -> None:
    """Train a linear head on extracted FEATURES (regularisation chosen by CV) and report validation accuracy."""
    _print_linear(train_linear(features, LinearConfig(**options), out=out, force=force))


@click.command("probe")
@click.argument("data")
@backbone_options
@split_options
@strict_option
@engine_option
@linear_options
@tta_option
@click.option("--features", "features_dir", type=click.Path(file_okay=False), default=None,
              help=f"Features folder (cache) [default: {FEATURES_DIR}].")
@out_option(LINEAR_RUN)
@force_features_option
def probe_cmd(data: str, features_dir: str | None, out: str | None, force: bool, **options: Any) -> None:
    """The main job in one command: extract features of DATA (cached) and fit a linear head on them."""
    extract, linear = split_settings(options, ExtractConfig, LinearConfig)
    _print_linear(probe(data, ExtractConfig(**extract), LinearConfig(**linear), features_dir=features_dir, out=out,
                        force=force))


@click.command("predict")
@click.argument("images", nargs=-1, required=True)
@click.option("--model", "run_dir", required=True, type=click.Path(file_okay=False),
              help="A run folder written by linear, probe, finetune or train.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@tta_option
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Images with more pixels are not predicted (decompression bombs) [default: the run's].")
@engine_option
def predict_cmd(images: tuple[str, ...], run_dir: str, top_k: int, tta: str, max_pixels: int | None,
                engine: str) -> None:
    """Classify IMAGES (files, folders: every file under them, or quoted patterns such as 'photos/*.jpg') with a
    trained run: every readable one; each unreadable one is named with its reason, and the exit status is 2 only
    when none could be read."""
    for p in predict_images(run_dir, images, top_k=top_k, tta=tta, max_pixels=max_pixels, engine=engine):
        # one line per image, whatever its name holds (a newline or a tab in a name would break the columns)
        click.echo(f"{shown_name(p.path, limit=None)}\t" + "\t".join(f"{name} {prob:.3f}" for name, prob in p.top))


@click.command("evaluate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("data")
@click.option("--split", type=choice("split"), default=None,
              help="Score only this split of DATA (test: the photos a root/test/ folder or a manifest's test rows "
                   "kept out of every run) [default: every image].")
@tta_option
@engine_option
@out_option("runs/eval-RUN-DATASET-TIME, RUN the name of RUN_DIR")
@force_option
def evaluate_cmd(run_dir: str, data: str, split: str | None, tta: str, engine: str, out: str | None,
                 force: bool) -> None:
    """Evaluate a trained run on another labelled dataset DATA (every image of it whatever its split, or --split)."""
    target, evaluation, metrics = evaluate_run(run_dir, data, out=out, tta=tta, force=force, engine=engine,
                                               split=split)
    split = metrics["scored_on"]
    click.echo(accuracy_line(evaluation, split=split))
    echo_tta(metrics, split=split)
    click.echo(f"report: {target / 'report.md'}")


COMMANDS = [backbones_cmd, extract_cmd, linear_cmd, probe_cmd, predict_cmd, evaluate_cmd]
