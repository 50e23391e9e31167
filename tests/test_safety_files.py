"""Safety of the files tltool writes: modes that respect the umask, durable writes (issue 16.2)."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from helpers import noise_image
from tltool import utils
from tltool.collect import UNLABELED, import_images
from tltool.labeler import export_labels
from tltool.outputs import claim_output_dir, release_output_dirs
from tltool.runs import hold_run_dir


@pytest.fixture()
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask-022", "umask-077", "umask-002"])
def test_written_files_respect_the_umask_like_open(tmp_path, umask, mask, expected):
    umask(mask)
    with open(tmp_path / "by_open.txt", "w") as f:
        f.write("x")
    utils.write_text_atomic(tmp_path / "text.md", "hello\n")
    utils.write_json(tmp_path / "data.json", {"a": 1})
    with utils.atomic_path(tmp_path / "blob.bin") as tmp:
        tmp.write_bytes(b"\0" * 10)
    with utils.atomic_path(tmp_path / "replaced.bin") as tmp:  # a writer that replaces the temp file (h5py, zip)
        tmp.unlink()
        tmp.write_bytes(b"x")
    assert _mode(tmp_path / "by_open.txt") == expected
    for name in ("text.md", "data.json", "blob.bin", "replaced.bin"):
        assert _mode(tmp_path / name) == expected, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["by_open.txt", "text.md", "data.json", "blob.bin", "replaced.bin"])  # no temp file left behind


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_collected_photos_and_manifest_are_readable_by_the_group_under_umask_022(tmp_path, umask):
    umask(0o022)
    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    result = import_images([str(tmp_path / "in")], tmp_path / "ds")
    written = [tmp_path / "ds" / r["file"] for r in result.added]
    assert len(written) == 1 and written[0].parent.name == UNLABELED
    assert _mode(written[0]) == 0o644
    assert _mode(result.manifest) == 0o644


def test_durable_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else "?"))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "state.json"
    utils.write_json(target, {"epoch": 3}, durable=True)
    assert utils.read_json(target) == {"epoch": 3}
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    if os.path.exists("/proc/self/fd"):
        assert Path(events[0][1]).parent == tmp_path and events[0][1] != str(target)  # the temp file
        assert events[2][1] == str(tmp_path)  # the folder, so the rename itself survives a power cut
    events.clear()
    utils.write_text_atomic(tmp_path / "report.md", "x")  # not durable by default: no fsync cost
    assert [kind for kind, _ in events] == ["replace"]
    events.clear()
    with utils.atomic_path(tmp_path / "ckpt.weights.h5", durable=True) as tmp:
        tmp.write_bytes(b"weights")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mask, expected", [(0o077, 0o600), (0o002, 0o664)], ids=["umask-077", "umask-002"])
def test_label_export_copies_get_the_umask_mode_not_the_photos(tmp_path, umask, mask, expected):
    """`label export --copy` wrote each copy with its photo's mode (shutil.copy2): a 0644 photo stayed readable by
    everyone under umask 077, a 0600 one unreadable by the group under umask 002."""
    root = tmp_path / "ds"
    rows = ["path,label"]
    for i, mode in enumerate([0o644, 0o600, 0o644, 0o600]):
        photo = noise_image(root / f"p{i}.jpg", seed=i, size=(32, 32))
        os.chmod(photo, mode)
        os.utime(photo, (1_000_000_000, 1_000_000_000))
        rows.append(f"p{i}.jpg,{'ab'[i % 2]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    umask(mask)
    export_labels(root, out=tmp_path / "split", val_fraction=0.5, copy=True)
    copies = sorted((tmp_path / "split").glob("*/*/*.jpg"))
    assert len(copies) == 4
    for copy in copies:
        assert _mode(copy) == expected, copy
        assert copy.stat().st_ino != (root / copy.name).stat().st_ino  # a copy, not a link
        assert copy.read_bytes() == (root / copy.name).read_bytes()
        assert copy.stat().st_mtime == 1_000_000_000  # the photo's time is kept, as before


def _killed_writes(folder: Path, names: list[str]) -> list[Path]:
    """The temporary files a writer killed between its write and its rename leaves: atomic_path's names (a
    ``NAME:SUFFIX`` is written with that suffix, as Keras' savers are)."""
    left = []
    for spec in names:
        name, _, suffix = spec.partition(":")
        with pytest.raises(KeyboardInterrupt), utils.atomic_path(folder / name, suffix=suffix) as tmp:
            tmp.write_bytes(b"half")
            kept = folder / f"kept-{tmp.name}"
            os.link(tmp, kept)  # what SIGKILL leaves: the finally that removes it never runs
            raise KeyboardInterrupt
        kept.rename(tmp)
        left.append(tmp)
    return left


def test_a_resumed_run_folder_loses_the_temp_files_of_the_killed_command(tmp_path):
    """SIGKILL while a checkpoint or state.json was written left `.checkpoint-epoch0002.keras.1a2b3c4d.keras` (35 MB
    for Lite0) in the run folder; `--resume` finished the run around it, and it stayed for good."""
    run = tmp_path / "run"
    (run / "refit").mkdir(parents=True)
    left = _killed_writes(run, ["state.json", "checkpoint-epoch0002.keras:.keras",
                                "best-epoch0002.weights.h5:.weights.h5"])
    left += _killed_writes(run / "refit", ["state.json"])
    (run / "notes.txt").write_text("mine")
    (run / ".hidden.cfg").write_text("mine")  # not a name atomic_path makes
    assert all(p.exists() for p in left)
    assert re.fullmatch(r"\.checkpoint-epoch0002\.keras\.[0-9a-f]{8}\.keras", left[1].name)
    hold_run_dir(run)
    try:
        assert not any(p.exists() for p in left)
        assert sorted(p.name for p in run.iterdir()) == [".hidden.cfg", "notes.txt", "refit"]
    finally:
        release_output_dirs()


