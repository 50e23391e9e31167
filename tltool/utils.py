"""Small shared helpers: atomic writes, hashing, the cache folder, JSON."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import secrets
import stat
import unicodedata
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator, NoReturn

from .errors import TltoolError
from .progress import say

if TYPE_CHECKING:
    import numpy as np


def cache_dir() -> Path:
    """tltool's cache folder: ``$TLTOOL_CACHE`` or ``~/.cache/tltool``."""
    root = os.environ.get("TLTOOL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tltool"
    )
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TltoolError(f"tltool's cache folder {path} cannot be made ({exc.strerror or exc}); point TLTOOL_CACHE "
                          "at a folder tltool may write into.") from None
    return path


TEMP_ATTEMPTS = 100


def _create_temp_beside(target: Path, suffix: str) -> Path:
    """A new empty file next to ``target`` with mode ``0o666`` less the umask, exactly as ``open(path, "w")`` makes
    it (``tempfile.mkstemp`` would make it 0600, and the rename would keep that: nobody else could read a report)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(TEMP_ATTEMPTS):
        path = target.parent / f".{target.name}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(path, flags, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name beside {target}")


# the name _create_temp_beside gives: "." + the target's name + "." + 8 hex digits + a suffix that ends in ".tmp" or
# is the end of the target's name (".keras", ".weights.h5": writers that want their own extension)
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[0-9a-f]{8}(?P<suffix>\..+)")


def is_temp_leftover(name: str, targets: Callable[[str], bool] = lambda target: True) -> bool:
    """Whether ``name`` is a temporary file :func:`atomic_path` makes, for a target whose name ``targets`` accepts."""
    match = _TEMP_NAME.fullmatch(name)
    if match is None:
        return False
    target, suffix = match["target"], match["suffix"]
    return (suffix.endswith(".tmp") or target.endswith(suffix)) and targets(target)


def remove_temp_leftovers(folder: str | os.PathLike, targets: Callable[[str], bool] = lambda target: True,
                          recursive: bool = False, enter: Callable[[Path], bool] = lambda inner: True) -> list[Path]:
    """Remove the temporary files a killed writer left in ``folder`` (a SIGKILL or power cut between the write and
    the rename skips :func:`atomic_path`'s clean-up: a 35 MB checkpoint, or a photo, was left for good). Only for a
    folder no live process writes into (held, or under its command's lock). Links and folders are never touched;
    ``recursive``: the sub-folders ``enter`` accepts too (one another command may be writing is not). Returns what
    was removed."""
    removed = []
    walk = os.walk(folder) if recursive else [next(os.walk(folder), (str(folder), [], []))]
    for here, dirs, files in walk:
        dirs[:] = [name for name in dirs if enter(Path(here) / name)]
        for name in files:
            path = Path(here) / name
            if is_temp_leftover(name, targets) and not path.is_symlink() and path.is_file():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def _fsync_path(path: Path, folder: bool = False) -> None:
    """Flush a file's data (or a folder's entries) to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY if folder else os.O_RDWR)
    except OSError:
        if not folder:
            raise
        return  # folders cannot be opened on Windows; NTFS journals the rename itself
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# called with each file atomic_path has put in place: tltool.outputs lists those of the run folders a command holds
WRITE_HOOKS: list[Callable[[Path], None]] = []


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "", durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    A crash or kill mid-write leaves the old file (or none) in place, never a half-written one. The file gets the
    mode ``open()`` would give it (the umask is respected). ``durable`` also survives a power cut: the data is
    flushed to disk before the rename, and the folder after it (checkpoints, resume state, labels).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp_beside(target, suffix or target.suffix + ".tmp")
    try:
        yield tmp_path
        if durable:
            _fsync_path(tmp_path)
        os.replace(tmp_path, target)
        if durable:
            _fsync_path(target.parent, folder=True)
        for hook in WRITE_HOOKS:
            hook(target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: str | os.PathLike, text: str, durable: bool = False) -> None:
    with atomic_path(target, durable=durable) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike, data: Any, durable: bool = False) -> None:
    write_text_atomic(target, json.dumps(data, indent=2, default=_json_default) + "\n", durable=durable)


def json_ready(data: Any) -> Any:
    """``data`` as it reads back from JSON (numpy numbers and arrays become plain numbers and lists)."""
    return json.loads(json.dumps(data, default=_json_default))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in the regular file ``path``; a named pipe (which would block the read forever) or a device (a link
    to /dev/zero would fill the memory) is a ValueError, as a file that is not JSON is, and JSON nested too deeply
    for the parser (a head.json or features.json of 100,000 '[' was a RecursionError traceback)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path}: not a regular file (a named pipe, a device or a folder)")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except RecursionError:
            raise ValueError(f"{path}: JSON nested too deeply to read") from None


