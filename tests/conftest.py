"""Shared fixtures. Real photos live in ../shared/datasets (outside the repo); tests that need them skip with a
clear reason when that folder is absent (a user's clone), and fail instead under TLTOOL_REQUIRE_DATA=1 (CI sets it:
a green CI must mean the real-photo tests ran)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from tltool.cli import main
from tltool.outputs import release_output_dirs
from tltool.utils import file_lock

os.environ.setdefault("TLTOOL_NO_PROGRESS", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# `auto` would convert every tiny test network to LiteRT and time both engines; tests/test_engines.py tests auto
os.environ.setdefault("TLTOOL_ENGINE", "tf")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TLTOOL_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
SAMPLE = REPO / "data" / "shapes"


def shared_dataset(name: str) -> Path:
    path = SHARED / name
    if not (path / "train").is_dir():
        give_up = pytest.fail if os.environ.get("TLTOOL_REQUIRE_DATA") == "1" else pytest.skip
        give_up(f"real photos not available: {path} is absent (set TLTOOL_SHARED_DATASETS to a folder with "
                f"{name}/train/<class>/*.jpg)")
    return path


# Modules that take the longest (seconds summed over their tests on a 2-core machine, whole suite with two workers:
# 398, 296, 186, 147, 132, 122, 103, 96), run first: xdist hands out whole modules in collection order as workers
# free up, so a long module handed out last runs alone at the end while the other worker idles.
SLOWEST_MODULES = ("test_export", "test_finetune", "test_distribute", "test_fast_start", "test_recipes",
                   "test_engines", "test_scratch", "test_honest")


def pytest_collection_modifyitems(session, config, items) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: each module keeps its own order


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """One tltool cache per test session (converted Lite0 weights are made once, not in the user's home)."""
    if "TLTOOL_CACHE" not in os.environ:
        os.environ["TLTOOL_CACHE"] = str(tmp_path_factory.mktemp("tltool-cache"))
    yield


@pytest.fixture(autouse=True)
def _let_go_of_run_folders():
    """A test that calls new_run_dir itself (not through a command) holds the folder for the life of the worker;
    a later subprocess on it would be refused as "in use", which a real command, one process, never meets."""
    yield
    release_output_dirs()


@pytest.fixture()
def flowers() -> Path:
    return shared_dataset("flowers")


@pytest.fixture()
def pets() -> Path:
    return shared_dataset("pets")


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in a temporary working directory (default run folders go to ./runs)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def flowers_probe(tmp_path_factory) -> SimpleNamespace:
    """``tltool probe`` of the flowers photos with the default settings, run once per test session and shared by the
    xdist workers (a lock makes the others wait for the first): extracting them took 30-55 s each, and three modules
    did it. Tests read ``features`` and ``run``; one that writes into them must copy them first. ``data``: the
    photos; ``exit_code`` (0: a failed probe fails the tests that ask for it) and ``output``: the command's."""
    data = shared_dataset("flowers")
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the workers' common folder
    root, done = shared / "flowers-probe", shared / "flowers-probe.json"
    with file_lock(shared / "flowers-probe.lock"):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # what a worker that failed half-way left
            root.mkdir()
            result = CliRunner().invoke(main, ["probe", str(data), "--features", str(root / "features"),
                                               "--out", str(root / "run")])
            release_output_dirs()
            done.write_text(json.dumps({"exit_code": result.exit_code, "output": result.output}))
    probe = SimpleNamespace(data=data, features=root / "features", run=root / "run", **json.loads(done.read_text()))
    assert probe.exit_code == 0, probe.output  # every test that reads it fails with the command's output
    return probe
