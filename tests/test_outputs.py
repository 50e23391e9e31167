"""tltool writes only into folders it made: every --out is claimed, never a user's folder (issue 16, point 1)."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SAMPLE
from tltool.cli import main
from tltool.errors import TltoolError
from tltool.outputs import (MARKER, claim_output_dir, output_kind, release_output_dirs, replace_output_dir,
                            staging_dir)


def _users_folder(tmp_path):
    folder = tmp_path / "projects"
    (folder / "thesis").mkdir(parents=True)
    (folder / "thesis" / "chapter1.tex").write_text("years of work")
    return folder


def test_a_users_folder_is_refused_even_with_force(tmp_path):
    folder = _users_folder(tmp_path)
    for force in (False, True):
        with pytest.raises(TltoolError, match="did not make"):
            claim_output_dir(folder, "export", force=force)
    assert (folder / "thesis" / "chapter1.tex").read_text() == "years of work"
    assert not (folder / MARKER).exists()


def test_new_and_empty_folders_are_claimed_and_marked(tmp_path):
    new = claim_output_dir(tmp_path / "a" / "b", "run")
    empty = tmp_path / "empty"
    empty.mkdir()
    inode = empty.stat().st_ino
    claim_output_dir(empty, "features")
    assert output_kind(new) == "run" and output_kind(empty) == "features"
    # marked in place, not replaced: a shell inside it would otherwise sit in a deleted folder
    assert empty.stat().st_ino == inode and sorted(p.name for p in tmp_path.iterdir()) == ["a", "empty"]
    with pytest.raises(TltoolError, match="earlier tltool features"):
        claim_output_dir(empty, "features")  # a second claim sees the marker


@pytest.mark.parametrize("error", ["EACCES", "EROFS"])
def test_an_empty_folder_tltool_cannot_write_into_is_refused_not_replaced(tmp_path, monkeypatch, error):
    """Marking it failed (a read-only folder of a user, or of another user), which was taken for a filesystem without
    hard links: a new folder was renamed over it (mode, owner and inode lost). Root writes anywhere, so the error is
    injected."""
    import errno
    import os

    from tltool import outputs

    def refused(src, dst):
        raise OSError(getattr(errno, error), os.strerror(getattr(errno, error)))

    empty = tmp_path / "empty"
    empty.mkdir(mode=0o555)
    inode = empty.stat().st_ino
    monkeypatch.setattr(outputs.os, "link", refused)
    with pytest.raises(TltoolError, match="cannot write into it"):
        claim_output_dir(empty, "features")
    assert empty.stat().st_ino == inode and sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    monkeypatch.setattr(outputs.os, "link", lambda src, dst: (_ for _ in ()).throw(OSError(errno.EPERM, "no links")))
    empty.chmod(0o755)
    claim_output_dir(empty, "features")  # a filesystem without hard links: the folder is replaced by a marked one
    assert output_kind(empty) == "features" and sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    monkeypatch.undo()
    mount = tmp_path / "mount"  # the marker is written inside the folder: no link across filesystems, no write
    mount.mkdir()                # beside it; a claim file a killed claim left does not make the folder a user's
    (mount / f"{MARKER}.claim-0123abcd").write_text("{")
    mount.parent.chmod(0o555)
    try:
        claim_output_dir(mount, "features")
    finally:
        mount.parent.chmod(0o755)
    assert output_kind(mount) == "features"


def test_out_dot_claims_the_current_empty_folder(tmp_path, monkeypatch):
    """Before: `--out .` (tltool data make-sample .) raised ValueError: PosixPath('.') has an empty name."""
    from tltool.sample import make_shapes_dataset

    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    make_shapes_dataset(".")
    assert output_kind(tmp_path / "here") == "sample" and len(list((tmp_path / "here").glob("*/*.jpg"))) > 10


def test_an_earlier_output_needs_force_unless_reusable_and_never_another_kind(tmp_path):
    out = claim_output_dir(tmp_path / "out", "export")
    (out / "model.keras").write_text("x")
    with pytest.raises(TltoolError, match="--force"):
        claim_output_dir(out, "export")
    assert claim_output_dir(out, "export", force=True) == out
    assert claim_output_dir(out, "export", reuse=True) == out
    with pytest.raises(TltoolError, match="tltool export folder"):
        claim_output_dir(out, "features", force=True)


def test_a_file_or_a_link_is_not_an_output_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    for name in ("f", "link"):
        with pytest.raises(TltoolError, match="not a folder"):
            claim_output_dir(tmp_path / name, "run")


def test_a_link_to_a_folder_is_refused_as_a_link_naming_where_it_points(tmp_path):
    """`export --out linkdir`, a link to an empty folder, said "exists and is not a folder", which `ls` contradicts.
    Now the refusal says it is a link, and which folder to give instead; nothing is written on either side."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real", target_is_directory=True)
    with pytest.raises(TltoolError, match=r"link: is a link to .*real; a link is not a folder tltool writes through: "
                                          r"give .*real itself"):
        claim_output_dir(tmp_path / "link", "export")
    assert list((tmp_path / "real").iterdir()) == [] and sorted(os.listdir(tmp_path)) == ["link", "real"]
    claim_output_dir(tmp_path / "real", "export")  # the folder itself is taken