# control characters, lone surrogates (a name that is not UTF-8) and line/paragraph separators; other characters,
# no-break spaces and joiners included (a macOS screenshot's name holds U+202F), are printed as they are
_UNPRINTED = {"Cc", "Cs", "Zl", "Zp"}
# and the bidirectional embeddings, overrides and isolates: U+202E in a class name shows the rest of its report
# line, numbers included, right to left (the marks U+200E/U+200F that right-to-left text may hold are kept)
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unprinted(c: str) -> bool:
    return unicodedata.category(c) in _UNPRINTED or c in BIDI_CONTROLS


def is_whole(value: Any, low: int = 1, high: int | None = None) -> bool:
    """Whether a value read from JSON is a whole number in ``[low, high]`` (True and 1.0 are not)."""
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def unprinted_character(text: str) -> str | None:
    """The first character of ``text`` that :func:`shown_name` escapes, or None: a control character (a newline, a
    tab, NUL, the escape that starts a terminal's colour code), a line separator, a lone surrogate (bytes that are
    not UTF-8) or a bidirectional control (:data:`BIDI_CONTROLS`)."""
    return next((c for c in text if _unprinted(c)), None)


def has_glob_magic(text: str) -> bool:
    """Whether ``text`` is a glob pattern (``*``, ``?`` or ``[``), which ``collect import`` and ``predict`` expand
    where a shell did not."""
    return any(c in text for c in "*?[")


def shown_name(name: str | os.PathLike, limit: int | None = 120) -> str:
    """A file name as tltool prints it: control characters escaped (a newline in a name would split a result line
    in two), and a name of hundreds of characters cut short (``limit``; None keeps it whole)."""
    text = "".join(repr(c)[1:-1] if _unprinted(c) else c for c in str(name))
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit - 20]}... ({len(text):,} characters)"


def read_json_object(path: str | os.PathLike, damaged: Callable[[str], NoReturn]) -> dict:
    """The JSON object in the regular file ``path``, a file tltool wrote and a user may have edited or damaged;
    ``damaged(problem)`` raises the caller's error when it is a link, a folder, not JSON or not an object."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        damaged("is not a regular file (a link, a folder or a device)")
    try:
        stored = read_json(path)
    except (OSError, ValueError, RecursionError) as error:  # ValueError: not JSON, or not UTF-8
        damaged(f"cannot be read as JSON ({type(error).__name__})")
    if not isinstance(stored, dict):
        damaged(f"holds a JSON {type(stored).__name__}, not an object")
    return stored


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def open_regular(path: str | os.PathLike, follow_links: bool = True) -> Iterator[BinaryIO]:
    """``path`` opened for reading bytes if it is a regular file; anything else (a named pipe, a device, a folder,
    and a link unless ``follow_links``) is an OSError without waiting: opening a pipe for reading would block until
    something writes to it, and ``np.load`` of one hung for ever."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:  # fdopen of a folder fails without closing it: a descriptor lost per call
        os.close(fd)
        raise
    with f:
        yield f


# A part of a file may declare far more bytes than the file stores: deflate expands up to 1032-fold, and an HDF5
# dataset none of whose chunks is written reads as its fill value. Readers allocate what is declared.
MAX_EXPANSION = 100  # declared bytes per stored byte, above EXPANSION_FLOOR (Keras and NumPy store theirs as is)
EXPANSION_FLOOR = 1 << 24


def inflated(declared: int, stored: int) -> bool:
    """Whether a part of a file that declares ``declared`` bytes and stores ``stored`` is a decompression bomb."""
    return declared > EXPANSION_FLOOR and declared > MAX_EXPANSION * stored


