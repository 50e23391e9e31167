"""Builders of small image corpora for tests: real files written with Pillow, nothing downloaded."""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from tltool.dataset import COLLECTED
from tltool.outputs import mark_output_dir


def solid(path: Path, colour=(200, 30, 30), size=(64, 48), fmt="JPEG", mode="RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, fmt, **save)
    return path


def noise_image(path: Path, seed: int, size=(80, 60), fmt="JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, fmt)
    return path


def collected(root: Path) -> Path:
    """``root`` (made if absent) marked as the dataset folder ``tltool collect import`` makes: ``label serve`` writes
    its labels.csv into no other new folder."""
    root.mkdir(parents=True, exist_ok=True)
    mark_output_dir(root, COLLECTED)
    return root


def jpeg_bytes(size=(64, 64), colour=(10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build_bad_corpus(root: Path) -> dict[str, str]:
    """A dataset folder with every kind of bad and awkward file. Returns {relative path: expected reason or 'ok'}."""
    from tltool import images

    expected: dict[str, str] = {}

    def put(rel: str, outcome: str) -> Path:
        expected[rel] = outcome
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    for i in range(3):
        noise_image(put(f"cats/cat_{i}.jpg", "ok"), seed=i)
        noise_image(put(f"dogs/dog_{i}.jpg", "ok"), seed=10 + i)
    put("cats/empty.jpg", images.EMPTY).write_bytes(b"")
    data = jpeg_bytes((200, 200))
    put("cats/truncated.jpg", images.CORRUPT).write_bytes(data[: len(data) // 2])
    put("dogs/notes.jpg", images.NOT_AN_IMAGE).write_text("this is not a picture")
    put("dogs/readme.txt", images.NOT_AN_IMAGE).write_text("hello")
    solid(put("dogs/tiny.png", images.TOO_SMALL), size=(20, 200), fmt="PNG")
    solid(put("cats/huge.png", images.BOMB), size=(3000, 3000), fmt="PNG", mode="L", colour=0)
    # awkward but fine: converted the same way everywhere
    solid(put("cats/cmyk.jpg", "ok"), mode="CMYK", colour=(0, 255, 255, 0))
    solid(put("cats/rgba.png", "ok"), mode="RGBA", colour=(255, 0, 0, 0), fmt="PNG")
    solid(put("dogs/gray.png", "ok"), mode="L", colour=128, fmt="PNG")
    arr16 = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    Image.fromarray(arr16).save(put("dogs/depth16.png", "ok"), "PNG")
    solid(put("dogs/palette.gif", "ok"), mode="P", colour=3, fmt="GIF")
    noise_image(put("cats/café_ünïcode.jpg", "ok"), seed=99)
    (root / "cats" / ".DS_Store").write_bytes(b"\0\0junk")
    (root / "dogs" / "._dog_0.jpg").write_bytes(b"\0\5\26\7")
    (root / "empty_class").mkdir(parents=True, exist_ok=True)
    return expected


# runs the CLI like `tltool ...` and reports, at exit, what the process imported and how many photos it decoded
_RUN_AND_REPORT = textwrap.dedent("""
    import json, sys
    from tltool import images
    from tltool.cli import main
    try:
        main(sys.argv[1:], prog_name="tltool", standalone_mode=False)
    finally:
        state = {"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules,
                 "sklearn": "sklearn" in sys.modules, "matplotlib": "matplotlib" in sys.modules,
                 "decodes": images.decode_count()}
        print("STATE " + json.dumps(state))
""")


def start_tltool_reporting(*args: str, **env: str) -> subprocess.Popen:
    """``tltool ARGS`` in a new process that prints its state last (see :func:`finish_tltool_reporting`)."""
    return subprocess.Popen([sys.executable, "-c", _RUN_AND_REPORT, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TLTOOL_NO_PROGRESS": "1", **env})


def finish_tltool_reporting(proc: subprocess.Popen, timeout: float = 300) -> tuple[dict, str]:
    """``(state, stdout)``: state says whether TensorFlow/Keras were imported and how many photos were decoded."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    state = next(line for line in stdout.splitlines() if line.startswith("STATE "))
    return json.loads(state[len("STATE "):]), stdout


def run_tltool_reporting(*args: str, **env: str) -> tuple[dict, str]:
    return finish_tltool_reporting(start_tltool_reporting(*args, **env))


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
PORT_BLOCK = 1000  # ports each xdist worker draws from, below the ephemeral range
_PORT_ORDER = random.Random()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to ``bind(0)`` and outgoing connections (Linux's default elsewhere)."""
    try:
        return int(EPHEMERAL_PORTS.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports free on 127.0.0.1 now, for a subprocess to bind later (a TF_CONFIG cluster, a closed proxy).

    A port from ``bind(0)``, released and bound again later, could meanwhile go to any other process's ``bind(0)``
    or outgoing connection (the other xdist worker's tests make many). These come from below the kernel's ephemeral
    range, which it never hands out by itself, from a block of their own per xdist worker (gw0, gw1, ...), in an
    order drawn per process: only a process that names the same port could take it."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    start = 20000 + PORT_BLOCK * index
    if start + PORT_BLOCK > _ephemeral_low():  # an unusual range: fall back to the kernel's choice
        return _kernel_ports(n)
    ports = []
    for port in _PORT_ORDER.sample(range(start, start + PORT_BLOCK), PORT_BLOCK):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports in {start}-{start + PORT_BLOCK - 1}")


def _kernel_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def assert_same_features(got, expected, atol: float = 1e-5) -> None:
    """Two FeatureSets hold the same numbers for the same files, and the numbers say something: a network whose
    features are all near zero (random weights, here about 1e-13) would make any comparison pass."""
    assert got.paths == expected.paths
    assert float(np.std(expected.avg)) > 1e-2, "degenerate features: the comparison could not fail"
    np.testing.assert_allclose(got.avg, expected.avg, atol=atol)
    np.testing.assert_allclose(got.max, expected.max, atol=atol)


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""
    def expire(signum, frame):
        raise TimeoutError(f"took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
