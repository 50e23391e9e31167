"""Collecting your own photos: ``tltool collect import SRC... --out DATASET``.

Every source (folder, glob, zip file, video file, webcam) becomes a stream of candidate images. Each candidate is
decoded with the shared :func:`tltool.images.load_image` (EXIF orientation, RGB), shrunk to ``max_side``, and
dropped when it is an exact duplicate (same normalised pixels) or a near duplicate (64-bit dHash within a Hamming
threshold, and a similar mean colour) of an image already in the dataset. The rest are written as JPEGs under
``DATASET/unlabeled/`` and every decision is recorded in ``DATASET/manifest.csv``, so a rerun adds only new images.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import re
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from .dataset import _walk_files
from .errors import BadImageError, TltoolError
from .images import CORRUPT, DEFAULT_MAX_PIXELS, UNREADABLE, load_image
from .outputs import claim_output_dir
from .progress import Bar
from .utils import atomic_path, sha256_file, write_text_atomic

UNLABELED = "unlabeled"
MANIFEST = "manifest.csv"
DEFAULT_MAX_SIDE = 1024
DEFAULT_EVERY = 2.0
DEFAULT_NEAR_THRESHOLD = 6  # of 64 bits
NEAR_COLOUR_LEVELS = 16  # near duplicates also agree on the mean of each channel within this many levels (of 255)
JPEG_QUALITY = 92
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp"})
MAX_MEMBER_BYTES = 1 << 30  # a zip member larger than this is refused (zip bombs)

ADDED, DUPLICATE, NEAR_DUPLICATE = "added", "duplicate", "near-duplicate"
MANIFEST_COLUMNS = ("source", "source_sha256", "frame_s", "file", "status", "duplicate_of", "distance",
                    "pixels_sha256", "dhash", "mean_rgb", "width", "height")


def _cv2():
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # no "[ WARN ] can't open camera" noise on stderr
    import cv2

    return cv2


# ------------------------------------------------------------------------------------------------ hashing
def dhash(pixels: np.ndarray) -> int:
    """64-bit difference hash: is each cell of a 9x8 grey thumbnail brighter than its left neighbour?"""
    grey = np.asarray(Image.fromarray(pixels).convert("L").resize((9, 8), Image.BOX), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def pixels_sha256(pixels: np.ndarray) -> str:
    h = hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}:".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def normalise(path: str | os.PathLike, max_side: int = DEFAULT_MAX_SIDE,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The shared decode (EXIF, RGB) plus a longest side of at most ``max_side`` pixels."""
    pixels = load_image(path, max_pixels=max_pixels)
    h, w = pixels.shape[:2]
    if max(h, w) <= max_side:
        return pixels
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.LANCZOS, reducing_gap=3.0))


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


# ------------------------------------------------------------------------------------------------ sources
@dataclass
class Candidate:
    """One image to consider: a file on disk, the bytes of a zip member, or a decoded video/camera frame."""

    source: str  # what the user reads: a path, archive.zip!member.jpg, clip.mp4@4.00s, camera:0#3
    stem: str  # readable part of the written file's name
    source_sha256: str
    frame_s: str = ""
    path: Path | None = None
    data: bytes | None = None
    suffix: str = ""
    frame: np.ndarray | None = None  # BGR, as OpenCV decodes it

    @property
    def key(self) -> tuple[str, str]:
        return self.source_sha256, self.frame_s


@dataclass
class Bad:
    source: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _walk(folder: Path) -> list[Path]:
    files, _hidden = _walk_files(folder)  # the dataset layer's walk: sorted, hidden files and folders left out
    return files


