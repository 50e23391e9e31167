"""Where ``collect import`` finds pictures: files, folders, globs, zip members, video frames and a webcam.

Every source becomes a stream of :class:`Candidate` (an image still to decode) and :class:`Bad` (a named refusal).
"""
from __future__ import annotations

import glob
import hashlib
import lzma
import os
import re
import tempfile
import time
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from ..dataset import (HIDDEN, NOT_UTF8, TLTOOL_OUTPUTS, LinkGuard, is_hidden_folder, is_utf8, refuse_tltool_output,
                       tltool_output_around, walk_files)
from ..errors import BadImageError, TltoolError
from ..images import CORRUPT, UNREADABLE
from ..utils import has_glob_magic, sha256_file, shown_name

if TYPE_CHECKING:
    from types import ModuleType

    import cv2

DEFAULT_EVERY = 2.0
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp"})
# Zip archives are unpacked in blocks under hard caps on the bytes that actually come out (zip bombs; the sizes an
# archive declares are not trusted) and on the number of members.
MAX_MEMBER_BYTES = 1 << 30  # one member (a video may be large)
MAX_ZIP_BYTES = 16 << 30  # all members of one archive together (overlapping members reuse compressed data)
MAX_ZIP_MEMBERS = 50_000
ZIP_BLOCK = 1 << 16
# Why a zip member (or a whole archive) is refused; stable strings, printed as "skipped archive.zip!name: reason".
TOO_LARGE = "too large to unpack"
TOO_MANY_MEMBERS = "too many members"
UNSAFE_NAME = "unsafe member name"
ENCRYPTED = "encrypted"
TAR_ARCHIVE = "tar archives are not supported"  # a whole source refused: "skipped a.tgz: tar archives are ..."
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def cv2_module() -> ModuleType:
    """OpenCV, imported on first use, without its "[ WARN ] can't open camera" noise on stderr."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    import cv2

    return cv2


@dataclass
class Candidate:
    """One image to consider: a file on disk, an unpacked zip member, or a decoded video/camera frame."""

    source: str  # what the user reads: a path, archive.zip!member.jpg, clip.mp4@4.00s, camera:0#3
    stem: str  # readable part of the written file's name
    source_sha256: str
    frame_s: str = ""
    path: Path | None = None
    temporary: bool = False  # ``path`` is an unpacked zip member, deleted once decoded
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
        # the source holds names from outside (a zip member's, a file's): a newline or an escape sequence in one
        # split the line or reached the terminal
        return f"{shown_name(self.source, None)}: {self.reason}" + (f" ({shown_name(self.detail, None)})"
                                                                    if self.detail else "")


def slug(text: str) -> str:
    """A short file-name-safe version of ``text``; accented letters keep their base letter (été -> ete)."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return re.sub(r"[^A-Za-z0-9_-]+", "-", plain).strip("-")[:40] or "image"


# ------------------------------------------------------------------------------------------------ files
def _walk(folder: Path) -> list[Path | Bad]:
    """The dataset layer's walk: sorted, hidden files and tltool's own folders (runs, features) left out, links
    followed as it allows; what else it sets aside (a name that is not UTF-8, a folder that cannot be read) is named
    as a bad file, not dropped unsaid."""
    guard = LinkGuard(folder)
    files, skipped = walk_files(folder, guard)
    guard.warn(str(folder))
    return [*files, *(Bad(s.path, s.reason) for s in skipped if s.reason != HIDDEN and s.reason not in TLTOOL_OUTPUTS)]


