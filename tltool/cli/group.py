"""The ``tltool`` group: how every command reports a user's mistake (one line, exit 2) and tltool's warnings."""
from __future__ import annotations

import errno
import os
import sys
import warnings
from typing import Any

import click

from .. import __version__
from ..errors import TltoolError, TltoolWarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, TltoolWarning):
        click.secho(f"warning ({category.__name__}): {message}", fg="yellow", err=True)


# errors of the machine, not of tltool or of the input: one line that names the file and what to do, exit 1
MACHINE_ERRORS = {
    errno.ENOSPC: "free some space, or write elsewhere",
    errno.EDQUOT: "your disk quota is used up: free some space, or write elsewhere",
    errno.EFBIG: "a limit on file sizes (ulimit -f) stopped the write",
    errno.EACCES: "you may not write or read there: check its permissions, or choose another folder",
    errno.EPERM: "you may not write or read there: check its permissions, or choose another folder",
    errno.EROFS: "that file system is read-only: choose another folder",
}


def machine_error_line(exc: OSError) -> str | None:
    """The one line shown for an :class:`OSError` of the machine (full disk, permissions), None for another."""
    hint = MACHINE_ERRORS.get(exc.errno)
    if hint is None or (exc.errno in (errno.EACCES, errno.EPERM) and not exc.filename):
        return None  # a permission without a file (a port below 1024) is not a folder's: its own traceback
    where = f"{exc.filename}: " if exc.filename else ""
    return (f"{where}{exc.strerror or exc}; {hint}. Every file tltool writes is whole or absent: run the command "
            "again then (a fine-tune or train with `--resume RUN`, to go on from its last epoch).")


class TltoolGroup(click.Group):
    """Turns tltool's own errors into one clear line and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        warnings.showwarning = _show_warning
        try:
            return super().invoke(ctx)
        except TltoolError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)
        except OSError as exc:  # a full disk or a read-only folder was a traceback
            line = machine_error_line(exc)
            if line is None:
                raise
            click.secho(f"error: {line}", fg="red", err=True)
            sys.exit(1)
        except (KeyboardInterrupt, click.exceptions.Abort):  # Click turns Ctrl-C in a nested command (a recipe's
            _say_interrupted()                               # step) or a prompt into Abort

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        """The group's own parsing, before :meth:`invoke`: Click answered Ctrl-C there with 'Aborted!' and exit 1."""
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except KeyboardInterrupt:
            _say_interrupted()


def _say_interrupted() -> None:
    click.secho("interrupted", fg="red", err=True)
    _exit_interrupted()


def _exit_interrupted() -> None:
    """Exit with 130 after Ctrl-C. With TensorFlow loaded, without the interpreter's shutdown: its thread pools,
    stopped mid-step, hung the exit (2 of 6 interrupted fine-tunes sat idle until a second Ctrl-C) or aborted it
    ("terminate called without an active exception", 2 of 6). Nothing is lost: every file tltool writes is complete
    or absent (written under a temporary name, then renamed), and a fine-tune resumes from its last checkpoint."""
    if "tensorflow" not in sys.modules:
        sys.exit(130)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


@click.group(cls=TltoolGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="tltool")
def main() -> None:
    """Transfer learning on your own photos: pretrained CNN features into a linear classifier, or fine-tuning,
    with an honest report of validation accuracy. Works offline with efficientnet_lite0."""
