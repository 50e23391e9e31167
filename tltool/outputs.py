"""Output folders tltool may write into: the ones it made itself, and no others.

Every ``--out`` folder is claimed through :func:`claim_output_dir`. A folder that does not exist, or is empty, is
created and marked with :data:`MARKER` (a small JSON naming what tltool keeps there). A folder that holds anything
else is refused unless its marker says tltool made it for the same kind of output. Replacing such a folder needs
``force``; nothing outside a marked folder is ever deleted or written into.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, staging is unguarded there
    fcntl = None

from .errors import TltoolError
from .utils import WRITE_HOOKS, is_temp_leftover, read_json, shown_name, write_json

MARKER = ".tltool-output.json"
CLAIM_SUFFIX = ".claim-"  # the marker is written under MARKER + this + a token, then linked to its name
# os.link's errors on a filesystem without hard links (FAT, some network shares, FUSE file systems without link);
# any other error is a real refusal
NO_HARD_LINKS = {errno.EPERM, errno.EMLINK, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
                 errno.EOPNOTSUPP}
FILLING = "filling"  # in the marker while a claimed empty folder is filled in place, one entry after another
FILLED_ENTRIES = "entries"  # beside it: the names being moved in, the only ones the next fill may clear
FINISHED = "finished"  # in a run folder's marker once the command that made it returned
WRITTEN = "files"  # in a finished output's marker: what tltool wrote there; anything else in it is the user's
MAX_NAMED = 3  # of the files a user added to an output, named in a refusal

# Folders written before the marker existed are recognised by the file that only tltool writes there.
LEGACY_SIGNATURES = (("run", "model.json"), ("run", "metrics.json"), ("features", "features.json"),
                     ("label-export", ".tltool/export.json"), ("dataset", "manifest.csv", "unlabeled"))


def output_kind(path: str | os.PathLike) -> str | None:
    """The kind of tltool output ``path`` holds (``run``, ``features``, ``export``, ...), or None if not tltool's."""
    path = Path(path)
    marker = path / MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            return str(read_json(marker).get("kind"))
        except (OSError, ValueError, AttributeError):
            return None
    for kind, *signature in LEGACY_SIGNATURES:
        if all((path / name).exists() for name in signature):
            return kind
    return None


def _is_empty_dir(path: Path) -> bool:
    """Nothing in it but, perhaps, the claim file a process killed while marking it left (:func:`_mark_in_place`)."""
    return (path.is_dir() and not path.is_symlink()
            and all(child.name.startswith(MARKER + CLAIM_SUFFIX) for child in path.iterdir()))


def holds_no_output(path: str | os.PathLike) -> bool:
    """``path`` is a folder tltool claimed that holds no finished output: nothing but its marker (a killed run,
    export or sample), or the part of an in-place fill a kill interrupted (its marker says ``filling`` and lists
    every other entry there). The next run may use it without ``--force``, since nothing would be lost."""
    path = Path(path)
    return _holds_only_marker(path) or _killed_fill_entries(path) is not None


