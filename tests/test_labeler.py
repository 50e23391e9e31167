"""``tltool label serve|export``: the store, the HTTP server (traversal, concurrency), export, and a real browser."""
from __future__ import annotations

import contextlib
import csv
import http.client
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import collected, noise_image
from tltool.cli import main
from tltool.collect import import_images
from tltool.dataset import load_dataset
from tltool.errors import TltoolError
from tltool.labeler import Assistant, AssistSettings, LabelStore, export_labels, make_server, parse_classes
from tltool.labeler.assist import Snapshot, Tally, extract_in_child
from tltool.labeler.server import LabelerServer
from tltool.labeler.store import EXPORT_MARKER, list_images
from tltool.outputs import mark_output_dir

CHROMIUM = "/usr/bin/chromium"


def make_dataset(root: Path, n: int, decodable: bool = True) -> list[str]:
    """``root/unlabeled/img_000.jpg``... in a folder marked as `collect import` marks it; with ``decodable=False``
    all files share one tiny JPEG's bytes (fast)."""
    paths = []
    collected(root)
    template = noise_image(root / "unlabeled" / "img_000.jpg", seed=0, size=(64, 48))
    for i in range(1, n):
        target = root / "unlabeled" / f"img_{i:03d}.jpg"
        if decodable:
            noise_image(target, seed=i, size=(64, 48))
        else:
            shutil.copyfile(template, target)
    for i in range(n):
        paths.append(f"unlabeled/img_{i:03d}.jpg")
    return paths


def read_labels(root: Path) -> dict[str, str]:
    with open(root / "labels.csv", newline="") as f:
        return {row["path"]: row["label"] for row in csv.DictReader(f)}


class Running:
    """A labeler server on a free port, in a thread."""

    def __init__(self, root: Path | None, classes: list[str], review: Path | None = None, host: str = "127.0.0.1",
                 server=None) -> None:
        self.server = server or make_server(root, classes, host=host, port=0, review=review)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @classmethod
    def around(cls, server) -> "Running":
        return cls(None, [], server=server)

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
        response = conn.getresponse()
        payload = response.read()
        conn.close()
        return response.status, payload

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def served(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root, 4)
    running = Running(root, ["cat", "dog"])
    yield running
    running.close()


def test_a_photo_deleted_after_labelling_is_left_out_of_the_export_and_named(tmp_path):
    """A labelled photo deleted (or renamed) while serving: the server still took labels for it (200) and
    `label export` then failed as a whole ('file not found'), until labels.csv was edited by hand."""
    from tltool.dataset import ManifestWarning

    root = tmp_path / "ds"
    paths = make_dataset(root, 8, decodable=False)
    running = Running(root, ["cat", "dog"])
    try:
        for i, path in enumerate(paths):
            assert running.request("POST", "/api/set", {"path": path, "label": ("cat", "dog")[i % 2]})[0] == 200
        (root / paths[3]).unlink()
        assert running.request("POST", "/api/set", {"path": paths[3], "label": "cat"})[0] == 404
    finally:
        running.close()
    with pytest.warns(ManifestWarning, match=r"1 labelled photo\(s\) are no longer in the folder .*img_003.jpg"):
        result = export_labels(root, val_fraction=0.25, seed=1)
    assert len(result.dataset.records) == 7 and read_labels(root)[paths[3]] == "dog"  # labels.csv keeps its row


def test_a_second_tab_never_erases_what_the_first_saved(served):
    """Each page sends a photo's whole state; a tab that loaded before another labelled the photo sent its stale
    label with a skip or an undo and erased that label without a word. A change now says what the page believes
    the photo had; another state is refused (409) and the page reloads the saved labels."""
    path = "unlabeled/img_001.jpg"
    fresh = {"label": None, "skipped": False}
    status, _ = served.request("POST", "/api/set", {"path": path, "label": "cat", "expect": fresh})  # tab A
    assert status == 200
    status, body = served.request("POST", "/api/set", {"path": path, "label": None, "skipped": True,
                                                       "expect": fresh})  # tab B's skip, from its stale page
    assert status == 409 and b"changed elsewhere" in body and read_labels(served.server.store.root) == {path: "cat"}
    undo = {"path": path, "label": None, "skipped": False, "expect": {"label": "dog", "skipped": False}}
    assert served.request("POST", "/api/set", {"items": [undo]})[0] == 409  # an undo of what is not there
    assert read_labels(served.server.store.root) == {path: "cat"}
    seen = {"label": "cat", "skipped": False}  # after a reload: the change goes through
    assert served.request("POST", "/api/set", {"path": path, "label": "dog", "expect": seen})[0] == 200
    assert read_labels(served.server.store.root) == {path: "dog"}
    for bad in ({"label": 3, "skipped": False}, {"label": None}, {"label": None, "skipped": "no"}, "cat"):
        assert served.request("POST", "/api/set", {"path": path, "label": "cat", "expect": bad})[0] == 400


# ------------------------------------------------------------------------------------------------ store
def test_store_persists_every_change_and_reads_it_back(tmp_path):
    root = tmp_path / "ds"
    paths = make_dataset(root, 5, decodable=False)
    store = LabelStore(root, ["cat", "dog"])
    assert store.items == paths and store.state()["start"] == 0
    store.set(paths[0], "cat")
    store.set(paths[1], "dog")
    store.set(paths[2], None, skipped=True)
    assert read_labels(root) == {paths[0]: "cat", paths[1]: "dog"}
    assert load_dataset(root / "labels.csv").counts() == {"all": {"cat": 1, "dog": 1}}  # a manifest as it is
    summary = store.set(paths[1], None)  # undo
    assert summary == {"total": 5, "labelled": 1, "skipped": 1, "counts": {"cat": 1, "dog": 0}}
    again = LabelStore(root)  # classes from labels.csv; starts at the first image not yet done
    assert again.classes == ["cat"] and again.labels == {paths[0]: "cat"} and again.skipped == {paths[2]}
    assert again.state()["start"] == 1
    # a hand-edited skipped.csv names images as labels.csv may: `./x` or absolute is the image x (was not skipped)
    (root / "skipped.csv").write_text(f"path\n./{paths[3]}\n{root.resolve() / paths[4]}\n../outside.jpg\n")
    assert LabelStore(root).skipped == {paths[3], paths[4]}
    (root / "skipped.csv").write_text(f"path\n{paths[2]}\n")
    with pytest.raises(ValueError, match="unknown class"):
        store.set(paths[3], "bird")
    with pytest.raises(KeyError):
        store.set("../outside.jpg", "cat")
    noise_image(tmp_path / "outside.jpg", seed=3)
    (root / "labels.csv").write_text("path,label\n../outside.jpg,cat\n")  # a hand-edited labels.csv
    from tltool.dataset import ManifestWarning

    with pytest.warns(ManifestWarning, match=r"1 row\(s\) left out.*\.\./outside\.jpg"):
        assert "../outside.jpg" not in LabelStore(root, ["cat"]).items


def test_class_names_are_checked():
    assert parse_classes(" cat, dog ,bird") == ["cat", "dog", "bird"]
    for bad in ("cat,cat", "a/b,c", "..,x", ",".join(f"c{i}" for i in range(10))):
        with pytest.raises(TltoolError):
            parse_classes(bad)


def test_a_class_or_label_holding_a_control_character_is_refused_where_it_enters(tmp_path):
    """--classes refused characters below 32 only: DEL, the 8-bit escape \x9b and a line separator were classes, and
    an undecodable byte (a surrogate) failed at the first save. A labels.csv label was not checked at all with
    --classes (a class of its own on the page, accepted in POSTs), and `label export` made a folder of one with
    DEL; a newline or escape there was refused without the row."""
    for bad in ("a\x7fb", "a\x9bb", "a\u2028b", "a\x1bb", "a\x00b"):
        with pytest.raises(TltoolError, match=r"class name '.*' holds (a control character|a line separator) "
                                              r"\('\\(x1b|x7f|x9b|u2028|x00)'\)"):
            parse_classes(f"cat,{bad}")
    with pytest.raises(TltoolError, match=r"holds a byte that is not UTF-8 \(0xff\), which a class name cannot hold"):
        parse_classes("cat,a\udcffb")  # the byte as the user's system shows it, not Python's stand-in \udcff
    root = tmp_path / "ds"
    _labelled_by_hand(root, 4, "del\x7fx")
    _refused_naming_the_row(root, r"row 4: the label 'del\\x7fx' holds a control character")
    assert not (tmp_path / "ds-split").exists()


def _labelled_by_hand(root: Path, row: int, label: str) -> None:
    """``root``'s photos labelled cat, dog, cat... by the labeler (made the first time), then the label of row
    ``row`` of its labels.csv edited by hand to ``label``."""
    if not (root / "labels.csv").exists():
        paths = make_dataset(root, 8, decodable=False)
        store = LabelStore(root, ["cat", "dog"])
        for i, path in enumerate(paths):
            store.set(path, ("cat", "dog")[i % 2])
    rows = list(csv.reader((root / "labels.csv").open(newline="")))
    rows[row - 1][1] = label
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def _refused_naming_the_row(root: Path, message: str) -> None:
    """The labeler (with --classes or without) and `label export` refuse the edited labels.csv with ``message``."""
    for classes in (["cat", "dog"], None):
        with pytest.raises(TltoolError, match=f"labels.csv, {message}"):
            LabelStore(root, classes)
    with pytest.raises(TltoolError, match=message):
        export_labels(root, val_fraction=0.25, seed=1)


def test_a_class_too_long_for_a_folder_or_not_a_folder_name_in_labels_csv_is_refused_naming_its_row(tmp_path):
    """A 300-character class was accepted by --classes and labelled with; `label export` then failed with a
    traceback (File name too long) and left its claimed folder. A hand-edited label `a/b` in labels.csv was refused
    without its row."""
    long = "L" * 300
    with pytest.raises(TltoolError, match=r"class name 'L{40}\.\.\.' is too long for a folder name \(300 "
                                          r"characters\): at most 100\.$"):
        parse_classes(f"{long},x")
    with pytest.raises(TltoolError, match=r"too long for a folder name \(90 characters\)"):
        parse_classes(f"{'ﬀ' * 90},x")  # 90 characters, but 270 bytes in UTF-8
    assert parse_classes(f"{'L' * 100},x")[0] == "L" * 100
    root = tmp_path / "ds"
    for label, problem in (("a/b", "cannot be a folder name"), (long, "is too long for a folder name")):
        _labelled_by_hand(root, 3, label)
        _refused_naming_the_row(root, rf"row 3: the label '.{{3,43}}' {problem}")
    assert not (tmp_path / "ds-split").exists()


def test_classes_differing_only_in_case_are_refused_before_they_merge(tmp_path):
    """On macOS and Windows `Cat` and `cat` are one folder: an export put both classes' photos in it."""
    with pytest.raises(TltoolError, match=r"--classes: the classes 'Cat' and 'cat' differ only in case"):
        parse_classes("Cat,dog,cat")
    root = tmp_path / "ds"
    paths = make_dataset(root, 8, decodable=False)
    store = LabelStore(root, ["cat", "dog"])
    for i, path in enumerate(paths):
        store.set(path, ("cat", "dog")[i % 2])
    text = (root / "labels.csv").read_text()
    (root / "labels.csv").write_text(text.replace(",dog", ",Cat"))  # edited by hand
    from tltool.dataset import ManifestWarning

    with pytest.raises(TltoolError, match=r"labels.csv: the classes 'Cat' and 'cat' differ only in case"), \
            pytest.warns(ManifestWarning, match="differ only in case"):
        export_labels(root, val_fraction=0.25, seed=1)
    assert not (tmp_path / "ds-split").exists()


def test_review_list_comes_first_with_its_suggestions(tmp_path):
    root = tmp_path / "ds"
    paths = make_dataset(root, 4, decodable=False)
    (tmp_path / "outside.jpg").write_bytes(b"x")
    review = tmp_path / "suspects.csv"
    review.write_text("path,label,suggested,score\n"
                      f"{paths[2]},cat,dog,0.91\n{paths[0]},dog,cat,0.80\n../outside.jpg,cat,dog,0.5\n"
                      "unlabeled/gone.jpg,cat,dog,0.4\n")
    store = LabelStore(root, None, review=review)
    assert store.classes == ["cat", "dog"]
    assert store.items[:2] == [paths[2], paths[0]] and sorted(store.items) == paths
    state = store.state()
    assert state["start"] == 0
    assert state["items"][0]["review"] == {"label": "cat", "suggested": "dog", "score": "0.91"}
    assert len(store.notes) == 2 and "outside" in store.notes[0] and "not found" in store.notes[1]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx,y\n")
    with pytest.raises(TltoolError, match="no 'path' column"):
        LabelStore(root, ["cat"], review=bad)


