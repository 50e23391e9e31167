"""``tltool collect import`` and ``tltool label serve|export``: your own photos into a labelled dataset."""
from __future__ import annotations

import shlex
import webbrowser

import click

from ..collect import DEFAULT_EVERY, DEFAULT_MAX_SIDE, DEFAULT_NEAR_THRESHOLD, import_images, near_rule
from ..dataset import LABELS_CSV
from ..images import DEFAULT_MAX_PIXELS
from ..labeler import AssistSettings, export_labels, make_server, parse_classes
from ..utils import shown_name

MAX_LISTED = 20


@click.group("collect")
def collect() -> None:
    """Gather your own photos into a dataset folder (DATASET/unlabeled/ plus manifest.csv)."""


@collect.command("import")
@click.argument("sources", nargs=-1)
@click.option("--out", "dataset", required=True, type=click.Path(file_okay=False),
              help="Dataset folder; images go to DATASET/unlabeled/, decisions to DATASET/manifest.csv.")
@click.option("--every", type=float, default=DEFAULT_EVERY, show_default=True,
              help="Seconds between the frames taken from a video (and between webcam pictures).")
@click.option("--max-side", type=int, default=DEFAULT_MAX_SIDE, show_default=True,
              help="Longest side of a written image.")
@click.option("--near-threshold", type=click.IntRange(max=64), default=DEFAULT_NEAR_THRESHOLD, show_default=True,
              help="Near duplicate: dHash Hamming distance up to this many bits of 64 (negative: keep all).")
@click.option("--camera", type=int, default=None, help="Also take pictures from webcam INDEX (0 is the first).")
@click.option("--camera-frames", type=int, default=20, show_default=True, help="Pictures to take with --camera.")
@click.option("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Images with more pixels are rejected as decompression bombs.")
def import_cmd(sources: tuple[str, ...], dataset: str, every: float, max_side: int, near_threshold: int,
               camera: int | None, camera_frames: int, max_pixels: int) -> None:
    """Import SOURCES (folders, globs such as 'photos/*.jpg', zip files, videos) into DATASET/unlabeled/.

    Every image is decoded like training decodes it (EXIF rotation, RGB), shrunk to --max-side, and dropped when
    it duplicates an image already there, exactly or nearly. Rerunning adds only new images.
    """
    result = import_images(sources, dataset, every=every, max_side=max_side, near_threshold=near_threshold,
                           camera=camera, camera_frames=camera_frames, max_pixels=max_pixels,
                           on_bad=lambda bad: click.echo(f"skipped {bad}", err=True))
    dropped = [(r, "duplicate of") for r in result.duplicates] + [(r, "near duplicate of") for r in
                                                                   result.near_duplicates]
    for row, what in dropped[:MAX_LISTED]:
        distance = f" (distance {row['distance']})" if what.startswith("near") else ""
        click.echo(f"dropped {shown_name(row['source'], None)}: {what} {row['duplicate_of']}{distance}")
    if len(dropped) > MAX_LISTED:
        click.echo(f"... and {len(dropped) - MAX_LISTED} more duplicates (see {result.manifest})")
    click.echo(near_rule(near_threshold))
    click.echo(f"added {len(result.added)} image(s); dropped {len(result.duplicates)} exact and "
               f"{len(result.near_duplicates)} near duplicate(s); {result.already} seen on an earlier run (imported "
               "or dropped then); "
               f"{len(result.bad)} bad file(s) skipped")
    click.echo(f"{result.total_images} image(s) in {result.dataset / 'unlabeled'}; manifest: {result.manifest}")
    if (result.dataset / LABELS_CSV).is_file():  # a later import: the labeler keeps the classes labelled with
        click.echo(f"next: tltool label serve {shlex.quote(str(dataset))} (the classes of its labels.csv; the new "
                   "images are unlabelled)")
    else:
        click.echo(f"next: tltool label serve {shlex.quote(str(dataset))} --classes NAME1,NAME2,... (your class "
                   "names; keys 1-9 follow their order)")


@click.group("label")
def label() -> None:
    """Label a dataset folder in your browser, then export it as train/ and val/ class folders."""


@label.command("serve")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--classes", default=None,
              help="Comma-separated class names, in key order (1-9) [default: the labels already in labels.csv].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; the default is reachable from this computer only.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port; 0 picks a free one.")
@click.option("--review", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV (path[,label,suggested,score]; paths relative to DATASET) of images to review first.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default browser.")
@click.option("--verbose", is_flag=True, help="Log every request.")
@click.option("--assist/--no-assist", default=True, show_default=True,
              help="Suggest labels: features are extracted in the background and a linear head retrained as you "
                   "label (on when the backbone's weights are on this machine).")
@click.option("--backbone", default="efficientnet_lite0", show_default=True, help="Backbone of --assist.")
@click.option("--image-size", type=int, default=None, help="Input size of --assist [default: the backbone's].")
def serve_cmd(dataset: str, classes: str | None, host: str, port: int, review: str | None, open_browser: bool,
              verbose: bool, assist: bool, backbone: str, image_size: int | None) -> None:
    """Serve a labelling page for DATASET, a folder `collect import` made (images under DATASET/unlabeled/), and
    save every key press to DATASET/labels.csv. Keys: 1-9 label, Enter accepts a suggestion, g confirms a grid,
    arrows move, u undo, s skip. Stop with Ctrl-C."""
    settings = AssistSettings(backbone=backbone, image_size=image_size) if assist else None
    why_not = settings.unavailable() if settings else None
    server = make_server(dataset, parse_classes(classes), host=host, port=port, review=review, quiet=not verbose,
                         assist=None if why_not else settings)
    if why_not:  # said once the folder is accepted: a refusal is its one line
        click.echo(f"note: no suggestions: {why_not}", err=True)
        settings = None
    store = server.store
    for note in store.notes:
        click.echo(f"note: --review {note}", err=True)
    summary = store.summary()
    keys = ", ".join(f"{i + 1}={name}" for i, name in enumerate(store.classes))
    click.echo(f"{summary['total']} images, {summary['labelled']} labelled; keys: {keys}; arrows move, u undo, s skip")
    if not server.loopback:
        click.secho(f"note: listening on {host}: the page needs the token in the URL below; keep that URL to "
                    "yourself (anyone with it can see the images and change labels)", fg="yellow", err=True)
    click.echo(f"labels are saved to {store.labels_path}")
    if settings:
        click.echo(f"suggestions: extracting {backbone} features in the background (cached); they appear as you label")
    click.echo(f"open {server.url} in your browser (Ctrl-C stops)")
    if open_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo(f"stopped; {store.summary()['labelled']} labelled in {store.labels_path}")
    finally:
        server.server_close()


@label.command("export")
@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Share of each class held out for validation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder to write [default: DATASET-split, beside DATASET].")
@click.option("--copy", is_flag=True, help="Copy the images instead of hard-linking them.")
@click.option("--force", is_flag=True,
              help="Replace an earlier label export in OUT (never one holding files you added, nor another folder).")
def export_cmd(dataset: str, val_fraction: float, seed: int, out: str | None, copy: bool, force: bool) -> None:
    """Write DATASET/labels.csv as OUT/train/<class>/ and OUT/val/<class>/ with a stratified, seeded split."""
    result = export_labels(dataset, out=out, val_fraction=val_fraction, seed=seed, copy=copy, force=force)
    for split, counts in result.counts().items():
        click.echo(f"{split}: " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    click.echo(f"wrote {result.out}")
    click.echo(f"next: tltool probe {result.out}")


COMMANDS = [collect, label]
