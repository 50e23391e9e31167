"""The browser labeler: a local page (standard-library HTTP server, no external assets) that writes labels.csv.

``LabelStore`` (store.py) holds and persists the labels, ``make_server`` (server.py) serves the page and the API,
``export_labels`` (export.py) turns labels.csv into ``train/<class>/`` and ``val/<class>/`` folders,
``Assistant`` (assist.py) suggests labels from features extracted in the background,
``find_suspects`` (suspects.py) ranks the labels the features disagree with (``tltool label suspects``).
"""
from __future__ import annotations

from .assist import Assistant, AssistSettings
from .export import export_labels
from .server import LabelerServer, make_server
from .store import LabelStore, parse_classes
from .suspects import find_suspects

__all__ = ["Assistant", "AssistSettings", "LabelStore", "LabelerServer", "export_labels", "find_suspects", "make_server", "parse_classes"]