def test_replace_never_deletes_a_folder_of_another_kind(tmp_path):
    folder = _users_folder(tmp_path)
    staging = staging_dir(tmp_path / "new", "digits")
    with pytest.raises(TltoolError, match="refusing"):
        replace_output_dir(staging, folder, "digits")
    assert (folder / "thesis" / "chapter1.tex").exists()
    replace_output_dir(staging, tmp_path / "new", "digits")
    assert output_kind(tmp_path / "new") == "digits" and not staging.exists()


def test_a_leftover_staging_folder_not_made_by_tltool_is_kept(tmp_path):
    leftover = tmp_path / ".new.partial"
    leftover.mkdir()
    (leftover / "mine.txt").write_text("keep")
    with pytest.raises(TltoolError, match="not tltool's"):
        staging_dir(tmp_path / "new", "digits")
    assert (leftover / "mine.txt").read_text() == "keep"


def test_a_staged_output_fills_a_claimed_empty_folder_in_place_and_leaves_nothing_when_it_fails(tmp_path):
    """Renamed over, a user's empty --out lost its mode (700 became 755) and inode; a failure left a hidden
    staging folder with a whole model in it beside the user's folder."""
    import os
    import stat

    from tltool.outputs import staged_output

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    inode = mine.stat().st_ino
    claim_output_dir(mine, "export")
    with pytest.raises(OSError, match="disk full"):
        with staged_output(mine, "export") as staging:
            (staging / "model.tflite").write_bytes(b"half")
            raise OSError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"] and sorted(os.listdir(mine)) == [MARKER]
    with staged_output(mine, "export") as staging:
        (staging / "model.tflite").write_bytes(b"whole")
    assert (mine / "model.tflite").read_bytes() == b"whole" and output_kind(mine) == "export"
    assert mine.stat().st_ino == inode and stat.S_IMODE(mine.stat().st_mode) == 0o700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_replacing_leaves_a_users_dot_old_folder_alone_and_refuses_a_linked_staging_name(tmp_path):
    """A user's `.out.old` made the replacement fail after all the work (ENOTEMPTY), or was deleted if empty; a
    `.NAME.partial` link to a tltool folder was an rmtree traceback."""
    out = claim_output_dir(tmp_path / "out", "sample")
    (out / "a.jpg").write_text("earlier")
    for name, content in ((".out.old", "mine"), (".out.old-1", "")):
        (tmp_path / name).mkdir()
        if content:
            (tmp_path / name / "notes.txt").write_text(content)
    staging = staging_dir(out, "sample")
    (staging / "b.jpg").write_text("new")
    replace_output_dir(staging, out, "sample")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.jpg"]
    assert (tmp_path / ".out.old" / "notes.txt").read_text() == "mine" and (tmp_path / ".out.old-1").is_dir()
    elsewhere = claim_output_dir(tmp_path / "elsewhere", "sample")
    (tmp_path / ".out.partial").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(TltoolError, match="not tltool's"):
        staging_dir(out, "sample")
    assert output_kind(elsewhere) == "sample"


def test_a_killed_replacements_leftover_is_removed_by_the_next_and_a_failed_fill_leaves_no_staging(tmp_path,
                                                                                                     monkeypatch):
    """A kill between renaming the earlier output aside and removing it left a full copy for good; a move that
    failed halfway left the staging folder beside the target."""
    from tltool import outputs
    from tltool.outputs import staged_output

    out = claim_output_dir(tmp_path / "out", "sample")
    (out / "a.jpg").write_text("earlier")
    leftover = claim_output_dir(tmp_path / ".out.old-0123abcd", "sample")
    (leftover / "a.jpg").write_text("killed mid-replacement")
    other = claim_output_dir(tmp_path / ".out.old-89abcdef", "export")  # another kind: not this output's
    with staged_output(out, "sample") as staging:
        (staging / "b.jpg").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old-89abcdef", "out"] and other.is_dir()
    fresh = claim_output_dir(tmp_path / "fresh", "sample")

    def fail(src, dst):
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        with staged_output(fresh, "sample") as staging:
            (staging / "c.jpg").write_text("new")
            monkeypatch.setattr(outputs.os, "replace", fail)  # the move onto the target fails
    monkeypatch.undo()
    assert not (tmp_path / ".fresh.partial").exists()


