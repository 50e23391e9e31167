"""The browser labeler: a local page (standard-library HTTP server, no external assets) that writes labels.csv.

``LabelStore`` (store.py) holds and persists the labels, ``make_server`` (server.py) serves the page and the API,
``export_labels`` (export.py) turns labels.csv into ``train/<class>/`` and ``val/<class>/`` folders.
"""
from .export import export_labels
from .server import LabelerServer, make_server
from .store import LabelStore, parse_classes

__all__ = ["LabelStore", "LabelerServer", "export_labels", "make_server", "parse_classes"]