def expand_sources(sources: Iterable[str], exclude: Path | None = None) -> list[Path]:
    """Folders (recursively, hidden files left out), globs and single files, in a stable order, without ``exclude``."""
    files: list[Path] = []
    for spec in sources:
        path = Path(os.path.expanduser(spec))
        if path.is_dir():
            found = _walk(path)
        elif path.is_file():
            found = [path]
        elif _has_magic(spec):
            matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
            if not matches:
                raise TltoolError(f"{spec}: the pattern matches no file. Quote it so your shell does not expand it, "
                                  "and check the folder.")
            found = [f for m in matches for f in (_walk(Path(m)) if os.path.isdir(m) else [Path(m)])]
        else:
            raise TltoolError(f"{spec}: no such file or folder.")
        files.extend(found)
    seen: set[Path] = set()
    out = []
    for f in files:
        resolved = f.resolve()
        if resolved in seen or (exclude is not None and resolved.is_relative_to(exclude)):
            continue
        seen.add(resolved)
        out.append(f)
    return out


def _frame_times(capture, every: float) -> Iterator[tuple[float, np.ndarray]]:
    """Grab every frame of an open capture, decode one per ``every`` seconds of video time."""
    cv2 = _cv2()
    fps = capture.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and 0 < fps < 1000 else None
    index, next_t = 0, 0.0
    while capture.grab():
        t = index / fps if fps else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        index += 1
        if t + 1e-6 < next_t:
            continue
        ok, frame = capture.retrieve()
        if ok and frame is not None:
            while next_t <= t + 1e-6:
                next_t += every
            yield t, frame
    if index == 0:
        raise BadImageError("", CORRUPT, "no video frame could be decoded")


def _video_candidates(path: Path, source: str, sha: str, every: float) -> Iterator[Candidate | Bad]:
    cv2 = _cv2()
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            yield Bad(source, CORRUPT, "OpenCV cannot open this video")
            return
        stem = _slug(Path(source.split("!")[-1]).stem)
        for t, frame in _frame_times(capture, every):
            yield Candidate(f"{source}@{t:.2f}s", f"{stem}-t{t:07.2f}s", sha, f"{t:.3f}", frame=frame)
    except BadImageError as exc:
        yield Bad(source, exc.reason, exc.detail)
    finally:
        capture.release()


def _zip_candidates(path: Path, every: float, tmpdir: Path) -> Iterator[Candidate | Bad]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        yield Bad(str(path), CORRUPT, f"not a readable zip file: {exc}")
        return
    with archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            name = info.filename
            parts = name.split("/")
            if info.is_dir() or any(p.startswith(".") or p == "__MACOSX" for p in parts if p):
                continue
            source = f"{path}!{name}"
            if info.file_size > MAX_MEMBER_BYTES:
                yield Bad(source, CORRUPT, f"{info.file_size:,} bytes uncompressed, more than {MAX_MEMBER_BYTES:,}")
                continue
            try:
                data = archive.read(info)
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
                yield Bad(source, CORRUPT, str(exc))
                continue
            sha = hashlib.sha256(data).hexdigest()
            suffix = Path(name).suffix.lower()
            if suffix in VIDEO_EXTENSIONS:
                video = tmpdir / f"member{suffix}"
                video.write_bytes(data)
                yield from _video_candidates(video, source, sha, every)
                video.unlink()
            else:
                yield Candidate(source, _slug(Path(name).stem), sha, data=data, suffix=suffix)


def candidates_of(path: Path, every: float, tmpdir: Path) -> Iterator[Candidate | Bad]:
    """The candidates of one file: an image as it is, each zip member, video frames every ``every`` seconds."""
    suffix = path.suffix.lower()
    try:
        sha = sha256_file(path)
    except OSError as exc:
        yield Bad(str(path), UNREADABLE, exc.strerror or str(exc))
        return
    if suffix == ".zip":
        yield from _zip_candidates(path, every, tmpdir)
    elif suffix in VIDEO_EXTENSIONS:
        yield from _video_candidates(path, str(path), sha, every)
    else:
        yield Candidate(str(path), _slug(path.stem), sha, path=path)