def test_a_killed_forced_replacement_of_a_run_leaves_nothing_for_good(tmp_path, monkeypatch):
    """--force renamed the earlier run aside (.NAME.old-TOKEN) and removed it with rmtree, in no set order: a kill
    halfway could leave it unmarked, so never removed, and the replacement of a run never looked for leftovers."""
    from tltool import outputs
    from tltool.runs import new_run_dir

    class Killed(BaseException):
        pass

    run = new_run_dir("linear", out=tmp_path / "run")
    (run / "metrics.json").write_text("earlier")
    (run / "plots").mkdir()
    (run / "plots" / "a.png").write_text("earlier")

    def killed(path, *args, **kwargs):
        raise Killed

    monkeypatch.setattr(outputs.shutil, "rmtree", killed)
    with pytest.raises(Killed):
        new_run_dir("linear", out=run, force=True)
    monkeypatch.undo()
    (old,) = tmp_path.glob(".run.old-*")
    assert output_kind(old) == "run"  # its marker goes last: still known for tltool's
    assert new_run_dir("linear", out=run, force=True) == run and not list(tmp_path.glob(".run.old-*"))


def test_a_fill_in_place_killed_halfway_is_known_for_unfinished_and_the_next_one_clears_it(tmp_path, monkeypatch):
    """Filling a claimed empty folder moves its entries one by one: a kill in between left a marked folder with part
    of an output in it, which passed for a whole one (an earlier output, refused without --force)."""
    from tltool import outputs
    from tltool.outputs import holds_no_output, staged_output

    class Killed(BaseException):
        pass

    mine = claim_output_dir(tmp_path / "mine", "export")
    moved = []
    replace = outputs.os.replace

    def killed_after_one(src, dst):
        if moved:
            raise Killed
        moved.append(Path(dst).name)
        replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", killed_after_one)
    with pytest.raises(Killed):
        with staged_output(mine, "export") as staging:
            for name in ("labels.txt", "model.tflite", "README.md"):
                (staging / name).write_text("first")
            (staging / "client").mkdir()
            (staging / "client" / "x.py").write_text("first")
    monkeypatch.undo()
    assert len(moved) == 1 and (mine / moved[0]).exists()  # part of an output, under a marker that says so
    assert output_kind(mine) == "export" and holds_no_output(mine)
    (mine / "notes.txt").write_text("a person's")  # put there after the kill: not tltool's to clear
    assert not holds_no_output(mine)
    with pytest.raises(TltoolError, match="already holds an earlier tltool export"):
        claim_output_dir(mine, "export", reuse=holds_no_output(mine))
    (mine / "notes.txt").unlink()
    assert "already holds" not in str(claim_output_dir(mine, "export", reuse=holds_no_output(mine)))
    with staged_output(mine, "export") as staging:
        (staging / "model.tflite").write_text("second")
        (staging / "client").mkdir()
    assert sorted(p.name for p in mine.iterdir()) == sorted([MARKER, "client", "model.tflite"])
    assert (mine / "model.tflite").read_text() == "second" and not holds_no_output(mine)
    assert output_kind(mine) == "export" and "filling" not in (mine / MARKER).read_text()
    with pytest.raises(TltoolError, match="already holds an earlier tltool export"):  # a whole one needs --force
        claim_output_dir(mine, "export")


