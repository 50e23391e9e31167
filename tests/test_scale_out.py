"""Scale-out that scales the input too (issue 15.6): each multiworker worker decodes only its own photos."""
from __future__ import annotations

import json

from conftest import SAMPLE
from helpers import assert_same_features, finish_tltool_reporting, free_ports, start_tltool_reporting


def test_two_workers_on_localhost_each_decode_half_and_give_the_one_machine_features(tmp_path):
    from tltool.features import extract_features, load_features

    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    settings = ["--image-size", "32", "--chunk-size", "16", "--batch-size", "8"]
    workers = [start_tltool_reporting("extract", str(SAMPLE), "--out", str(tmp_path / "shared"), *settings,
                                      "--strategy", "multiworker",
                                      TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
               for i in range(2)]
    states = [finish_tltool_reporting(worker)[0] for worker in workers]
    # 160 photos in 10 chunks: each worker decodes its 5 chunks, and the check before reads headers only
    assert [state["decodes"] for state in states] == [80, 80]
    one = extract_features(str(SAMPLE), tmp_path / "one", image_size=32, chunk_size=16, batch_size=8,
                           strategy="none").features
    both = load_features(tmp_path / "shared")
    assert both.hashes == one.hashes
    assert_same_features(both, one)