def open_camera(index: int):
    """An opened OpenCV capture of webcam ``index``, or a :class:`TltoolError` that says what to check."""
    cv2 = _cv2()
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        capture.release()
        raise TltoolError(f"no camera at index {index}: OpenCV could not open it. Connect a webcam (and close other "
                          "programs that use it), try another --camera index, or import photo folders instead.")
    return capture


def camera_candidates(capture, index: int, frames: int, every: float,
                      sleep: Callable[[float], None] = time.sleep) -> Iterator[Candidate]:
    """``frames`` pictures from an opened camera, one every ``every`` seconds."""
    try:
        for n in range(frames):
            if n:
                sleep(every)
            ok, frame = capture.read()
            if not ok or frame is None:
                raise TltoolError(f"camera {index} stopped delivering pictures after {n} of {frames}.")
            stamp = time.strftime("%Y%m%d-%H%M%S")
            sha = hashlib.sha256(np.ascontiguousarray(frame).tobytes()).hexdigest()
            yield Candidate(f"camera:{index}#{n}", f"camera{index}-{stamp}-{n:03d}", sha, frame=frame)
    finally:
        capture.release()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "image"


# ------------------------------------------------------------------------------------------------ import
@dataclass
class Decoded:
    pixels: np.ndarray
    sha: str
    dhash: int
    colour: tuple[int, int, int]


def _decode(candidate: Candidate, tmpdir: Path, max_side: int, max_pixels: int) -> Decoded:
    """Worker: turn a candidate into normalised pixels and hashes (raises :class:`BadImageError`)."""
    temp: Path | None = None
    try:
        path = candidate.path
        if path is None:
            fd, name = tempfile.mkstemp(dir=tmpdir, suffix=candidate.suffix or ".bmp")
            os.close(fd)
            temp = path = Path(name)
            if candidate.frame is not None:  # through a lossless file, so frames take the same decode as photos
                if not _cv2().imwrite(str(path), candidate.frame):
                    raise BadImageError(candidate.source, CORRUPT, "OpenCV could not write the frame")
            else:
                path.write_bytes(candidate.data or b"")
        try:
            pixels = normalise(path, max_side=max_side, max_pixels=max_pixels)
        except BadImageError as exc:
            raise BadImageError(candidate.source, exc.reason, exc.detail) from None
        colour = tuple(int(round(v)) for v in pixels.reshape(-1, 3).mean(axis=0))
        return Decoded(pixels, pixels_sha256(pixels), dhash(pixels), colour)  # type: ignore[arg-type]
    finally:
        if temp is not None and temp.exists():
            temp.unlink()


@dataclass
class ImportResult:
    dataset: Path
    manifest: Path
    near_threshold: int
    added: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    near_duplicates: list[dict] = field(default_factory=list)
    already: int = 0
    bad: list[Bad] = field(default_factory=list)
    total_images: int = 0


