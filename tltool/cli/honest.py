"""Honest accuracy: ``compare`` two runs, ``learning-curve`` (cross-validation lives on ``linear --cv``)."""
from __future__ import annotations

import click

from ..compare import compare_runs
from ..crossval import run_learning_curve
from .features import head_option, pool_option
from .options import engine_option, force_option, out_option


@click.command("compare")
@click.argument("run_a", type=click.Path(exists=True, file_okay=False))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False))
@click.argument("data", required=False)
@out_option("runs/compare-A-B-TIME, A and B the first 20 characters of the names of RUN_A and RUN_B")
@force_option
@engine_option
def compare_cmd(run_a: str, run_b: str, data: str | None, out: str | None, force: bool, engine: str) -> None:
    """Paired comparison of two runs on the same images: difference with its interval, exact McNemar test.
    Without DATA, on their stored validation predictions (no network runs); with DATA, evaluated by both."""
    comparison, target = compare_runs(run_a, run_b, data, out=out, force=force, engine=engine)
    for line in comparison.lines():
        click.echo(line)
    click.echo(f"report: {target / 'report.md'}")


@click.command("learning-curve")
@click.argument("features", type=click.Path(exists=True, file_okay=False))
@head_option
@pool_option
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True, help="Random subsets averaged per point.")
@click.option("--seed", type=int, default=0, show_default=True)
@out_option("runs/learning-curve-DATASET-HEAD-TIME")
@force_option
def learning_curve_cmd(features: str, head: str, pool: str, seeds: int, seed: int, out: str | None,
                       force: bool) -> None:
    """Should I label more photos? Val accuracy of the head trained on 10 %, 20 %, ... 100 % of the training images."""
    points, reading, target = run_learning_curve(features, head, pool, seeds=seeds, seed=seed, out=out, force=force)
    click.echo("train images  share  val accuracy [95 % CI]")
    for p in points:
        click.echo(f"{p.n_train:12d}  {p.fraction:5.0%}  {p.accuracy:.3f} [{p.low:.3f}, {p.high:.3f}]")
    click.echo(f"reading: {reading}")
    click.echo(f"plot: {target / 'learning_curve.png'}")
    click.echo(f"report: {target / 'report.md'}")


COMMANDS = [compare_cmd, learning_curve_cmd]
