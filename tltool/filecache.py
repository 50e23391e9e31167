"""What a check learned about a file, cached by the file's content (its sha256) in tltool's cache folder.

A decoded photo stores its size, format and mode and what decoding found (conversions, or the reason it is bad); a
header is not stored, since reading it again costs what reading its entry does. A second check of an unchanged
photo reads its bytes for the hash and its header: a photo is never decoded twice across runs, whatever its path.
One small JSON file per content, written atomically, so concurrent processes (shards, workers) never corrupt each
other's entries.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .utils import cache_dir, is_whole, json_ready, sha256_json, write_json

CACHE_FORMAT = 1

HEADER = "header"  # what the header says: size, format, mode (or why the header is bad)
DECODE = "decode"  # what a full decode says: conversions (or why the data is bad)


def _entry_path(sha256: str) -> Path:
    return cache_dir() / "files" / f"v{CACHE_FORMAT}" / sha256[:2] / f"{sha256}.json"


def lookup(sha256: str) -> dict | None:
    """The cached entry for this content, or None (never checked, or the entry is unreadable or not of the shape
    :func:`store` writes: checked again, and stored over)."""
    try:
        entry = json.loads(_entry_path(sha256).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return entry if _well_formed(entry) else None


def _well_formed(entry: Any) -> bool:
    """A bad file's stage, reason and detail, or a good one's stage, size and conversions, with their types."""
    if not isinstance(entry, dict) or entry.get("stage") not in (HEADER, DECODE):
        return False
    if entry.get("reason"):
        return isinstance(entry["reason"], str) and isinstance(entry.get("detail", ""), str)
    conversions = entry.get("conversions", [])
    return (is_whole(entry.get("width")) and is_whole(entry.get("height")) and isinstance(conversions, list)
            and all(isinstance(c, str) for c in conversions))


def store(sha256: str, entry: dict) -> None:
    """Remember ``entry`` for this content. A cache that cannot be written costs speed, never a run."""
    target = _entry_path(sha256)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, entry)
    except OSError:
        pass


def thumbnail_path(sha256: str, size: int, resize: str) -> Path:
    """Where a small rendering of this content is kept (report galleries show the same photos run after run)."""
    return cache_dir() / "thumbnails" / f"v{CACHE_FORMAT}" / sha256[:2] / f"{sha256}-{size}-{resize}.npy"


def remembered(kind: str, key: dict, compute: Callable[[], Any]) -> Any:
    """``compute()`` (a JSON value), or what it returned before for the same ``key``.

    For results that follow from their inputs alone (a cross-validation or learning curve on given features and
    settings): ``key`` must hold every input, by content. A cache that cannot be read or written costs speed only.
    """
    digest = sha256_json({"kind": kind, **key})
    target = cache_dir() / "results" / f"v{CACHE_FORMAT}" / kind / digest[:2] / f"{digest}.json"
    try:
        return json.loads(target.read_text(encoding="utf-8"))["value"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    value = json_ready(compute())  # the same value whether computed now or read back
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, {"key": key, "value": value})
    except OSError:
        pass
    return value