def test_digits_into_dot_and_after_a_kill(tmp_path, monkeypatch):
    """`data digits .` was a ValueError (Path('.') has no name); a folder a killed run left holding only its
    marker needed --force."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert CliRunner().invoke(main, ["data", "digits", "."]).exit_code == 0
    assert len(list((tmp_path / "here").glob("*/*/*.png"))) == 1797
    killed = claim_output_dir(tmp_path / "killed", "digits")
    result = CliRunner().invoke(main, ["data", "digits", str(killed)])
    assert result.exit_code == 0, result.output


def test_an_out_name_too_long_for_the_filesystem_is_a_clear_error(tmp_path):
    """Path.exists() raises ENAMETOOLONG on Python 3.11: every --out was a traceback for such a name."""
    from tltool.runs import check_run_dir

    long_name = tmp_path / ("a" * 300)
    for attempt in (lambda: claim_output_dir(long_name, "export"), lambda: check_run_dir(long_name)):
        with pytest.raises(TltoolError, match=r"cannot be used \(File name too long\)"):
            attempt()
    result = CliRunner().invoke(main, ["data", "make-sample", str(long_name)])
    assert result.exit_code == 2 and "File name too long" in result.output


def test_digits_force_does_not_replace_a_users_folder(tmp_path):
    folder = _users_folder(tmp_path)
    result = CliRunner().invoke(main, ["data", "digits", str(folder), "--force"])
    assert result.exit_code == 2 and "did not make" in result.output
    assert (folder / "thesis" / "chapter1.tex").read_text() == "years of work"
    out = tmp_path / "digits"
    assert CliRunner().invoke(main, ["data", "digits", str(out)]).exit_code == 0
    again = CliRunner().invoke(main, ["data", "digits", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
    assert CliRunner().invoke(main, ["data", "digits", str(out), "--force"]).exit_code == 0
    assert len(list(out.glob("*/*/*.png"))) == 1797


def test_a_replaced_run_or_export_keeps_no_file_of_the_earlier_one(tmp_path):
    """--force (or an unfinished earlier run) gives a new run an empty folder: a stale checkpoint, refit or export
    of the old run could otherwise be resumed or shipped as the new one's (a refit once resumed the old model)."""
    from tltool.outputs import emptied_output_dir, mark_finished
    from tltool.runs import new_run_dir

    run = new_run_dir("finetune", out=tmp_path / "run")
    for name in ("metrics.json", "state.json", "checkpoint-epoch0040.keras", "refit/state.json", "export/tflite/x"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("old")
    mark_finished(run)  # its command returned
    with pytest.raises(TltoolError, match="--force"):
        new_run_dir("finetune", out=run)
    assert new_run_dir("finetune", out=run, force=True) == run
    assert sorted(p.name for p in run.iterdir()) == [MARKER] and output_kind(run) == "run"
    (run / "split.csv").write_text("unfinished, killed before its first epoch")
    assert new_run_dir("finetune", out=run) == run and sorted(p.name for p in run.iterdir()) == [MARKER]
    assert not list(tmp_path.glob(".run.old-*"))  # the old folder is gone once the new one is in place
    folder = _users_folder(tmp_path)
    with pytest.raises(TltoolError, match="refusing"):
        emptied_output_dir(folder, "run")
    assert (folder / "thesis" / "chapter1.tex").read_text() == "years of work"


@pytest.mark.parametrize("left", ["state.json", "refit/state.json"])
def test_an_unfinished_run_that_can_be_resumed_is_not_replaced_without_force(tmp_path, left):
    """A killed fine-tune's folder (no metrics.json yet) holds checkpoints `--resume` goes on from: another
    command given it as --out replaced it silently, losing the training done so far."""
    from tltool.runs import check_run_dir, new_run_dir

    run = new_run_dir("finetune", out=tmp_path / "run")
    for name in (left, "checkpoint-epoch0007.keras", "split.csv"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("seven epochs of training")
    for attempt in (check_run_dir, lambda out: new_run_dir("linear", out=out)):
        with pytest.raises(TltoolError, match="--resume") as refused:
            attempt(run)
        assert "--force" in str(refused.value)
    assert (run / "checkpoint-epoch0007.keras").read_text() == "seven epochs of training"
    assert new_run_dir("linear", out=run, force=True) == run and sorted(p.name for p in run.iterdir()) == [MARKER]


def test_a_run_another_command_is_writing_is_refused_even_with_force_and_freed_when_it_ends(tmp_path):
    """A fine-tune in its first epoch (no metrics.json or state.json yet) looked abandoned: a second command given the
    same --out renamed it aside, deleted it and wrote its own run, into which the first then went on writing."""
    import subprocess
    import sys

    from tltool.outputs import held_output_dirs
    from tltool.runs import check_run_dir, new_run_dir, writes_runs

    run = tmp_path / "run"
    first = ("import sys, time; from tltool.runs import new_run_dir\n"
             "run = new_run_dir('finetune', out=sys.argv[1]); (run / 'config.json').write_text('first epoch')\n"
             "print('writing', flush=True); time.sleep(120)")
    writer = subprocess.Popen([sys.executable, "-c", first, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        for attempt in (check_run_dir, lambda out: new_run_dir("linear", out=out),
                        lambda out: new_run_dir("linear", out=out, force=True)):
            with pytest.raises(TltoolError, match="another tltool command is writing it now"):
                attempt(run)
        assert (run / "config.json").read_text() == "first epoch"
    finally:
        writer.kill()
        writer.wait()
    made = writes_runs(lambda: new_run_dir("linear", out=run))()  # a killed command holds nothing: replaced
    assert sorted(p.name for p in made.iterdir()) == [MARKER] and not held_output_dirs()  # and let go on return
    second = "import sys; from tltool.runs import new_run_dir; new_run_dir('linear', out=sys.argv[1], force=True)"
    subprocess.run([sys.executable, "-c", second, str(run)], check=True)


def test_run_holds_follow_links_stay_with_their_thread_and_cover_a_forced_replacement(tmp_path, monkeypatch):
    """From a review of the run locks: `--resume runs/latest` (a link) was refused as in use by itself; a thread's
    library call that returned marked and let go of another thread's run; a forced replacement removed the earlier
    run (seconds, for checkpoints) before holding the new folder, which another command could take meanwhile."""
    import os
    import threading

    from tltool import outputs
    from tltool.outputs import held_output_dirs
    from tltool.runs import hold_run_dir, new_run_dir, writes_runs

    run = new_run_dir("finetune", out=tmp_path / "run")
    (tmp_path / "latest").symlink_to(run, target_is_directory=True)
    hold_run_dir(tmp_path / "latest")  # the same folder: held already, not "in use"
    outputs.release_output_dirs()

    entered, leave = threading.Event(), threading.Event()

    @writes_runs
    def slow(out):
        new_run_dir("finetune", out=out)
        entered.set()
        leave.wait(30)

    worker = threading.Thread(target=slow, args=(tmp_path / "slow",))
    worker.start()
    assert entered.wait(30)
    writes_runs(lambda: new_run_dir("compare", out=tmp_path / "quick"))()
    assert os.path.realpath(tmp_path / "slow") in held_output_dirs()  # still the other thread's
    assert '"finished": false' in (tmp_path / "slow" / MARKER).read_text()
    leave.set()
    worker.join(30)
    assert not held_output_dirs() and '"finished": true' in (tmp_path / "slow" / MARKER).read_text()

    (run / "metrics.json").write_text("earlier")
    removing = outputs._remove_marked
    seen = []
    monkeypatch.setattr(outputs, "_remove_marked",
                        lambda old: (seen.append(os.path.realpath(run) in held_output_dirs()), removing(old)))
    assert new_run_dir("finetune", out=run, force=True) == run and seen == [True]


def test_a_finished_run_of_any_command_needs_force_and_an_unfinished_one_does_not(tmp_path):
    """`compare`, `learning-curve` and `data inspect` write no metrics.json, so a second one with the same --out
    took the first for an unfinished run and replaced it without --force (the README promised a refusal)."""
    from tltool.inspection import inspect_dataset
    from tltool.runs import new_run_dir, writes_runs

    inspect_dataset(str(SAMPLE), out=tmp_path / "inspect")
    with pytest.raises(TltoolError, match="already holds an earlier tltool run"):
        inspect_dataset(str(SAMPLE), out=tmp_path / "inspect")
    assert (tmp_path / "inspect" / "metrics.json").exists()

    @writes_runs
    def killed(out):
        (new_run_dir("compare", out=out) / "metrics.json").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        killed(tmp_path / "compare")
    made = new_run_dir("compare", out=tmp_path / "compare")  # unfinished: replaced without --force, emptied
    assert sorted(p.name for p in made.iterdir()) == [MARKER]


def test_an_out_below_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TltoolError, match="notes.txt is a file, not a folder"):
        claim_output_dir(tmp_path / "notes.txt" / "run", "run")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_status_lines_are_whole_lines_when_not_on_a_terminal(capsys):
    """Rich wrapped every status line at 80 columns in a log or a pipe (epoch lines, the chosen C, cached paths)."""
    from tltool.progress import say

    long = "cached: features for 1060 images already in " + "/very/long/path" * 8 + " (same files); nothing was run"
    say(long)
    assert capsys.readouterr().err == long + "\n"


def test_a_second_command_writing_the_same_output_is_refused_and_does_not_remove_the_firsts_staging(tmp_path):
    """Two exports to one folder shared `.NAME.partial`: the second removed the first's half-built staging as a
    leftover of a killed run, and the first then failed or shipped the second's files."""
    import subprocess
    import sys

    from tltool.outputs import staged_output

    out = claim_output_dir(tmp_path / "out", "sample")
    second = ("import sys; from pathlib import Path; from tltool.errors import TltoolError\n"
              "from tltool.outputs import staging_dir\n"
              "try:\n    staging_dir(Path(sys.argv[1]), 'sample')\nexcept TltoolError as e:\n    print(e)")
    with staged_output(out, "sample") as staging:
        (staging / "a.jpg").write_text("first")
        shown = subprocess.run([sys.executable, "-c", second, str(out)], capture_output=True, text=True, check=True)
        assert "another tltool command is writing it now" in shown.stdout, shown.stdout + shown.stderr
        with pytest.raises(TltoolError, match="another tltool command"):
            staging_dir(out, "sample")
        assert (staging / "a.jpg").read_text() == "first"
    assert (out / "a.jpg").read_text() == "first" and not (tmp_path / ".out.partial").exists()


def test_the_staging_lock_guards_the_folder_at_its_name_and_never_leaks(tmp_path, monkeypatch):
    """From a review of the lock: a leftover replaced between opening it and locking it was 'locked', and the new
    folder, another command's, removed; a failed marker kept the lock for the life of the process; NFS's flock
    error on a folder was a traceback."""
    import errno
    import fcntl as real_fcntl
    import types

    from tltool import outputs
    from tltool.outputs import staged_output

    out = claim_output_dir(tmp_path / "out", "sample")
    leftover = staging_dir(out, "sample")

    def swapped_then_flock(fd, how):  # another command removes the leftover and makes its own before this lock
        shutil.rmtree(leftover)
        leftover.mkdir()
        (leftover / "theirs.jpg").write_text("another command's work")
        monkeypatch.setattr(outputs, "fcntl", real_fcntl)
        real_fcntl.flock(fd, how)

    monkeypatch.setattr(outputs, "fcntl", types.SimpleNamespace(flock=swapped_then_flock, LOCK_EX=real_fcntl.LOCK_EX,
                                                                LOCK_NB=real_fcntl.LOCK_NB))
    with pytest.raises(TltoolError, match="another tltool command"):
        staging_dir(out, "sample")
    assert (leftover / "theirs.jpg").read_text() == "another command's work"
    shutil.rmtree(leftover)

    def disk_full(path, kind):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(outputs, "mark_output_dir", disk_full)
        with pytest.raises(OSError, match="No space"):
            staging_dir(out, "sample")
    assert not leftover.exists()
    with staged_output(out, "sample") as staging:  # nothing of the failed try is held or in the way
        (staging / "b.jpg").write_text("new")

    def nfs_flock(fd, how):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(outputs, "fcntl", types.SimpleNamespace(flock=nfs_flock, LOCK_EX=real_fcntl.LOCK_EX,
                                                                LOCK_NB=real_fcntl.LOCK_NB))
    with staged_output(out, "sample") as staging:  # unguarded there, as before the lock
        (staging / "c.jpg").write_text("newer")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "c.jpg"]


def test_a_run_killed_after_its_metrics_is_unfinished_and_an_older_tltools_finished_run_is_not(tmp_path):
    """A linear or evaluate run killed after metrics.json, before its report and the marker's "finished", was taken
    for a finished run: a rerun was refused ("pass --force"), though the README says an unfinished run that --resume
    cannot finish is replaced. A run's marker now says "finished": false from its claim, so metrics.json decides
    only for the runs of an older tltool, whose markers did not say it."""
    import json

    from tltool.runs import new_run_dir, writes_runs

    @writes_runs
    def killed(out):
        (new_run_dir("linear", out=out) / "metrics.json").write_text("{}")
        raise KeyboardInterrupt  # before report.md

    with pytest.raises(KeyboardInterrupt):
        killed(tmp_path / "run")
    made = writes_runs(lambda: new_run_dir("linear", out=tmp_path / "run"))()  # replaced without --force
    assert sorted(p.name for p in made.iterdir()) == [MARKER]

    older = tmp_path / "older"
    older.mkdir()
    (older / MARKER).write_text(json.dumps({"kind": "run", "tool": "tltool", "created": "2026-01-01T00:00:00"}))
    (older / "metrics.json").write_text("{}")
    with pytest.raises(TltoolError, match="already holds an earlier tltool run"):
        new_run_dir("linear", out=older)
    assert (older / "metrics.json").exists()


@pytest.mark.parametrize("no_lock", ["windows", "nfs"])
def test_a_finished_run_where_folders_cannot_be_locked_is_not_replaced_without_force(tmp_path, monkeypatch, no_lock):
    """Where a folder cannot be locked (Windows; NFS, whose flock wants a file open for writing; SMB), a run was
    never in its command's hold scope, so never marked finished; since the marker says "finished": false from the
    claim, a rerun with the same --out deleted a trained linear run (head, metrics, report) without --force."""
    import errno

    from tltool import outputs
    from tltool.runs import new_run_dir, writes_runs

    if no_lock == "windows":
        monkeypatch.setattr(outputs, "fcntl", None)
    else:
        def flock(fd, operation):
            raise OSError(errno.EBADF, "Bad file descriptor")
        monkeypatch.setattr(outputs.fcntl, "flock", flock)

    @writes_runs
    def trained():
        run = new_run_dir("linear", out=tmp_path / "run")
        for name in ("head.npz", "model.json", "metrics.json", "report.md"):
            (run / name).write_text("the user's trained run")
        return run

    run = trained()
    assert '"finished": true' in (run / MARKER).read_text()
    with pytest.raises(TltoolError, match="--force"):
        writes_runs(lambda: new_run_dir("linear", out=run))()
    assert (run / "head.npz").read_text() == "the user's trained run"
    assert writes_runs(lambda: new_run_dir("linear", out=run, force=True))() == run  # --force still replaces it


def test_replacing_a_run_names_the_exports_inside_it(tmp_path):
    """An export's README has the user save client.py in RUN/export/tflite; `probe ... --out RUN` again said only
    "already holds an earlier tltool run ... pass --force", and --force deleted the export and the client unnamed."""
    from tltool.runs import check_run_dir, new_run_dir, writes_runs

    @writes_runs
    def run_once(out, force=False):
        (new_run_dir("linear", out=out, force=force) / "metrics.json").write_text("{}")

    run = tmp_path / "run"
    run_once(run)
    export = claim_output_dir(run / "export" / "tflite", "export")
    (export / "client.py").write_text("the user's client")
    for refuse in (lambda: check_run_dir(run), lambda: run_once(run)):
        with pytest.raises(TltoolError, match=r"already holds an earlier tltool run with its exports inside "
                                              r"\(export/tflite\), which --force deletes with it"):
            refuse()
    assert (export / "client.py").read_text() == "the user's client"
    run_once(run, force=True)  # asked for: replaced, exports and all
    assert not (run / "export").exists() and (run / "metrics.json").exists()
    with pytest.raises(TltoolError, match=r"already holds an earlier tltool run; choose another"):  # no exports
        run_once(run)


def test_an_export_inside_a_killed_run_is_not_deleted_by_a_plain_rerun(tmp_path):
    """probe killed while writing left an unfinished run; `tltool export RUN` wrote RUN/export/keras; the same probe
    again (no --force) emptied the run, export and all, without a word."""
    from tltool.models import load_finished_run
    from tltool.predict import predict_images
    from tltool.runs import new_run_dir, writes_runs

    @writes_runs
    def killed(out):
        (new_run_dir("linear", out=out) / "model.json").write_text("{}")
        raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        killed(run)
    # predict, evaluate, compare, export and viz read such a run as whole: refused now, before its model is read
    said = f"{run}: its command did not finish (it was interrupted, or is running now)"
    for read in (lambda: load_finished_run(run), lambda: predict_images(run, str(SAMPLE / "star"))):
        with pytest.raises(TltoolError, match=re.escape(said)):
            read()
    export = claim_output_dir(run / "export" / "keras", "export")  # as an export of it before this check made it
    (export / "model.keras").write_text("the user's export")
    with pytest.raises(TltoolError, match=r"already holds an earlier tltool run with its exports inside "
                                          r"\(export/keras\), which --force deletes with it"):
        new_run_dir("linear", out=run)
    assert (export / "model.keras").read_text() == "the user's export"
    release_output_dirs()
    assert not (new_run_dir("linear", out=run, force=True) / "export").exists()  # asked for


def test_a_claim_interrupted_before_its_rename_leaves_nothing_beside_the_folder(tmp_path, monkeypatch):
    """Ctrl-C while --out was being made left `.NAME.claim-XXXX/` in the parent for good."""
    import tltool.outputs as outputs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "mark_output_dir", interrupted)
    with pytest.raises(KeyboardInterrupt):
        claim_output_dir(tmp_path / "new", "run")
    assert list(tmp_path.iterdir()) == []


def test_an_out_whose_parent_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch):
    """probe extracted and fitted, then failed on "Permission denied: .../.new.claim-435ae0fd" with advice about
    --resume. (As root every folder is writable: the check is what is tested here.)"""
    from tltool.runs import check_run_dir

    (tmp_path / "ro").mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(tmp_path / "ro") and real(path, mode))
    with pytest.raises(TltoolError, match=rf"--out {re.escape(str(tmp_path))}/ro/new/run: cannot be made: "
                                          rf"{re.escape(str(tmp_path))}/ro is not a folder you can write into"):
        check_run_dir(tmp_path / "ro" / "new" / "run")
    check_run_dir(tmp_path / "new")


