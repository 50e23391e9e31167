"""``python -m tltool``, and the ``tltool`` console script (setup.cfg's entry point, :func:`run`)."""
from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # as after Ctrl-C in a command (tltool.cli.group)


def run() -> None:
    """The ``tltool`` command: the CLI imported, then run. Ctrl-C during those imports (Click, NumPy and every
    command's module: the first ~0.8 s) printed KeyboardInterrupt's traceback; now it is one line and exit 130, as
    in a command. Nothing is written before they finish. No signal handler is installed: ``import tltool`` in a
    library user's program leaves Ctrl-C as it was."""
    try:
        from .cli import main  # here, not at the top: an interrupt of this import is this function's to catch
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    main()


if __name__ == "__main__":
    run()
