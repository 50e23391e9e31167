"""How many actions does labelling 500 photos take: plain, assisted one by one, assisted with grids? (issue 18)

A simulated user labels the 500 photos of ../shared/datasets/flowers-tune (5 classes) from their true classes,
through the labeler's HTTP API, with the calls the page makes (``/api/state``, ``/api/assist``, ``/api/grid``,
``/api/set``, ``/api/confirm``, ``/img/...``), against ``tltool label serve`` running in its own process:

* plain (``--no-assist``): one key press per photo, in the page's order;
* assisted one by one: Enter when the suggestion is right, the class's number key when not (one action either
  way: the gain is in looking, not in keys);
* grid: the photos offered one by one until a grid is available; then each grid of up to 24 photos of one
  suggested class costs one key per misfit (its class's number pressed on its tile, which labels it) plus one key
  to confirm the rest;
* grid-wait: the same, by a user who waits until the features are extracted before the first action (the page
  says so; seconds with a warm cache) instead of labelling one by one meanwhile.

The user never makes a mistake and catches every misfit, so errors left must be 0; ``--miss-rate`` lets the grid
user overlook that share of misfits, to show what careless confirming costs. The first assisted run starts with an
empty feature cache, so its key presses are answered while features are extracted: the latency of every
``/api/set`` (the key press) and of the next image is measured from the client, split by whether extraction was
still running. Goals: grid <= 150 actions, 0 errors left, key-press p99 < 100 ms during extraction.

    python benchmarks/labeling.py [--think 0.15] [--miss-rate 0]
"""
from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, RESULTS, SHARED, emit  # noqa: E402

CLASSES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


def make_folder(src: Path, root: Path) -> dict[str, str]:
    """The photos copied (not moved, never written to) under ``root/unlabeled/`` with names that do not give the
    class away, ``root`` marked as ``collect import`` marks its folder (the labeler writes into no other); returns
    the truth ``{path: class}``."""
    from tltool.dataset import COLLECTED
    from tltool.outputs import mark_output_dir

    root.mkdir(parents=True)
    mark_output_dir(root, COLLECTED)
    truth = {}
    photos = sorted(src.glob("*/*.jpg"))
    random.Random(0).shuffle(photos)  # as photos from a phone: the file order says nothing about the class
    for i, photo in enumerate(photos):
        rel = f"unlabeled/{i:04d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo, root / rel)
        truth[rel] = photo.parent.name
    return truth


class Server:
    """``tltool label serve`` in its own process (the page's server, as a user runs it)."""

    def __init__(self, root: Path, assist: bool, cache: Path) -> None:
        args = [sys.executable, "-m", "tltool", "label", "serve", str(root), "--classes", ",".join(CLASSES),
                "--port", "0", "--assist" if assist else "--no-assist"]
        env = {**os.environ, "TLTOOL_CACHE": str(cache), "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        for line in self.proc.stdout:
            if line.startswith("open http://"):
                self.port = int(line.split()[1].rsplit(":", 1)[1].split("/")[0])
                break
        else:
            raise RuntimeError("the labeler did not start")
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[object, float]:
        """One request on the kept-alive connection: (JSON or bytes, seconds)."""
        start = time.perf_counter()
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{self.port}"} if body else {}
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        payload = response.read()
        seconds = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:200]!r}")
        is_json = response.getheader("Content-Type", "").startswith("application/json")
        return (json.loads(payload) if is_json else payload), seconds

    def close(self) -> None:
        self.conn.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


