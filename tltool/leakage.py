"""Near copies across a split, found in the features a run has already extracted.

The content hash of the check finds a photo copied byte for byte into val; a copy saved again (another JPEG
quality, a smaller size, PNG) has other bytes and was missed, while the network sees the same photo: validation
accuracy was optimistic without a word. Two photos whose average-pooled features have a cosine similarity of at
least :data:`NEAR_COPY_SIMILARITY` are taken as copies (benchmarks/near_copies.py measured the threshold).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# benchmarks/results/near_copies.md (efficientnet_lite0, probe's settings): no distinct pair reaches it (the
# nearest other photo of 500 flowers-tune photos: 0.914 at most; flowers and pets val to train: 0.889, 0.831);
# flagged copies: PNG of a JPEG 100 %, mirrored 99 %, 15 % brighter 98 %, cropped to 90 % 64 %, JPEG quality 60
# 37 %, and half size 0 % (these photos are small: halved, then enlarged to 288 px, their features move as far as
# another photo's). Lower, it would take different photos for copies: the check says what it finds, not all.
NEAR_COPY_SIMILARITY = 0.95
ROWS_PER_BLOCK = 1024  # similarities are computed a block of rows at a time: 1024 x 40,000 floats is 160 MB
# pairs compared at most: 10^8 took 4.5 s on 2 cores at 1,280 features, so this is about 18 s (10,000 val x 40,000
# train photos, or a --cv of 20,000); beyond, the check is left out and the report says so
MAX_PAIRS = 400_000_000


@dataclass(frozen=True)
class NearCopy:
    """Row ``a`` (a val image, or any image when pooled) and row ``b``, its nearest copy, with their similarity."""

    a: int
    b: int
    similarity: float


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def near_copies(features: np.ndarray, queries: Sequence[int], references: Sequence[int],
                hashes: Sequence[str] | None = None, threshold: float = NEAR_COPY_SIMILARITY) -> list[NearCopy]:
    """Each of the ``queries`` rows whose nearest ``references`` row (never itself) is a near copy, with that row.
    Rows of one content hash are left out (the check names those already, as identical)."""
    queries, references = np.asarray(queries, int), np.asarray(references, int)
    if not len(queries) or not len(references):
        return []
    unit = _unit(features)
    content = _content_ids(hashes, len(unit))
    against, against_content = np.ascontiguousarray(unit[references].T), content[references]  # gathered once
    found = []
    for start in range(0, len(queries), ROWS_PER_BLOCK):
        block = queries[start:start + ROWS_PER_BLOCK]
        sims = unit[block] @ against
        sims[content[block][:, None] == against_content[None, :]] = -1.0  # itself, or identical bytes
        best = sims.argmax(1)
        found += [NearCopy(int(q), int(references[j]), float(sims[i, j]))
                  for i, (q, j) in enumerate(zip(block, best)) if sims[i, j] >= threshold]
    return found


def _content_ids(hashes: Sequence[str] | None, n: int) -> np.ndarray:
    """One number per row: equal for rows of one content hash, else the row's own (negative, never shared)."""
    ids = -1 - np.arange(n)
    if hashes is not None:
        known = [i for i in range(n) if hashes[i]]
        if known:
            ids[known] = np.unique([hashes[i] for i in known], return_inverse=True)[1]
    return ids


def near_copy_warning(paths: Sequence[str], copies: list[NearCopy], pooled: bool = False) -> str | None:
    """The warning of a run's report (and terminal) for ``copies`` found among its images, None for none."""
    if not copies:
        return None
    first = max(copies, key=lambda c: c.similarity)
    pair = f"{paths[first.a]} ~ {paths[first.b]} ({first.similarity:.3f})"
    if pooled:
        return (f"{len(copies)} image(s) look like a copy of another image (saved again, resized or recompressed: "
                f"features with a cosine similarity of at least {NEAR_COPY_SIMILARITY}): cross-validation may train "
                f"on one and score the other, so its accuracy will be optimistic; keep one of each. First: {pair}")
    return (f"{len(copies)} val image(s) look like a copy of a training image (saved again, resized or "
            f"recompressed: features with a cosine similarity of at least {NEAR_COPY_SIMILARITY}): validation "
            f"accuracy will be optimistic; keep one of each, or both on one side. First: {pair}")
