"""``tltool collect import``: folders, globs, zips, videos and a (fake) webcam into DATASET/unlabeled/."""
from __future__ import annotations

import csv
import os
import shutil
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers import jpeg_bytes, noise_image
from tltool import images
from tltool.cli import main
from tltool.collect import (ADDED, DUPLICATE, MANIFEST, NEAR_DUPLICATE, TOO_LARGE, TOO_MANY_MEMBERS, UNLABELED,
                            UNSAFE_NAME, NearIndex, dhash, import_images, near_rule)
from tltool.collect import sources as collect_sources
from tltool.dataset import load_dataset
from tltool.errors import TltoolError

cv2 = pytest.importorskip("cv2")


def _scene(seed: int, h: int = 64, w: int = 96) -> np.ndarray:
    """Blocky noise: a picture whose dHash is stable under re-encoding and small pixel noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))


def make_video(path: Path, scenes: int = 3, seconds_each: float = 1.0, fps: int = 10) -> Path:
    """An MJPG .avi: ``scenes`` different pictures, each held for ``seconds_each`` with a little noise per frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (96, 64))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for s in range(scenes):
        base = _scene(100 + s).astype(np.int16)
        for _ in range(int(seconds_each * fps)):
            frame = np.clip(base + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
            writer.write(frame)
    writer.release()
    return path


@pytest.fixture()
def sources(tmp_path: Path) -> dict[str, Path]:
    """Photos in a folder (with an exact copy, a near copy, bad files), more behind a glob, a zip and a video."""
    src = tmp_path / "phone"
    for i in range(4):
        noise_image(src / f"photo_{i}.jpg", seed=i, size=(160, 120))
    (src / "sub").mkdir()
    shutil.copy(src / "photo_0.jpg", src / "sub" / "copy_of_0.jpg")  # exact: the same file
    Image.open(src / "photo_1.jpg").save(src / "sub" / "photo_1.png")  # exact: the same pixels, another format
    Image.fromarray(_scene(7)).resize((192, 128), Image.NEAREST).save(src / "blocks.jpg", quality=95)
    Image.fromarray(_scene(7)).save(src / "sub" / "blocks_small.jpg", quality=70)  # near: smaller, recompressed
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("not a picture")
    (src / ".DS_Store").write_bytes(b"\0junk")
    # EXIF orientation 6 (rotate 90): stored 200x100, shown 100x200
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_scene(9, 96, 192)).save(src / "rotated.jpg", exif=exif.tobytes())
    more = tmp_path / "camera_roll"
    for i in range(2):
        noise_image(more / f"img_{i}.jpg", seed=20 + i, size=(90, 90))
    noise_image(more / "skip_me.png", seed=30, fmt="PNG")
    archive = tmp_path / "holiday.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(src / "photo_2.jpg", "dup/photo_2.jpg")  # exact duplicate inside the zip
        noise_image(tmp_path / "z.jpg", seed=40, size=(100, 80))
        z.write(tmp_path / "z.jpg", "beach/z.jpg")
        z.writestr("__MACOSX/._z.jpg", b"junk")
        data = jpeg_bytes((200, 200))
        z.writestr("broken.jpg", data[: len(data) // 2])  # truncated
    video = make_video(tmp_path / "walk.avi")
    return {"src": src, "glob": more / "*.jpg", "zip": archive, "video": video, "tmp": tmp_path}


def _manifest(dataset: Path) -> list[dict]:
    with open(dataset / MANIFEST, newline="") as f:
        return list(csv.DictReader(f))


def test_import_folder_glob_zip_video_drops_duplicates_and_reruns_add_nothing(sources):
    tmp = sources["tmp"]
    dataset = tmp / "mydata"
    srcs = [str(sources["src"]), str(sources["glob"]), str(sources["zip"]), str(sources["video"])]
    result = import_images(srcs, dataset, every=0.5, max_side=128)

    def rel(source: str) -> str:
        return source.replace(f"{tmp}/", "")

    assert sorted(rel(r["source"]) for r in result.added) == sorted([
        "phone/photo_0.jpg", "phone/photo_1.jpg", "phone/photo_2.jpg", "phone/photo_3.jpg", "phone/blocks.jpg",
        "phone/rotated.jpg", "camera_roll/img_0.jpg", "camera_roll/img_1.jpg", "holiday.zip!beach/z.jpg",
        "walk.avi@0.00s", "walk.avi@1.00s", "walk.avi@2.00s"])
    exact = {rel(r["source"]): r["duplicate_of"] for r in result.duplicates}
    assert set(exact) == {"phone/sub/copy_of_0.jpg", "phone/sub/photo_1.png", "holiday.zip!dup/photo_2.jpg"}
    assert exact["phone/sub/copy_of_0.jpg"].startswith("unlabeled/photo_0-")
    near = {rel(r["source"]): r for r in result.near_duplicates}
    # the small recompressed copy, and the frames half a second into each scene
    assert set(near) == {"phone/sub/blocks_small.jpg", "walk.avi@0.50s", "walk.avi@1.50s", "walk.avi@2.50s"}
    assert near["phone/sub/blocks_small.jpg"]["duplicate_of"].startswith("unlabeled/blocks-")
    assert all(0 <= int(r["distance"]) <= result.near_threshold for r in near.values())
    assert {(rel(b.source), b.reason) for b in result.bad} == {
        ("phone/empty.jpg", images.EMPTY), ("phone/notes.txt", images.NOT_AN_IMAGE),
        ("holiday.zip!broken.jpg", images.CORRUPT)}

    written = sorted((dataset / UNLABELED).iterdir())
    assert len(written) == 12 == result.total_images
    for path in written:  # normalised: RGB JPEG, longest side at most --max-side
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and max(im.size) <= 128
    rotated = next(p for p in written if p.name.startswith("rotated-"))
    assert Image.open(rotated).size == (64, 128)  # EXIF applied by the shared decode, then shrunk

    rows = _manifest(dataset)
    assert {r["status"] for r in rows} == {ADDED, DUPLICATE, NEAR_DUPLICATE}
    assert len(rows) == 12 + 3 + 4
    assert {r["file"] for r in rows if r["status"] == ADDED} == {f"{UNLABELED}/{p.name}" for p in written}
    assert all(len(r["pixels_sha256"]) == 64 and len(r["dhash"]) == 16 for r in rows)

    again = import_images(srcs, dataset, every=0.5, max_side=128)
    assert (len(again.added), len(again.duplicates), len(again.near_duplicates)) == (0, 0, 0)
    assert again.already == len(rows)
    assert len(again.bad) == 3  # still named, still skipped
    assert sorted((dataset / UNLABELED).iterdir()) == written
    assert _manifest(dataset) == rows

    noise_image(sources["src"] / "new_photo.jpg", seed=77, size=(100, 100))
    third = import_images(srcs, dataset, every=0.5, max_side=128)
    assert [rel(r["source"]) for r in third.added] == ["phone/new_photo.jpg"]
    assert third.total_images == 13


def test_near_duplicates_need_similar_structure_and_colour():
    base = _scene(1)
    index = NearIndex(threshold=6)
    index.add("a.jpg", dhash(base), (100, 100, 100))
    assert index.find(dhash(base), (104, 98, 100)) == ("a.jpg", 0)
    assert index.find(dhash(base), (160, 100, 100)) is None  # same shape, another colour: kept
    assert index.find(dhash(_scene(2)), (100, 100, 100)) is None
    assert NearIndex(threshold=-1).find(dhash(base), (0, 0, 0)) is None
    assert "<= 6 of 64 bits" in near_rule(6)


def test_user_mistakes_are_one_clear_error(tmp_path):
    with pytest.raises(TltoolError, match="no such file or folder"):
        import_images([str(tmp_path / "nope")], tmp_path / "ds")
    with pytest.raises(TltoolError, match="matches no file"):
        import_images([str(tmp_path / "*.jpg")], tmp_path / "ds")
    with pytest.raises(TltoolError, match="nothing to import"):
        import_images([], tmp_path / "ds")
    noise_image(tmp_path / "a.jpg", seed=1)
    with pytest.raises(TltoolError, match="--every"):
        import_images([str(tmp_path / "a.jpg")], tmp_path / "ds", every=0)
    # a dataset whose unlabeled/ is a link to a folder of the user's: imports went through it into that folder
    import_images([str(tmp_path / "a.jpg")], tmp_path / "ds")
    shutil.rmtree(tmp_path / "ds" / UNLABELED)
    (tmp_path / "mine").mkdir()
    (tmp_path / "ds" / UNLABELED).symlink_to(tmp_path / "mine", target_is_directory=True)
    noise_image(tmp_path / "b.jpg", seed=2)
    with pytest.raises(TltoolError, match="is a link"):
        import_images([str(tmp_path / "b.jpg")], tmp_path / "ds")
    assert not list((tmp_path / "mine").iterdir())


class _FakeCamera:
    def __init__(self, index, frames: int | None = 5, opened: bool = True):
        self.index, self.left, self.opened, self.n = index, frames, opened, 0
        self.released = False

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return self.opened

    def read(self):
        self.n += 1
        return True, _scene(200 + self.n)[:, :, ::-1].copy()

    def release(self):
        self.released = True


def test_camera_missing_is_a_clear_error_and_a_camera_is_sampled(tmp_path, monkeypatch):
    monkeypatch.setattr(cv2, "VideoCapture", lambda index: _FakeCamera(index, opened=False))
    with pytest.raises(TltoolError, match="no camera at index 0"):
        import_images([], tmp_path / "ds", camera=0)
    cams = []
    monkeypatch.setattr(cv2, "VideoCapture", lambda index: cams.append(_FakeCamera(index)) or cams[-1])
    monkeypatch.setattr("tltool.collect.sources.time.sleep", lambda s: None)
    result = import_images([], tmp_path / "ds", camera=1, camera_frames=3, every=0.1)
    assert [r["source"] for r in result.added] == ["camera:1#0", "camera:1#1", "camera:1#2"]
    assert cams[0].released
    first = np.asarray(Image.open(tmp_path / "ds" / result.added[0]["file"]), dtype=np.int16)
    assert np.median(np.abs(first - _scene(201))) < 8  # BGR from OpenCV became RGB
    assert np.median(np.abs(first - _scene(201)[:, :, ::-1])) > 30


def test_cli_import_prints_threshold_and_names_bad_files(tmp_path):
    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    noise_image(tmp_path / "in" / "b.jpg", seed=2)
    (tmp_path / "in" / "bad.jpg").write_text("nope")
    runner = CliRunner()
    result = runner.invoke(main, ["collect", "import", str(tmp_path / "in"), "--out", str(tmp_path / "ds"),
                                  "--near-threshold", "4"])
    assert result.exit_code == 0, result.output
    assert "dHash Hamming distance <= 4 of 64 bits" in result.output
    assert f"skipped {tmp_path / 'in' / 'bad.jpg'}: {images.NOT_AN_IMAGE}" in result.output
    assert "added 2 image(s)" in result.output
    # the next step names no classes of its own ("a,b,c" reached recipes' output as if meant)
    assert result.output.strip().splitlines()[-1] == (f"next: tltool label serve {tmp_path / 'ds'} --classes "
                                                      "NAME1,NAME2,... (your class names; keys 1-9 follow their order)")
    # once photos are labelled, a later import's next step keeps their classes (it asked for --classes again)
    (tmp_path / "ds" / "labels.csv").write_text("path,label\n")
    noise_image(tmp_path / "more" / "c.jpg", seed=3)
    later = runner.invoke(main, ["collect", "import", str(tmp_path / "more"), "--out", str(tmp_path / "ds")])
    assert later.output.strip().splitlines()[-1] == (f"next: tltool label serve {tmp_path / 'ds'} (the classes of "
                                                     "its labels.csv; the new images are unlabelled)")
    # the dataset inside the source folder: its own images are never imported again
    again = runner.invoke(main, ["collect", "import", str(tmp_path / "in"), "--out", str(tmp_path / "in" / "ds")])
    again = runner.invoke(main, ["collect", "import", str(tmp_path / "in"), "--out", str(tmp_path / "in" / "ds")])
    assert "added 0 image(s)" in again.output
    assert "2 seen on an earlier run (imported or dropped then); 1 bad file(s)" in again.output
    result = runner.invoke(main, ["collect", "import", str(tmp_path / "missing"), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output


def test_a_link_to_itself_among_the_photos_is_a_bad_file_and_the_import_goes_on(tmp_path):
    """``self.jpg -> self.jpg`` (or a -> b -> a) in a photo folder ended the import in a RuntimeError traceback
    (Path.resolve of a loop), nothing imported; predict and data inspect named it one bad file."""
    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    (tmp_path / "in" / "self.jpg").symlink_to("self.jpg")
    (tmp_path / "in" / "b.jpg").symlink_to("c.jpg")
    (tmp_path / "in" / "c.jpg").symlink_to("b.jpg")
    result = CliRunner().invoke(main, ["collect", "import", str(tmp_path / "in"), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    for name in ("self.jpg", "b.jpg", "c.jpg"):
        assert f"skipped {tmp_path / 'in' / name}: {images.UNREADABLE}" in result.output
    assert "added 1 image(s)" in result.output and "3 bad file(s) skipped" in result.output


# ------------------------------------------------------------------------------------------------ zip safety
def _lying_zip(path: Path, inflated: int, declared: int) -> Path:
    """A zip whose member ``bomb.jpg`` inflates to ``inflated`` bytes while both headers declare ``declared``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("bomb.jpg", bytes(inflated))
        z.writestr("ok.jpg", jpeg_bytes((64, 64)))
    data = bytearray(path.read_bytes())
    local = data.index(b"PK\x03\x04")  # local header: uncompressed size at +22
    central = data.index(b"PK\x01\x02")  # central directory: uncompressed size at +24
    assert data[central + 46:central + 46 + 8] == b"bomb.jpg"
    struct.pack_into("<I", data, local + 22, declared)
    struct.pack_into("<I", data, central + 24, declared)
    path.write_bytes(bytes(data))
    return path


def _outside_files(tmp_path: Path, dataset: Path, sources: set[Path]) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if p.is_file() and p not in sources and dataset not in p.parents]


def test_a_zip_member_that_lies_about_its_size_is_never_inflated_whole(tmp_path):
    archive = _lying_zip(tmp_path / "bomb.zip", inflated=64 << 20, declared=10)
    assert archive.stat().st_size < 200_000
    tracemalloc.start()
    try:
        result = import_images([str(archive)], tmp_path / "ds")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB allocated for a member that declares 10 bytes"
    [bad] = result.bad
    assert bad.source == f"{archive}!bomb.jpg" and bad.reason == images.CORRUPT and "CRC" in bad.detail
    assert [r["source"] for r in result.added] == [f"{archive}!ok.jpg"]


def test_zip_members_are_capped_in_number_and_in_bytes_actually_unpacked(tmp_path, monkeypatch):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(4):
            z.writestr(f"p{i}.jpg", jpeg_bytes((64, 64), colour=(60 * i, 10, 10)))
    monkeypatch.setattr(collect_sources, "MAX_ZIP_MEMBERS", 3)
    result = import_images([str(archive)], tmp_path / "ds")
    assert [(b.source, b.reason) for b in result.bad] == [(str(archive), TOO_MANY_MEMBERS)]
    assert "4 members, more than 3" in result.bad[0].detail and not result.added

    monkeypatch.setattr(collect_sources, "MAX_ZIP_MEMBERS", 10)
    size = len(jpeg_bytes((64, 64)))
    monkeypatch.setattr(collect_sources, "MAX_ZIP_BYTES", int(2.5 * size))  # room for two members
    result = import_images([str(archive)], tmp_path / "ds2")
    assert [r["source"] for r in result.added] == [f"{archive}!p0.jpg", f"{archive}!p1.jpg"]
    assert [(b.source, b.reason) for b in result.bad] == [(str(archive), TOO_LARGE)]
    assert "p2.jpg and the members after it are not imported" in result.bad[0].detail

    bad_crc = tmp_path / "bad_crc.zip"  # members that unpack whole, then fail their checksum: they count too
    with zipfile.ZipFile(bad_crc, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(3):
            z.writestr(f"zeros{i}.jpg", bytes(100_000))
    data = bytearray(bad_crc.read_bytes())
    for header, crc_at in ((b"PK\x03\x04", 14), (b"PK\x01\x02", 16)):
        start = 0
        while (start := data.find(header, start)) >= 0:
            struct.pack_into("<I", data, start + crc_at, 0xDEADBEEF)
            start += 4
    bad_crc.write_bytes(bytes(data))
    monkeypatch.setattr(collect_sources, "MAX_ZIP_BYTES", 250_000)
    result = import_images([str(bad_crc)], tmp_path / "ds4")
    assert [(b.source.split("!")[-1], b.reason) for b in result.bad] == [
        ("zeros0.jpg", images.CORRUPT), ("zeros1.jpg", images.CORRUPT), (str(bad_crc), TOO_LARGE)]

    monkeypatch.setattr(collect_sources, "MAX_ZIP_BYTES", 1 << 30)
    monkeypatch.setattr(collect_sources, "MAX_MEMBER_BYTES", 100)  # each member declares more
    result = import_images([str(archive)], tmp_path / "ds3")
    assert {(b.source, b.reason) for b in result.bad} == {(f"{archive}!p{i}.jpg", TOO_LARGE) for i in range(4)}


def test_control_characters_in_member_names_are_escaped_in_what_import_prints(tmp_path):
    """A zip member's name is the archive's: a newline in it printed a line of its own ("skipped FAKE: ..."), an
    escape sequence reached the terminal (the skipped and the dropped lines)."""
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.jpg", jpeg_bytes((64, 64)))
        z.writestr("b\nadded 99 image(s)\x1b]0;title\x07.jpg", jpeg_bytes((64, 64)))  # a duplicate of a.jpg
        z.writestr("c\nskipped FAKE\x1b[2J.jpg", b"not an image")
        z.writestr("../d\n.jpg", b"x")
    result = CliRunner().invoke(main, ["collect", "import", str(archive), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    printed = result.output
    assert "\x1b" not in printed and "\x07" not in printed
    lines = printed.splitlines()
    assert not [line for line in lines if line.startswith(("added 99", "skipped FAKE", ".jpg"))], printed
    assert f"dropped {archive}!b\\nadded 99 image(s)\\x1b]0;title\\x07.jpg: duplicate of" in printed
    assert f"skipped {archive}!c\\nskipped FAKE\\x1b[2J.jpg: {images.NOT_AN_IMAGE}" in printed
    assert f"skipped {archive}!../d\\n.jpg: {UNSAFE_NAME}" in printed


def test_zip_members_with_unsafe_names_are_named_and_nothing_lands_outside(tmp_path):
    archive = tmp_path / "in" / "evil.zip"
    archive.parent.mkdir()
    names = ["../evil.jpg", "a/../../evil2.jpg", "/abs.jpg", "..\\win.jpg", "C:/drive.jpg", "fine/ok.jpg"]
    with zipfile.ZipFile(archive, "w") as z:
        for i, name in enumerate(names):
            z.writestr(zipfile.ZipInfo(name), jpeg_bytes((64, 64), colour=(40 * i, 90, 90)))
    assert [i.filename for i in zipfile.ZipFile(archive).infolist()] == names  # written as crafted
    dataset = tmp_path / "in" / "ds"
    result = CliRunner().invoke(main, ["collect", "import", str(archive), "--out", str(dataset)])
    assert result.exit_code == 0, result.output
    for name in names[:-1]:
        assert f"skipped {archive}!{name}: {UNSAFE_NAME}" in result.output
    assert "added 1 image(s)" in result.output and "5 bad file(s) skipped" in result.output
    assert _outside_files(tmp_path, dataset, {archive}) == []
    assert {p.relative_to(dataset).parts[0] for p in dataset.rglob("*") if p.is_file()} <= {
        UNLABELED, MANIFEST, ".tltool-output.json", ".import.lock"}


def test_zip_members_named_from_dot_slash_are_imported_and_hidden_ones_are_not(tmp_path):
    """Some archivers store ``./photo.jpg``: the ``.`` part counted as hidden, and an import of such a zip added
    nothing, exit 0, naming no file."""
    archive = tmp_path / "dots.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, name in enumerate(["./a.jpg", "./sub/b.jpg", "./.hidden.jpg", "./__MACOSX/c.jpg", "./.git/d.jpg"]):
            z.writestr(zipfile.ZipInfo(name), jpeg_bytes((64, 64), colour=(50 * i, 90, 90)))
    dataset = tmp_path / "ds"
    result = CliRunner().invoke(main, ["collect", "import", str(archive), "--out", str(dataset)])
    assert result.exit_code == 0, result.output
    assert "added 2 image(s)" in result.output
    assert len(list((dataset / UNLABELED).iterdir())) == 2


def test_two_imports_into_one_dataset_at_once_keep_every_row(tmp_path):
    """Each import rewrote the manifest from what it had read when it started: run at the same moment, the last
    to finish dropped the other's rows (350 files, 250 rows). Now the second waits for the first."""
    import subprocess
    import sys

    for name in ("a", "b"):
        for i in range(80):
            noise_image(tmp_path / name / f"{name}{i:02d}.jpg", seed=1000 * (name == "b") + i, size=(96, 72))
    out = tmp_path / "ds"
    procs = [subprocess.Popen([sys.executable, "-m", "tltool", "collect", "import", str(tmp_path / name), "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for name in ("a", "b")]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    with open(out / MANIFEST, newline="", encoding="utf-8") as f:
        added = [row for row in csv.DictReader(f) if row["status"] == ADDED]
    assert len(added) == 160 == len(list((out / UNLABELED).rglob("*.jpg")))


def test_an_import_lock_that_is_a_link_is_refused_and_nothing_is_made_at_its_target(tmp_path):
    """``.import.lock`` was opened with ``open(path, "a")``, which follows a link: a link there made its target."""
    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    out = tmp_path / "ds"
    import_images([str(tmp_path / "in")], out)
    (tmp_path / "victim").mkdir()
    target = tmp_path / "victim" / "x"
    (out / ".import.lock").unlink()
    (out / ".import.lock").symlink_to(target)
    with pytest.raises(TltoolError, match=r"\.import\.lock is a link; tltool does not follow links"):
        import_images([str(tmp_path / "in")], out)
    assert not target.exists() and not target.is_symlink()
    result = CliRunner().invoke(main, ["collect", "import", str(tmp_path / "in"), "--out", str(out)])
    assert result.exit_code != 0 and "is a link" in result.output and "Traceback" not in result.output
    assert not target.exists()


@pytest.mark.parametrize("edit", ["dhash", "mean_rgb", "short_row", "../../zzzz", "/etc/zzzz", "C:\\zzzz",
                                  "a/../../zzzz"])
def test_a_hand_edited_manifest_is_one_clear_error_naming_the_row(tmp_path, edit):
    """A ``dhash`` of ``zzzz`` or a row with missing cells ended the import in a ValueError/TypeError traceback; a
    file outside the dataset (``../../../etc/passwd``) was read for its digest and counted as one of its images."""
    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    noise_image(tmp_path / "in" / "b.jpg", seed=2)
    out = tmp_path / "ds"
    import_images([str(tmp_path / "in")], out)
    with open(out / MANIFEST, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    if edit == "short_row":
        rows[2] = rows[2][:3]
    elif "zzzz" in edit:
        rows[2][header.index("file")] = edit
    else:
        rows[2][header.index(edit)] = "zzzz"
    with open(out / MANIFEST, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    before = (out / MANIFEST).read_bytes()
    noise_image(tmp_path / "more" / "c.jpg", seed=3)
    with pytest.raises(TltoolError, match=rf"{MANIFEST}, line 3: .*(zzzz|no cell\(s\) for)"):
        import_images([str(tmp_path / "more")], out)
    result = CliRunner().invoke(main, ["collect", "import", str(tmp_path / "more"), "--out", str(out)])
    assert result.exit_code != 0 and "line 3" in result.output and "Traceback" not in result.output
    assert (out / MANIFEST).read_bytes() == before  # the manifest is left as the user edited it


def test_tar_archives_are_named_as_not_supported(tmp_path):
    import tarfile

    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    archives = []
    for name, mode in (("a.tar", "w"), ("a.tgz", "w:gz"), ("a.tar.gz", "w:gz"), ("a.tar.bz2", "w:bz2"),
                       ("a.tar.xz", "w:xz")):
        with tarfile.open(tmp_path / name, mode) as tar:
            tar.add(tmp_path / "in" / "a.jpg", arcname="a.jpg")
        archives.append(str(tmp_path / name))
    result = CliRunner().invoke(main, ["collect", "import", *archives, "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    for archive in archives:
        assert f"skipped {archive}: tar archives are not supported (unpack it first; zip archives are supported)" \
            in result.output
    assert images.NOT_AN_IMAGE not in result.output


def test_a_source_or_out_name_too_long_for_the_file_system_is_a_clear_error(in_tmp):
    """Python 3.11's Path.is_dir() raises OSError (ENAMETOOLONG) for a name over 255 bytes: a traceback before."""
    noise_image(in_tmp / "in" / "a.jpg", seed=1)
    long = "a" * 300
    with pytest.raises(TltoolError, match=r"^a{100}\.\.\. \(300 characters\): cannot be read as a file or folder "
                                          r"\(File name too long\)\.$"):
        import_images([long], in_tmp / "ds")
    with pytest.raises(TltoolError, match=r"^--out a{100}\.\.\. \(300 characters\): cannot be used \(File name too "
                                          r"long\)\.$"):
        import_images([str(in_tmp / "in")], long)
    for args in ([long, "--out", "ds"], [str(in_tmp / "in"), "--out", long]):
        result = CliRunner().invoke(main, ["collect", "import", *args])
        assert result.exit_code == 2 and result.output.startswith("error: "), result.output
        assert "Traceback" not in result.output and result.output.count("\n") == 1
    assert list(in_tmp.iterdir()) == [in_tmp / "in"]


def test_an_encrypted_zip_member_is_skipped_as_encrypted_and_the_others_are_imported(tmp_path):
    """zipfile raises RuntimeError for a password-protected member: it ended the whole import in a traceback."""
    from tltool.collect import ENCRYPTED

    archive = tmp_path / "mixed.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a_secret.jpg", jpeg_bytes((64, 64), colour=(200, 10, 10)))
        z.writestr("b_open.jpg", jpeg_bytes((64, 64), colour=(10, 200, 10)))
    data = bytearray(archive.read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")  # the first member's headers
    data[local + 6] |= 1  # general purpose flag bit 0: encrypted
    data[central + 8] |= 1
    archive.write_bytes(bytes(data))
    assert zipfile.ZipFile(archive).infolist()[0].flag_bits & 1
    result = import_images([str(archive)], tmp_path / "ds")
    assert [(b.source, b.reason) for b in result.bad] == [(f"{archive}!a_secret.jpg", ENCRYPTED)]
    assert "password-protected" in result.bad[0].detail
    assert [r["source"] for r in result.added] == [f"{archive}!b_open.jpg"]
    result = CliRunner().invoke(main, ["collect", "import", str(archive), "--out", str(tmp_path / "ds2")])
    assert result.exit_code == 0, result.output
    assert f"skipped {archive}!a_secret.jpg: {ENCRYPTED} (password-protected" in result.output
    assert "added 1 image(s)" in result.output


@pytest.mark.parametrize("every", ["nan", "inf", "-inf", "0", "-1", "1e10"])
def test_every_must_be_a_finite_positive_number_of_seconds(tmp_path, every):
    """`--every nan` passed the `every <= 0` check and then took every frame of a video (`inf` none after the
    first); a webcam's time.sleep overflows for a huge finite one."""
    video = make_video(tmp_path / "v.avi", scenes=2)
    with pytest.raises(TltoolError, match=r"--every must be a number of seconds above 0 and at most 86400, got "):
        import_images([str(video)], tmp_path / "ds", every=float(every))
    result = CliRunner().invoke(main, ["collect", "import", str(video), "--out", str(tmp_path / "ds"),
                                       "--every", every])
    assert result.exit_code == 2 and "error: --every must be" in result.output, result.output
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("wrong", [UNLABELED, MANIFEST])
def test_a_dataset_whose_unlabeled_is_a_file_or_manifest_a_folder_is_refused_before_writing(tmp_path, wrong):
    """A file named unlabeled was a FileExistsError traceback; a folder named manifest.csv an IsADirectoryError
    after the new images had been written (and then never recorded)."""
    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    noise_image(tmp_path / "more" / "b.jpg", seed=2)
    out = tmp_path / "ds"
    import_images([str(tmp_path / "in")], out)
    target = out / wrong
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.mkdir() if wrong == MANIFEST else target.write_text("not a folder")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    kind = "not a regular file" if wrong == MANIFEST else "not a folder"
    with pytest.raises(TltoolError, match=rf"{target}: {kind}; collect .* Move it away"):
        import_images([str(tmp_path / "more")], out)
    result = CliRunner().invoke(main, ["collect", "import", str(tmp_path / "more"), "--out", str(out)])
    assert result.exit_code == 2 and result.output.startswith(f"error: {target}: {kind}"), result.output
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("link_to", ["a user's folder", "nowhere/sub"])
def test_an_out_that_is_a_link_is_refused_for_import_and_label_export(tmp_path, link_to):
    """`collect import --out LINK` and `label export --out LINK` resolved the link first: they wrote into the
    user's folder it pointed at, and a dangling one made its target's folders (parents too)."""
    from tltool.labeler.export import export_labels

    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    noise_image(tmp_path / "in" / "b.jpg", seed=2)
    dataset = tmp_path / "ds"
    import_images([str(tmp_path / "in")], dataset)
    (dataset / "labels.csv").write_text("path,label\n" + "".join(
        f"{p.relative_to(dataset).as_posix()},{label}\n"
        for p, label in zip(sorted((dataset / UNLABELED).rglob("*.jpg")), ("x", "y"))))
    target = tmp_path / link_to
    if link_to == "a user's folder":
        target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    with pytest.raises(TltoolError, match="is not a folder"):
        import_images([str(tmp_path / "in")], link)
    with pytest.raises(TltoolError, match="is not a folder"):
        export_labels(dataset, out=link, val_fraction=0.5)
    assert (list(target.iterdir()) == []) if target.is_dir() else not (tmp_path / "nowhere").exists()


def test_training_on_the_imported_folder_says_to_label_and_export_it(tmp_path):
    """`tltool probe mydata` right after `collect import --out mydata` used to answer "found 1 class(es)
    ['unlabeled'] ... Put each class's images in its own sub-folder": wrong advice for the README's own steps."""
    for i in range(3):
        noise_image(tmp_path / "phone" / f"p{i}.jpg", seed=i, size=(64, 48))
    dataset = tmp_path / "mydata"
    import_images([str(tmp_path / "phone")], dataset)
    with pytest.raises(TltoolError) as refused:
        load_dataset(dataset).require_classes(2)
    message = str(refused.value)
    assert "collect import" in message and f"tltool label serve {dataset}" in message
    assert f"tltool label export {dataset}" in message and "own sub-folder" not in message
    result = CliRunner().invoke(main, ["data", "inspect", str(dataset), "--out", str(tmp_path / "inspect")])
    assert "TooFewClassesWarning" in result.output and f"tltool label export {dataset}" in result.output
    (tmp_path / "plain" / "a").mkdir(parents=True)
    shutil.copy(tmp_path / "phone" / "p0.jpg", tmp_path / "plain" / "a")
    with pytest.raises(TltoolError) as refused:  # any other folder: sort it, or (photos not sorted yet) label them
        load_dataset(tmp_path / "plain").require_classes(2)
    plain, new = tmp_path / "plain", tmp_path / "plain-dataset"
    assert str(refused.value).endswith(
        f"Put each class's images in its own sub-folder, or label them (your class names): tltool collect import "
        f"{plain} --out {new} && tltool label serve {new} --classes NAME1,NAME2,...")  # no fourth dot


def test_imported_names_keep_accented_letters(tmp_path):
    """A phone's "Café été.jpg" was imported as "Caf-t-<hash>.jpg" (every non-ASCII letter dropped), so the
    imported photo could not be told by its name; accents now fall back to their base letter."""
    assert collect_sources.slug("Café été") == "Cafe-ete" and collect_sources.slug("Ünïcode pet") == "Unicode-pet"
    assert collect_sources.slug("猫 ☀") == "image" and collect_sources.slug("ﬁle①") == "file1"
    noise_image(tmp_path / "phone" / "Café été.jpg", seed=1, size=(64, 48))
    result = import_images([str(tmp_path / "phone")], tmp_path / "mydata")
    assert [Path(row["file"]).name.startswith("Cafe-ete-") for row in result.added] == [True]


def test_a_rerun_does_not_count_a_dropped_duplicate_as_imported(tmp_path):
    """A rerun over 2 photos and a copy of one said "3 already imported" under "2 image(s) in .../unlabeled"."""
    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    noise_image(tmp_path / "in" / "b.jpg", seed=2)
    shutil.copy(tmp_path / "in" / "a.jpg", tmp_path / "in" / "a copy.jpg")
    args = ["collect", "import", str(tmp_path / "in"), "--out", str(tmp_path / "ds")]
    assert "added 2 image(s); dropped 1 exact" in CliRunner().invoke(main, args).output
    again = CliRunner().invoke(main, args).output
    assert "already imported" not in again and "3 seen on an earlier run (imported or dropped then)" in again
    assert "2 image(s) in" in again


def _patch_headers(archive: Path, local_at: int, central_at: int, value: int, fmt: str = "<H",
                   first_only: bool = False) -> None:
    """Write ``value`` at the given offsets of every (or the first) local and central header of ``archive``."""
    data = bytearray(archive.read_bytes())
    for header, at in ((b"PK\x03\x04", local_at), (b"PK\x01\x02", central_at)):
        start = 0
        while (start := data.find(header, start)) >= 0:
            struct.pack_into(fmt, data, start + at, value)
            start = len(data) if first_only else start + 4
    archive.write_bytes(bytes(data))


def test_a_zip_python_cannot_open_or_a_corrupt_lzma_member_is_named_not_a_traceback(tmp_path):
    """A member name flagged UTF-8 that is not (UnicodeDecodeError), a zip version above Python's
    (NotImplementedError) and a corrupt LZMA member (LZMAError) each ended the whole import in a traceback."""
    bad_utf8 = tmp_path / "names.zip"
    with zipfile.ZipFile(bad_utf8, "w") as z:
        z.writestr("caf?.jpg", jpeg_bytes((64, 64)))
    bad_utf8.write_bytes(bad_utf8.read_bytes().replace(b"caf?", b"caf\xe9"))
    _patch_headers(bad_utf8, 6, 8, 0x800)  # general purpose flag bit 11: names are UTF-8
    new_version = tmp_path / "version.zip"
    with zipfile.ZipFile(new_version, "w") as z:
        z.writestr("a.jpg", jpeg_bytes((64, 64)))
    _patch_headers(new_version, 4, 6, 99)  # "version needed to extract": 9.9
    lzma_zip = tmp_path / "lzma.zip"
    with zipfile.ZipFile(lzma_zip, "w") as z:
        z.writestr("a_broken.jpg", jpeg_bytes((64, 64), colour=(200, 10, 10)), zipfile.ZIP_LZMA)
        z.writestr("b_fine.jpg", jpeg_bytes((64, 64), colour=(10, 200, 10)))
    data = bytearray(lzma_zip.read_bytes())
    start = data.index(b"a_broken.jpg") + len("a_broken.jpg") + 4  # past the LZMA properties header
    data[start:start + 64] = bytes(b ^ 0x55 for b in data[start:start + 64])
    lzma_zip.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["collect", "import", str(bad_utf8), str(new_version), str(lzma_zip),
                                       "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert f"skipped {bad_utf8}: {images.CORRUPT} (not a readable zip file: 'utf-8' codec" in result.output
    assert f"skipped {new_version}: {images.CORRUPT} (not a readable zip file: zip file version 9.9" in result.output
    assert f"skipped {lzma_zip}!a_broken.jpg: {images.CORRUPT} (" in result.output
    assert "added 1 image(s)" in result.output and "3 bad file(s) skipped" in result.output


def test_a_photo_whose_name_is_not_utf8_is_named_and_the_manifest_is_still_written(tmp_path):
    """Given as a file (or a glob) such a photo was written to unlabeled/, then the UTF-8 manifest could not record
    it: a traceback, the manifest never saved, and every rerun the same. In a folder it was dropped unsaid."""
    photos = tmp_path / "photos"
    noise_image(photos / "fine.jpg", seed=1)
    latin1 = os.path.join(os.fsencode(photos), b"caf\xe9.jpg")  # Latin-1 bytes, as an old camera or zip wrote
    os.rename(noise_image(photos / "other.jpg", seed=2), latin1)
    given = os.fsdecode(latin1)
    result = CliRunner().invoke(main, ["collect", "import", str(photos / "fine.jpg"), given, "--out",
                                       str(tmp_path / "ds")])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert f"skipped {photos}/caf\\udce9.jpg: file name is not valid UTF-8 (ignored; rename it)" in result.output
    assert "added 1 image(s)" in result.output and "1 bad file(s) skipped" in result.output
    assert [row["source"] for row in _manifest(tmp_path / "ds")] == [str(photos / "fine.jpg")]
    result = CliRunner().invoke(main, ["collect", "import", str(photos), "--out", str(tmp_path / "ds2")])
    assert result.exit_code == 0, result.output
    assert f"skipped {photos}/caf?.jpg: file name is not valid UTF-8 (ignored; rename it)" in result.output
    assert "added 1 image(s)" in result.output and "1 bad file(s) skipped" in result.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_device_or_pipe_given_as_a_source_is_not_called_missing(tmp_path):
    """`collect import /dev/zero` or a named pipe said "no such file or folder" of a path that is there."""
    os.mkfifo(tmp_path / "pipe.jpg")
    for source in (str(tmp_path / "pipe.jpg"), os.devnull):
        with pytest.raises(TltoolError, match=r": not a regular file or a folder \(a device, a pipe or a socket\); "
                                              r"give photos, folders, zip or video files\.$"):
            import_images([source], tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_a_tltool_run_folder_among_the_photos_is_left_out_and_not_counted_as_a_bad_file(tmp_path):
    """A run folder inside the photos (its report's PNGs, say) is tltool's, not the user's photos: left out, as
    the dataset walk leaves it, and not counted among the bad files skipped."""
    from tltool.outputs import claim_output_dir

    photos = tmp_path / "photos"
    noise_image(photos / "fine.jpg", seed=1)
    run = claim_output_dir(photos / "myrun", "run")
    noise_image(run / "confusion_matrix.jpg", seed=2)
    result = CliRunner().invoke(main, ["collect", "import", str(photos), "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    assert "added 1 image(s)" in result.output and "0 bad file(s) skipped" in result.output
    assert [row["source"] for row in _manifest(tmp_path / "ds")] == [str(photos / "fine.jpg")]


@pytest.mark.parametrize("near_threshold", [-1, 4])
def test_a_copy_of_a_file_already_in_the_dataset_is_an_exact_duplicate_of_it(tmp_path, near_threshold):
    """Before: a byte-for-byte copy of a photo in DATASET/unlabeled/ was compared by the pixel hash of the photo
    before import re-encoded it, so it was a near duplicate at best, and with near-duplicate checks off
    (--near-threshold -1) it was imported a second time."""
    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    first = import_images([str(tmp_path / "in")], tmp_path / "ds", near_threshold=near_threshold)
    written = tmp_path / "ds" / first.added[0]["file"]
    shutil.copy(written, tmp_path / "copy.jpg")
    again = import_images([str(tmp_path / "copy.jpg")], tmp_path / "ds", near_threshold=near_threshold)
    assert again.added == [] and [row["duplicate_of"] for row in again.duplicates] == [first.added[0]["file"]]
    assert len(list((tmp_path / "ds" / UNLABELED).iterdir())) == 1


def test_a_manifest_of_an_older_tltool_without_file_digests_still_finds_copies_and_gains_them(tmp_path):
    """A manifest written before the file_sha256 column: read, its files' digests computed, the column written."""
    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    first = import_images([str(tmp_path / "in")], tmp_path / "ds", near_threshold=-1)
    manifest = tmp_path / "ds" / MANIFEST
    rows = _manifest(tmp_path / "ds")
    with open(manifest, "w", newline="", encoding="utf-8") as f:  # as an older tltool wrote it
        writer = csv.DictWriter(f, fieldnames=[c for c in rows[0] if c != "file_sha256"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    shutil.copy(tmp_path / "ds" / first.added[0]["file"], tmp_path / "copy.jpg")
    again = import_images([str(tmp_path / "copy.jpg")], tmp_path / "ds", near_threshold=-1)
    assert again.added == [] and len(again.duplicates) == 1
    assert [len(row["file_sha256"]) for row in _manifest(tmp_path / "ds")] == [64, 0]  # the added one, the copy
    # saved again by a spreadsheet, with a byte-order mark: before, "no column(s) ['source']; move it away"
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    assert import_images([str(tmp_path / "copy.jpg")], tmp_path / "ds", near_threshold=-1).already == 1


def test_a_run_folder_given_as_the_photos_is_refused_by_inspect_and_import(tmp_path):
    """Before: `data inspect RUN` took its refit/ plots for a class and suggested `collect import RUN`, which
    imported the run's plots as photos. A run, features or export folder given itself is named as what it is;
    one a glob matches is left out, as one inside a photo folder is."""
    from tltool.outputs import claim_output_dir

    run = claim_output_dir(tmp_path / "myrun", "run")
    noise_image(run / "confusion_matrix.png", seed=1)
    noise_image(run / "refit" / "training_curves.png", seed=2)
    noise_image(tmp_path / "mypics" / "a.jpg", seed=3)
    message = "myrun: is a tltool run folder (what a command wrote: reports, plots, models), not photos"
    for args in (["data", "inspect", str(run), "--out", str(tmp_path / "report")],
                 ["collect", "import", str(run), "--out", str(tmp_path / "ds")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and message in result.output and "collect import" not in result.output, \
            result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mypics", "myrun"]  # nothing made
    result = import_images([str(tmp_path / "my*")], tmp_path / "ds")
    assert [row["source"] for row in result.added] == [str(tmp_path / "mypics" / "a.jpg")] and not result.bad
    # and the files of one (before: `collect import 'RUN/*.png'` imported the run's plots as photos)
    result = import_images([str(tmp_path / "my*" / "*.*")], tmp_path / "ds2")  # myrun/confusion_matrix.png too
    assert [row["source"] for row in result.added] == [str(tmp_path / "mypics" / "a.jpg")] and not result.bad
    with pytest.raises(TltoolError, match=r"myrun/\*\.png: the pattern matches only what tltool wrote"):
        import_images([str(run / "*.png")], tmp_path / "ds3")
    # nor through a link to one of its files (a folder of photos holding a link to the run's plot)
    (tmp_path / "mypics" / "plot.png").symlink_to(run / "confusion_matrix.png")
    result = import_images([str(tmp_path / "mypics")], tmp_path / "ds4")
    assert [row["source"] for row in result.added] == [str(tmp_path / "mypics" / "a.jpg")] and not result.bad


def test_a_source_inside_the_dataset_is_named_not_imported_as_nothing(tmp_path):
    """`collect import ds --out ds` said "added 0 image(s)" and nothing of why."""
    noise_image(tmp_path / "in" / "a.jpg", seed=1)
    import_images([str(tmp_path / "in")], tmp_path / "ds")
    for source in (tmp_path / "ds", tmp_path / "ds" / UNLABELED):
        with pytest.raises(TltoolError, match=r"is inside the dataset --out .*ds, whose photos are its own"):
            import_images([str(source)], tmp_path / "ds")
