"""Collecting your own photos: ``tltool collect import SRC... --out DATASET``.

Every source (folder, glob, zip file, video file, webcam) becomes a stream of candidate images
(:mod:`.sources`). Each candidate is decoded with the shared :func:`tltool.images.load_image` (EXIF orientation,
RGB), shrunk to ``max_side``, and dropped when it is an exact duplicate (same normalised pixels) or a near
duplicate (64-bit dHash within a Hamming threshold, and a similar mean colour; :mod:`.neardup`) of an image already
in the dataset. The rest are written as JPEGs under ``DATASET/unlabeled/`` and every decision is recorded in
``DATASET/manifest.csv``, so a rerun adds only new images (:mod:`.importer`).
"""
from __future__ import annotations

from .importer import (ADDED, DEFAULT_MAX_SIDE, DUPLICATE, MANIFEST, MANIFEST_COLUMNS, NEAR_DUPLICATE, UNLABELED,
                       ImportResult, decode_candidate, import_images, load_shrunk, read_manifest)
from .neardup import DEFAULT_NEAR_THRESHOLD, NEAR_COLOUR_LEVELS, NearIndex, dhash, near_rule, pixels_sha256
from .sources import (DEFAULT_EVERY, ENCRYPTED, MAX_MEMBER_BYTES, MAX_ZIP_BYTES, MAX_ZIP_MEMBERS, TAR_ARCHIVE,
                      TOO_LARGE, TOO_MANY_MEMBERS, UNSAFE_NAME, VIDEO_EXTENSIONS, Bad, Candidate, camera_candidates,
                      candidates_of, expand_sources, open_camera)

__all__ = [
    "ADDED", "DEFAULT_EVERY", "DEFAULT_MAX_SIDE", "DEFAULT_NEAR_THRESHOLD", "DUPLICATE", "ENCRYPTED", "MANIFEST",
    "MANIFEST_COLUMNS", "MAX_MEMBER_BYTES", "MAX_ZIP_BYTES", "MAX_ZIP_MEMBERS", "NEAR_COLOUR_LEVELS", "NEAR_DUPLICATE",
    "TAR_ARCHIVE", "TOO_LARGE", "TOO_MANY_MEMBERS", "UNLABELED", "UNSAFE_NAME", "VIDEO_EXTENSIONS",
    "Bad", "Candidate", "ImportResult", "NearIndex", "camera_candidates", "candidates_of", "decode_candidate",
    "dhash", "expand_sources", "import_images", "load_shrunk", "near_rule", "open_camera", "pixels_sha256",
    "read_manifest",
]