def read_manifest(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TltoolError(f"{path}: not a manifest tltool wrote (no column(s) {missing}); move it away and rerun "
                              "to start a new one.")
        return [dict(row) for row in reader]


def _write_manifest(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _parse_colour(text: str) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in text.split())
    return r, g, b


def import_images(sources: Iterable[str], out: str | os.PathLike, every: float = DEFAULT_EVERY,
                  max_side: int = DEFAULT_MAX_SIDE, near_threshold: int = DEFAULT_NEAR_THRESHOLD,
                  camera: int | None = None, camera_frames: int = 20, max_pixels: int = DEFAULT_MAX_PIXELS,
                  workers: int = 2, on_bad: Callable[[Bad], None] | None = None) -> ImportResult:
    """Import images into ``out/unlabeled`` (see the module doc). Safe to rerun: known sources are passed over."""
    sources = list(sources)
    if not sources and camera is None:
        raise TltoolError("nothing to import: give folders, globs, zip or video files, or --camera INDEX.")
    if every <= 0:
        raise TltoolError(f"--every must be a positive number of seconds, got {every}.")
    if max_side < 32:
        raise TltoolError(f"--max-side must be at least 32 pixels, got {max_side}.")
    root = Path(out).resolve()
    files = expand_sources(sources, exclude=root)  # check every source before touching anything
    claim_output_dir(root, "dataset", reuse=True)  # a dataset folder collect made earlier; never a user's own
    capture = open_camera(camera) if camera is not None else None
    target = root / UNLABELED
    target.mkdir(parents=True, exist_ok=True)
    manifest = root / MANIFEST
    rows = read_manifest(manifest)
    known = {(r["source_sha256"], r["frame_s"]) for r in rows}  # imported by an earlier run
    exact: dict[str, str] = {}
    near = NearIndex(near_threshold)
    for r in rows:
        if r["status"] == ADDED:
            exact[r["pixels_sha256"]] = r["file"]
            near.add(r["file"], int(r["dhash"], 16), _parse_colour(r["mean_rgb"]))
    result = ImportResult(root, manifest, near_threshold)

    def bad(item: Bad) -> None:
        result.bad.append(item)
        if on_bad is not None:
            on_bad(item)

    def streams(tmpdir: Path) -> Iterator[Iterable[Candidate | Bad]]:
        for path in files:
            yield candidates_of(path, every, tmpdir)
        if capture is not None:
            yield camera_candidates(capture, camera, camera_frames, every)

    pending: list = []

    def settle() -> None:
        candidate, future = pending.pop(0)
        try:
            decoded = future.result()
        except BadImageError as exc:
            bad(Bad(candidate.source, exc.reason, exc.detail))
            return
        _keep(candidate, decoded, target, rows, exact, near, result)

    try:
        with tempfile.TemporaryDirectory(prefix="tltool-collect-") as tmp, \
                ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
                Bar(len(files) + (capture is not None), f"importing into {root.name}") as bar:
            tmpdir = Path(tmp)
            for stream in streams(tmpdir):
                for item in stream:
                    if isinstance(item, Bad):
                        bad(item)
                    elif item.key in known:
                        result.already += 1
                    else:
                        pending.append((item, pool.submit(_decode, item, tmpdir, max_side, max_pixels)))
                        while len(pending) > 2 * max(1, workers):  # bounded: few zip members or frames in memory
                            settle()
                bar.update()
            while pending:
                settle()
    finally:
        if capture is not None:
            capture.release()
        _write_manifest(manifest, rows)  # also after Ctrl-C: what was written is recorded
    result.total_images = sum(1 for r in rows if r["status"] == ADDED and (root / r["file"]).is_file())
    return result


def _keep(candidate: Candidate, decoded: Decoded, target: Path, rows: list[dict], exact: dict, near: NearIndex,
          result: ImportResult) -> None:
    """Decide on one decoded candidate: drop it as a duplicate or write it; record the decision."""
    h, w = decoded.pixels.shape[:2]
    row = {"source": candidate.source, "source_sha256": candidate.source_sha256, "frame_s": candidate.frame_s,
           "file": "", "status": ADDED, "duplicate_of": "", "distance": "", "pixels_sha256": decoded.sha,
           "dhash": f"{decoded.dhash:016x}", "mean_rgb": " ".join(map(str, decoded.colour)), "width": w, "height": h}
    if decoded.sha in exact:
        row.update(status=DUPLICATE, duplicate_of=exact[decoded.sha], distance=0)
        result.duplicates.append(row)
    elif (match := near.find(decoded.dhash, decoded.colour)) is not None:
        row.update(status=NEAR_DUPLICATE, duplicate_of=match[0], distance=match[1])
        result.near_duplicates.append(row)
    else:
        rel = f"{UNLABELED}/{candidate.stem}-{decoded.sha[:12]}.jpg"
        with atomic_path(target.parent / rel) as tmp:
            Image.fromarray(decoded.pixels).save(tmp, "JPEG", quality=JPEG_QUALITY)
        row["file"] = rel
        exact[decoded.sha] = rel
        near.add(rel, decoded.dhash, decoded.colour)
        result.added.append(row)
    rows.append(row)