def test_a_rerun_import_removes_the_temp_files_a_killed_import_left_in_the_dataset(tmp_path):
    """A kill while a photo or the manifest was written left `.a-1a2b3c4d5e6f.jpg.1a2b3c4d.jpg.tmp` in
    DATASET/unlabeled/ for good; the next import clears them, and nothing else (labels.csv's are the labeler's)."""
    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    root = tmp_path / "ds"
    import_images([str(tmp_path / "in")], root)
    photo = _killed_writes(root / UNLABELED, ["b-0123456789ab.jpg"])
    manifest = _killed_writes(root, ["manifest.csv"])
    labels = _killed_writes(root, ["labels.csv"])  # a labeler saving now: not import's to remove
    result = import_images([str(tmp_path / "in")], root)
    assert result.already == 1 and result.total_images == 1
    assert not photo[0].exists() and not manifest[0].exists() and labels[0].exists()
    assert len(list((root / UNLABELED).iterdir())) == 1  # the photo the first import wrote


def test_a_resume_leaves_alone_the_temp_files_of_an_export_being_written_inside_the_run(tmp_path):
    """`tltool export RUN` writes into RUN/export/FMT (its staging folder RUN/export/.FMT.partial, locked by the
    export, not by the run); a `--resume RUN` starting meanwhile removed the export's temp file from under it, and
    the export died with FileNotFoundError. A marked sub-folder is another command's: its own command clears it."""
    from tltool.outputs import staged_output
    from tltool.runs import new_run_dir, writes_runs

    run = writes_runs(lambda: new_run_dir("finetune", out=tmp_path / "run"))()
    (run / "refit").mkdir()
    refit_left = _killed_writes(run / "refit", ["state.json"])  # the run's own: still cleared
    with staged_output(run / "export" / "tflite", "export") as staging:
        with utils.atomic_path(staging / "model.tflite", suffix=".tflite.tmp") as part:
            part.write_bytes(b"converted model")
            hold_run_dir(run)  # the resume, starting while the export writes
            try:
                assert part.read_bytes() == b"converted model"
                assert not refit_left[0].exists()
            finally:
                release_output_dirs()
    assert (run / "export" / "tflite" / "model.tflite").read_bytes() == b"converted model"


def test_an_import_leaves_alone_a_labelers_save_in_flight_in_unlabeled(tmp_path):
    """A labeler served on DATASET/unlabeled (it labels every image under the folder it is given) saves its
    labels.csv there; an import removed every temp name in unlabeled/, so one that ran while the labeler saved
    deleted `.labels.csv.XXXXXXXX.csv.tmp` and the save failed (FileNotFoundError): only a photo's name is the
    killed import's."""
    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    root = tmp_path / "ds"
    import_images([str(tmp_path / "in")], root)
    photo = _killed_writes(root / UNLABELED, ["b-0123456789ab.jpg"])
    with utils.atomic_path(root / UNLABELED / "labels.csv", durable=True) as saving:
        saving.write_text("path,label\n")
        import_images([str(tmp_path / "in")], root)  # the import, meanwhile
    assert (root / UNLABELED / "labels.csv").read_text() == "path,label\n"
    assert not photo[0].exists()  # the killed import's photo is still cleared


def test_a_report_never_replaces_a_trained_model_even_with_force(tmp_path, monkeypatch):
    """`viz filters --out PROBE_RUN --force` deleted the probe's head and model.json for a picture, and
    `learning-curve --out TRAIN_RUN --force` a trained model.keras: --force replaces a trained run with another
    training only, and a report command refuses it before its work."""
    from click.testing import CliRunner

    from conftest import SAMPLE
    from tltool.cli import main
    from tltool.errors import TltoolError
    from tltool.runs import check_run_dir, new_run_dir, writes_runs

    @writes_runs
    def train() -> Path:
        run = new_run_dir("linear", out=tmp_path / "probe")
        utils.write_json(run / "model.json", {"kind": "linear"})
        utils.write_json(run / "metrics.json", {"kind": "linear"})
        return run

    trained = train()
    for kind in ("viz", "compare", "learning-curve", "eval", "inspect", "augment", "suspects"):
        with pytest.raises(TltoolError, match=rf"probe: holds a trained model \(model\.json, .*\), which --force "
                                              rf"would delete for this {kind} report"):
            check_run_dir(trained, force=True, kind=kind)
        with pytest.raises(TltoolError, match="holds a trained model"):
            writes_runs(lambda: new_run_dir(kind, out=trained, force=True))()
    assert (trained / "model.json").is_file()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["data", "inspect", str(SAMPLE), "--out", str(trained), "--force"])
    assert result.exit_code == 2 and "holds a trained model" in result.output and (trained / "model.json").is_file()
    writes_runs(lambda: new_run_dir("finetune", out=trained, force=True))()  # a training replaces it, as before
    assert not (trained / "model.json").exists()
    # nor a cross-validation's fold models, nor an interrupted training's checkpoints (the review of the change)
    (trained / "fold-1" / "run").mkdir(parents=True)
    (trained / "fold-1" / "run" / "model.json").write_text("{}")
    with pytest.raises(TltoolError, match="holds a trained model"):
        check_run_dir(trained, force=True, kind="viz")
    interrupted = claim_output_dir(tmp_path / "interrupted", "run")  # as a training killed in its 2nd epoch left it
    for name in ("split.csv", "state.json", "checkpoint-epoch0001.keras"):
        (interrupted / name).write_text("")
    with pytest.raises(TltoolError, match="holds a trained model"):
        check_run_dir(interrupted, force=True, kind="compare")