def test_review_list_never_queues_a_file_that_is_not_an_image(tmp_path):
    """A review row naming labels.csv or a text file made it an item: labelled, it went into labels.csv and came
    back on every restart, counted in the progress, though export can never use it."""
    root = tmp_path / "ds"
    paths = make_dataset(root, 2, decodable=False)
    (root / "labels.csv").write_text(f"path,label\n{paths[0]},cat\n")
    (root / "notes.txt").write_text("hello")
    review = tmp_path / "suspects.csv"
    review.write_text(f"path,label,suggested,score\nlabels.csv,cat,dog,0.9\nnotes.txt,cat,dog,0.8\n{paths[0]},cat,dog,0.7\n")
    store = LabelStore(root, ["cat", "dog"], review=review)
    assert store.items == [paths[0], paths[1]]
    assert sum("not an image" in n for n in store.notes) == 2
    with pytest.raises(KeyError):
        store.set("labels.csv", "dog")
    # a labels.csv that already names a non-image (an earlier version wrote them) does not bring it back either
    (root / "labels.csv").write_text(f"path,label\n{paths[0]},cat\nnotes.txt,dog\nlabels.csv,cat\n")
    restarted = LabelStore(root, ["cat", "dog"])
    assert restarted.items == paths and restarted.summary()["total"] == 2 and restarted.summary()["labelled"] == 1


# ------------------------------------------------------------------------------------------------ server
def test_page_state_and_images_are_served(served):
    status, page = served.request("GET", "/")
    assert status == 200 and b"/app.js" in page and b"http" not in page.replace(b"http-equiv", b"")
    status, state = served.request("GET", "/api/state")
    state = json.loads(state)
    assert status == 200 and state["classes"] == ["cat", "dog"] and state["total"] == 4
    status, jpeg = served.request("GET", "/img/unlabeled/img_001.jpg")
    assert status == 200 and jpeg[:2] == b"\xff\xd8"
    status, _ = served.request("POST", "/api/set", {"path": "unlabeled/img_001.jpg", "label": "dog"})
    assert status == 200 and read_labels(served.server.store.root) == {"unlabeled/img_001.jpg": "dog"}
    assert served.request("POST", "/api/set", {"path": "unlabeled/img_001.jpg", "label": "emu"})[0] == 400
    assert served.request("GET", "/api/state", headers={"Host": "evil.example:80"})[0] == 403  # DNS rebinding
    conn = http.client.HTTPConnection("127.0.0.1", served.server.port, timeout=10)
    conn.request("POST", "/api/set", body=b'{"path": "unlabeled/img_001.jpg", "label": "cat"}',
                 headers={"Content-Type": "text/plain"})  # what a cross-site form could send
    assert conn.getresponse().status == 415
    conn.close()