def _finished_run(out, force=False, files=("model.json", "metrics.json", "plots/curve.png")):
    """A run as a command writes it: claimed, files written, marked finished (with the list of them) on return."""
    from tltool.runs import new_run_dir, writes_runs

    @writes_runs
    def run_once():
        run = new_run_dir("linear", out=out, force=force)
        for name in files:
            (run / name).parent.mkdir(parents=True, exist_ok=True)
            (run / name).write_text(f"tltool's {name}")
        (run / "empty-by-tltool").mkdir()
        return run
    return run_once()


def test_force_never_deletes_files_the_user_added_to_a_run(tmp_path):
    """Before: `linear --out R --force` replaced R whole, and NOTES.md and mystuff/ that the user had put there were
    deleted unnamed. A finished run's marker lists what tltool wrote; anything else there is named, and replacing
    the run is refused, --force or not, until it is moved out."""
    from tltool.runs import check_run_dir

    run = _finished_run(tmp_path / "run")
    (run / "NOTES.md").write_text("my notes")
    (run / "mystuff" / "deep").mkdir(parents=True)
    (run / "mystuff" / "deep" / "x.txt").write_text("mine")
    (run / "mine-empty").mkdir()
    (run / "plots" / "annotated.png").write_text("my plot")
    named = "(NOTES.md, mine-empty/, mystuff/deep/x.txt and 1 more)"
    for force in (False, True):
        for refuse in (lambda: check_run_dir(run, force=force), lambda: _finished_run(run, force=force)):
            with pytest.raises(TltoolError, match=r"holds an earlier tltool run and 4 file\(s\) tltool did not write "
                                                  rf"there {re.escape(named)}.*--force or not"):
                refuse()
    assert (run / "NOTES.md").read_text() == "my notes" and (run / "mystuff" / "deep" / "x.txt").read_text() == "mine"
    assert (run / "plots" / "annotated.png").exists() and (run / "model.json").read_text() == "tltool's model.json"
    for added in ("NOTES.md", "mystuff", "mine-empty", "plots/annotated.png"):
        shutil.move(run / added, tmp_path / Path(added).name)
    with pytest.raises(TltoolError, match=r"already holds an earlier tltool run; choose another folder, or pass "
                                          r"--force to replace it\.$"):
        check_run_dir(run)
    assert _finished_run(run, force=True, files=("model.json",)) == run  # moved out: --force replaces it
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "empty-by-tltool", "model.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NOTES.md", "annotated.png", "mine-empty", "mystuff", "run"]


