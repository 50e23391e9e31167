"""Where ``collect import`` finds pictures: files, folders, globs, zip members, video frames and a webcam.

Every source becomes a stream of :class:`Candidate` (an image still to decode) and :class:`Bad` (a named refusal).
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..dataset import LinkGuard, walk_files
from ..errors import BadImageError, TltoolError
from ..images import CORRUPT, UNREADABLE
from ..utils import sha256_file

DEFAULT_EVERY = 2.0
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp"})
MAX_MEMBER_BYTES = 1 << 30  # a zip member larger than this is refused (zip bombs)


def cv2_module():
    """OpenCV, imported on first use, without its "[ WARN ] can't open camera" noise on stderr."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    import cv2

    return cv2


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
    """A source or member that was refused, and why (``reason`` is one of the stable strings of tltool.images)."""

    source: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def slug(text: str) -> str:
    """A short file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "image"


# ------------------------------------------------------------------------------------------------ files
def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _walk(folder: Path) -> list[Path]:
    """The dataset layer's walk: sorted, hidden files and folders left out, links followed as it allows."""
    guard = LinkGuard(folder)
    files, _hidden = walk_files(folder, guard)
    guard.warn(str(folder))
    return files


def _expand_one(spec: str) -> list[Path]:
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        return _walk(path)
    if path.is_file():
        return [path]
    if not _has_magic(spec):
        raise TltoolError(f"{spec}: no such file or folder.")
    matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
    if not matches:
        raise TltoolError(f"{spec}: the pattern matches no file. Quote it so your shell does not expand it, "
                          "and check the folder.")
    return [f for m in matches for f in (_walk(Path(m)) if os.path.isdir(m) else [Path(m)])]


def expand_sources(sources: Iterable[str], exclude: Path | None = None) -> list[Path]:
    """Folders (recursively, hidden files left out), globs and single files, in a stable order, without ``exclude``."""
    seen: set[Path] = set()
    out = []
    for f in (f for spec in sources for f in _expand_one(spec)):
        resolved = f.resolve()
        if resolved in seen or (exclude is not None and resolved.is_relative_to(exclude)):
            continue
        seen.add(resolved)
        out.append(f)
    return out


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
        yield Candidate(str(path), slug(path.stem), sha, path=path)


# ------------------------------------------------------------------------------------------------ zip archives
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
            yield from _member_candidates(source, name, data, every, tmpdir)


def _member_candidates(source: str, name: str, data: bytes, every: float,
                       tmpdir: Path) -> Iterator[Candidate | Bad]:
    sha = hashlib.sha256(data).hexdigest()
    suffix = Path(name).suffix.lower()
    if suffix not in VIDEO_EXTENSIONS:
        yield Candidate(source, slug(Path(name).stem), sha, data=data, suffix=suffix)
        return
    video = tmpdir / f"member{suffix}"
    video.write_bytes(data)
    yield from _video_candidates(video, source, sha, every)
    video.unlink()


# ------------------------------------------------------------------------------------------------ video, camera
def _frame_times(capture, every: float) -> Iterator[tuple[float, np.ndarray]]:
    """Grab every frame of an open capture, decode one per ``every`` seconds of video time."""
    cv2 = cv2_module()
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
    capture = cv2_module().VideoCapture(str(path))
    try:
        if not capture.isOpened():
            yield Bad(source, CORRUPT, "OpenCV cannot open this video")
            return
        stem = slug(Path(source.split("!")[-1]).stem)
        for t, frame in _frame_times(capture, every):
            yield Candidate(f"{source}@{t:.2f}s", f"{stem}-t{t:07.2f}s", sha, f"{t:.3f}", frame=frame)
    except BadImageError as exc:
        yield Bad(source, exc.reason, exc.detail)
    finally:
        capture.release()


def open_camera(index: int):
    """An opened OpenCV capture of webcam ``index``, or a :class:`TltoolError` that says what to check."""
    capture = cv2_module().VideoCapture(index)
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
