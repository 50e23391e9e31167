"""``collect import``: decode every candidate, drop duplicates, write the rest and record every decision.

The rows of ``DATASET/manifest.csv`` are the memory of the dataset: a rerun passes over sources already imported
and checks new images against every image kept so far, exactly (pixel hash) and nearly (:class:`NearIndex`).
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from ..errors import BadImageError, TltoolError
from ..images import CORRUPT, DEFAULT_MAX_PIXELS, load_image
from ..outputs import claim_output_dir
from ..progress import Bar
from ..settings import check_range
from ..utils import (atomic_path, file_lock, readable_csv, record_line, remove_temp_leftovers, sha256_file,
                     shown_name, write_text_atomic)
from .neardup import DEFAULT_NEAR_THRESHOLD, NearIndex, dhash, mean_colour, pixels_sha256
from .sources import (DEFAULT_EVERY, Bad, Candidate, camera_candidates, candidates_of, cv2_module, expand_sources,
                      open_camera)

UNLABELED = "unlabeled"
MANIFEST = "manifest.csv"
IMPORT_LOCK = ".import.lock"
IMPORTED_NAME = re.compile(r".+-[0-9a-f]{12}\.jpg")  # what _Ledger._write names a photo in unlabeled/
DEFAULT_MAX_SIDE = 1024
MAX_EVERY = 86_400.0  # seconds; one day (a webcam waits that long between pictures; time.sleep overflows far above)
JPEG_QUALITY = 92

ADDED, DUPLICATE, NEAR_DUPLICATE = "added", "duplicate", "near-duplicate"
MANIFEST_COLUMNS = ("source", "source_sha256", "frame_s", "file", "status", "duplicate_of", "distance",
                    "pixels_sha256", "dhash", "mean_rgb", "width", "height")
# columns a manifest of an older tltool lacks: read as empty. file_sha256: the bytes of the JPEG written, so a copy
# of a dataset file imported again is a duplicate of it (its pixels_sha256 is of the pixels before that encode)
LATER_COLUMNS = ("file_sha256",)


def load_shrunk(path: str | os.PathLike, max_side: int = DEFAULT_MAX_SIDE,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The shared decode (EXIF, RGB) plus a longest side of at most ``max_side`` pixels."""
    pixels = load_image(path, max_pixels=max_pixels)
    h, w = pixels.shape[:2]
    if max(h, w) <= max_side:
        return pixels
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.LANCZOS, reducing_gap=3.0))


# ------------------------------------------------------------------------------------------------ decoding
@dataclass
class Decoded:
    pixels: np.ndarray
    sha: str
    dhash: int
    colour: tuple[int, int, int]


def _frame_file(candidate: Candidate, tmpdir: Path) -> Path:
    """A lossless temporary file of a video or camera frame, so frames take the same decode as photos."""
    fd, name = tempfile.mkstemp(dir=tmpdir, suffix=".bmp")
    os.close(fd)
    path = Path(name)
    if not cv2_module().imwrite(str(path), candidate.frame):
        path.unlink()
        raise BadImageError(candidate.source, CORRUPT, "OpenCV could not write the frame")
    return path


def decode_candidate(candidate: Candidate, tmpdir: Path, max_side: int, max_pixels: int) -> Decoded:
    """Worker: turn a candidate into shrunk pixels and hashes (raises :class:`BadImageError` naming the source)."""
    path = candidate.path or _frame_file(candidate, tmpdir)
    try:
        pixels = load_shrunk(path, max_side=max_side, max_pixels=max_pixels)
    except BadImageError as exc:
        raise BadImageError(candidate.source, exc.reason, exc.detail) from None
    finally:
        if candidate.path is None or candidate.temporary:
            path.unlink(missing_ok=True)
    return Decoded(pixels, pixels_sha256(pixels), dhash(pixels), mean_colour(pixels))


# ------------------------------------------------------------------------------------------------ the manifest
def read_manifest(path: Path) -> list[dict]:
    """The rows of a manifest ``collect import`` wrote, or none when there is no manifest yet."""
    if not path.is_file():
        return []
    # utf-8-sig: a manifest saved again by a spreadsheet starts with a byte-order mark, which hid its first column
    with readable_csv(path), open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TltoolError(f"{path}: not a manifest tltool wrote (no column(s) {missing}); move it away and rerun "
                              "to start a new one.")
        rows = []
        for row in reader:
            _check_manifest_row(path, record_line(reader, row), row)
            rows.append({c: row[c] for c in MANIFEST_COLUMNS} | {c: row.get(c) or "" for c in LATER_COLUMNS})
        return rows