def test_a_file_added_to_an_export_inside_a_run_is_named_when_the_run_is_replaced(tmp_path):
    """An export written into the run after it finished is the run's (a tltool output of its own, with its own
    list), the files added to that export are not: --force on the run names them and deletes nothing."""
    run = _finished_run(tmp_path / "run")
    staging = staging_dir(run / "export" / "tflite", "export")
    (staging / "model.tflite").write_text("tltool's model")
    replace_output_dir(staging, run / "export" / "tflite", "export")
    with pytest.raises(TltoolError, match="already holds an earlier tltool run with its exports inside"):
        _finished_run(run)  # nothing added: only the exports are named
    (run / "export" / "tflite" / "client.py").write_text("the user's client")
    with pytest.raises(TltoolError, match=r"1 file\(s\) tltool did not write there \(export/tflite/client\.py\)"):
        _finished_run(run, force=True)
    assert (run / "export" / "tflite" / "client.py").read_text() == "the user's client"


def test_a_run_of_an_older_tltool_lists_nothing_and_force_still_replaces_it(tmp_path):
    """A finished run whose marker lists no files (an older tltool's): what is the user's is not known, which the
    refusal says; --force replaces it as it did."""
    run = _finished_run(tmp_path / "run")
    marker = json.loads((run / MARKER).read_text())
    del marker["files"]
    (run / MARKER).write_text(json.dumps(marker))
    (run / "NOTES.md").write_text("my notes")
    with pytest.raises(TltoolError, match=r"--force deletes it whole, with any file added to it"):
        _finished_run(run)
    _finished_run(run, force=True)
    assert not (run / "NOTES.md").exists()