class User:
    """The simulated person: counts actions, times key presses, knows the truth."""

    def __init__(self, server: Server, truth: dict[str, str], think: float, miss_rate: float, seed: int = 0):
        self.s, self.truth, self.think, self.miss_rate = server, truth, think, miss_rate
        self.rng = random.Random(seed)
        self.actions = {"keys": 0, "accepts": 0, "misfit_keys": 0, "confirms": 0, "grids": 0}
        self.latency = {"no_assist": [], "extracting": [], "after": []}
        self.image_latency: list[float] = []
        self.assist: dict = {}
        self.revision = ""
        state, _ = server.call("GET", "/api/state")
        self.items = [it["path"] for it in state["items"]]
        self.done: set[str] = set()
        self.waited = 0.0

    def poll(self) -> None:
        """What the page's poll does once a second (not a user action)."""
        data, _ = self.s.call("GET", f"/api/assist?since={self.revision}")
        if "order" in data:
            self.assist, self.revision = data, str(data["revision"])
        else:
            self.assist = {**self.assist, **data}

    def press(self, path: str, label: str, assisted: bool) -> None:
        phase = {None: "no_assist", "waiting": "extracting", "extracting": "extracting"}.get(
            self.assist.get("state"), "after")
        _, seconds = self.s.call("POST", "/api/set", {"path": path, "label": label, "skipped": False,
                                                      "assisted": assisted})
        self.latency[phase].append(seconds)
        self.actions["accepts" if assisted else "keys"] += 1
        self.done.add(path)
        nxt = self.next_photo()
        if nxt:  # the page shows the next photo
            self.image_latency.append(self.s.call("GET", "/img/" + nxt)[1])
        time.sleep(self.think)

    def next_photo(self) -> str | None:
        for path in self.assist.get("order", []) + self.items:
            if path not in self.done:
                return path
        return None

    def one(self) -> None:
        """One photo one by one: Enter on a right suggestion, else the number key of its class."""
        path = self.next_photo()
        suggested = self.assist.get("suggestions", {}).get(path)
        right = suggested is not None and suggested[0] == self.truth[path]
        self.press(path, self.truth[path], assisted=right)

    def grid(self) -> bool:
        """One grid: label each misfit the user sees on its tile, confirm the rest. False when no grid is offered."""
        if not self.assist.get("version"):
            return False
        grid, _ = self.s.call("GET", "/api/grid")
        if not grid["items"]:
            return False
        paths = [it["path"] for it in grid["items"]]
        misfits = [p for p in paths if self.truth[p] != grid["label"]]
        seen = [p for p in misfits if self.rng.random() >= self.miss_rate]
        for path in seen:  # the page sends a tile's label at once, as any label
            self.s.call("POST", "/api/set", {"path": path, "label": self.truth[path], "skipped": False, "assisted": False})
        accepted = [p for p in paths if p not in seen]
        self.s.call("POST", "/api/confirm", {"label": grid["label"], "accepted": accepted, "rejected": []})
        self.actions["misfit_keys"] += len(seen)
        self.actions["confirms"] += 1
        self.actions["grids"] += 1
        self.done |= set(paths)
        self.wait_for_retrain()
        return True

    def wait_for_retrain(self, limit: float = 5.0) -> None:
        """A person looks at the next grid for seconds; the head retrains in well under one."""
        before, start = self.assist.get("version"), time.monotonic()
        while time.monotonic() - start < limit:
            self.poll()
            if self.assist.get("version") != before:
                return
            time.sleep(0.05)

    def wait_for_features(self, limit: float = 600.0) -> None:
        start = time.monotonic()
        self.poll()
        while self.assist.get("state") in ("waiting", "extracting") and time.monotonic() - start < limit:
            time.sleep(0.2)
            self.poll()
        self.waited = time.monotonic() - start

    def total(self) -> int:
        a = self.actions
        return a["keys"] + a["accepts"] + a["misfit_keys"] + a["confirms"]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run_mode(mode: str, root: Path, truth: dict[str, str], cache: Path, think: float, miss_rate: float) -> dict:
    for name in ("labels.csv", "skipped.csv"):
        (root / name).unlink(missing_ok=True)
    server = Server(root, assist=mode != "plain", cache=cache)
    start = time.perf_counter()
    try:
        user = User(server, truth, think, miss_rate if mode.startswith("grid") else 0.0)
        if mode == "grid-wait":  # this user waits for the features before the first action
            user.wait_for_features()
        while len(user.done) < len(truth):
            if mode != "plain":
                user.poll()
            if mode.startswith("grid") and user.grid():
                continue
            user.one()
        user.poll() if mode != "plain" else None
        wall = time.perf_counter() - start
    finally:
        server.close()
    return summarise(mode, user, root, truth, wall)


def summarise(mode: str, user: User, root: Path, truth: dict[str, str], wall: float) -> dict:
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = {r["path"]: r["label"] for r in rows}
    lat = {k: {"n": len(v), "p50_ms": _ms(percentile(v, 50)), "p99_ms": _ms(percentile(v, 99)),
               "max_ms": _ms(max(v) if v else None)} for k, v in user.latency.items()}
    return {
        "mode": mode, "actions": user.total(), **user.actions,
        "errors_left": sum(labels.get(p) != c for p, c in truth.items() if p in labels),
        "unlabelled_left": sum(p not in labels for p in truth),
        "assisted_labels": sum(r.get("assisted") == "1" for r in rows),
        "keypress_latency": lat,
        "image_latency": {"p50_ms": _ms(percentile(user.image_latency, 50)),
                          "p99_ms": _ms(percentile(user.image_latency, 99))},
        "assist": {k: user.assist.get(k) for k in ("version", "trained_on", "since_retrain", "all", "seconds")},
        "wall_seconds": round(wall, 1), "waited_for_features_s": round(user.waited, 1),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


def write_markdown(result: dict) -> None:
    lines = ["# Labelling 500 photos (flowers-tune, 5 classes) by a simulated user through the HTTP API", "",
             "| mode | actions | keys | accepts | grids | misfit keys | errors left | key press p99: no assist "
             "/ during extraction / after | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["modes"]:
        lat = " / ".join(f"{v['p99_ms']} ms (n={v['n']})" for v in r["keypress_latency"].values())
        lines.append(f"| {r['mode']} | {r['actions']} | {r['keys']} | {r['accepts']} | {r['grids']} | {r['misfit_keys']} "
                     f"| {r['errors_left']} | {lat} | {r['wall_seconds']} |")
    lines += ["", f"think time {result['think_s']} s per photo; grid miss rate {result['miss_rate']}; "
              f"machine: {result['machine']['cpus']} CPUs, {result['machine']['date']}.", ""]
    (RESULTS / "labeling.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED / "flowers-tune")
    parser.add_argument("--think", type=float, default=0.15, help="Seconds the user looks at each photo.")
    parser.add_argument("--miss-rate", type=float, default=0.0, help="Share of grid misfits the user overlooks.")
    parser.add_argument("--modes", default="plain,assisted,grid,grid-wait")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: not found (the flowers-tune photos of ../shared/datasets)")
    with tempfile.TemporaryDirectory(prefix="tltool-labeling-") as tmp:
        root, cache = Path(tmp) / "flowers", Path(tmp) / "cache"
        truth = make_folder(args.data, root)
        modes = [run_mode(m, root, truth, cache, args.think, args.miss_rate) for m in args.modes.split(",")]
    result = emit("labeling", {"photos": len(truth), "think_s": args.think, "miss_rate": args.miss_rate,
                               "modes": modes})
    write_markdown(result)


if __name__ == "__main__":
    main()
