"""Progress bars with an ETA for every long step (rich), silenced by ``TLTOOL_NO_PROGRESS=1``."""
from __future__ import annotations

import os
import sys
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

console = Console(stderr=True, highlight=False)


def enabled() -> bool:
    return os.environ.get("TLTOOL_NO_PROGRESS", "") in ("", "0") and sys.stderr.isatty()


class Bar:
    """A bar on stderr with count, elapsed time and ETA, advanced by ``update(n)``; silent when not a terminal."""

    def __init__(self, total: int | None, description: str) -> None:
        self._progress = None
        if enabled():
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("ETA"), TimeRemainingColumn())
            self._progress = Progress(*columns, console=console, transient=False)
            self._progress.start()
            # escaped: descriptions name the user's folders, and Rich read `--out ds[/x]` as a closing tag
            # (MarkupError, a traceback) and `photos [old]` as a style (printed as "photos ")
            self._task = self._progress.add_task(escape(description), total=total)

    def update(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def say(message: str, markup: bool = False) -> None:
    """A status line on stderr (the results a command prints go to stdout). Wrapped to a terminal's width; whole
    lines in a log or a pipe, where Rich would otherwise break them at 80 columns (and a grep would miss them).

    Plain text unless ``markup``: the lines name the user's files and folders, and Rich read a folder named
    ``runs/[old]`` as markup and printed ``runs/`` (a caller that wants markup escapes the names it puts in)."""
    console.print(message, soft_wrap=not console.is_terminal, markup=markup)