def test_a_run_its_command_did_not_mark_finished_still_keeps_the_users_files(tmp_path):
    """A picture drawn again in place (augment preview: its run is never marked finished) and a run whose command
    failed had no list of files: replaced without --force, the user's notes.txt and d/ went with it."""
    from tltool.runs import new_run_dir, writes_runs
    from tltool.utils import write_text_atomic

    @writes_runs(finished=False)
    def draw(out, force=False):
        write_text_atomic(new_run_dir("augment", out=out, force=force) / "augment_preview.png", "a picture")

    @writes_runs
    def failing(out):
        write_text_atomic(new_run_dir("linear", out=out) / "split.csv", "path,label,split\n")  # as tltool writes
        raise KeyboardInterrupt

    draw(tmp_path / "ap")
    draw(tmp_path / "ap")  # drawn again in place: tltool's own picture
    with pytest.raises(KeyboardInterrupt):
        failing(tmp_path / "fail")
    for run in (tmp_path / "ap", tmp_path / "fail"):
        (run / "notes.txt").write_text("mine")
        (run / "d").mkdir()
        (run / "d" / "a.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(TltoolError, match=r"2 file\(s\) tltool did not write there \(d/a\.txt, notes\.txt\)"):
            draw(tmp_path / "ap", force=force)
        with pytest.raises(TltoolError, match=r"2 file\(s\) tltool did not write there \(d/a\.txt, notes\.txt\)"):
            writes_runs(lambda: new_run_dir("linear", out=tmp_path / "fail", force=force))()
    assert (tmp_path / "ap" / "notes.txt").read_text() == (tmp_path / "fail" / "d" / "a.txt").read_text() == "mine"


def test_a_resume_or_a_checkpoint_does_not_take_the_users_files_for_tltools(tmp_path):
    """--resume of a run the user had added client.py to listed client.py as tltool's when it returned, so the next
    --force deleted it; a run killed after a checkpoint had no list at all."""
    from tltool.outputs import release_output_dirs
    from tltool.runs import hold_run_dir, new_run_dir, writes_runs
    from tltool.utils import write_text_atomic

    run = _finished_run(tmp_path / "run")
    (run / "client.py").write_text("the user's")
    writes_runs(lambda: (hold_run_dir(run) / "history.csv").write_text("epoch\n"))()  # a resume that adds a file
    assert "history.csv" in json.loads((run / MARKER).read_text())["files"]
    with pytest.raises(TltoolError, match=r"1 file\(s\) tltool did not write there \(client\.py\)"):
        _finished_run(run, force=True)

    started = new_run_dir("finetune", out=tmp_path / "killed")  # no writes_runs: nothing listed at its end
    write_text_atomic(started / "config.json", "{}")  # each file listed as tltool writes it ...
    (started / "notes.txt").write_text("mine")  # ... and the user's, added while it runs, never
    write_text_atomic(started / "state.json", "{}")
    release_output_dirs(only=[os.path.realpath(started)])  # killed: the lock is gone, the marker lists two files
    assert json.loads((started / MARKER).read_text())["files"] == ["config.json", "state.json"]
    with pytest.raises(TltoolError, match=r"1 file\(s\) tltool did not write there \(notes\.txt\)"):
        writes_runs(lambda: new_run_dir("finetune", out=tmp_path / "killed", force=True))()
    assert (run / "client.py").exists() and (tmp_path / "killed" / "notes.txt").exists()