def test_paths_leaving_the_dataset_are_refused(served, tmp_path):
    root = served.server.store.root
    secret = tmp_path / "secret.jpg"
    noise_image(secret, seed=5)
    (root / "unlabeled" / "link.jpg").symlink_to(secret)
    (root / "unlabeled" / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    attempts = [
        "/img/../secret.jpg",
        "/img/unlabeled/../../secret.jpg",
        "/img/%2e%2e/secret.jpg",
        "/img/%2E%2E%2Fsecret.jpg",
        "/img/unlabeled/%2e%2e/%2e%2e/secret.jpg",
        "/img/..%5csecret.jpg",
        f"/img/{secret}",  # absolute
        f"/img/%2F{str(secret).lstrip('/')}",
        "/img/unlabeled/link.jpg",  # a symlink out of the root
        "/img/unlabeled/linkdir/secret.jpg",
        "/img/%252e%252e/secret.jpg",  # double encoded: a file literally named %2e%2e
        "/../secret.jpg",
    ]
    for attempt in attempts:
        status, body = served.request("GET", attempt)
        assert status in (403, 404), attempt
        assert body[:2] != b"\xff\xd8", attempt
    assert served.request("GET", "/img/../secret.jpg")[0] == 403
    assert served.request("GET", "/img/%2e%2e/secret.jpg")[0] == 403
    assert served.request("GET", f"/img/{secret}")[0] == 403
    assert served.request("GET", "/img/unlabeled/link.jpg")[0] == 403
    assert "unlabeled/link.jpg" not in list_images(root)
    for path in ("../secret.jpg", str(secret), "unlabeled/link.jpg"):
        assert served.request("POST", "/api/set", {"path": path, "label": "cat"})[0] == 404


def _label_through_http(port: int, items: list[tuple[str, str]]) -> list[int]:
    """One client process: every label POSTed on one keep-alive connection; the statuses returned."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    statuses = []
    for path, label in items:
        conn.request("POST", "/api/set", body=json.dumps({"path": path, "label": label}),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
    conn.close()
    return statuses


def _label_through_own_store(root: str, items: list[tuple[str, str]]) -> list[int]:
    """One process with its own LabelStore on the same folder (as a second `label serve` would have)."""
    store = LabelStore(root, ["cat", "dog", "bird"])
    for path, label in items:
        store.set(path, label)
    return [200] * len(items)


def test_parallel_processes_never_lose_a_label(tmp_path):
    """Six processes (three over HTTP to one server, three with their own store) write 600 labels at once."""
    import multiprocessing

    processes, writes = 6, 100
    root = tmp_path / "ds"
    paths = make_dataset(root, processes * writes, decodable=False)
    running = Running(root, ["cat", "dog", "bird"])
    expected = {p: ("cat", "dog", "bird")[i % 3] for i, p in enumerate(paths)}
    shares = [[(p, expected[p]) for p in paths[c::processes]] for c in range(processes)]
    try:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            jobs = [pool.apply_async(_label_through_http, (running.server.port, share)) for share in shares[:3]]
            jobs += [pool.apply_async(_label_through_own_store, (str(root), share)) for share in shares[3:]]
            statuses = [s for job in jobs for s in job.get(timeout=240)]
        assert statuses == [200] * (processes * writes)
        assert read_labels(root) == expected
        state = json.loads(running.request("GET", "/api/state")[1])  # the server sees the other processes' labels
        assert state["labelled"] == processes * writes
        assert state["counts"] == {"cat": 200, "dog": 200, "bird": 200}
        assert not [p for p in root.iterdir() if p.name.startswith(".labels.csv.")]  # no temp file left
    finally:
        running.close()


# ------------------------------------------------------------------------------------------------ who may talk
def test_a_foreign_origin_cannot_change_a_label(served):
    path = "unlabeled/img_001.jpg"
    own = f"http://127.0.0.1:{served.server.port}"
    for origin in ("http://evil.example", "null", f"https://127.0.0.1:{served.server.port}",
                   "http://127.0.0.1:1"):  # another port of the same machine is another origin
        status, body = served.request("POST", "/api/set", {"path": path, "label": "cat"}, {"Origin": origin})
        assert status == 403 and b"cross-origin" in body, origin
    assert not (served.server.store.root / "labels.csv").exists()
    status, _ = served.request("POST", "/api/set", {"path": path, "label": "cat"},
                               {"Origin": own, "Sec-Fetch-Site": "cross-site"})
    assert status == 403  # a browser that says the request is cross-site
    assert served.request("POST", "/api/set", {"path": path, "label": "dog"}, {"Origin": own})[0] == 200
    assert served.request("POST", "/api/set", {"path": path, "label": "cat"})[0] == 200  # a script: no Origin
    assert read_labels(served.server.store.root) == {path: "cat"}
    # another site embedding an image: the browser says cross-site, the image is refused
    assert served.request("GET", f"/img/{path}", headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert served.request("GET", f"/img/{path}", headers={"Sec-Fetch-Site": "same-origin"})[0] == 200


def test_off_loopback_a_token_and_the_host_check_are_required(tmp_path):
    import socket

    root = tmp_path / "ds"
    make_dataset(root, 3)
    running = Running(root, ["cat", "dog"], host="0.0.0.0")
    guard = running.server.guard
    try:
        assert guard.token and len(guard.token) >= 24 and f"?token={guard.token}" in running.server.url
        port = running.server.port
        # DNS rebinding: a page on evil.example whose name now points here; refused even with the token
        assert running.request("GET", f"/api/state?token={guard.token}", headers={"Host": f"evil.example:{port}"})[0] == 403
        assert running.request("GET", "/api/state")[0] == 403  # no token
        assert running.request("GET", "/api/state?token=wrong")[0] == 403
        body = {"path": "unlabeled/img_001.jpg", "label": "cat"}
        assert running.request("POST", "/api/set", body)[0] == 403
        assert not (root / "labels.csv").exists()
        # the first visit with the token: a cookie, and the token leaves the address bar
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/?token={guard.token}")
        response = conn.getresponse()
        response.read()
        cookie = response.getheader("Set-Cookie")
        assert response.status == 303 and response.getheader("Location") == "/"
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        conn.close()
        with_cookie = {"Cookie": cookie.split(";")[0]}
        assert running.request("GET", "/api/state", headers=with_cookie)[0] == 200
        assert running.request("GET", "/img/unlabeled/img_001.jpg", headers=with_cookie)[0] == 200
        assert running.request("POST", "/api/set", body, {"Authorization": f"token {guard.token}"})[0] == 200
        hostname = {"Host": f"{socket.gethostname()}:{port}", **with_cookie}
        assert running.request("GET", "/api/state", headers=hostname)[0] == 200  # the machine's own name
    finally:
        running.close()


def test_a_link_swapped_in_after_the_check_is_refused(served, tmp_path, monkeypatch):
    """The race: the path passes the check, then becomes a symlink out of the folder before it is opened."""
    import tltool.labeler.server as server_module

    root = served.server.store.root
    secret = tmp_path / "secret.jpg"
    noise_image(secret, seed=5)
    target = root / "unlabeled" / "img_002.jpg"
    target.unlink()
    target.symlink_to(secret)  # the swap, as if it happened right after the check
    monkeypatch.setattr(server_module, "inside_root", lambda root, path, **kw: path)  # the check passed earlier
    status, body = served.request("GET", "/img/unlabeled/img_002.jpg")
    assert status == 403 and body[:2] != b"\xff\xd8" and b"outside the dataset folder" in body
    assert served.request("GET", "/img/unlabeled/img_001.jpg")[0] == 200  # a real file inside still opens


def test_a_photo_the_server_may_not_read_is_named_as_such_not_as_outside_the_dataset(served, monkeypatch, capfd):
    """A photo inside the dataset that the server may not open (chmod 000, another user's) was answered 403
    "outside the dataset folder". Tests run as root, so the refusal is made where the file is opened."""
    import errno

    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith("img_001.jpg"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    status, body = served.request("GET", "/img/unlabeled/img_001.jpg")
    assert status == 403 and json.loads(body) == {"error": "cannot read unlabeled/img_001.jpg: permission denied"}
    assert served.request("GET", "/img/unlabeled/img_002.jpg")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


# ------------------------------------------------------------------------------------------------ export
def test_export_writes_a_stratified_class_folder_layout_and_recovers(tmp_path):
    root = tmp_path / "ds"
    paths = make_dataset(root, 20, decodable=False)
    store = LabelStore(root, ["cat", "dog"])
    for i, path in enumerate(paths[:18]):
        store.set(path, "cat" if i < 10 else "dog")
    store.set(paths[18], None, skipped=True)
    result = export_labels(root, val_fraction=0.2, seed=1)
    out = tmp_path / "ds-split"
    assert result.out == out
    loaded = load_dataset(out)
    assert loaded.counts() == {"train": {"cat": 8, "dog": 6}, "val": {"cat": 2, "dog": 2}}
    assert not loaded.skipped  # the export's marker is hidden in a folder, not a stray file
    first = next((out / "train" / "cat").iterdir())
    assert os.stat(first).st_ino == os.stat(root / "unlabeled" / first.name).st_ino  # hard-linked
    assert list_images(root) == paths
    again = export_labels(root, val_fraction=0.2, seed=1, force=True)  # an earlier export: replaced with force
    assert sorted(p.relative_to(out) for p in out.rglob("*.jpg")) == sorted(
        Path(r.split) / r.label / Path(r.path).name for r in again.dataset.records)

    # an export interrupted before its rename: the leftover is cleared, the rerun completes
    shutil.rmtree(out)
    # (tltool marks its staging folder when it makes it; an unmarked one is not tltool's and is kept)
    (tmp_path / ".ds-split.partial" / "train" / "cat").mkdir(parents=True)
    (tmp_path / ".ds-split.partial" / "train" / "cat" / "half.jpg").write_bytes(b"")
    with pytest.raises(TltoolError, match="not tltool's"):
        export_labels(root, val_fraction=0.2, seed=1, copy=True)
    mark_output_dir(tmp_path / ".ds-split.partial", "label-export")
    export_labels(root, val_fraction=0.2, seed=1, copy=True)
    assert load_dataset(out).counts() == loaded.counts() and not (tmp_path / ".ds-split.partial").exists()
    assert (out / EXPORT_MARKER).is_file()

    plain = tmp_path / "plain"  # photos right in the folder (no unlabeled/), the export written inside it
    plain.mkdir()
    (plain / "labels.csv").write_text("path,label\n")  # labelled in place before tltool refused its own folders
    for i in range(4):
        shutil.copyfile(root / paths[0], plain / f"p{i}.jpg")
    store = LabelStore(plain, ["a", "b"])
    for i, path in enumerate(store.items):
        store.set(path, "ab"[i % 2])
    export_labels(plain, out=plain / "split", val_fraction=0.5)
    assert list_images(plain) == ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"]  # an export is never offered again

    precious = tmp_path / "precious"
    (precious / "keep.txt").parent.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(TltoolError, match="did not make"):
        export_labels(root, out=precious)
    with pytest.raises(TltoolError, match="dataset folder itself"):
        export_labels(root, out=root)


def test_cli_export_and_its_errors(tmp_path):
    root = tmp_path / "ds"
    paths = make_dataset(root, 6, decodable=False)
    runner = CliRunner()
    result = runner.invoke(main, ["label", "export", str(root)])
    assert result.exit_code == 2 and "no labels yet" in result.output
    store = LabelStore(root, ["a", "b"])
    for i, path in enumerate(paths):
        store.set(path, "ab"[i % 2])
    result = runner.invoke(main, ["label", "export", str(root), "--val-fraction", "0.34", "--out",
                                  str(tmp_path / "split")])
    assert result.exit_code == 0, result.output
    assert "train: a 2, b 2" in result.output and "val: a 1, b 1" in result.output
    assert load_dataset(tmp_path / "split").classes == ["a", "b"]
    result = runner.invoke(main, ["label", "serve", str(root), "--classes", "a,a"])
    assert result.exit_code == 2 and "more than once" in result.output


def labelled_dataset(root: Path, n: int = 12) -> list[str]:
    paths = make_dataset(root, n, decodable=False)
    store = LabelStore(root, ["cat", "dog"])
    for i, path in enumerate(paths):
        store.set(path, "cat" if i % 2 else "dog")
    return paths


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rerun_of_label_export_needs_force_and_never_deletes_the_users_files(tmp_path):
    """Before: a second ``label export`` re-split ``DATASET-split`` and silently deleted the files the user had
    put in it. Now it names those files and touches nothing, --force or not; once they are moved out, --force
    replaces it."""
    root = tmp_path / "mydata"
    labelled_dataset(root)
    out = tmp_path / "mydata-split"
    runner = CliRunner()
    result = runner.invoke(main, ["label", "export", str(root), "--seed", "0"])
    assert result.exit_code == 0, result.output
    (out / "NOTES.md").write_text("my notes")
    (out / "train" / "cat" / "my-own.jpg").write_bytes(b"my photo")
    before = tree(out)

    for force in ([], ["--force"]):
        result = runner.invoke(main, ["label", "export", str(root), "--seed", "1", *force])
        assert result.exit_code == 2
        message = result.output.strip()
        assert len(message.splitlines()) == 1 and "--force or not" in message and "another folder" in message
        assert "2 file(s) tltool did not write there (NOTES.md, train/cat/my-own.jpg)" in message
        assert tree(out) == before  # the earlier export and the user's files, untouched
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mydata", "mydata-split"]  # no staging folder left

    (out / "NOTES.md").rename(tmp_path / "NOTES.md")
    (out / "train" / "cat" / "my-own.jpg").rename(tmp_path / "my-own.jpg")
    result = runner.invoke(main, ["label", "export", str(root), "--seed", "1", "--force"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / EXPORT_MARKER).read_text())
    assert info["seed"] == 1
    exported = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert exported == info["files"] and len(exported) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NOTES.md", "my-own.jpg", "mydata", "mydata-split"]

    result = runner.invoke(main, ["label", "export", str(root), "--seed", "1"])  # nothing added this time
    assert result.exit_code == 2 and "nothing was added to it" in result.output


def test_label_export_never_writes_into_a_folder_tltool_did_not_make(tmp_path):
    root = tmp_path / "mydata"
    labelled_dataset(root)
    runner = CliRunner()
    for name, mine in (("mine", {"keep.txt": b"mine", "train/cat/x.jpg": b"photo"}),
                       ("mydata-split", {"holiday.jpg": b"photo"})):  # the default --out, made by the user
        folder = tmp_path / name
        for rel, data in mine.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        for force in ([], ["--force"]):
            args = ["--out", str(folder)] if name == "mine" else []
            result = runner.invoke(main, ["label", "export", str(root), *args, *force])
            assert result.exit_code == 2 and "did not make" in result.output, result.output
            assert tree(folder) == mine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "mydata", "mydata-split"]


@pytest.mark.parametrize("files", [[{"a": 1}], [["train"]], 7])
def test_a_hand_edited_export_list_still_names_the_users_files(tmp_path, files):
    """An export.json whose file list held objects was a TypeError traceback (unhashable) on the next export."""
    root = tmp_path / "mydata"
    labelled_dataset(root)
    out = tmp_path / "mydata-split"
    assert CliRunner().invoke(main, ["label", "export", str(root)]).exit_code == 0
    info = json.loads((out / EXPORT_MARKER).read_text())
    (out / EXPORT_MARKER).write_text(json.dumps({**info, "files": files}))
    (out / "NOTES.md").write_text("my notes")
    result = CliRunner().invoke(main, ["label", "export", str(root)])
    assert result.exit_code == 2 and "NOTES.md" in result.output and "Traceback" not in result.output
    assert (out / "NOTES.md").read_text() == "my notes"


def test_label_export_is_whole_or_absent(tmp_path, monkeypatch):
    """An export interrupted before its first rename leaves only tltool's marked folder: a rerun completes it
    without --force. A --force export that fails halfway leaves the earlier export as it was."""
    from tltool.labeler import export as export_module
    from tltool.outputs import output_kind

    root = tmp_path / "ds"
    labelled_dataset(root)
    out = tmp_path / "ds-split"
    out.mkdir()
    mark_output_dir(out, "label-export")  # claimed, then killed
    export_labels(root, seed=0)
    first = tree(out)
    assert output_kind(out) == "label-export" and len(json.loads(first[EXPORT_MARKER])["files"]) == 12

    placed = []

    def fail_halfway(src, dest, copy):
        if len(placed) == 5:
            raise OSError("disk full")
        placed.append(dest)
        shutil.copyfile(src, dest)

    monkeypatch.setattr(export_module, "_place", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        export_labels(root, seed=1, force=True)
    assert tree(out) == first  # the earlier export, whole
    monkeypatch.undo()
    export_labels(root, seed=1, force=True)  # the leftover staging folder is tltool's: cleared, and the rerun works
    assert json.loads((out / EXPORT_MARKER).read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "ds-split"]


# ------------------------------------------------------------------------------------------------ assistance
def make_two_kinds(root: Path, n: int) -> dict[str, str]:
    """``n`` photos, alternately "cat" and "dog", in a folder marked as `collect import` marks it; returns the
    truth. Names carry the kind for the fake features."""
    truth = {}
    collected(root)
    for i in range(n):
        kind = ("cat", "dog")[i % 2]
        rel = f"unlabeled/{i:03d}-{kind}.jpg"
        noise_image(root / rel, seed=i, size=(64, 48))
        truth[rel] = kind
    return truth


def kind_features(root: Path, paths: list[str]) -> tuple[list[str], np.ndarray]:
    """Stand-in for the CNN: two well separated clusters (by the kind in the name), a little noise."""
    rng = np.random.default_rng(0)
    X = np.array([[1.0, 0.0] if "-cat" in p else [0.0, 1.0] for p in paths]) + rng.normal(0, 0.1, (len(paths), 2))
    return list(paths), X.astype(np.float32)


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_assisted_labels_get_a_column_that_manifests_accept(tmp_path):
    root = tmp_path / "ds"
    paths = make_dataset(root, 4, decodable=False)
    store = LabelStore(root, ["cat", "dog"])
    store.set(paths[0], "cat")
    assert (root / "labels.csv").read_text() == f"path,label\n{paths[0]},cat\n"  # plain labelling: no new column
    store.set_many([(paths[1], "dog", False, True), (paths[2], "cat", False, True)])
    with open(root / "labels.csv", newline="") as f:
        rows = {r["path"]: r["assisted"] for r in csv.DictReader(f)}
    assert rows == {paths[0]: "", paths[1]: "1", paths[2]: "1"}
    assert LabelStore(root).assisted == {paths[1], paths[2]}
    assert load_dataset(root / "labels.csv").counts() == {"all": {"cat": 2, "dog": 1}}
    store.set(paths[1], "cat")  # a person's own label replaces the accepted suggestion
    assert LabelStore(root).assisted == {paths[2]}
    with pytest.raises(KeyError):
        store.set_many([(paths[3], "dog", False, True), ("../x.jpg", "dog", False, True)])
    assert paths[3] not in LabelStore(root).labels  # all or nothing


def test_a_labels_csv_with_the_users_columns_given_as_a_manifest_points_to_label_export(tmp_path):
    """labels.csv keeps a person's own columns and the rows of undone labels; read as a plain manifest it is refused
    (a misspelt column must not pass), and the message says which command reads it."""
    root = tmp_path / "my data"
    paths = make_dataset(root, 6, decodable=False)
    store = LabelStore(root, ["cat", "dog"])
    store.set(paths[0], "cat")
    store.set(paths[1], "dog")
    store.set(paths[2], "cat")
    store.set_many([(paths[3], "dog", False, False), (paths[4], "cat", False, False)])
    text = (root / "labels.csv").read_text().replace("path,label\n", "path,label,note\n", 1)
    (root / "labels.csv").write_text(text.replace(f"{paths[0]},cat\n", f"{paths[0]},cat,blurry\n"))
    store.set(paths[0], None)  # undone: the row stays for its note, with an empty label
    assert f"{paths[0]},,blurry" in (root / "labels.csv").read_text()
    hint = r"labeler's labels.csv .*`tltool label export '.*my data'`"
    with pytest.raises(TltoolError, match=r"unknown column\(s\) \['note'\]" + r"[\s\S]*" + hint):
        load_dataset(root / "labels.csv")
    plain = tmp_path / "plain" / "labels.csv"  # an empty label without a column of one's own: a hand edit
    plain.parent.mkdir()
    plain.write_text(f"path,label\n{root / paths[1]},dog\n{root / paths[2]},\n")
    with pytest.raises(TltoolError, match=r"empty label for .*" + r"[\s\S]*labeler's labels.csv"):
        load_dataset(plain)
    other = tmp_path / "manifest.csv"
    other.write_text(f"path,label,note\n{root / paths[1]},dog,x\n")
    with pytest.raises(TltoolError, match="unknown column") as refused:
        load_dataset(other)
    assert "label export" not in str(refused.value)  # only the labeler's file gets the hint
    exported = export_labels(root, val_fraction=0.5)  # what the hint names reads it: two of each
    assert sorted(r.label for r in load_dataset(exported.out).records) == ["cat", "cat", "dog", "dog"]


def test_the_export_names_the_accepted_suggestions(tmp_path):
    root = tmp_path / "ds"
    paths = make_dataset(root, 6, decodable=False)
    store = LabelStore(root, ["a", "b"])
    store.set_many([(p, "a", False, True) for p in paths[:3]] + [(p, "b", False, False) for p in paths[3:]])
    result = export_labels(root, val_fraction=0.34)
    assert json.loads((result.out / EXPORT_MARKER).read_text())["assisted"] == paths[:3]


def test_the_assistant_suggests_orders_and_offers_grids(tmp_path):
    root = tmp_path / "ds"
    truth = make_two_kinds(root, 40)
    store = LabelStore(root, ["cat", "dog"])
    settings = AssistSettings(retrain_every=1, grid_size=8, grid_min_p=0.0, typical_per_class=4)  # a head on 4 labels is not sure yet
    assistant = Assistant(store, settings, featurize=kind_features).start()
    try:
        assert assistant.wait_ready(20)
        rule, order = assistant.order()
        typical = order[:8]  # k-means groups: 4 per class
        assert rule == "typical" and {truth[p] for p in typical} == {"cat", "dog"} and sorted(order) == sorted(truth)
        assert assistant.grid()["items"] == []  # no head yet
        for path in typical[:4]:
            store.set(path, truth[path])
            assistant.observe([(path, truth[path])])
        wait_for(lambda: assistant.snapshot is not None and assistant.snapshot.trained_on == 4)
        assert assistant.grid()["reason"] == "label the 4 typical photo(s) offered first"  # no grid from a raw head
        for path in typical[4:]:
            store.set(path, truth[path])
            assistant.observe([(path, truth[path])])
        wait_for(lambda: assistant.snapshot.trained_on == 8)
        open_paths = [p for p in truth if p not in store.labels]
        assert all(assistant.suggestion(p)[0] == truth[p] for p in open_paths)
        grid = assistant.grid("dog")
        sure = max(assistant.suggestion(p)[1] for p in open_paths)
        assistant.settings = AssistSettings(grid_min_p=sure + 1e-3)
        assert assistant.grid("dog")["items"] == []  # photos below grid_min_p are offered one by one instead
        assistant.settings = settings
        assert grid["label"] == "dog" and len(grid["items"]) == 8 and all(truth[i["path"]] == "dog" for i in grid["items"])
        assert [i["p"] for i in grid["items"]] == sorted((i["p"] for i in grid["items"]), reverse=True)
        wrongly = grid["items"][0]["path"]
        assistant.reject([wrongly], "dog")  # the user says: not a dog
        assert assistant.suggestion(wrongly)[0] == "cat" and wrongly not in [i["path"] for i in assistant.grid("dog")["items"]]
        status = assistant.status()
        assert status["since_retrain"] == {"right": 0, "judged": 1}  # the rejection counts against the head
        version = status["version"]
        before = assistant.status()["all"]
        cat = next(p for p in open_paths if truth[p] == "cat" and p != wrongly)
        store.set(cat, "cat", assisted=True)
        assistant.observe([(cat, "cat")])
        assert assistant.status()["all"] == {"right": before["right"] + 1, "judged": before["judged"] + 1}
        wait_for(lambda: assistant.status()["version"] > version)  # retrain_every=1
        assert assistant.status()["since_retrain"] == {"right": 0, "judged": 0}  # the new head is judged afresh
    finally:
        assistant.stop()


def test_a_grid_is_offered_only_when_it_saves_actions(tmp_path):
    root = tmp_path / "ds"
    paths = sorted(make_two_kinds(root, 11))
    store = LabelStore(root, ["a", "b", "c"])
    assistant = Assistant(store, AssistSettings(grid_min_p=0.5), featurize=kind_features)
    assistant._load_features()
    assistant.typical = []
    for path, label in zip(paths[:3] + paths[10:], "abcb"):  # "a" has fewest labels: its grid would come first
        store.set(path, label)
    proba = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.4, 0], [0.6, 0.4, 0]]
                     + [[0.045, 0.95, 0.005]] * 5 + [[0, 1, 0]], np.float32)
    assistant.snapshot = Snapshot(1, 4, proba[[paths.index(p) for p in assistant.paths]])
    assistant.tallies[1] = Tally()
    assert Assistant.grid_saving([1.0] * 24) == 23 and Assistant.grid_saving([0.6, 0.6]) == pytest.approx(0.2)
    grid = assistant.grid()  # two photos of "a" at 0.6 would save less than an action as a grid
    assert grid["label"] == "b" and {i["path"] for i in grid["items"]} == set(paths[5:10]) and grid["left"] == 7
    assert {i["path"] for i in assistant.grid("a")["items"]} == set(paths[3:5])  # asked for: shown anyway
    assistant.reject(paths[5:7], "b")
    assistant.reject(paths[6:7], "a")
    # rejected once, the rest points to "a" (0.045 of 0.05 = 0.9): it joins a grid of "a"; rejected twice: never
    items = assistant.grid("a")["items"]
    assert (items[0]["path"], items[0]["p"]) == (paths[5], 0.9) and {i["path"] for i in items[1:]} == set(paths[3:5])
    assert assistant.grid("c")["items"] == []


def test_a_label_the_head_already_learnt_is_not_judged_and_does_not_retrain(tmp_path):
    """The server saves a label before it tells the assistant; a retrain in between has learnt it already."""
    root = tmp_path / "ds"
    paths = sorted(make_two_kinds(root, 6))
    store = LabelStore(root, ["a", "b"])
    assistant = Assistant(store, AssistSettings(retrain_every=1), featurize=kind_features)
    assistant._load_features()
    store.set(paths[0], "a")
    store.set(paths[1], "b")
    assistant._retrain()  # learns both labels before it is told of them
    assistant.observe([(paths[0], "a"), (paths[1], "b")])
    assert assistant.status()["since_retrain"] == {"right": 0, "judged": 0} and not assistant._due()
    assistant.observe([(paths[1], "a")])  # relabelled: judged, and a new label to learn
    assert assistant.status()["since_retrain"]["judged"] == 1 and assistant._due()
    store.set(paths[2], "a")
    assistant._in_training = {paths[2]: "a"}  # told while a retrain that read it is running
    assistant._new_labels = 0
    assistant.observe([(paths[2], "a")])
    assert not assistant._due()


def test_grids_and_suggestions_over_http(tmp_path):
    root = tmp_path / "ds"
    truth = make_two_kinds(root, 30)
    server = make_server(root, ["cat", "dog"], featurize=kind_features, assist=AssistSettings(retrain_every=2, grid_min_p=0.0, typical_per_class=1))
    running = Running.around(server)
    try:
        assert server.assistant.wait_ready(20)
        first = json.loads(running.request("GET", "/api/assist")[1])
        assert first["rule"] == "typical" and first["suggestions"] == {} and len(first["order"]) == 30
        unchanged = json.loads(running.request("GET", f"/api/assist?since={first['revision']}")[1])
        assert "order" not in unchanged  # the page polls: nothing resent until something changes
        labelled = [p for p in first["order"] if truth[p] == "cat"][:1] + [p for p in first["order"] if truth[p] == "dog"][:1]
        for p in labelled:
            assert running.request("POST", "/api/set", {"path": p, "label": truth[p]})[0] == 200
        wait_for(lambda: json.loads(running.request("GET", "/api/assist")[1])["version"] >= 1)
        grid = json.loads(running.request("GET", "/api/grid?label=cat")[1])
        paths = [i["path"] for i in grid["items"]]
        assert grid["label"] == "cat" and len(paths) == 14 and all(truth[p] == "cat" for p in paths)
        status, body = running.request("POST", "/api/confirm", {"label": "cat", "accepted": paths[1:],
                                                                "rejected": paths[:1]})
        assert status == 200 and json.loads(body)["labelled"] == 15
        store = LabelStore(root)
        assert store.assisted == set(paths[1:]) and all(store.labels[p] == "cat" for p in paths[1:])
        assert paths[0] not in store.labels
        state = json.loads(running.request("GET", "/api/state")[1])
        assert state["assist"]["all"] == {"right": 13, "judged": 14}
        assert running.request("GET", "/api/grid?label=emu")[0] == 400
        assert running.request("POST", "/api/confirm", {"label": "cat", "accepted": ["../x.jpg"]})[0] == 404
        for bad in ({"accepted": None}, {"rejected": 5}, {"accepted": {paths[0]: 1}}):  # before: a TypeError
            assert running.request("POST", "/api/confirm", {"label": "cat", **bad})[0] == 400, bad
        conn = http.client.HTTPConnection("127.0.0.1", running.server.port, timeout=10)
        conn.request("POST", "/api/set", body=b"[" * 30000, headers={"Content-Type": "application/json"})
        assert conn.getresponse().status == 400  # nested 30,000 deep: a RecursionError before
        conn.close()
        # undoing the confirm: every photo's earlier state in one request, one write
        undo = [{"path": p, "label": None, "skipped": False, "assisted": False} for p in paths[1:]]
        status, body = running.request("POST", "/api/set", {"items": undo})
        assert status == 200 and json.loads(body)["labelled"] == 2 and len(json.loads(body)["items"]) == 13
        assert not set(paths[1:]) & set(LabelStore(root).labels)
        for bad in ({"items": []}, {"items": [{"label": "cat"}]}, {"items": "x"}):
            assert running.request("POST", "/api/set", bad)[0] == 400
        assert running.request("POST", "/api/set", {"items": [*undo[:1], {"path": "../x.jpg"}]})[0] == 404
        assert not set(paths[1:]) & set(LabelStore(root).labels)  # a refused request wrote nothing
    finally:
        running.close()


def test_features_are_extracted_in_a_child_process(tmp_path):
    """The real adapter: tltool.features in a child process (tiny input so it is quick), cached between runs."""
    root = tmp_path / "ds"
    truth = make_two_kinds(root, 4)
    (root / "unlabeled" / "broken.jpg").write_bytes(b"not a jpeg")
    featurize = extract_in_child(AssistSettings(weights="none", image_size=32), cache=tmp_path / "cache")
    paths, X = featurize(root, sorted(truth) + ["unlabeled/broken.jpg"])
    assert paths == sorted(truth) and X.shape == (4, 1280) and np.isfinite(X).all()
    assert (tmp_path / "cache" / "features.json").is_file()
    with pytest.raises(TltoolError, match="feature extraction failed"):
        extract_in_child(AssistSettings(backbone="resnet5"), cache=tmp_path / "c2")(root, sorted(truth))


# ------------------------------------------------------------------------------------------------ browser
def _playwright():
    """Playwright and Debian's Chromium, or a skip that says what is missing (a failure where CI requires them)."""
    give_up = pytest.fail if os.environ.get("TLTOOL_REQUIRE_BROWSER") == "1" else pytest.skip
    if not os.path.exists(CHROMIUM):
        give_up(f"browser test needs Chromium at {CHROMIUM}: apt-get install chromium chromium-driver")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        give_up("browser test needs Playwright for Python: pip install playwright (no browser download)")
    return sync_playwright, expect


def test_label_with_the_keyboard_in_a_real_browser(tmp_path):
    sync_playwright, expect = _playwright()
    root = tmp_path / "ds"
    paths = make_dataset(root, 6)
    running = Running(root, ["cat", "dog", "bird"])
    url = running.server.url
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(url)
            expect(page.locator("body")).to_have_attribute("data-ready", "1")
            expect(page.locator("#image")).to_have_js_property("complete", True)
            assert page.locator("#image").evaluate("img => img.naturalWidth") == 64
            assert page.inner_text("#position") == "image 1 of 6"
            assert page.inner_text("#progress") == "0 / 6 labelled · 0 skipped · 6 left"
            page.wait_for_load_state("networkidle")
            assert {f"{url}img/{p}" for p in paths[:4]} <= set(requested)  # the neighbours are pre-loaded

            for key in ["1", "2", "s", "3", "u", "1", "ArrowRight", "2"]:
                page.keyboard.press(key)
            # img0 cat, img1 dog, img2 skipped, img3 bird then undone then cat, img4 passed over, img5 dog
            expect(page.locator("body")).to_have_attribute("data-pending", "0")
            expect(page.locator("#progress")).to_have_text("4 / 6 labelled · 1 skipped · 1 left")
            assert page.inner_text("#position") == "end of 6 images"
            counts = {li.get_attribute("data-class"): li.query_selector(".count").inner_text()
                      for li in page.query_selector_all("#classes li")}
            assert counts == {"cat": "2", "dog": "2", "bird": "0"}
            page.keyboard.press("ArrowLeft")
            page.keyboard.press("ArrowLeft")
            assert page.inner_text("#position") == "image 5 of 6"
            assert page.inner_text("#current") == "no label"
            assert all(u.startswith(url) for u in requested)  # nothing from outside: works offline
            expect(page.locator("body")).to_have_attribute("data-pending", "0")
            assert read_labels(root)[paths[5]] == "dog"
            # a reload kept the undo history of this tab: its last action (img5 dog) is undone; another tab has none
            page.reload()
            expect(page.locator("body")).to_have_attribute("data-ready", "1")
            page.keyboard.press("u")
            expect(page.locator("body")).to_have_attribute("data-pending", "0")
            expect(page.locator("#message")).to_have_text(f"undone: {paths[5]}")
            other = browser.new_page()
            other.goto(url)
            expect(other.locator("body")).to_have_attribute("data-ready", "1")
            other.keyboard.press("u")
            expect(other.locator("#message")).to_have_text("nothing to undo")
            # the history is kept under the folder's identity, not its name: a later server of another folder
            # called "ds" at the same address (--port) finds nothing of this one's to undo in this tab
            twin = tmp_path / "elsewhere" / "ds"
            make_dataset(twin, 6)
            ids = [LabelStore(folder, ["cat", "dog", "bird"]).state()["dataset_id"] for folder in (root, twin)]
            assert ids[0] != ids[1] and page.evaluate("Object.keys(sessionStorage)") == [f"tltool-label-undo:{ids[0]}"]
            browser.close()
        assert read_labels(root) == {paths[0]: "cat", paths[1]: "dog", paths[3]: "cat"}
        assert LabelStore(root).skipped == {paths[2]}
    finally:
        running.close()


def test_accept_a_suggestion_and_confirm_a_grid_in_a_real_browser(tmp_path):
    sync_playwright, expect = _playwright()
    root = tmp_path / "ds"
    truth = make_two_kinds(root, 14)
    server = make_server(root, ["cat", "dog"], featurize=kind_features,
                         assist=AssistSettings(retrain_every=1, grid_min_p=0.0, typical_per_class=2,
                                               grid_min_saving=float("-inf")))  # the toy head is unsure: a grid anyway
    running = Running.around(server)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page()
            page.goto(server.url)
            expect(page.locator("body")).to_have_attribute("data-ready", "1")
            expect(page.locator("body")).to_have_attribute("data-assist", "ready")  # features are in
            for _ in range(4):  # the typical photos first; the person labels them with the number keys
                page.keyboard.press("1" if truth[page.inner_text("#name")] == "cat" else "2")
            expect(page.locator("body")).to_have_attribute("data-assist", "suggesting")
            expect(page.locator("#suggestion")).to_contain_text("Enter accepts")
            shown = page.inner_text("#name")
            assert page.inner_text("#suggestion").startswith(f"suggested: {truth[shown]} ")
            page.keyboard.press("Enter")  # one key accepts
            expect(page.locator("body")).to_have_attribute("data-pending", "0")
            assert LabelStore(root).assisted == {shown} and read_labels(root)[shown] == truth[shown]

            page.keyboard.press("g")
            expect(page.locator("body")).to_have_attribute("data-mode", "grid")
            tiles = page.locator("#tiles .tile")
            expect(tiles.first).to_be_visible()
            grid_label = page.inner_text("#grid-title").split(" suggested as ")[1].split(":")[0]
            paths = [tiles.nth(i).get_attribute("data-path") for i in range(tiles.count())]
            assert paths and all(truth[p] == grid_label for p in paths)
            tiles.first.click()  # the person says: not this class
            expect(tiles.first).to_have_class("tile misfit")
            other = "dog" if grid_label == "cat" else "cat"
            labelled_on_tile = paths[-1] if len(paths) > 1 else None
            if labelled_on_tile:  # or presses the right class's number on a tile: labelled at once
                tiles.nth(len(paths) - 1).hover()
                page.keyboard.press("1" if other == "cat" else "2")
                expect(tiles.nth(len(paths) - 1)).to_contain_text(f"labelled {other}")
            page.keyboard.press("Enter")
            expect(page.locator("body")).to_have_attribute("data-pending", "0")
            store = LabelStore(root)
            assert {p for p in paths[1:-1]} <= store.assisted and paths[0] not in store.labels
            if labelled_on_tile:
                assert store.labels[labelled_on_tile] == other and labelled_on_tile not in store.assisted
            assert all(store.labels[p] == grid_label for p in paths[1:-1])
            expect(page.locator("#assist")).to_contain_text("its suggestions right")
            page.keyboard.press("u")  # undoes the whole confirm, and leaves the grid
            expect(page.locator("body")).to_have_attribute("data-mode", "one")
            expect(page.locator("body")).to_have_attribute("data-pending", "0")
            store = LabelStore(root)
            assert not {p for p in paths[1:-1]} & set(store.labels) and not {p for p in paths[1:-1]} & store.assisted
            if labelled_on_tile:  # the tile's label was its own action: still there, and the next u undoes it
                assert store.labels[labelled_on_tile] == other
                page.keyboard.press("u")
                expect(page.locator("body")).to_have_attribute("data-pending", "0")
                assert labelled_on_tile not in LabelStore(root).labels
            assert LabelStore(root).labels[shown] == truth[shown]  # the earlier accepted suggestion stays
            browser.close()
    finally:
        running.close()


def test_export_and_suspects_leave_out_labels_csv_rows_outside_the_dataset(tmp_path):
    """The labeler writes only paths inside its folder; rows an edit put outside (``../x``, ``/etc/passwd``) are
    named and left out, as the server never serves them: export once hard-linked /etc/passwd into a class folder."""
    from tltool.dataset import ManifestWarning
    from tltool.labeler.store import load_labelled

    root = tmp_path / "ds"
    paths = make_dataset(root, 8, decodable=False)
    store = LabelStore(root, ["cat", "dog"])
    for i, path in enumerate(paths):
        store.set(path, "cat" if i % 2 else "dog")
    (tmp_path / "outside.jpg").write_bytes((root / paths[0]).read_bytes())
    with open(root / "labels.csv", "a", encoding="utf-8") as f:
        f.write("../outside.jpg,cat\n/etc/passwd,dog\n")
    with pytest.warns(ManifestWarning, match=r"2 row\(s\) left out.*outside.jpg, /etc/passwd"):
        assert len(load_labelled(root).records) == 8
    with pytest.warns(ManifestWarning):
        result = export_labels(root, val_fraction=0.25, seed=0)
    exported = sorted(p.name for p in result.out.rglob("*.jpg")) + sorted(p.name for p in result.out.rglob("passwd"))
    assert len(exported) == 8 and "passwd" not in exported and "outside.jpg" not in exported

    # a labelled file that is no image is named and not exported (before: exported as a class image)
    from tltool.errors import BadFilesWarning

    (root / paths[0]).write_text("not an image")
    with pytest.warns(BadFilesWarning, match=r"1 labelled file\(s\) not exported:\n  .*img_000.jpg: not an image"), \
            pytest.warns(ManifestWarning):  # the rows outside are still in labels.csv
        result = export_labels(root, val_fraction=0.25, seed=0, force=True)
    assert len(list(result.out.rglob("*.jpg"))) == 7


def test_a_labels_lock_that_is_a_link_is_refused_and_nothing_is_made_at_its_target(tmp_path):
    """``.labels.lock`` was opened with ``open(path, "a")``: a link there made (or appended to) its target."""
    root = tmp_path / "ds"
    paths = make_dataset(root, 3, decodable=False)
    (tmp_path / "victim").mkdir()
    target = tmp_path / "victim" / "x"
    store = LabelStore(root, ["cat", "dog"])
    (root / ".labels.lock").symlink_to(target)  # made after the store was
    with pytest.raises(TltoolError, match=r"\.labels\.lock is a link; tltool does not follow links at its lock"):
        store.set(paths[0], "cat")
    with pytest.raises(TltoolError, match=r"\.labels\.lock is a link"):  # and `label serve` refuses at once
        LabelStore(root, ["cat", "dog"])
    assert not target.exists() and not (root / "labels.csv").exists()
    (root / ".labels.lock").unlink()
    (root / ".labels.lock").mkdir()  # not a regular file either
    with pytest.raises(TltoolError, match=r"\.labels\.lock is not a regular file"):
        store.set(paths[0], "cat")
    (root / ".labels.lock").rmdir()
    store.set(paths[0], "cat")
    assert (root / ".labels.lock").is_file() and not (root / ".labels.lock").is_symlink()
    # through the server: a link made while it runs is a clear refusal, not a traceback; nothing lands outside
    running = Running(root, ["cat", "dog"])
    try:
        (root / ".labels.lock").unlink()
        (root / ".labels.lock").symlink_to(target)
        status, body = running.request("POST", "/api/set", {"path": paths[1], "label": "dog"})
        assert status == 409 and "is a link" in json.loads(body)["error"]
        assert running.request("GET", "/api/state")[0] == 409
    finally:
        running.close()
    assert not target.exists() and read_labels(root) == {paths[0]: "cat"}


def test_a_linked_labels_csv_is_refused(tmp_path):
    """A labels.csv linked to a file outside was read, and its rows written back into the dataset."""
    from tltool.labeler.store import load_labelled, read_labels_csv

    root = tmp_path / "ds"
    make_dataset(root, 3, decodable=False)
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("path,label\n/etc/hostname,cat\nunlabeled/img_000.jpg,dog\n")
    (root / "labels.csv").symlink_to(outside)
    for read in (lambda: LabelStore(root, ["cat", "dog"]), lambda: read_labels_csv(root / "labels.csv"),
                 lambda: load_labelled(root), lambda: export_labels(root, val_fraction=0.25, seed=0)):
        with pytest.raises(TltoolError, match=r"labels\.csv is a link; tltool does not follow links"):
            read()
    assert outside.read_text() == "path,label\n/etc/hostname,cat\nunlabeled/img_000.jpg,dog\n"
    result = CliRunner().invoke(main, ["label", "export", str(root)])
    assert result.exit_code != 0 and "is a link" in result.output and "Traceback" not in result.output


def test_labels_csv_rows_outside_the_dataset_are_named_once_and_never_written_back(tmp_path):
    from tltool.dataset import ManifestWarning

    root = tmp_path / "ds"
    paths = make_dataset(root, 3, decodable=False)
    (tmp_path / "outside.jpg").write_bytes((root / paths[0]).read_bytes())
    (root / "labels.csv").write_text(f"path,label\n/etc/hostname,cat\n../outside.jpg,dog\n{paths[1]},dog\n")
    with pytest.warns(ManifestWarning, match=r"2 row\(s\) left out.*/etc/hostname, \.\./outside\.jpg.*not be written "
                                             r"back") as caught:
        store = LabelStore(root, ["cat", "dog"])
    assert len([w for w in caught if issubclass(w.category, ManifestWarning)]) == 1
    assert store.labels == {paths[1]: "dog"}
    store.set(paths[0], "cat")
    assert read_labels(root) == {paths[0]: "cat", paths[1]: "dog"}


def test_labels_csv_paths_in_a_warning_have_their_control_characters_escaped(tmp_path):
    """A labels.csv row outside the folder was named as written: its terminal escape coloured the warning."""
    from tltool.dataset import ManifestWarning

    root = tmp_path / "ds"
    make_dataset(root, 2, decodable=False)
    (root / "labels.csv").write_text("path,label\n../x\x1b[31m.jpg,cat\n")
    with pytest.warns(ManifestWarning, match=r"left out.*: \.\./x\\x1b\[31m\.jpg; they will not") as caught:
        LabelStore(root, ["cat", "dog"])
    assert all("\x1b" not in str(w.message) for w in caught)


def test_set_requires_json_booleans_for_skipped_and_assisted(served):
    path = "unlabeled/img_001.jpg"
    for field, value in (("skipped", "no"), ("assisted", "no"), ("skipped", 1), ("skipped", None),
                         ("assisted", "false")):
        status, body = served.request("POST", "/api/set", {"path": path, "label": "cat" if field == "assisted" else
                                                           None, field: value})
        assert status == 400, (field, value)
        assert f'"{field}" must be true or false' in json.loads(body)["error"]
        status, body = served.request("POST", "/api/set", {"items": [{"path": path, "label": None, field: value}]})
        assert status == 400
    root = served.server.store.root
    assert not (root / "labels.csv").exists() and not (root / "skipped.csv").exists()  # nothing was written
    status, body = served.request("POST", "/api/set", {"path": path, "label": None, "skipped": True})
    assert status == 200 and json.loads(body)["item"]["skipped"] is True
    status, body = served.request("POST", "/api/set", {"path": path, "label": "cat", "assisted": True})
    assert status == 200 and json.loads(body)["item"]["assisted"] is True


# ------------------------------------------------------------------------------------------------ hostile input
def _raw_exchange(port: int, request: bytes, then: bytes = b"") -> bytes:
    """Send ``request`` on one connection (and ``then`` once an interim answer came); everything read until the
    server closes it, or 10 s of silence (a connection kept open; each use expects a close, so the wait only
    bounds a slow server on a loaded machine)."""
    import socket

    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if then and b"100 Continue" in received:
                    sock.sendall(then)
                    then = b""
        except (TimeoutError, ConnectionError):
            pass
    return received


def test_a_refused_request_cannot_smuggle_another_in_its_body(served):
    """A refused POST's body was left unread on the kept-open connection, so it was read as the next request: a
    cross-site form (``text/plain``, no preflight) carried a whole ``POST /api/set`` without Origin, and it passed."""
    from tltool.labeler.server import MAX_BODY

    port, root = served.server.port, served.server.store.root
    body = json.dumps({"path": "unlabeled/img_001.jpg", "label": "dog"})
    inner = (f"POST /api/set HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(body)}\r\n\r\n{body}")
    cross_site = "Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\nContent-Type: text/plain\r\n"
    for head, status in ((f"POST /api/set HTTP/1.1\r\n{cross_site}", 403),
                         ("POST /api/set HTTP/1.1\r\nContent-Type: text/plain\r\n", 415),
                         ("POST /api/nothing HTTP/1.1\r\nContent-Type: application/json\r\n", 404),
                         ("GET /api/state HTTP/1.1\r\n", 200)):
        answer = _raw_exchange(port, f"{head}Host: 127.0.0.1:{port}\r\nContent-Length: {len(inner)}\r\n\r\n{inner}"
                               .encode())
        assert answer.startswith(f"HTTP/1.1 {status}".encode()) and answer.count(b"HTTP/1.1 ") == 1, head
        assert b"\r\nConnection: close\r\n" in answer
    # a body too large to read, or one whose length is not one Content-Length: the connection closes unread
    for framing in (f"Content-Length: {MAX_BODY + 1}\r\n", "Transfer-Encoding: chunked\r\n",
                    f"Content-Length: {len(inner)}\r\nContent-Length: 0\r\n"):
        answer = _raw_exchange(port, (f"POST /api/set HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                                      f"application/json\r\n{framing}\r\n{inner}").encode())
        assert answer.count(b"HTTP/1.1 ") <= 1, framing  # (a reset may come before the answer is read)
    assert not (root / "labels.csv").exists()
    # a client that waits for "100 Continue" still sends its body and is answered
    answer = _raw_exchange(port, (f"POST /api/set HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                                  f"application/json\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n"
                                  "Connection: close\r\n\r\n").encode(), then=body.encode())
    assert b"HTTP/1.1 100 Continue" in answer and b"HTTP/1.1 200" in answer
    assert read_labels(root) == {"unlabeled/img_001.jpg": "dog"}


def test_a_name_that_is_not_utf8_is_left_out_and_a_failed_save_changes_nothing(tmp_path, monkeypatch):
    """Such a photo was listed; labelling it failed to save after the label was kept in memory, so every later
    save failed too."""
    import tltool.labeler.store as store_module
    from tltool.errors import BadFilesWarning

    root = tmp_path / "ds"
    paths = make_dataset(root, 3, decodable=False)
    os.rename(root / paths[2], os.path.join(os.fsencode(root / "unlabeled"), b"caf\xe9.jpg"))  # Latin-1 bytes
    with pytest.warns(BadFilesWarning, match=r"1 image\(s\) left out, their names are not valid UTF-8.*caf\?\.jpg"):
        store = LabelStore(root, ["cat", "dog"])
    assert store.items == paths[:2]
    store.set(paths[0], "cat")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "_write_csv", full_disk)
    with pytest.raises(TltoolError, match=r"cannot write .*labels\.csv \(No space left on device\)"):
        store.set_many([(paths[0], None, True, False), (paths[1], "dog", False, False)])
    assert store.labels == {paths[0]: "cat"} and store.skipped == set()  # as on disk
    monkeypatch.undo()
    store.set(paths[0], "dog")
    assert read_labels(root) == {paths[0]: "dog"}
    with pytest.warns(BadFilesWarning):
        assert LabelStore(root).labels == {paths[0]: "dog"}


def test_a_hand_made_labels_csv_is_never_overwritten_or_trimmed(tmp_path, monkeypatch):
    """A file without a ``path`` column read as no labels, and the first key press replaced it; other columns
    were dropped at every rewrite."""
    import tltool.labeler.server as server_module

    root = tmp_path / "ds"
    paths = make_dataset(root, 4, decodable=False)
    mine = f"file,label\n{paths[0]},cat\n{paths[1]},dog\n"
    (root / "labels.csv").write_text(mine)
    with pytest.raises(TltoolError, match=r"labels\.csv: no path column \(its header: file,label\)"):
        LabelStore(root, ["cat", "dog"])
    monkeypatch.setattr(server_module.LabelerServer, "serve_forever", lambda self: None)  # never serve: old code
    result = CliRunner().invoke(main, ["label", "serve", str(root), "--classes", "cat,dog", "--no-assist"])
    assert result.exit_code != 0 and "no path column" in result.output and "Traceback" not in result.output
    assert (root / "labels.csv").read_text() == mine
    (root / "labels.csv").write_text(f"path,label,notes\n{paths[0]},cat,\"blurry, check\"\n{paths[1]},,ask Ann\n"
                                     f"{paths[2]},dog,\n")
    store = LabelStore(root, ["cat", "dog"])
    assert store.labels == {paths[0]: "cat", paths[2]: "dog"}
    store.set(paths[3], "dog")
    store.set(paths[2], None)  # undone: the row goes, it held nothing else
    store.set(paths[0], "dog", assisted=True)
    with open(root / "labels.csv", newline="") as f:
        assert list(csv.reader(f)) == [["path", "label", "notes", "assisted"], [paths[0], "dog", "blurry, check", "1"],
                                       [paths[1], "", "ask Ann", ""], [paths[3], "dog", "", ""]]
    # what label export reads: the user's column is not read, the row whose label was undone is not labelled
    from tltool.labeler.store import load_labelled

    labelled = load_labelled(root)
    assert {Path(r.path).relative_to(root.resolve()).as_posix(): r.label for r in labelled.records} == {
        paths[0]: "dog", paths[3]: "dog"}
    # a split column of the user's is kept, and left empty for what the labeler labels: export draws its own split
    (root / "labels.csv").write_text(f"path,label,split\n{paths[0]},cat,train\n{paths[1]},dog,val\n")
    LabelStore(root, ["cat", "dog"]).set(paths[2], "dog")
    assert {r.label for r in load_labelled(root).records} == {"cat", "dog"} and not any(
        r.split for r in load_labelled(root).records)


def test_paths_written_another_way_in_labels_csv_name_the_same_image(tmp_path):
    """``./unlabeled/x.jpg`` or an absolute path was kept as written: the image was listed twice, and after the
    next key press labels.csv held it twice, so export refused it."""
    root = tmp_path / "ds"
    paths = make_dataset(root, 6, decodable=False)
    (root / "labels.csv").write_text(f"path,label\n./{paths[0]},cat\n{(root / paths[1]).resolve()},dog\n"
                                     f"unlabeled//{paths[2].split('/')[1]},cat\n")
    store = LabelStore(root, ["cat", "dog"])
    assert store.items == paths and store.summary()["labelled"] == 3
    assert store.labels == {paths[0]: "cat", paths[1]: "dog", paths[2]: "cat"}
    store.set(paths[0], "dog")
    for path in paths[3:]:
        store.set(path, "cat")
    assert read_labels(root) == {paths[0]: "dog", paths[1]: "dog", paths[2]: "cat", **{p: "cat" for p in paths[3:]}}
    result = export_labels(root, val_fraction=0.34, seed=0)
    assert len(list(result.out.rglob("*.jpg"))) == 6


def test_a_confirm_without_assistance_is_refused_and_records_nothing(served):
    """With assistance off no suggestion was ever shown, yet ``/api/confirm`` answered 200 and wrote its photos into
    labels.csv as accepted suggestions (assisted 1). Now it is refused as ``/api/grid`` is."""
    path = served.server.store.items[0]
    status, body = served.request("POST", "/api/confirm", {"label": "cat", "accepted": [path], "rejected": []})
    assert status == 404 and "assistance is off" in json.loads(body)["error"]
    assert served.server.store.labels == {} and not (served.server.store.root / "labels.csv").exists()


def _assisted(root: Path) -> tuple[dict[str, str], object, Running]:
    """A labeler with assistance on 12 photos of two kinds (each kind's truth), its assistant ready."""
    truth = make_two_kinds(root, 12)
    server = make_server(root, ["cat", "dog"], featurize=kind_features,
                         assist=AssistSettings(retrain_every=1, typical_per_class=1))
    running = Running.around(server)
    assert server.assistant.wait_ready(20)
    return truth, server, running


def test_a_confirm_with_an_unknown_class_is_refused_and_suggestions_go_on(tmp_path):
    """``/api/confirm`` with an unknown label and nothing accepted stored the label as rejected; every later
    suggestion then failed (ValueError in classes.index)."""
    root = tmp_path / "ds"
    truth, server, running = _assisted(root)
    try:
        for kind in ("cat", "dog"):
            path = next(p for p, k in truth.items() if k == kind)
            assert running.request("POST", "/api/set", {"path": path, "label": kind})[0] == 200
        wait_for(lambda: server.assistant.snapshot is not None)
        open_path = next(p for p in truth if p not in server.store.labels)
        bogus = {"label": "emu", "accepted": [], "rejected": [open_path]}
        status, body = running.request("POST", "/api/confirm", bogus)
        assert status == 400 and "unknown class 'emu'" in json.loads(body)["error"]
        server.assistant.reject([open_path], "emu")  # and the assistant itself ignores a class it does not know
        status, body = running.request("GET", "/api/assist")
        assert status == 200 and json.loads(body)["suggestions"][open_path][0] == truth[open_path]
        assert running.request("GET", "/api/grid?label=cat")[0] == 200
    finally:
        running.close()


def test_a_grid_confirm_never_overwrites_a_label_or_skip_another_tab_saved_since(tmp_path):
    """A grid offers open photos; its confirm sent no ``expect``: a photo labelled (or skipped) in another tab after
    the grid opened was relabelled as an accepted suggestion, that tab's label gone. A path listed twice counted
    twice."""
    root = tmp_path / "ds"
    truth, server, running = _assisted(root)
    try:
        open_paths = sorted(truth)
        by_hand, skipped, free = open_paths[0], open_paths[1], open_paths[2]
        assert running.request("POST", "/api/set", {"path": by_hand, "label": "dog"})[0] == 200  # the other tab
        assert running.request("POST", "/api/set", {"path": skipped, "label": None, "skipped": True})[0] == 200
        for stale in (by_hand, skipped):
            status, body = running.request("POST", "/api/confirm", {"label": "cat", "accepted": [free, stale],
                                                                    "rejected": []})
            assert status == 409 and "changed elsewhere" in json.loads(body)["error"], body
        store = LabelStore(root)
        assert store.labels == {by_hand: "dog"} and store.skipped == {skipped} and not store.assisted
        status, body = running.request("POST", "/api/confirm", {"label": "cat", "accepted": [free, free],
                                                                "rejected": []})
        assert status == 200 and json.loads(body)["accepted"] == 1 and LabelStore(root).labels[free] == "cat"
    finally:
        running.close()


def test_connections_beyond_the_limit_get_a_503_and_the_labeler_serves_again_once_they_go(tmp_path, monkeypatch):
    """Every connection took a thread, kept for the 120 s idle timeout: a client could hold any number of them. One
    over the limit is told why (503), not closed unanswered."""
    import socket

    from tltool.labeler.server import LabelerServer

    monkeypatch.setattr(LabelerServer, "max_connections", 3, raising=False)
    root = tmp_path / "ds"
    make_dataset(root, 2)
    running = Running(root, ["cat", "dog"])
    try:
        address = ("127.0.0.1", running.server.port)
        idle = [socket.create_connection(address, timeout=5) for _ in range(3)]
        time.sleep(0.3)  # accepted, each held by its thread
        extra = socket.create_connection(address, timeout=5)
        answer = b""
        while chunk := extra.recv(4096):  # answered at once and closed: a 503 that says why
            answer += chunk
        extra.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 5" in head
        assert b"as many connections as it allows" in body
        asked = socket.create_connection(address, timeout=5)  # a client that sends its request first reads it too
        asked.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.2)
        assert asked.recv(4096).startswith(b"HTTP/1.1 503 ")
        asked.close()
        for s in idle:
            s.close()
        for _ in range(50):  # the slots come back as the threads see their connections closed
            try:
                if running.request("GET", "/api/state")[0] == 200:
                    break
            except (ConnectionError, http.client.HTTPException):
                time.sleep(0.1)
        else:
            raise AssertionError("the labeler did not serve again after the idle connections closed")
    finally:
        running.close()


def test_a_connection_that_sends_no_request_is_closed_soon_and_a_keep_alive_one_is_kept(served, monkeypatch):
    """A bare connect held its slot (and thread) for the full 120 s keep-alive timeout."""
    import socket

    from tltool.labeler.server import LabelerHandler

    monkeypatch.setattr(LabelerHandler, "first_request_timeout", 0.5, raising=False)
    address = ("127.0.0.1", served.server.port)
    with socket.create_connection(address, timeout=5) as bare:
        started = time.monotonic()
        assert bare.recv(1) == b"" and time.monotonic() - started < 4  # closed by the server, not by our timeout
    conn = http.client.HTTPConnection(*address, timeout=5)
    for _ in range(2):  # a request, then a pause longer than the first-request timeout, then another
        conn.request("GET", "/api/state")
        assert conn.getresponse().read() and conn.sock is not None
        time.sleep(1.0)
    conn.close()


def test_an_exports_record_of_its_sources_is_used_only_when_it_points_into_a_labeler_folder(tmp_path):
    """From a review: suspects of a split trusted its export.json, so a split moved to another machine (or a
    hostile record) sent the review to a folder that is not there, or to any folder at all."""
    from tltool.labeler.export import export_origin
    from tltool.labeler.store import EXPORT_MARKER

    labeler, split = tmp_path / "mine", tmp_path / "split"
    (labeler / "unlabeled").mkdir(parents=True)
    (labeler / "unlabeled" / "a.jpg").write_bytes(b"x")
    (labeler / "labels.csv").write_text("path,label\nunlabeled/a.jpg,cat\n")
    (split / ".tltool").mkdir(parents=True)

    def origin(labels, sources):
        (split / EXPORT_MARKER).write_text(json.dumps({"labels": labels, "sources": sources}))
        return export_origin(split)

    good = {"train/cat/a.jpg": "unlabeled/a.jpg"}
    assert origin(str(labeler / "labels.csv"), good) == (labeler.resolve(), good)
    assert origin(str(tmp_path / "moved" / "labels.csv"), good) is None  # no labeler folder there
    assert origin("", good) is None
    hostile = {"train/cat/a.jpg": "../../etc/passwd", "train/cat/b.jpg": "/etc/passwd",
               "train/cat/c.jpg": "unlabeled/missing.jpg"}
    assert origin(str(labeler / "labels.csv"), hostile) == (labeler.resolve(), {})


def test_a_save_keeps_the_order_of_a_users_labels_csv(tmp_path):
    """The first save rewrote labels.csv sorted by path: a user's own order (by date, by source) was lost."""
    root = tmp_path / "ds"
    paths = make_dataset(root, 4, decodable=False)
    (root / "labels.csv").write_text(f"path,label\n{paths[2]},cat\n{paths[0]},dog\n")
    LabelStore(root, ["cat", "dog"]).set(paths[1], "cat")
    assert (root / "labels.csv").read_text().splitlines() == [
        "path,label", f"{paths[2]},cat", f"{paths[0]},dog", f"{paths[1]},cat"]


def test_labels_of_an_earlier_round_do_not_make_the_assistant_fit_one_class(tmp_path):
    """`label serve --classes cat,bird` on a folder labelled cat/dog before: the dog labels are kept but are no
    class the head suggests, so one labelled class (cat) is not enough to train it (it used to crash the thread)."""
    root = tmp_path / "ds"
    paths = sorted(make_two_kinds(root, 8))
    LabelStore(root, ["cat", "dog"]).set_many([(p, "cat" if "-cat" in p else "dog", False, False) for p in paths[:6]])
    store = LabelStore(root, ["cat", "bird"])
    assistant = Assistant(store, AssistSettings(retrain_every=1), featurize=kind_features)
    assistant._load_features()
    assert not assistant._due()  # cat alone among the classes offered
    store.set(paths[7], "bird")
    assert assistant._due()
    assistant._retrain()
    assert assistant.snapshot.trained_on == sum("-cat" in p for p in paths[:6]) + 1
    assert all(assistant.suggestion(p)[0] in ("cat", "bird") for p in paths)


def test_exporting_the_export_names_the_labelled_folder(tmp_path, monkeypatch):
    """A newcomer runs `label export mydata-split` (the folder the first export printed): it used to say `no labels
    yet. Label the images first: tltool label serve mydata-split`, which would label the split's copies."""
    root = tmp_path / "mydata"
    paths = make_dataset(root, 4, decodable=False)
    LabelStore(root, ["a", "b"]).set_many([(p, "ab"[i % 2], False, False) for i, p in enumerate(paths)])
    split = export_labels(root, val_fraction=0.5).out
    with pytest.raises(TltoolError) as refused:
        export_labels(split)
    message = str(refused.value)
    assert "what `tltool label export` wrote" in message and f"tltool label export {root}" in message
    assert "label serve" not in message
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TltoolError, match=r"no labels yet.*tltool collect import other --out other-dataset && "
                                          r"tltool label serve other-dataset"):  # any other folder: import, label
        export_labels("other")


def folder_bytes(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (hidden ones too) and the bytes of each file: None for a folder."""
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def test_label_serve_refuses_a_folder_tltool_did_not_make_and_writes_nothing_there(tmp_path, monkeypatch):
    """Before: `tltool label serve ~/Pictures/trip` (as `tltool probe` on unsorted photos advised) wrote labels.csv,
    skipped.csv and .labels.lock into the user's own folder. Now it refuses before writing anything, in one line
    that names the commands that work: `collect import` into a new dataset folder, then `label serve` that."""
    monkeypatch.chdir(tmp_path)
    trip = tmp_path / "trip"
    for i in range(3):
        noise_image(trip / f"p{i}.jpg", seed=i, size=(64, 48))
    review = tmp_path / "review.csv"
    review.write_text("path\np1.jpg\n")
    before = folder_bytes(trip)
    advice = ("error: trip: is not a folder tltool made, and labelling writes labels.csv into the folder it labels; "
              "import the photos into a new dataset folder first (copies, duplicates dropped; the folder stays as it "
              "is), then label that: tltool collect import trip --out trip-dataset && tltool label serve trip-dataset "
              "--classes a,b")
    def stopped(server, *args):  # a labeler that did start returns at once (Ctrl-C), instead of serving forever
        raise KeyboardInterrupt

    monkeypatch.setattr(LabelerServer, "serve_forever", stopped)
    for extra in ([], ["--review", str(review)]):
        result = CliRunner().invoke(main, ["label", "serve", "trip", "--classes", "a,b", "--no-assist", *extra])
        assert result.exit_code == 2 and result.output.strip().splitlines() == [advice], result.output
    with pytest.raises(TltoolError, match="is not a folder tltool made"):
        LabelStore(trip, ["a", "b"])
    assert folder_bytes(trip) == before  # no labels.csv, skipped.csv or lock file
    run = tmp_path / "run"  # another kind of tltool folder (replaced whole by a later --force): refused too
    make_dataset(run, 2, decodable=False)
    mark_output_dir(run, "run")
    with pytest.raises(TltoolError, match="^.*run: is a tltool run folder, not one `collect import` made"):
        LabelStore(run, ["a", "b"])
    dataset = tmp_path / "ds"  # the unlabeled/ of a dataset folder: its dataset folder is the one to label
    make_dataset(dataset, 2, decodable=False)
    with pytest.raises(TltoolError, match=r"unlabeled: is the unlabeled/ folder of the dataset folder .*ds, whose "
                                          r"labels.csv goes beside it; label that folder: tltool label serve .*ds "
                                          r"--classes a,b$"):
        LabelStore(dataset / "unlabeled", ["a", "b"])
    assert not (dataset / "unlabeled" / "labels.csv").exists() and not (run / "labels.csv").exists()


def test_the_advice_for_unsorted_photos_imports_them_first_and_works_as_printed(tmp_path, monkeypatch):
    """`tltool probe trip` (or `data inspect`, `extract`) on photos right in a folder advised `label them with
    `tltool label serve``, a command that wrote into the user's folder and now refuses it. Its advice is now the
    sequence that works, which is followed here to the end; the user's folder stays byte for byte as it was."""
    monkeypatch.chdir(tmp_path)
    trip = tmp_path / "trip"
    for i in range(4):
        noise_image(trip / f"p{i}.jpg", seed=i, size=(64, 48))
    before = folder_bytes(trip)
    commands = "tltool collect import trip --out trip-dataset && tltool label serve trip-dataset"
    with pytest.raises(TltoolError) as refused:
        load_dataset("trip")
    assert str(refused.value).endswith(f"or label them (your class names): {commands} --classes NAME1,NAME2,...")
    result = CliRunner().invoke(main, ["data", "inspect", "trip"])
    assert result.exit_code == 2 and commands in result.output and "Traceback" not in result.output
    (tmp_path / "trip-dataset").mkdir()  # a name taken: the advice names a new folder
    with pytest.raises(TltoolError, match="--out trip-dataset-2 && tltool label serve trip-dataset-2"):
        load_dataset("trip")
    (tmp_path / "trip-dataset").rmdir()
    # the new folder goes beside the photos, in the form the user named them (it went to the working directory:
    # from inside the photos' folder, into the photos being imported)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    beside = re.escape(f"--out {tmp_path}/trip-dataset && tltool label serve {tmp_path}/trip-dataset")
    with pytest.raises(TltoolError, match=beside):
        load_dataset(str(trip))
    monkeypatch.chdir(trip)
    with pytest.raises(TltoolError, match=r"collect import \. --out \.\./trip-dataset && tltool label serve \.\./tr"):
        load_dataset(".")
    monkeypatch.chdir(elsewhere)  # nothing may be written beside the photos (a read-only card): here, then
    here = re.escape(f"--out {elsewhere}/trip-dataset && tltool label serve {elsewhere}/trip-dataset")
    with monkeypatch.context() as read_only, pytest.raises(TltoolError, match=here):
        read_only.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
        load_dataset(str(trip))
    monkeypatch.chdir(tmp_path)
    import_images(["trip"], "trip-dataset")
    store = LabelStore("trip-dataset", ["a", "b"])
    store.set_many([(path, "ab"[i % 2], False, False) for i, path in enumerate(store.items)])
    assert sorted(read_labels(tmp_path / "trip-dataset").values()) == ["a", "a", "b", "b"]
    assert export_labels("trip-dataset", val_fraction=0.5).counts()["train"] == {"a": 1, "b": 1}
    assert folder_bytes(trip) == before


def test_a_folder_labelled_in_place_before_keeps_working(tmp_path):
    """A folder of the user's own that an earlier tltool labelled in place (its labels.csv there) is labelled on:
    refusing it now would strand those labels."""
    mine = tmp_path / "mine"
    for i in range(4):
        noise_image(mine / f"p{i}.jpg", seed=i, size=(64, 48))
    (mine / "labels.csv").write_text("path,label\np0.jpg,cat\n")
    running = Running(mine, ["cat", "dog"])
    try:
        assert running.request("POST", "/api/set", {"path": "p1.jpg", "label": "dog"})[0] == 200
        assert running.request("POST", "/api/set", {"path": "p2.jpg", "label": None, "skipped": True})[0] == 200
    finally:
        running.close()
    assert read_labels(mine) == {"p0.jpg": "cat", "p1.jpg": "dog"} and LabelStore(mine).skipped == {"p2.jpg"}
    (mine / "labels.csv").write_text("path,label\n")  # every label undone: the advice is to label it on, in place
    with pytest.raises(TltoolError, match=r"no image has a label yet\. Label some with tltool label serve .*mine\.$"):
        export_labels(mine)


def test_a_token_with_non_ascii_characters_is_refused_with_a_403(tmp_path, capsys):
    """``hmac.compare_digest`` raises TypeError on a str with non-ASCII characters: such a token (in the URL, the
    cookie or the Authorization header) dropped the connection unanswered and printed a traceback on the terminal."""
    root = tmp_path / "ds"
    make_dataset(root, 3, decodable=False)
    running = Running(root, ["cat", "dog"], host="0.0.0.0")
    cookie = running.server.guard.cookie_name
    try:
        for path, headers in (("/api/state?token=%C3%A9", {}), ("/api/state", {"Authorization": "token \xe9t\xe9"}),
                              ("/api/state", {"Cookie": f"{cookie}=\xe9"})):
            status, body = running.request("GET", path, headers={"Host": "127.0.0.1", **headers})
            assert status == 403 and b"token missing or wrong" in body, headers
        token = running.server.guard.token
        assert running.request("GET", f"/api/state?token={token}", headers={"Host": "127.0.0.1"})[0] == 200
    finally:
        running.close()
    assert "Traceback" not in capsys.readouterr().err


def test_a_name_with_a_backslash_is_left_out_and_named(tmp_path):
    """Such a photo was listed and took a label, but labels.csv reads a backslash as a folder separator: at the next
    read (a restart, another tab's server) its label belonged to ``unlabeled/a/b.jpg`` and the photo had none; the
    page could not show it either (/img/ read the same path)."""
    from tltool.errors import BadFilesWarning

    root = tmp_path / "ds"
    paths = make_dataset(root, 3, decodable=False)
    os.rename(root / paths[2], root / "unlabeled" / "a\\b.jpg")
    with pytest.warns(BadFilesWarning, match=r"1 image\(s\) left out, their names hold a backslash.*a\\b\.jpg"):
        store = LabelStore(root, ["cat", "dog"])
    assert store.items == paths[:2]
    with pytest.raises(KeyError):
        store.set("unlabeled/a\\b.jpg", "cat")
    store.set(paths[0], "dog")
    with pytest.warns(BadFilesWarning):
        assert LabelStore(root).labels == {paths[0]: "dog"}


def test_a_label_with_a_comma_in_labels_csv_stays_one_class(tmp_path):
    """Without --classes the classes are the labels found; they were joined with commas and split again, so the label
    "red, ripe" made two classes, red and ripe, that no photo had, and "red, ripe" itself got no key."""
    root = tmp_path / "ds"
    paths = make_dataset(root, 3, decodable=False)
    (root / "labels.csv").write_text(f'path,label\n{paths[0]},"red, ripe"\n{paths[1]},green\n')
    store = LabelStore(root)
    assert store.classes == ["green", "red, ripe"]
    assert store.summary()["counts"] == {"green": 1, "red, ripe": 1}
    store.set(paths[2], "red, ripe")
    assert read_labels(root)[paths[2]] == "red, ripe"


def test_a_labels_csv_that_cannot_be_read_is_a_409_that_says_so(served, monkeypatch, capsys):
    """Another user's labels.csv (or a disk error) while serving: the PermissionError was a traceback on the terminal
    and the page got no answer at all."""
    import builtins

    import tltool.labeler.store as store_module

    path, root = "unlabeled/img_001.jpg", served.server.store.root
    assert served.request("POST", "/api/set", {"path": path, "label": "cat"})[0] == 200

    def unreadable(file, *args, **kwargs):
        if Path(file).name == "labels.csv":
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(store_module, "open", unreadable, raising=False)
    os.utime(root / "labels.csv", (1, 1))  # changed since: read again
    for method, body in (("GET", None), ("POST", {"path": path, "label": "dog"})):
        status, answer = served.request(method, "/api/state" if method == "GET" else "/api/set", body)
        assert status == 409 and "labels.csv (Permission denied)" in json.loads(answer)["error"], method
    assert read_labels(root) == {path: "cat"}
    assert "Traceback" not in capsys.readouterr().err


def test_the_page_shows_the_servers_reason_and_keeps_labelling_after_a_save_it_could_not_reload(tmp_path, monkeypatch):
    """A labels.csv the server cannot read is a 409 with its reason: the page said "Cannot read properties of
    undefined" instead. And a failed save whose reload failed too left the page's send chain rejected: every later
    key press was silently not sent."""
    import builtins

    import tltool.labeler.store as store_module

    sync_playwright, expect = _playwright()
    root = tmp_path / "ds"
    paths = make_dataset(root, 4)
    running = Running(root, ["cat", "dog"])
    blocked = {"on": True}

    def unreadable(file, *args, **kwargs):
        if blocked["on"] and Path(file).name == "labels.csv":
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page()
            assert running.request("POST", "/api/set", {"path": paths[3], "label": "dog"})[0] == 200
            monkeypatch.setattr(store_module, "open", unreadable, raising=False)
            os.utime(root / "labels.csv", (1, 1))  # changed since: the server reads it again
            page.goto(running.server.url)
            expect(page.locator("#message")).to_contain_text("labels.csv (Permission denied)")
            blocked["on"] = False
            page.reload()
            expect(page.locator("body")).to_have_attribute("data-ready", "1")
            blocked["on"] = True
            os.utime(root / "labels.csv", (2, 2))
            page.keyboard.press("1")  # not saved, and the reload after it fails too
            expect(page.locator("#message")).to_contain_text("Permission denied")
            expect(page.locator("body")).to_have_attribute("data-pending", "0")
            blocked["on"] = False
            page.keyboard.press("2")  # the next label is sent and saved
            expect(page.locator("body")).to_have_attribute("data-pending", "0")
            browser.close()
        labels = read_labels(root)
        assert labels[paths[3]] == "dog" and len(labels) == 2  # the label after the failed one was saved
    finally:
        running.close()


def _small_server(tmp_path: Path, monkeypatch, **limits) -> Running:
    """A running labeler over 2 photos with its connection limits (``max_connections``, ...) set small."""
    from tltool.labeler.server import LabelerServer

    for name, value in limits.items():
        monkeypatch.setattr(LabelerServer, name, value, raising=False)
    root = tmp_path / "ds"
    make_dataset(root, 2, decodable=False)
    return Running(root, ["cat", "dog"])


def test_a_client_trickling_its_request_byte_by_byte_cannot_hold_a_connection(tmp_path, monkeypatch):
    """The request timeouts were per read: one header byte every few seconds kept a connection (and its slot) open
    for good, so max_connections such clients, no token needed off loopback, locked the user out. Reading one
    request now has a deadline as a whole."""
    import socket

    from tltool.labeler.server import LabelerHandler

    monkeypatch.setattr(LabelerHandler, "first_request_timeout", 0.6, raising=False)
    running = _small_server(tmp_path, monkeypatch, max_connections=2)
    address = ("127.0.0.1", running.server.port)
    slow = [socket.create_connection(address, timeout=5) for _ in range(2)]
    try:
        for _ in range(8):  # one byte every 0.25 s, each read well within the per-read timeout of 0.6 s
            for sock in slow:
                with contextlib.suppress(OSError):  # closed by the server
                    sock.sendall(b"G")
            time.sleep(0.25)
        assert running.request("GET", "/api/state")[0] == 200  # 2 s on: the user is served, not told 503
        for sock in slow:
            sock.settimeout(2)
            try:
                answer = sock.recv(4096)
            except ConnectionError:
                answer = b""
            assert answer == b"" or not answer.startswith(b"HTTP/1.1 2")  # closed, never served
    finally:
        for sock in slow:
            sock.close()
        running.close()


def test_one_client_address_cannot_take_every_connection(tmp_path, monkeypatch):
    """Requests must now arrive whole within 20 s, but one machine opening connections as fast as they were closed
    still held all max_connections: the user, from another address, got 503. One address now holds at most
    max_per_client of them."""
    import socket

    running = _small_server(tmp_path, monkeypatch, max_connections=4, max_per_client=2)
    address = ("127.0.0.1", running.server.port)

    def connect(source: str) -> socket.socket:
        sock = socket.socket()
        sock.settimeout(5)
        sock.bind((source, 0))  # any 127.x.y.z is this machine on Linux: another client address
        sock.connect(address)
        return sock

    idle = [connect("127.0.0.2") for _ in range(2)]
    try:
        time.sleep(0.3)  # both accepted and holding their slots
        third = connect("127.0.0.2")
        assert third.recv(4096).startswith(b"HTTP/1.1 503")  # this address has its share
        third.close()
        other = connect("127.0.0.3")  # another client: free slots are left for it
        other.sendall(f"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{running.server.port}\r\n\r\n".encode())
        assert other.recv(4096).startswith(b"HTTP/1.1 200")
        other.close()
        assert running.request("GET", "/api/state")[0] == 200
    finally:
        for sock in idle:
            sock.close()
        running.close()


def test_off_loopback_a_client_without_the_token_cannot_keep_a_connection_with_refused_requests(tmp_path,
                                                                                                monkeypatch):
    """A refused request (no token) left its connection open: a client that sent one now and then, within the
    keep-alive timeout, kept its slot for good. A refusal now closes the connection."""
    import socket

    from tltool.labeler.server import LabelerHandler, LabelerServer

    monkeypatch.setattr(LabelerServer, "max_connections", 1, raising=False)
    monkeypatch.setattr(LabelerHandler, "timeout", 0.8, raising=False)
    root = tmp_path / "ds"
    make_dataset(root, 2, decodable=False)
    running = Running(root, ["cat", "dog"], host="0.0.0.0")
    port = running.server.port
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            answers = b""
            for _ in range(4):  # a request every 0.4 s, within the keep-alive timeout of 0.8 s
                try:
                    sock.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    answers += sock.recv(4096)
                except OSError:
                    break
                time.sleep(0.4)
            token = {"Authorization": f"token {running.server.guard.token}"}
            assert running.request("GET", "/api/state", headers=token)[0] == 200  # the user is served, not told 503
            assert answers.startswith(b"HTTP/1.1 403 ") and b"Connection: close" in answers
    finally:
        running.close()


def test_other_methods_get_a_json_405_and_a_photo_added_since_the_start_is_said_to_need_a_restart(tmp_path):
    """PUT and DELETE got http.server's HTML 501 page; a photo imported after the labeler listed its images was a
    bare 404, with nothing saying a restart lists it."""
    root = tmp_path / "ds"
    make_dataset(root, 3)
    running = Running(root, ["cat", "dog"])
    try:
        for method in ("PUT", "DELETE", "PATCH"):
            status, body = running.request(method, "/api/set", {"path": "unlabeled/img_000.jpg", "label": "cat"})
            assert status == 405 and json.loads(body)["error"].startswith(f"{method} is not used here"), body
        noise_image(root / "unlabeled" / "new.jpg", seed=99, size=(64, 48))
        status, body = running.request("POST", "/api/set", {"path": "unlabeled/new.jpg", "label": "cat"})
        assert status == 404 and "added since this labeler started" in json.loads(body)["error"]
        status, body = running.request("POST", "/api/set", {"path": "unlabeled/none.jpg", "label": "cat"})
        assert status == 404 and "added since" not in json.loads(body)["error"]
        assert not (root / "labels.csv").exists()  # nothing written by a refused method
    finally:
        running.close()