def _expand_one(spec: str) -> list[Path | Bad]:
    path = Path(os.path.expanduser(spec))
    try:  # Python 3.11's is_dir/is_file raise for a name too long or a folder that may not be searched
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as exc:
        raise TltoolError(f"{shown_name(spec)}: cannot be read as a file or folder ({exc.strerror or exc}).") \
            from None
    if is_dir:
        refuse_tltool_output(path, spec)
        return _walk(path)
    if is_file:
        return [path]
    if path.exists():  # /dev/zero or a named pipe was "no such file or folder"
        raise TltoolError(f"{shown_name(spec)}: not a regular file or a folder (a device, a pipe or a socket); give "
                          "photos, folders, zip or video files.")
    if not has_glob_magic(spec):
        raise TltoolError(f"{shown_name(spec)}: no such file or folder.")
    matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
    if not matches:
        raise TltoolError(f"{shown_name(spec)}: the pattern matches no file. Quote it so your shell does not expand "
                          "it, and check the folder.")
    # a run or features folder a pattern matches, or a file in one (RUN/*.png), is left out, as the walk leaves out
    # one inside a folder
    kept = [m for m in matches if tltool_output_around(m) is None]
    if not kept:
        raise TltoolError(f"{shown_name(spec)}: the pattern matches only what tltool wrote (run, features or export "
                          "folders: reports, plots, models), not photos.")
    return [f for m in kept for f in (_walk(Path(m)) if os.path.isdir(m) else [Path(m)])]


def expand_sources(sources: Iterable[str], exclude: Path | None = None) -> list[Path | Bad]:
    """Folders (recursively, hidden files left out), globs and single files, in a stable order, without ``exclude``;
    a :class:`Bad` for each file or folder a walk set aside."""
    seen: set[Path] = set()
    out: list[Path | Bad] = []
    in_output: dict[Path, bool] = {}  # per folder: its photos are looked up once, not each walk up to /
    for f in (f for spec in sources for f in _expand_one(spec)):
        if isinstance(f, Bad):
            out.append(f)
            continue
        try:
            resolved = f.resolve()
        except (OSError, RuntimeError) as exc:  # a link to itself (a -> a, a -> b -> a): RuntimeError in 3.11
            out.append(Bad(str(f), UNREADABLE, getattr(exc, "strerror", None) or "a link that points back to itself"))
            continue
        if resolved in seen or (exclude is not None and resolved.is_relative_to(exclude)):
            continue
        if resolved.parent not in in_output:
            in_output[resolved.parent] = tltool_output_around(resolved.parent) is not None
        if in_output[resolved.parent]:  # a link to a run's plot: not a photo
            continue
        seen.add(resolved)
        out.append(f)
    return out


def candidates_of(path: Path, every: float, tmpdir: Path) -> Iterator[Candidate | Bad]:
    """The candidates of one file: an image as it is, each zip member, video frames every ``every`` seconds."""
    suffix = path.suffix.lower()
    if not is_utf8(str(path)):  # the manifest (UTF-8) could not record it: the import ended in a traceback, unsaved
        yield Bad(str(path), NOT_UTF8)
        return
    if path.name.lower().endswith(TAR_SUFFIXES):
        yield Bad(str(path), TAR_ARCHIVE, "unpack it first; zip archives are supported")
        return
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
class _Refused(Exception):
    """One member is not unpacked."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


class _ArchiveFull(Exception):
    """The members unpacked so far used the archive's whole budget: nothing more is unpacked."""


class _Budget:
    """The bytes an archive may still unpack; every byte that comes out counts, refused members' too."""

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise _ArchiveFull()

    def charge(self, n: int) -> None:
        """Count bytes that were inflated but never handed over (a member that failed its checksum)."""
        self.left -= max(0, n)