_HEX64 = re.compile(r"[0-9a-fA-F]{1,16}")
_COLOUR = re.compile(r"[0-9]{1,3} [0-9]{1,3} [0-9]{1,3}")


def _check_manifest_row(path: Path, line: int, row: dict) -> None:
    """A TltoolError naming ``path`` and ``line`` when a row of the manifest is not one ``collect import`` wrote
    (a hand edit): missing cells, or an added image without a readable dHash or mean colour."""
    def refuse(what: str) -> TltoolError:
        return TltoolError(f"{path}, line {line}: {what}; not a row tltool wrote. Fix or remove that row, or move the "
                           "manifest away and rerun to start a new one.")

    missing = [c for c in MANIFEST_COLUMNS if row.get(c) is None]
    if missing:
        raise refuse(f"no cell(s) for {', '.join(missing)}")
    if row["status"] == ADDED:
        if not row["file"] or not row["pixels_sha256"]:
            raise refuse("an added image without its file or pixels_sha256")
        if not _inside_the_dataset(row["file"]):  # it was read (its digest) and counted as one of the dataset's
            raise refuse(f"file {row['file'][:80]!r} is not a path inside the dataset")
        if not _HEX64.fullmatch(row["dhash"]):
            raise refuse(f"dhash {row['dhash'][:40]!r} is not a 64-bit hexadecimal number")
        if not _COLOUR.fullmatch(row["mean_rgb"]) or max(map(int, row["mean_rgb"].split())) > 255:
            raise refuse(f"mean_rgb {row['mean_rgb'][:40]!r} is not three numbers 0-255")


def _inside_the_dataset(file: str) -> bool:
    """Whether a manifest's ``file`` names a place inside the dataset folder, as tltool writes it (relative, with
    no ``..``, in either slash)."""
    parts = PurePosixPath(file.replace("\\", "/")).parts
    return bool(parts) and not PureWindowsPath(file).drive and parts[0] != "/" and ".." not in parts


def _write_manifest(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS + LATER_COLUMNS, lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _parse_colour(text: str) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in text.split())
    return r, g, b


# ------------------------------------------------------------------------------------------------ deciding
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


class _Ledger:
    """What the dataset holds: the manifest rows, the sources imported before, the exact and near indexes."""

    def __init__(self, root: Path, near_threshold: int) -> None:
        self.root = root
        self.rows = read_manifest(root / MANIFEST)
        self.known = {(r["source_sha256"], r["frame_s"]) for r in self.rows}  # imported by an earlier run
        self.exact: dict[str, str] = {}
        self.files: dict[str, str] = {}  # the dataset's files by the digest of their bytes
        self.near = NearIndex(near_threshold)
        for r in self.rows:
            if r["status"] == ADDED:
                self.exact[r["pixels_sha256"]] = r["file"]
                self.near.add(r["file"], int(r["dhash"], 16), _parse_colour(r["mean_rgb"]))
                self._index_file(r)
        self.result = ImportResult(root, root / MANIFEST, near_threshold)

    def keep(self, candidate: Candidate, decoded: Decoded) -> None:
        """Decide on one decoded candidate: drop it as a duplicate or write it; record the decision."""
        h, w = decoded.pixels.shape[:2]
        row = {"source": candidate.source, "source_sha256": candidate.source_sha256, "frame_s": candidate.frame_s,
               "file": "", "status": ADDED, "duplicate_of": "", "distance": "", "pixels_sha256": decoded.sha,
               "dhash": f"{decoded.dhash:016x}", "mean_rgb": " ".join(map(str, decoded.colour)), "width": w,
               "height": h, "file_sha256": ""}
        copy_of = self.exact.get(decoded.sha) or self.files.get(candidate.source_sha256)
        if copy_of is not None:
            row.update(status=DUPLICATE, duplicate_of=copy_of, distance=0)
            self.result.duplicates.append(row)
        elif (match := self.near.find(decoded.dhash, decoded.colour)) is not None:
            row.update(status=NEAR_DUPLICATE, duplicate_of=match[0], distance=match[1])
            self.result.near_duplicates.append(row)
        else:
            row["file"] = self._write(candidate, decoded)
            self._index_file(row)
            self.result.added.append(row)
        self.rows.append(row)

    def _index_file(self, row: dict) -> None:
        """Know the added file of ``row`` by the digest of its bytes (computed for a manifest of an older tltool,
        which did not record it; a file gone or unreadable is left out)."""
        if not row["file_sha256"]:
            with contextlib.suppress(OSError, ValueError):
                row["file_sha256"] = sha256_file(self.root / row["file"])
        if row["file_sha256"]:
            self.files[row["file_sha256"]] = row["file"]

    def _write(self, candidate: Candidate, decoded: Decoded) -> str:
        rel = f"{UNLABELED}/{candidate.stem}-{decoded.sha[:12]}.jpg"
        with atomic_path(self.root / rel) as tmp:
            Image.fromarray(decoded.pixels).save(tmp, "JPEG", quality=JPEG_QUALITY)
        self.exact[decoded.sha] = rel
        self.near.add(rel, decoded.dhash, decoded.colour)
        return rel

    def save(self) -> None:
        _write_manifest(self.root / MANIFEST, self.rows)
        self.result.total_images = sum(1 for r in self.rows
                                       if r["status"] == ADDED and (self.root / r["file"]).is_file())


