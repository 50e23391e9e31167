"""`tltool data inspect` as a user runs it: a table, a report folder, bad files named, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from helpers import build_bad_corpus
from tltool.cli import main


def test_inspect_bad_corpus_file_by_file(tmp_path):
    corpus = tmp_path / "corpus"
    expected = build_bad_corpus(corpus)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["data", "inspect", str(corpus), "--max-pixels", "4000000", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    report = json.loads((out / "metrics.json").read_text())
    bad = {Path(b["path"]).relative_to(corpus).as_posix(): b["reason"] for b in report["bad_files"]}
    assert bad == {rel: reason for rel, reason in expected.items() if reason != "ok"}
    for rel, reason in bad.items():
        assert Path(rel).name in result.output
    assert report["n_usable"] == sum(v == "ok" for v in expected.values())
    converted = {Path(c["path"]).name for c in report["converted_files"]}
    assert {"cmyk.jpg", "rgba.png", "gray.png", "depth16.png", "palette.gif"} <= converted
    assert len(report["skipped_files"]) == 2
    # a report folder like every run's (inspect.json alone before): the findings in Markdown, a picture of the counts
    markdown = (out / "report.md").read_text()
    assert f"**{len(bad)} bad file(s), excluded from every run**" in markdown
    assert all(f"{corpus / rel}: {reason}" in markdown for rel, reason in bad.items())
    assert f"| all | {report['classes'][0]} |" in markdown and "![images per class](class_counts.png)" in markdown
    assert (out / "class_counts.png").read_bytes().startswith(b"\x89PNG")
    assert f"report: {out / 'report.md'}" in result.output


def test_inspect_strict_fails_on_bad_files(tmp_path):
    corpus = tmp_path / "corpus"
    build_bad_corpus(corpus)
    result = CliRunner().invoke(main, ["data", "inspect", str(corpus), "--strict", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    # it says why it fails: the same folder without --strict exits 0
    assert result.output.splitlines()[-1] == "--strict: exit status 1, because of the bad files or warnings above"


def test_inspect_counts_match_files_on_disk(flowers, tmp_path):
    result = CliRunner().invoke(main, ["data", "inspect", str(flowers), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "metrics.json").read_text())
    for split in ("train", "val"):
        for class_dir in sorted((flowers / split).iterdir()):
            on_disk = len([p for p in class_dir.iterdir() if not p.name.startswith(".")])
            assert report["counts"][split][class_dir.name] == on_disk
    assert not report["bad_files"] and not report["train_val_leaks"]


def test_errors_are_one_line_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tltool", "data", "inspect", str(tmp_path / "missing")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_the_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "backbones", "extract", "linear", "probe", "predict", "evaluate"):
        assert command in result.output


def test_inspect_prints_file_and_class_names_as_they_are(tmp_path):
    """Names reach the terminal through Rich: a photo named '[red]secret[blink] x.jpg' was printed as 'secret x.jpg'
    (in red, a file that does not exist), a class folder '[bold]cat' as 'cat', and a newline in a name split the
    line."""
    from helpers import noise_image

    for name in ("[bold]cat", "dog"):
        for i in range(2):
            noise_image(tmp_path / "d" / name / f"{i}.jpg", seed=i + 10 * (name == "dog"))
    (tmp_path / "d" / "[bold]cat" / "[red]secret[blink] x.jpg").write_bytes(b"garbage")
    (tmp_path / "d" / "dog" / "a\nb.jpg").write_bytes(b"garbage")
    result = CliRunner().invoke(main, ["data", "inspect", str(tmp_path / "d"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert f"bad {tmp_path / 'd' / '[bold]cat' / '[red]secret[blink] x.jpg'}: not an image" in result.output
    assert f"bad {tmp_path / 'd' / 'dog' / 'a'}\\nb.jpg: not an image" in result.output
    assert "[bold]cat" in result.output.split("bad file(s)")[0]  # the table's class column