def _unsafe_name(name: str) -> bool:
    """A member name that would climb out of a folder if unpacked: ``..`` parts, absolute or drive paths."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def _hidden_member(info: zipfile.ZipInfo) -> bool:
    """A folder, a dot-file or macOS' resource forks; a ``./`` part (some archivers write ``./photo.jpg``) is not
    hidden: every such member was dropped without a word."""
    return info.is_dir() or any(is_hidden_folder(p) and p != "." for p in info.filename.split("/") if p)


def _unpack_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, budget: _Budget) -> str:
    """Stream one member into ``target`` in blocks; stop as soon as more than :data:`MAX_MEMBER_BYTES` (or the
    archive's budget) came out: the size an archive declares is not trusted. Returns the sha256 of the bytes."""
    digest, read = hashlib.sha256(), 0
    with archive.open(info) as src, open(target, "wb") as dst:
        try:
            while block := src.read(ZIP_BLOCK):
                read += len(block)
                budget.take(len(block))
                if read > MAX_MEMBER_BYTES:
                    raise _Refused(TOO_LARGE, f"more than {MAX_MEMBER_BYTES:,} bytes unpacked (the archive "
                                              f"declares {info.file_size:,})")
                digest.update(block)
                dst.write(block)
        except zipfile.BadZipFile:  # zipfile inflates up to the declared size before it checks the CRC
            budget.charge(min(info.file_size, MAX_MEMBER_BYTES) - read)
            raise
    return digest.hexdigest()


def _zip_candidates(path: Path, every: float, tmpdir: Path) -> Iterator[Candidate | Bad]:
    try:
        archive = zipfile.ZipFile(path)
    # ValueError: a member name flagged UTF-8 that is not; NotImplementedError: a zip version Python cannot read
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        yield Bad(str(path), CORRUPT, f"not a readable zip file: {exc}")
        return
    with archive:
        members = sorted(archive.infolist(), key=lambda i: i.filename)
        if len(members) > MAX_ZIP_MEMBERS:
            yield Bad(str(path), TOO_MANY_MEMBERS, f"{len(members):,} members, more than {MAX_ZIP_MEMBERS:,}; "
                                                   "unpack it yourself and import the folder")
            return
        budget = _Budget(MAX_ZIP_BYTES)
        for info in members:
            source = f"{path}!{info.filename}"
            if _unsafe_name(info.filename):
                yield Bad(source, UNSAFE_NAME, "'..' or an absolute path; not imported")
                continue
            if _hidden_member(info):
                continue
            try:
                yield from _member_candidates(archive, info, source, every, tmpdir, budget)
            except _Refused as exc:
                yield Bad(source, exc.reason, exc.detail)
                continue
            except _ArchiveFull:
                yield Bad(str(path), TOO_LARGE, f"its members unpack to more than {MAX_ZIP_BYTES:,} bytes together; "
                                                f"{info.filename} and the members after it are not imported")
                return
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError, zlib.error,
                    lzma.LZMAError) as exc:
                yield Bad(source, CORRUPT, str(exc))


def _member_candidates(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str, every: float, tmpdir: Path,
                       budget: _Budget) -> Iterator[Candidate | Bad]:
    """Unpack one member to a temporary file (a candidate that owns it) or to the frames of a video."""
    if info.flag_bits & 0x1:  # zipfile raises RuntimeError for it, which ended the whole import
        raise _Refused(ENCRYPTED, "password-protected; unpack it yourself and import the files")
    if info.file_size > MAX_MEMBER_BYTES:
        raise _Refused(TOO_LARGE, f"the archive declares {info.file_size:,} bytes, more than {MAX_MEMBER_BYTES:,}")
    if info.file_size > budget.left:
        raise _ArchiveFull()
    suffix = Path(info.filename).suffix.lower()
    suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""  # the name is the archive's, not ours
    fd, name = tempfile.mkstemp(dir=tmpdir, suffix=suffix)
    os.close(fd)
    target = Path(name)
    try:
        sha = _unpack_member(archive, info, target, budget)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if suffix not in VIDEO_EXTENSIONS:
        yield Candidate(source, slug(Path(info.filename).stem), sha, path=target, temporary=True)
        return
    try:
        yield from _video_candidates(target, source, sha, every)
    finally:
        target.unlink(missing_ok=True)


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


def open_camera(index: int) -> cv2.VideoCapture:
    """An opened OpenCV capture of webcam ``index``, or a :class:`TltoolError` that says what to check."""
    capture = cv2_module().VideoCapture(index)
    if not capture.isOpened():
        capture.release()
        raise TltoolError(f"no camera at index {index}: OpenCV could not open it. Connect a webcam (and close other "
                          "programs that use it), try another --camera index, or import photo folders instead.")
    return capture


def camera_candidates(capture: cv2.VideoCapture, index: int, frames: int, every: float,
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