def check_zip_members(archive: zipfile.ZipFile) -> None:
    """Raise ValueError naming the first member of ``archive`` that is :func:`inflated`."""
    for info in archive.infolist():
        if inflated(info.file_size, info.compress_size):
            raise ValueError(f"{shown_name(info.filename, 80)} declares {info.file_size:,} bytes and stores "
                             f"{info.compress_size:,}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The content digest of a regular file (see :func:`open_regular`)."""
    with open_regular(path) as f:
        h = hashlib.sha256()
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(data: Any) -> str:
    """The digest of a JSON-able key (keys sorted; what JSON cannot write is written as ``str``)."""
    return sha256_text(json.dumps(data, sort_keys=True, default=str))


def sha256_array(a: np.ndarray) -> str:
    """The content of a numpy array with its dtype and shape (the same numbers in another shape differ)."""
    import numpy as np

    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


CGROUP_ROOT, CGROUP_MEMBERSHIP = Path("/sys/fs/cgroup"), Path("/proc/self/cgroup")


def usable_cpus(root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP) -> int:
    """The CPUs this process can keep busy, for sizing its threads and LiteRT lanes.

    ``os.cpu_count()`` counts the host's CPUs: in a container limited to 2 CPUs on a 64-core host it says 64, and
    64 lanes would hold 64 copies of the model and take turns on 2 CPUs. The affinity mask (taskset, cpusets) and a
    cgroup CPU quota narrow it; a quota of 1.5 CPUs counts as 2.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root, membership)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, membership: Path = CGROUP_MEMBERSHIP) -> float | None:
    """CPUs' worth of time this process's cgroups allow (docker --cpus, Kubernetes limits, systemd CPUQuota): the
    smallest ``cpu.max`` (v2) or ``cfs_quota_us / cfs_period_us`` (v1) of its cgroup and every one above it, or
    None when none sets a limit or nothing can be read."""
    limits = []
    for folder in _cgroup_folders(root, membership):
        with contextlib.suppress(OSError, ValueError, ZeroDivisionError):
            quota, period = (folder / "cpu.max").read_text().split()
            if quota != "max":
                limits.append(int(quota) / int(period))
        with contextlib.suppress(OSError, ValueError, ZeroDivisionError):
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            if quota > 0:
                limits.append(quota / int((folder / "cpu.cfs_period_us").read_text()))
    return min(limits) if limits else None


def _cgroup_folders(root: Path, membership: Path) -> list[Path]:
    """The folders of this process's v2 cgroup and v1 cpu cgroup, each with its ancestors up to the root."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        lines = []
    tops = []
    for line in lines:
        parts = line.split(":", 2)  # hierarchy-ID:controllers:path; v2 is "0::/path"
        if len(parts) != 3:
            continue
        _hierarchy, controllers, path = parts
        if controllers == "":
            tops.append((root, path))
        elif "cpu" in controllers.split(","):
            tops.append((root / "cpu", path))
    if not tops:
        tops = [(root, "/"), (root / "cpu", "/")]
    folders = []
    for top, path in tops:
        relative = Path(path.strip().lstrip("/"))
        folders += [top / relative] + [top / parent for parent in relative.parents]
    return folders


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, waiting: str = "") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing; a link or non-regular file there is refused) for
    the block; when another process holds it, say ``waiting`` and wait for it. Where ``fcntl`` is missing, no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    fd = _open_lock_file(path)
    with os.fdopen(fd, "r+b", buffering=0) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                say(waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def refuse_link(path: str | os.PathLike, files: str = "lock files", remedy: str = "remove it") -> None:
    """A TltoolError when ``path``, one of tltool's own ``files`` in a folder (a lock, labels.csv), is a link:
    opening it would read or create a file elsewhere."""
    if os.path.islink(path):
        raise TltoolError(f"{path} is a link; tltool does not follow links at its {files}: {remedy}")


def _open_lock_file(path: str | os.PathLike) -> int:
    """Open (creating) the lock file ``path`` without following a link there; refuse a link or anything but a
    regular file with a TltoolError naming it."""
    refuse_link(path)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        refuse_link(path)  # O_NOFOLLOW met a link made since the check above (ELOOP)
        if exc.errno in (errno.EISDIR, errno.ENXIO, errno.ENOTDIR) and os.path.lexists(path):
            raise TltoolError(f"{path} is not a regular file; tltool keeps its lock there: remove it") from None
        raise TltoolError(f"lock file {path} cannot be opened ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise TltoolError(f"{path} is not a regular file; tltool keeps its lock there: remove it")
    return fd


_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what a file read with newline="" ends a line at


def record_line(reader: Any, record: Any) -> int:
    """The line the CSV record ``record`` (a list of cells, or a DictReader's row) that ``reader`` just read starts
    on. ``reader.line_num`` is the line it ends on: a quoted cell holding line breaks made it and every later row's
    number point past the record a problem was in."""
    cells = record.values() if isinstance(record, dict) else record
    flat = [c for cell in cells for c in (cell if isinstance(cell, list) else [cell]) if isinstance(c, str)]
    return reader.line_num - sum(len(_LINE_BREAK.findall(c)) for c in flat)


@contextlib.contextmanager
def readable_csv(path: str | os.PathLike) -> Iterator[None]:
    """Read a user's CSV inside this block: a file that is not UTF-8 text (say, saved as cp1252 by a spreadsheet) or
    whose field passes the csv module's size limit is a one-line :class:`TltoolError` naming it."""
    import csv

    try:
        yield
    except UnicodeDecodeError as exc:
        raise TltoolError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8 CSV.") from None
    except csv.Error as exc:
        raise TltoolError(f"{path}: not a CSV file tltool can read ({exc}).") from None


def md_cell(text: object) -> str:
    """``text`` as one Markdown table cell: a ``|`` or a line break (in a class or file name) would end the cell or
    the row, shifting every column after it."""
    return str(text).replace("\r", " ").replace("\n", " ").replace("|", "\\|")


def shortened(text: str, keep: int = 40) -> str:
    """``text`` cut to ``keep`` characters and ``...`` for a message (a 5,000-character label echoed in full)."""
    return text if len(text) <= keep else f"{text[:keep]}..."
