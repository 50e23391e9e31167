"""The near-duplicate index of ``collect import``: 64-bit dHashes plus a mean colour per kept image."""
from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

DEFAULT_NEAR_THRESHOLD = 6  # of 64 bits
NEAR_COLOUR_LEVELS = 16  # near duplicates also agree on the mean of each channel within this many levels (of 255)


def dhash(pixels: np.ndarray) -> int:
    """64-bit difference hash: is each cell of a 9x8 grey thumbnail brighter than its left neighbour?"""
    grey = np.asarray(Image.fromarray(pixels).convert("L").resize((9, 8), Image.BOX), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def pixels_sha256(pixels: np.ndarray) -> str:
    """The hash of the decoded pixels (and their shape): equal for the same picture in two file formats."""
    h = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}:".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def mean_colour(pixels: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(round(v)) for v in pixels.reshape(-1, 3).mean(axis=0))
    return r, g, b


class NearIndex:
    """dHashes and mean colours of the images kept so far; finds the closest one within the threshold."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self._hashes: list[int] = []
        self._colours: list[tuple[int, int, int]] = []
        self._files: list[str] = []
        self._array: np.ndarray | None = None
        self._colour_array: np.ndarray | None = None

    def add(self, file: str, dh: int, colour: tuple[int, int, int]) -> None:
        self._hashes.append(dh)
        self._colours.append(colour)
        self._files.append(file)
        self._array = None

    def find(self, dh: int, colour: tuple[int, int, int]) -> tuple[str, int] | None:
        """The closest kept file and its distance in bits, or None when none is within the threshold."""
        if self.threshold < 0 or not self._hashes:
            return None
        if self._array is None:
            self._array = np.array(self._hashes, dtype=np.uint64)
            self._colour_array = np.array(self._colours, dtype=np.int16)
        distance = np.bitwise_count(self._array ^ np.uint64(dh)).astype(np.int16)
        colour_gap = np.abs(self._colour_array - np.array(colour, dtype=np.int16)).max(axis=1)
        distance[colour_gap > NEAR_COLOUR_LEVELS] = 99
        best = int(np.argmin(distance))
        return (self._files[best], int(distance[best])) if distance[best] <= self.threshold else None


def near_rule(threshold: int) -> str:
    """The near-duplicate rule in words, printed by every import."""
    if threshold < 0:
        return "near duplicates: not checked (--near-threshold < 0)"
    return (f"near duplicates: dHash Hamming distance <= {threshold} of 64 bits and mean colour within "
            f"{NEAR_COLOUR_LEVELS} levels (--near-threshold)")