# ------------------------------------------------------------------------------------------------ the import
@dataclass
class _Run:
    """One import in progress: decodes run in a thread pool, decisions are taken in source order."""

    ledger: _Ledger
    pool: ThreadPoolExecutor
    tmpdir: Path
    max_side: int
    max_pixels: int
    on_bad: Callable[[Bad], None] | None
    window: int
    pending: list[tuple[Candidate, Future]] = field(default_factory=list)

    def offer(self, item: Candidate | Bad) -> None:
        if isinstance(item, Bad):
            self.bad(item)
        elif item.key in self.ledger.known:
            self.ledger.result.already += 1
            if item.temporary and item.path is not None:
                item.path.unlink(missing_ok=True)
        else:
            future = self.pool.submit(decode_candidate, item, self.tmpdir, self.max_side, self.max_pixels)
            self.pending.append((item, future))
            while len(self.pending) > self.window:  # bounded: few zip members or frames in memory
                self.settle()

    def settle(self) -> None:
        candidate, future = self.pending.pop(0)
        try:
            decoded = future.result()
        except BadImageError as exc:
            self.bad(Bad(candidate.source, exc.reason, exc.detail))
            return
        self.ledger.keep(candidate, decoded)

    def bad(self, item: Bad) -> None:
        self.ledger.result.bad.append(item)
        if self.on_bad is not None:
            self.on_bad(item)


def _check_options(sources: list[str], camera: int | None, every: float, max_side: int) -> None:
    if not sources and camera is None:
        raise TltoolError("nothing to import: give folders, globs, zip or video files, or --camera INDEX.")
    if not (math.isfinite(every) and 0 < every <= MAX_EVERY):  # nan passed `every <= 0` and took every frame
        raise TltoolError(f"--every must be a number of seconds above 0 and at most {MAX_EVERY:g}, got {every}.")
    if max_side < 32:
        raise TltoolError(f"--max-side must be at least 32 pixels, got {max_side}.")


def _check_out(root: Path, given: str) -> None:
    """A clear error for a DATASET path that cannot even be looked at: Python 3.11's is_dir() and is_symlink(),
    which the output-folder checks use, raise OSError for a name too long (ENAMETOOLONG), a traceback before."""
    try:
        root.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return  # a new folder (made later) or one under a file (refused later, with its own message)
    except OSError as exc:
        raise TltoolError(f"--out {shown_name(given)}: cannot be used ({exc.strerror or exc}).") from None


def _refuse_own_photos(sources: list[str], root: Path, given: str) -> None:
    """A source that is the dataset folder, or inside it, names the dataset's own photos, which an import leaves
    out: `collect import ds --out ds` said only "added 0 image(s)". (A pattern is matched and left out the same.)"""
    with contextlib.suppress(OSError, RuntimeError):
        home = root.resolve()
        for spec in sources:
            real = Path(os.path.expanduser(spec)).resolve()
            if real == home or home in real.parents:
                raise TltoolError(f"{shown_name(spec)}: is inside the dataset --out {shown_name(given)}, whose photos "
                                  "are its own and never imported again; give the photos to import.")


