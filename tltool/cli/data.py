"""``tltool data ...``: look at a dataset before training on it."""
from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..digits import export_digits
from ..inspection import inspect_dataset, size_range, write_split_manifest
from ..sample import make_shapes_dataset
from ..utils import shown_name
from .options import choice, force_option, split_options


@click.group("data")
def data() -> None:
    """Inspect, split and create datasets."""


@data.command("inspect")
@click.argument("path")
@click.option("--strict", is_flag=True, help="Exit with status 1 when any file is bad, a photo is not read (beside the "
              "class folders, a name that is not UTF-8, a link not followed) or any warning is raised.")
@click.option("--max-pixels", type=int, default=None, help="Reject images with more pixels (decompression bombs).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for the report (metrics.json, report.md, class_counts.png) "
                   "[default: runs/inspect-DATASET-TIME].")
@force_option
def inspect_cmd(path: str, strict: bool, max_pixels: int | None, out: str | None, force: bool) -> None:
    """Count images per class and split, name every bad file with its reason, find duplicates and leakage."""
    result = inspect_dataset(path, max_pixels=max_pixels, out=out, force=force)
    data = result.checked.to_json()
    console = Console(highlight=False)
    console.print(_size_table(data))
    for line in _problem_lines(data) + _warning_lines(result.checked.issues):
        console.print(line, soft_wrap=True)
    console.print(f"report: {_shown(str(result.report))}", soft_wrap=True)
    if strict and result.has_problems:
        click.echo("--strict: exit status 1, because of the bad files, files not read or warnings above", err=True)
        sys.exit(1)


def _shown(text: str) -> str:
    """A file or class name as printed through Rich: its markup escaped (a photo named ``[red]x.jpg`` printed as
    ``x.jpg``, in red) and its control characters too (a newline split the line)."""
    return escape(shown_name(text, None))


def _size_table(data: dict) -> Table:
    """Counts and sizes per split and class, from the content of the report's ``metrics.json``."""
    table = Table(title=f"{_shown(data['dataset'])}: {data['n_usable']} usable of {data['n_files']} files")
    for column in ("split", "class", "images", "width min/median/max", "height min/median/max"):
        table.add_column(column, justify="right" if column != "class" else "left")
    for split, classes in data["sizes"].items():
        for label, s in classes.items():
            table.add_row(_shown(split), _shown(label), str(s["count"]), size_range(s["width"]),
                          size_range(s["height"]))
    return table


def _problem_lines(data: dict) -> list[str]:
    """Every bad, skipped, converted, duplicate, leaked and conflicting file, then the notes."""
    lines = [f"[red]bad[/red] {_shown(b['path'])}: {_shown(b['reason'])}"
             + (f" ({_shown(b['detail'][:100])})" if b["detail"] else "") for b in data["bad_files"]]
    if lines:
        lines.insert(0, f"{len(lines)} bad file(s), excluded from every run:")
    lines += [f"skipped {_shown(s['path'])}: {_shown(s['reason'])}" for s in data["skipped_files"]]
    lines += [f"converted {_shown(c['path'])}: {', '.join(c['conversions'])}" for c in data["converted_files"]]
    lines += [f"duplicate content: {', '.join(map(_shown, g))}" for g in data["duplicates"]]
    lines += [f"[bold]leakage[/bold] (same image in two splits): "
              f"{', '.join(_shown(f['path']) + ' (' + _shown(f['split']) + ')' for f in g)}"
              for g in data["train_val_leaks"]]
    lines += [f"[bold]label conflict[/bold]: "
              f"{', '.join(_shown(f['path']) + ' (' + _shown(f['label']) + ')' for f in g)}"
              for g in data["label_conflicts"]]
    lines += [f"note: {escape(n)}" for n in data["notes"]]
    return lines


def _warning_lines(issues: list[tuple[str, type[Warning]]]) -> list[str]:
    """Each warning with its name, as the other commands show it (``warning (EmptyClassWarning): ...``)."""
    return [f"[yellow]warning[/yellow] ({category.__name__}): {escape(message)}" for message, category in issues]


@data.command("split")
@click.argument("path")
@click.option("--out", "out_csv", type=click.Path(dir_okay=False), required=True, help="Manifest CSV to write.")
@split_options
@click.option("--force", is_flag=True, help="Replace the CSV and classes.json if they exist (a classes.json "
              "that is not a list of class names, the user's, never).")
def split_cmd(path: str, out_csv: str, val_fraction: float, seed: int, max_pixels: int, force: bool) -> None:
    """Write the stratified, seeded train/val split a run on PATH draws (copies of a photo kept on one side, bad files
    named and left out) as a CSV manifest (path,label,split) and classes.json."""
    target = write_split_manifest(path, out_csv, val_fraction=val_fraction, seed=seed,
                                  max_pixels=max_pixels, force=force)
    click.echo(f"wrote {target}")


@data.command("make-sample")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--per-class", type=int, default=40, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace an earlier sample in OUT (never a folder tltool did not make).")
def make_sample_cmd(out: str, per_class: int, seed: int, force: bool) -> None:
    """Render the bundled demo dataset of shapes (circle, square, triangle, star) into OUT, a new or empty folder."""
    click.echo(f"wrote {make_shapes_dataset(out, per_class=per_class, seed=seed, force=force)}")


@data.command("digits")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--size", type=int, default=32, show_default=True, help="Side of the upscaled images in pixels.")
@click.option("--resample", type=choice("resample"), default="bilinear",
              show_default=True)
@click.option("--val-fraction", type=float, default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def digits_cmd(out: str, size: int, resample: str, val_fraction: float, seed: int, force: bool) -> None:
    """Export scikit-learn's 1797 8x8 handwritten digits (offline) to OUT/{train,val}/<digit>/*.png, upscaled."""
    counts = export_digits(out, size=size, val_fraction=val_fraction, seed=seed, resample=resample, force=force)
    click.echo(f"wrote {out}: " + ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items()))


COMMANDS = [data]
