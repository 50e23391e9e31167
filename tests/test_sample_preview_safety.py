"""`data make-sample` and `augment preview` never write over a user's file or into a user's folder.

Before: `tltool data make-sample usr` rendered OUT/<shape>/<shape>_NNN.jpg into any folder (a user's
circle/circle_000.jpg was replaced by a JPEG, exit 0), and a rerun with fewer images left the earlier ones behind;
`tltool augment preview DATA --out my.png` wrote the PNG over the user's my.png, and `--out mine` wrote
mine/augment_preview.png into the user's folder.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tltool.cli import main
from tltool.dataset import load_dataset
from tltool.errors import TltoolError
from tltool.outputs import MARKER
from tltool.sample import SHAPES, make_shapes_dataset


def _run(*args: str):
    return CliRunner().invoke(main, [*map(str, args)])


def _refused(result, *phrases: str) -> None:
    """Exit code 2 and one line of error naming the reason, never a traceback."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for phrase in phrases:
        assert phrase in lines[0], result.output


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _images(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.jpg"))


def _siblings(folder: Path) -> list[str]:
    """What sits beside ``folder`` (a staging or old copy left behind would show here)."""
    return sorted(p.name for p in folder.parent.iterdir())


# ------------------------------------------------------------------------------------------------ make-sample
def test_make_sample_refuses_a_users_folder_force_or_not(tmp_path):
    user = tmp_path / "usr3"
    (user / "circle").mkdir(parents=True)
    (user / "circle" / "circle_000.jpg").write_text("my precious photo\n")
    before = _tree(user)
    for extra in ([], ["--force"]):
        _refused(_run("data", "make-sample", user, "--per-class", "1", *extra), "did not make")
        assert _tree(user) == before
    assert _siblings(user) == ["usr3"]
    with pytest.raises(TltoolError, match="did not make"):
        make_shapes_dataset(user, per_class=1, size=32)
    assert _tree(user) == before


def test_make_sample_refuses_a_file_and_a_users_file_among_other_things(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    _refused(_run("data", "make-sample", notes, "--per-class", "1"), "did not make")
    assert _tree(notes) == {"todo.txt": b"mine"}
    file = tmp_path / "photo.jpg"
    file.write_text("mine")
    result = _run("data", "make-sample", file, "--per-class", "1")
    assert result.exit_code == 2 and file.read_text() == "mine", result.output


def test_make_sample_rerun_needs_force_and_leaves_no_stale_images(tmp_path):
    out = tmp_path / "sample"
    assert _run("data", "make-sample", out, "--per-class", "5").exit_code == 0
    assert len(_images(out)) == 20
    first = _tree(out)
    _refused(_run("data", "make-sample", out, "--per-class", "3"), "earlier tltool sample", "--force")
    assert _tree(out) == first
    result = _run("data", "make-sample", out, "--per-class", "3", "--force")
    assert result.exit_code == 0, result.output
    assert _images(out) == sorted(f"{kind}/{kind}_{i:03d}.jpg" for kind in SHAPES for i in range(3))
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, *SHAPES])
    assert _siblings(out) == ["sample"]


def test_make_sample_interrupted_is_finished_by_a_rerun_without_force(tmp_path, monkeypatch):
    """A make-sample killed while rendering left its claimed, marked folder with nothing in it; the rerun was
    refused as 'an earlier tltool sample' that --force would replace, though nothing was there to lose."""
    from tltool import sample as sample_module

    out = tmp_path / "sample"
    render = sample_module.render_shape

    def interrupted(kind, rng, size):
        if kind == SHAPES[1]:
            raise KeyboardInterrupt
        return render(kind, rng, size)

    monkeypatch.setattr(sample_module, "render_shape", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_shapes_dataset(out, per_class=2, size=32)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == [MARKER]
    result = _run("data", "make-sample", out, "--per-class", "2")
    assert result.exit_code == 0, result.output
    assert len(_images(out)) == 8 and _siblings(out) == ["sample"]  # the staging folder left behind is cleared


def test_make_sample_into_a_new_or_empty_folder_is_a_dataset(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "new" / "shapes"):
        result = _run("data", "make-sample", out, "--per-class", "2", "--seed", "1")
        assert result.exit_code == 0 and result.output == f"wrote {out}\n", result.output
        dataset = load_dataset(str(out))
        assert dataset.classes == sorted(SHAPES) and len(dataset.records) == 8
    assert _images(empty) == _images(tmp_path / "new" / "shapes")  # the same seed gives the same images
    assert {k: v for k, v in _tree(empty).items() if k != MARKER} == {
        k: v for k, v in _tree(tmp_path / "new" / "shapes").items() if k != MARKER}  # (markers carry a time)
    fixture = make_shapes_dataset(tmp_path / "fixture", per_class=2, size=32)
    assert len(_images(fixture)) == 8


# ------------------------------------------------------------------------------------------------ augment preview
@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", per_class=2, size=48)


def _preview(shapes: Path, *args: str):
    return _run("augment", "preview", shapes, "--image-size", "40", "--draws", "2", *args)


def test_preview_never_overwrites_a_users_file(tmp_path, shapes):
    mine = tmp_path / "my.png"
    mine.write_text("my precious\n")
    for extra in ([], ["--force"]):
        _refused(_preview(shapes, "--out", mine, *extra), "not a folder")
        assert mine.read_text() == "my precious\n"
    assert _siblings(mine) == ["my.png"]


def test_preview_never_writes_into_a_users_folder(tmp_path, shapes):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    for extra in ([], ["--force"]):
        _refused(_preview(shapes, "--out", mine, *extra), "did not make")
        assert _tree(mine) == {"notes.txt": b"my notes\n"}


def test_preview_out_is_a_run_folder_not_a_png_name(tmp_path, shapes):
    _refused(_preview(shapes, "--out", tmp_path / "new.png"), "folder")
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "preview"
    for _ in range(2):  # tltool's own preview folder may be written again
        result = _preview(shapes, "--out", out)
        assert result.exit_code == 0 and result.output == f"wrote {out / 'augment_preview.png'}\n", result.output
        assert (out / "augment_preview.png").read_bytes().startswith(b"\x89PNG")
        assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "augment_preview.png", "metrics.json",
                                                                  "report.md"])


def test_preview_default_is_a_new_folder_under_runs(tmp_path, shapes, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "augment_preview.png").write_text("a user's file of the old default name\n")
    result = _preview(shapes)
    assert result.exit_code == 0, result.output
    written = Path(result.output.removeprefix("wrote ").strip())
    assert written.name == "augment_preview.png" and written.parent.parent == Path("runs")
    assert written.parent.name.startswith("augment-preview-shapes-standard-")
    assert (tmp_path / "augment_preview.png").read_text() == "a user's file of the old default name\n"


def test_preview_refuses_an_index_past_the_images_and_no_draws(tmp_path):
    """Before: --index 999 of 45 images showed the last one, and --draws 0 wrote a grid of the original alone."""
    from tltool.augment import preview
    from tltool.errors import TltoolError
    from tltool.sample import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "shapes", per_class=2)
    with pytest.raises(TltoolError, match="--index 8: .* has 8 images; give 0 to 7"):
        preview(str(data), tmp_path / "a", index=8)
    with pytest.raises(TltoolError, match=r"--draws must be a whole number in \[1, 119\]"):
        preview(str(data), tmp_path / "b", draws=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