def import_images(sources: Iterable[str], out: str | os.PathLike, every: float = DEFAULT_EVERY,
                  max_side: int = DEFAULT_MAX_SIDE, near_threshold: int = DEFAULT_NEAR_THRESHOLD,
                  camera: int | None = None, camera_frames: int = 20, max_pixels: int = DEFAULT_MAX_PIXELS,
                  workers: int = 2, on_bad: Callable[[Bad], None] | None = None) -> ImportResult:
    """Import images into ``out/unlabeled`` (see the module doc). Safe to rerun: known sources are passed over."""
    sources = list(sources)
    _check_options(sources, camera, every, max_side)
    check_range("max_pixels", max_pixels)  # 0 called every image a decompression bomb, and the import "succeeded"
    root = Path(os.path.abspath(out))  # not resolved: a link given as the dataset is refused, not followed
    _check_out(root, str(out))
    _refuse_own_photos(sources, root, str(out))
    files = expand_sources(sources, exclude=root.resolve())  # check every source before touching anything
    claim_output_dir(root, "dataset", reuse=True)  # a dataset folder collect made earlier; never a user's own
    # one import at a time per dataset: two at once each rewrote the manifest from what they had read, losing rows
    with file_lock(root / IMPORT_LOCK, f"waiting for another import into {root} to finish"):
        return _import_locked(root, files, every, max_side, near_threshold, camera, camera_frames, max_pixels,
                              workers, on_bad)


def _check_layout(root: Path) -> None:
    """Refuse, before anything is written, a dataset folder whose ``unlabeled/`` or manifest is not what collect
    makes: a file named ``unlabeled`` was a FileExistsError, a folder named ``manifest.csv`` an IsADirectoryError
    once the images had been written."""
    unlabeled, manifest = root / UNLABELED, root / MANIFEST
    if unlabeled.is_symlink() or manifest.is_symlink():
        raise TltoolError(f"{root}: its {UNLABELED}/ or {MANIFEST} is a link; tltool writes only into what it made "
                          "there. Remove the link, or import into a new folder.")
    if unlabeled.exists() and not unlabeled.is_dir():
        raise TltoolError(f"{unlabeled}: not a folder; collect writes its images there. Move it away, or import "
                          "into a new folder.")
    if manifest.exists() and not manifest.is_file():
        raise TltoolError(f"{manifest}: not a regular file; collect records its decisions there. Move it away, or "
                          "import into a new folder.")


def _import_locked(root: Path, files: list, every: float, max_side: int, near_threshold: int, camera: int | None,
                   camera_frames: int, max_pixels: int, workers: int,
                   on_bad: Callable[[Bad], None] | None) -> ImportResult:
    _check_layout(root)
    capture = open_camera(camera) if camera is not None else None
    (root / UNLABELED).mkdir(parents=True, exist_ok=True)
    # imports write there one at a time (this one holds the lock): a temp file of a photo's name is a killed
    # import's; another name is not (a labeler served on DATASET/unlabeled saves its labels.csv there)
    remove_temp_leftovers(root / UNLABELED, targets=lambda target: IMPORTED_NAME.fullmatch(target) is not None)
    remove_temp_leftovers(root, targets=lambda target: target == MANIFEST)
    ledger = _Ledger(root, near_threshold)

    def streams(tmpdir: Path) -> Iterator[Iterable[Candidate | Bad]]:
        for path in files:
            yield [path] if isinstance(path, Bad) else candidates_of(path, every, tmpdir)
        if capture is not None:
            yield camera_candidates(capture, camera, camera_frames, every)

    try:
        with tempfile.TemporaryDirectory(prefix="tltool-collect-") as tmp, \
                ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
                Bar(len(files) + (capture is not None), f"importing into {root.name}") as bar:
            run = _Run(ledger, pool, Path(tmp), max_side, max_pixels, on_bad, window=2 * max(1, workers))
            for stream in streams(run.tmpdir):
                for item in stream:
                    run.offer(item)
                bar.update()
            while run.pending:
                run.settle()
    finally:
        if capture is not None:
            capture.release()
        ledger.save()  # also after Ctrl-C: what was written is recorded
    return ledger.result