def _holds_only_marker(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and all(child.name == MARKER for child in path.iterdir())
    except OSError:  # a name too long to look up, or unreadable: not a folder to reuse (the claim says why)
        return False


def _killed_fill_entries(path: Path) -> list[str] | None:
    """The entries a killed in-place fill left in ``path``, when its marker says ``filling`` and names every entry
    there but itself; None otherwise (a file a person put there since is not tltool's to clear)."""
    marker = path / MARKER
    try:
        if not path.is_dir() or path.is_symlink() or marker.is_symlink():
            return None
        content = read_json(marker)
        listed = content.get(FILLED_ENTRIES)
        if content.get(FILLING) is not True or not isinstance(listed, list):
            return None
        found = [child.name for child in path.iterdir() if child.name != MARKER]
    except (OSError, ValueError, AttributeError):
        return None
    return found if set(found) <= set(listed) else None


def mark_finished(path: str | os.PathLike) -> None:
    """Say in ``path``'s marker (a folder this process holds: a run) that the command writing it finished, and list
    what it wrote: an earlier output, replaced only with ``--force``, and never while it holds a file that is not on
    that list. What was there when this process took it and no earlier list named (:func:`hold_output_dir`) stays
    the user's. (Until then, each file is listed as tltool writes it: :func:`_list_written`.)"""
    marker, key = Path(path) / MARKER, os.path.realpath(path)
    users = _USERS_AT_HOLD.get(key, frozenset())
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        written = [name for name in written_entries(Path(path)) if name not in users]
        write_json(marker, {**read_json(marker), FINISHED: True, WRITTEN: written})


def _list_written(target: Path) -> None:
    """:func:`tltool.utils.atomic_path`'s hook: a file tltool has just put in place inside a folder this process
    holds is added to that folder's list at once, so a run killed at any point (before its first checkpoint, or
    between a checkpoint and the next) lists what tltool wrote there and nothing the user put there meanwhile."""
    if not _HELD or target.name.startswith(MARKER):
        return
    real = os.path.realpath(target)
    for key in [key for key in _HELD if real.startswith(key.rstrip(os.sep) + os.sep)]:
        marker = Path(key) / MARKER
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            content = read_json(marker)
            listed = content.get(WRITTEN) if isinstance(content.get(WRITTEN), list) else []
            name = Path(os.path.relpath(real, key)).as_posix()
            if name not in listed:
                write_json(marker, {**content, WRITTEN: sorted({*listed, name})})


WRITE_HOOKS.append(_list_written)


def written_entries(output: Path) -> list[str]:
    """What the output folder ``output`` holds, as its marker lists it: each file, link and empty folder, relative
    and '/'-separated (a folder ending in '/'), leaving out the marker, temporary files and the outputs claimed
    inside it (an export in a run: marked, with a list of their own)."""
    return sorted(name for name, nested in _entries(output) if nested is None)


def added_entries(output: str | os.PathLike) -> list[str] | None:
    """The files, links and empty folders in the output ``output`` (or in an output claimed inside it) that its
    marker does not list: the user's, relative to ``output``. None when ``output``'s marker lists nothing (an older
    tltool's output, or an unfinished one): what is the user's is not known."""
    output = Path(output)
    known = listed_entries(output)
    added: list[str] = []
    for name, nested in _entries(output):
        if nested is not None:
            added += [f"{name}{inner}" for inner in added_entries(nested) or ()]
        elif known is not None and name not in known:
            added.append(name)
    return None if known is None and not added else sorted(added)


def listed_entries(output: Path) -> set[str] | None:
    """What the marker of ``output`` lists as written by tltool; None where it lists nothing (older, unfinished)."""
    marker = output / MARKER
    try:
        listed = None if marker.is_symlink() else read_json(marker).get(WRITTEN)
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return {name for name in listed if isinstance(name, str)} if isinstance(listed, list) else None


def _entries(output: Path) -> Iterator[tuple[str, Path | None]]:
    """``(name, None)`` for each file, link and empty folder of the output folder ``output`` (see
    :func:`written_entries`); ``(name, path)`` for each output claimed inside it (a folder holding a marker)."""
    for here, dirs, files in os.walk(output):  # links are listed (among dirs or files), never followed
        folder = Path(here)
        prefix = folder.relative_to(output).as_posix() + "/" if folder != output else ""
        nested = {name for name in dirs if not (folder / name).is_symlink() and os.path.lexists(folder / name / MARKER)}
        links = [name for name in dirs if (folder / name).is_symlink()]
        dirs[:] = sorted(name for name in dirs if name not in nested and name not in links)
        yield from ((f"{prefix}{name}/", folder / name) for name in sorted(nested))
        for name in sorted(files + links):
            if not (name.startswith(MARKER) and folder == output) and not is_temp_leftover(name):
                yield f"{prefix}{name}", None
        if not files and not links and not dirs and not nested and folder != output:
            yield prefix, None  # an empty folder


def refuse_added_entries(path: str | os.PathLike, kind: str, force: bool, added: list[str] | None = None,
                         option: str = "--out", needs_force: bool = True) -> None:
    """Refuse to replace the earlier ``kind`` output ``path`` while it holds files tltool did not write there
    (``added``, else :func:`added_entries`), ``force`` or not: replacing it would delete them. ``needs_force``:
    the output is replaced only with ``--force`` once they are gone (the refusal says what to run then)."""
    added = added_entries(path) if added is None else added
    if not added:
        return
    named = ", ".join(added[:MAX_NAMED]) + (f" and {len(added) - MAX_NAMED} more" if len(added) > MAX_NAMED else "")
    then = "run again with --force" if force else "pass --force to replace it" if needs_force else "run again"
    raise TltoolError(f"{option} {path}: holds an earlier tltool {kind} and {len(added)} file(s) tltool did not write "
                      f"there ({named}), which replacing it would delete; tltool never does, --force or not: move "
                      f"them out of it and {then}, or choose another folder.")


def finished_state(path: str | os.PathLike) -> bool | None:
    """What ``path``'s marker says of the command that wrote it: True (it returned), False (it had not, when the
    marker was written at the claim), None (no marker, or one from a tltool that did not say so at the claim)."""
    marker = Path(path) / MARKER
    try:
        state = None if marker.is_symlink() else read_json(marker).get(FINISHED)
    except (OSError, ValueError, AttributeError):
        return None
    return state if isinstance(state, bool) else None


def _marker(kind: str) -> dict:
    marker = {"kind": kind, "tool": "tltool", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    # a run says from its claim that it is not finished: one killed after its metrics.json is then told apart from
    # a finished run of a tltool that wrote no such word (whose metrics.json is all that says it finished)
    return {**marker, FINISHED: False} if kind == "run" else marker


def mark_output_dir(path: Path, kind: str) -> None:
    write_json(path / MARKER, _marker(kind))


def claim_output_dir(path: str | os.PathLike, kind: str, *, reuse: bool = False, force: bool = False,
                     option: str = "--out") -> Path:
    """Create or reuse ``path`` as tltool's ``kind`` folder; refuse a folder that tltool did not make.

    ``reuse``: an earlier folder of the same kind is used as it is (a resumable cache). Otherwise such a folder
    needs ``force``. A folder tltool did not make is never used, ``force`` or not.
    """
    given = Path(path)
    path = Path(os.path.abspath(given))  # `--out .` has no name to build a folder beside; links are not followed
    if check_output_dir(path, kind, reuse=reuse, force=force, option=option):
        return given
    if not _create_marked(path, kind):  # another process (a shard, a worker) made it first: claim it as it is
        return claim_output_dir(given, kind, reuse=reuse, force=force, option=option)
    return given


def check_output_name(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse a name the filesystem cannot look up (too long): Python 3.11 raises OSError from ``exists()``."""
    try:
        os.lstat(os.path.join(path, "x"))
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
            raise TltoolError(f"{option} {shown_name(path)}: cannot be used ({exc.strerror}); choose another "
                              "folder.") from None


def check_output_dir(path: str | os.PathLike, kind: str, *, reuse: bool = False, force: bool = False,
                     option: str = "--out") -> bool:
    """The refusals of :func:`claim_output_dir`, creating nothing, so a command can refuse before its work; True
    when ``path`` is an earlier folder of ``kind`` that may be used."""
    path = Path(path)
    found = check_output_place(path, option)
    if found is None:
        return False
    if found != kind:
        raise TltoolError(f"{option} {path}: is a tltool {found} folder, and tltool never writes into or replaces such "
                          f"a folder; choose a new or empty folder.")
    added = added_entries(path)
    refuse_added_entries(path, kind, force, added=added or [], option=option, needs_force=not reuse)
    if not (reuse or force):
        unlisted = " (--force deletes it whole, with any file added to it)" if added is None else ""
        raise TltoolError(f"{option} {path}: already holds an earlier tltool {kind}; choose another folder, or "
                          f"pass --force to replace it{unlisted}.")
    return True


def check_output_place(path: str | os.PathLike, option: str = "--out") -> str | None:
    """The refusals of :func:`check_output_dir` that hold for every kind of output (a link, a file, a folder tltool
    did not make), so that ``tltool run --check`` can name them before a recipe's first step; the kind of the
    earlier tltool output ``path`` holds, None when it is free (absent or empty)."""
    path = Path(path)
    check_output_name(path, option)
    if path.is_symlink():  # said so: "is not a folder" read as false for a link to a folder
        target = shown_name(os.path.join(path.parent, os.readlink(path)))
        raise TltoolError(f"{option} {path}: is a link to {target}; a link is not a folder tltool writes through: "
                          f"give {target} itself, or choose a new folder.")
    if path.exists() and not path.is_dir():
        raise TltoolError(f"{option} {path}: exists and is not a folder; choose a new folder.")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise TltoolError(f"{option} {path}: {blocking} is a file, not a folder; choose another place.")
    if not path.exists():
        _refuse_unwritable(path, next((p for p in path.parents if p.exists()), None), option)
        return None
    if _is_empty_dir(path):
        return None
    found = output_kind(path)
    if found is None:
        raise TltoolError(f"{option} {path}: is a folder tltool did not make, and tltool never writes into or "
                          "replaces such a folder; choose a new or empty folder.")
    return found


def _refuse_unwritable(path: Path, parent: Path | None, option: str) -> None:
    """A new folder where it cannot be made is refused before the command's work: a probe extracted and fitted,
    then named a hidden claim folder ("Permission denied") with advice about --resume."""
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise TltoolError(f"{option} {path}: cannot be made: {shown_name(str(parent))} is not a folder you can write "
                          "into; choose another place.")


def emptied_output_dir(path: Path, kind: str, hold: bool = False) -> Path:
    """``path``, a claimed tltool folder of ``kind``, emptied for a new output (``--force``, or an unfinished
    earlier one): no file of the earlier output may pass for this one's (a checkpoint resumed on another split, an
    export of another model). It is renamed aside, a new marked folder takes its place, then the old is removed.
    ``hold``: the new folder is held (:func:`hold_output_dir`) before the old one's removal, which may take seconds;
    unheld meanwhile, another command took it."""
    if output_kind(path) == kind:
        _remove_leftovers(path, kind)  # what a killed replacement left beside it
    if _holds_only_marker(path):
        return path
    if output_kind(path) != kind:  # claim_output_dir was skipped: never delete
        raise TltoolError(f"{path}: is not a tltool {kind} folder; refusing to replace it.")
    refuse_added_entries(path, kind, force=True)
    old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
    os.rename(path, old)
    if not _create_marked(path, kind):
        raise TltoolError(f"{path}: another process created it while tltool was replacing it; run again.")
    if hold:
        hold_output_dir(path)
    _remove_marked(old)
    return path


def _remove_marked(folder: Path) -> None:
    """Remove the marked folder ``folder``, its marker last: a kill halfway leaves it still known for tltool's, so
    the next replacement removes the rest (:func:`_remove_leftovers`); rmtree's order left it unmarked for good.
    What is gone already was removed by another command clearing the same leftover: no error."""
    with contextlib.suppress(FileNotFoundError):
        for child in list(folder.iterdir()):
            if child.name != MARKER:
                _remove_entry(child)
    shutil.rmtree(folder, onerror=_gone_already)


def _remove_entry(entry: Path) -> None:
    """One entry of a tltool folder removed: a folder with all it holds, anything else (a link too) unlinked."""
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, onerror=_gone_already)
    else:
        entry.unlink(missing_ok=True)


def _gone_already(function: object, path: str, exc_info: tuple) -> None:
    """rmtree's error handler: what another process removed first is no error."""
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


def _create_marked(path: Path, kind: str) -> bool:
    """Make ``path`` appear with its marker in one step (a folder built beside it, then renamed onto it), so a
    process starting at the same moment never sees it unmarked. False when another process made it first.

    An empty folder that is there already is marked in place (the marker created exclusively): renamed over, it
    would lose its mode and group, and a shell inside it (``--out .``) would sit in a deleted folder."""
    if path.is_dir() and not path.is_symlink():
        marked = _mark_in_place(path, kind)
        if marked is not None:
            return marked
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.claim-{secrets.token_hex(4)}")
    staging.mkdir()
    try:
        mark_output_dir(staging, kind)
        os.rename(staging, path)  # an absent or empty folder is replaced; a folder with files in it is not
    except OSError:
        if not path.is_dir():
            raise
        return False
    finally:  # not renamed (another process was first, Ctrl-C between the two): ours alone, removed; a Ctrl-C
        if os.path.lexists(staging):  # left it beside the folder for good
            shutil.rmtree(staging, ignore_errors=True)
    return True


def _mark_in_place(path: Path, kind: str) -> bool | None:
    """Give the empty folder ``path`` its whole marker in one step (written in it under a name of its own, then
    hard-linked to the marker's name, which fails if a marker is there): True, False when another process marked it
    first, None where the filesystem has no hard links. Written beside it before, the link crossed filesystems for
    an empty mount point (``--out /out`` in a container), and needed a parent tltool could write into."""
    written = path / f"{MARKER}{CLAIM_SUFFIX}{secrets.token_hex(4)}"
    try:
        write_json(written, _marker(kind))
        os.link(written, path / MARKER)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:  # not writable (EACCES, EROFS): a rename over it would replace it
            raise TltoolError(f"{shown_name(path)}: cannot write into it ({exc.strerror}); choose a folder you can "
                              "write into.") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise TltoolError(f"{shown_name(path)}: cannot write into it; choose a folder you can write into.") from None
        return None
    finally:
        with contextlib.suppress(OSError):
            written.unlink(missing_ok=True)


def staging_dir(target: Path, kind: str) -> Path:
    """A new, marked ``.NAME.partial`` folder beside ``target`` to build an output in before it replaces ``target``.

    A leftover of an interrupted run is removed only if its marker says it is tltool's ``kind`` (never a link), and
    never while another process holds it (see :func:`staged_output`).
    """
    staging, lock = _new_staging(target, kind)
    _unlock(lock)
    return staging


def _new_staging(target: Path, kind: str) -> tuple[Path, int | None]:
    """:func:`staging_dir`, returned locked. The lock is taken before the marker is read or written, so another
    process finds a held lock (in use: refused) while a folder is made, filled or removed, never a leftover."""
    target = Path(os.path.abspath(target))  # `--out .` has no name to build a folder beside
    staging = target.with_name(f".{target.name}.partial")
    busy = TltoolError(f"{shown_name(target)}: another tltool command is writing it now ({staging.name} is in use); "
                       f"wait for it to finish, or write elsewhere.")
    not_ours = TltoolError(f"{staging}: exists and is not tltool's; move it away and run again.")
    if staging.is_symlink() or (staging.exists() and not _remove_staging(staging, kind, busy, unlocked=True)):
        raise not_ours
    try:
        staging.mkdir(parents=True)
    except FileExistsError:  # made by another process since the check above
        raise busy from None
    lock = _lock(staging, busy)
    try:
        mark_output_dir(staging, kind)
    except BaseException:
        _unlock(lock)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging, lock


_STAGING_NAME = re.compile(r"\..+\.partial")  # the name _new_staging gives: "." + the target's name + ".partial"


def remove_killed_staging(folder: str | os.PathLike, kind: str | None = None) -> list[Path]:
    """Remove the ``.NAME.partial`` folders in ``folder`` that a killed command left (a SIGKILL skips
    :func:`staged_output`'s clean-up: a killed export's 14-30 MB stayed until the next export to that same name).
    Only a folder whose marker says it is tltool's (``kind``'s, if given; never a link), and only when its lock is
    taken here: a live command holds it from before its marker is written until it is gone. Where there are no
    locks (Windows, some network file systems) a live one cannot be told from a dead one: none is removed. Returns
    what was removed."""
    removed = []
    with contextlib.suppress(OSError):  # absent or unreadable: nothing of tltool's to clear
        for staging in sorted(Path(folder).iterdir()):
            if not _STAGING_NAME.fullmatch(staging.name) or not _marked(staging, kind):
                continue
            with contextlib.suppress(TltoolError):  # a live command is building (or removing) it: its own
                if _remove_staging(staging, kind, _in_use(staging)):
                    removed.append(staging)
    return removed


def _remove_staging(staging: Path, kind: str | None, busy: TltoolError, unlocked: bool = False) -> bool:
    """Remove a staging folder a dead command left, under its lock (``busy`` is raised while a live command holds
    it), its marker last: a kill halfway leaves it still known for tltool's. False, with nothing removed, when it is
    not marked as tltool's (``kind``'s), or where folders cannot be locked (a live one looks dead there) unless
    ``unlocked``: the next staging of the same target, whose name it takes, removes it all the same."""
    lock = _lock(staging, busy)
    try:
        if (lock is None and not unlocked) or not _marked(staging, kind):  # marked under the lock: its command died
            return False
        _remove_marked(staging)
        return True
    finally:
        _unlock(lock)


def _marked(folder: Path, kind: str | None) -> bool:
    """``folder`` (not a link) holds tltool's own marker (not a link either), of ``kind`` if given: a folder
    without one, whatever files it holds, is not proven tltool's."""
    marker = folder / MARKER
    try:
        if folder.is_symlink() or not folder.is_dir() or marker.is_symlink() or not marker.is_file():
            return False
        content = read_json(marker)
        return content.get("tool") == "tltool" and (kind is None or content.get("kind") == kind)
    except (OSError, ValueError, AttributeError):
        return False


def _lock(folder: Path, busy: TltoolError) -> int | None:
    """An exclusive advisory lock on ``folder``: its descriptor, released by :func:`_unlock` or at exit. ``busy`` is
    raised when another process holds it, or when ``folder`` was removed or replaced meanwhile (the lock would guard
    a folder no longer there); None where there are no such locks (Windows, and network file systems that refuse
    them)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:  # removed by the process that holds it
        raise busy from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held, now = os.fstat(fd), os.lstat(folder)
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            return fd
        failure: TltoolError | None = busy
    except (BlockingIOError, FileNotFoundError):  # held, or removed by the process that held it
        failure = busy
    except OSError:  # NFS wants a file open for writing, SMB has no locks on folders: unguarded, as before locks
        failure = None
    os.close(fd)
    if failure is not None:
        raise failure from None
    return None


def _unlock(lock: int | None) -> None:
    if lock is not None:
        os.close(lock)


# Folders this process is writing for longer than a moment (runs): real path -> (locked descriptor, dev, inode)
_HELD: dict[str, tuple[int, int, int]] = {}
# what was the user's in each held folder when this process took it (a --resume of a run the user added to)
_USERS_AT_HOLD: dict[str, frozenset[str]] = {}
_SCOPES = threading.local()  # per thread: the folders each open hold_scope() took (threads never free others')


def _in_use(path: str | os.PathLike) -> TltoolError:
    return TltoolError(f"{shown_name(path)}: another tltool command is writing it now; wait for it to finish, or "
                       "choose another folder.")


def hold_output_dir(path: str | os.PathLike) -> None:
    """Lock the folder ``path``, which this process is about to write, against every other tltool command until
    :func:`release_output_dirs` (or the process's end: a killed command holds nothing). Refuses a folder another
    process holds. Held already by this process, it stays held; a folder since replaced at that name is held anew."""
    key = os.path.realpath(path)  # `--resume runs/latest`, a link: its folder is what is locked
    now = os.stat(key)
    held = _HELD.pop(key, None)
    if held is not None:
        if held[1:] == (now.st_dev, now.st_ino):
            _HELD[key] = held
            return
        os.close(held[0])
    lock = _lock(Path(key), _in_use(path))
    if lock is not None:
        _HELD[key] = (lock, now.st_dev, now.st_ino)
    _USERS_AT_HOLD[key] = frozenset(added_entries(key) or ())
    # in the scope even unlocked (Windows, NFS, SMB): the scope's end marks it finished, and a run's marker says
    # "finished": false from its claim, so a run left out of it was replaced without --force once done
    for scope in getattr(_SCOPES, "stack", []):
        scope.add(key)


def check_not_in_use(path: str | os.PathLike) -> None:
    """Refuse now, before a command's work, a folder that another process holds (see :func:`hold_output_dir`)."""
    key = os.path.realpath(path)
    if key in _HELD or not os.path.isdir(key):
        return
    _unlock(_lock(Path(key), _in_use(path)))


def release_output_dirs(only: Iterable[str] | None = None) -> None:
    """Let other commands have the folders this process holds (``only`` those, as :func:`hold_scope` gives them)."""
    for key in list(_HELD) if only is None else [key for key in only if key in _HELD]:
        os.close(_HELD.pop(key)[0])
    for key in list(_USERS_AT_HOLD) if only is None else only:
        _USERS_AT_HOLD.pop(key, None)


def held_output_dirs() -> frozenset[str]:
    return frozenset(_HELD)


@contextlib.contextmanager
def hold_scope() -> Iterator[set[str]]:
    """The set of folders this thread holds anew inside the block (a run a library call makes, for it to mark and
    let go of): another thread's, or ones held before the block, are not in it."""
    stack = _SCOPES.__dict__.setdefault("stack", [])
    taken: set[str] = set()
    stack.append(taken)
    try:
        yield taken
    finally:
        stack.remove(taken)


@contextlib.contextmanager
def removed_if_unused(path: str | os.PathLike, made: bool) -> Iterator[None]:
    """Remove ``path`` when the block fails or is interrupted and leaves it holding nothing but its marker, if this
    command made it (``made``; a user's empty folder it claimed stays): Ctrl-C during an export's conversion left
    its new folder behind, empty."""
    try:
        yield
    except BaseException:
        if made and _holds_only_marker(Path(path)):
            shutil.rmtree(path, ignore_errors=True)
        raise


@contextlib.contextmanager
def staged_output(target: Path, kind: str) -> Iterator[Path]:
    """A staging folder (:func:`staging_dir`) to build ``target``'s new content in: moved onto ``target`` when the
    block ends, removed when it fails or is interrupted, so nothing half-built is left beside the folder. It stays
    locked till then: a second command writing the same output is refused instead of removing this one's work."""
    staging, lock = _new_staging(target, kind)
    try:
        yield staging
        replace_output_dir(staging, target, kind)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # gone already once it has replaced the target
        raise
    finally:
        _unlock(lock)


def replace_output_dir(staging: Path, target: Path, kind: str) -> None:
    """Move the finished folder ``staging`` onto ``target``: a claimed folder of ``kind``, or an absent one.

    A folder with nothing in it but its marker (just claimed: new, or a user's empty folder) is filled in place, so
    it keeps its mode, group and inode (a shell inside it stays in it). An earlier output is renamed aside first (a
    name of this call's own) and removed only after the new one is in place, so a kill leaves one of the two whole.
    """
    write_json(staging / MARKER, {**_marker(kind), WRITTEN: written_entries(staging)})
    target = Path(os.path.abspath(target))
    if holds_no_output(target):
        _fill_in_place(staging, target, kind)
        return
    if not (target.exists() or target.is_symlink()):
        os.rename(staging, target)
        return
    if target.is_symlink() or output_kind(target) != kind:  # claim_output_dir was skipped: never delete
        raise TltoolError(f"{target}: is not a tltool {kind} folder; refusing to replace it.")
    refuse_added_entries(target, kind, force=True)  # added while this one was built
    _remove_leftovers(target, kind)
    old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
    os.rename(target, old)
    os.rename(staging, target)
    _remove_marked(old)


def _fill_in_place(staging: Path, target: Path, kind: str) -> None:
    """Move ``staging``'s entries into the claimed ``target`` one by one, under a marker that says ``filling`` and
    names them, until the finished output's marker replaces it last: a kill in between leaves a folder
    :func:`holds_no_output` knows for unfinished, never one that passes for a whole output. The next fill clears
    only the entries that marker names."""
    for name in _killed_fill_entries(target) or ():  # what a killed fill left
        _remove_entry(target / name)
    entries = sorted(child.name for child in staging.iterdir() if child.name != MARKER)
    write_json(target / MARKER, {**_marker(kind), FILLING: True, FILLED_ENTRIES: entries})
    for name in entries:
        os.replace(staging / name, target / name)
    os.replace(staging / MARKER, target / MARKER)
    staging.rmdir()


def _remove_leftovers(target: Path, kind: str) -> None:
    """Earlier outputs a killed replacement left renamed aside (``.NAME.old-TOKEN``, or ``.NAME.old`` of an older
    tltool): removed when their marker says they are tltool's ``kind``; anything else of that name is left alone."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.old(-[0-9a-f]{{8}})?")
    for sibling in target.parent.iterdir():
        if pattern.fullmatch(sibling.name) and not sibling.is_symlink() and output_kind(sibling) == kind:
            try:
                lock = _lock(sibling, _in_use(sibling))
            except TltoolError:  # another command is removing it (or held it when it was its run): left to it
                continue
            try:
                _remove_marked(sibling)
            finally:
                _unlock(lock)
