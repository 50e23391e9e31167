"""The ``tltool`` command line: thin Click commands, each parsing options and calling one library function.

Each module of this package is one command group and exports ``COMMANDS``; they are added to :data:`main` here.
"""
from __future__ import annotations

from . import arch as _arch
from . import collect as _collect
from . import data as _data
from . import features as _features
from . import honest as _honest
from . import recipes as _recipes
from . import training as _training
from . import viz as _viz
from .group import main

for _module in (_data, _features, _training, _honest, _viz, _arch, _collect, _recipes):
    for _command in _module.COMMANDS:
        main.add_command(_command)
_collect.label.add_command(_viz.suspects_cmd)  # `tltool label suspects`, also `tltool viz suspects`

__all__ = ["main"]
