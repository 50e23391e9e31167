"""`tltool data inspect` as a user runs it: a table, a report folder, bad files named, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import build_bad_corpus
from tltool.cli import main
from tltool.inspection import write_split_manifest


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
    assert result.output.splitlines()[-1] == ("--strict: exit status 1, because of the bad files, files not read or "
                                              "warnings above")


def test_inspect_names_photos_it_did_not_read_in_its_report_and_strict_fails_on_them(tmp_path):
    """From a review: a photo beside the class folders, a name that is not UTF-8 and a linked folder not followed
    were printed as `skipped` lines, but report.md said "0 bad file(s)" and nothing else, and --strict exited 0
    (its help: "when any file is bad or any warning is raised"; the link had raised a SymlinkWarning)."""
    import os

    from helpers import noise_image

    data = tmp_path / "d"
    for k, label in enumerate(("a", "b")):
        for i in range(4):
            noise_image(data / label / f"{i}.jpg", seed=10 * k + i)
    (data / "README.txt").write_text("notes\n")  # neither of these is a photo a user lost
    (data / "a" / ".DS_Store").write_bytes(b"\0")
    clean = CliRunner().invoke(main, ["data", "inspect", str(data), "--strict", "--out", str(tmp_path / "r0")])
    assert clean.exit_code == 0, clean.output
    assert "- 0 file(s) or folder(s) not read" in (tmp_path / "r0" / "report.md").read_text()
    noise_image(data / "IMG_0001.jpg", seed=99)
    with open(os.fsencode(data / "a") + b"/caf\xe9.jpg", "wb") as f:
        f.write((data / "a" / "0.jpg").read_bytes())
    os.symlink("../b", data / "a" / "b_link")
    result = CliRunner().invoke(main, ["data", "inspect", str(data), "--strict", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[-1] == ("--strict: exit status 1, because of the bad files, files not read or "
                                              "warnings above")
    report = (tmp_path / "r" / "report.md").read_text()
    assert "- **3 file(s) or folder(s) not read (photos may be among them)**" in report
    assert f"  - {data / 'IMG_0001.jpg'}: not inside a class folder (ignored)" in report
    assert f"  - {data / 'a' / 'b_link'}: link to a folder inside the dataset" in report
    assert "not valid UTF-8" in report and "README" not in report and "DS_Store" not in report


def test_inspect_report_gives_a_bad_file_s_detail_and_the_conversions(tmp_path):
    """report.md gave a bad file's reason without its detail (the pixel count of a bomb, the size of a tiny photo)
    and left the conversions out: the console gave both."""
    corpus = tmp_path / "corpus"
    build_bad_corpus(corpus)
    CliRunner().invoke(main, ["data", "inspect", str(corpus), "--max-pixels", "4000000", "--out", str(tmp_path / "r")])
    data = json.loads((tmp_path / "r" / "metrics.json").read_text())
    report = (tmp_path / "r" / "report.md").read_text()
    detailed = [b for b in data["bad_files"] if b["detail"]]
    assert detailed and all(f"{b['path']}: {b['reason']} ({b['detail']})" in report for b in detailed)
    assert f"- **{len(data['converted_files'])} file(s) converted as they are read**" in report
    assert all(f"{c['path']}: {', '.join(c['conversions'])}" in report for c in data["converted_files"])


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


def test_data_split_names_every_small_class_warns_of_a_split_probe_refuses_and_checks_its_seed(tmp_path):
    """`data split` said "give each at least 3" naming only the class of 1, wrote a split in which a class of 2 had
    one training photo (probe then refused it), and took --seed -1 that every run refuses."""
    from helpers import noise_image

    from tltool.errors import SmallClassWarning

    for k, (name, n) in enumerate((("cat", 6), ("dog", 6), ("two", 2), ("one", 1))):
        for i in range(n):
            noise_image(tmp_path / "d" / name / f"{i}.jpg", seed=100 * k + i)
    runner = CliRunner()
    result = runner.invoke(main, ["data", "split", str(tmp_path / "d"), "--out", str(tmp_path / "s.csv")])
    assert result.exit_code != 0 and "class(es) {'one': 1} have too few distinct images for a train/val split " \
        "(and {'two': 2} have 2, one short for the linear heads)" in " ".join(result.output.split()), result.output
    (tmp_path / "d" / "one" / "0.jpg").unlink()
    (tmp_path / "d" / "one").rmdir()
    with pytest.warns(SmallClassWarning, match=r"class\(es\) \{'two': 1\} have fewer than 2 training images"):
        write_split_manifest(str(tmp_path / "d"), tmp_path / "s.csv", val_fraction=0.2)
    result = runner.invoke(main, ["data", "split", str(tmp_path / "d"), "--out", str(tmp_path / "t" / "t.csv"),
                                  "--seed=-1"])
    assert result.exit_code != 0 and "--seed must be a whole number in [0, 4294967295], got -1" in result.output
    assert not (tmp_path / "t" / "t.csv").exists()


def test_a_class_name_with_a_bar_keeps_report_tables_whole(tmp_path):
    """A manifest label `a|b` split the class cell of data inspect's report.md table (one cell too many); a run
    report's per-class table writes its class cells the same way (utils.md_cell), not checked here."""
    from helpers import noise_image

    rows = ["path,label"]
    for k, label in enumerate(("a|b", "plain")):
        for i in range(3):
            noise_image(tmp_path / f"{k}{i}.jpg", seed=10 * k + i)
            rows.append(f"{k}{i}.jpg,{label}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    result = CliRunner().invoke(main, ["data", "inspect", str(tmp_path / "m.csv"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    table = [line for line in (tmp_path / "r" / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert any("a\\|b" in line for line in table)
    assert {line.replace("\\|", "").count("|") for line in table} == {6}


def test_a_train_and_test_layout_without_val_is_warned_of_where_the_test_images_become_the_val_split(tmp_path):
    """`probe` of DATA/{train,test} scored the test images as its val split, and said so only in features.json: a
    user keeping test/ as a final hold-out did not know it had been used."""
    from helpers import noise_image

    from tltool.errors import NoValSplitWarning
    from tltool.inspection import prepare_dataset

    for s, split in enumerate(("train", "test")):
        for k, label in enumerate(("a", "b")):
            for i in range(4):
                noise_image(tmp_path / "d" / split / label / f"{i}.jpg", seed=100 * s + 10 * k + i)
    with pytest.warns(NoValSplitWarning, match=r"the data has train and test splits but no val split: its test "
                                                r"images are used as the val split"):
        checked = prepare_dataset(str(tmp_path / "d"))
    assert len(checked.dataset.subset("val")) == 8


def test_a_manifest_marking_every_row_train_is_warned_that_val_was_drawn_from_it(tmp_path):
    """A spreadsheet whose split column said Train on every row was split 80/20 without a word: photos the user
    marked train were scored as val (only report.md's settings showed a seed)."""
    import warnings

    from helpers import noise_image

    from tltool.errors import NoValSplitWarning
    from tltool.inspection import prepare_dataset

    rows = ["path,label,split"]
    for k, label in enumerate(("a", "b")):
        for i in range(5):
            noise_image(tmp_path / label / f"{i}.jpg", seed=10 * k + i)
            rows.append(f"{label}/{i}.jpg,{label},Train")
    (tmp_path / "sheet.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(NoValSplitWarning, match=r"every image is marked train, and there is no val split: tltool drew "
                                                r"--val-fraction of each class as val"):
        checked = prepare_dataset(str(tmp_path / "sheet.csv"))
    assert len(checked.dataset.subset("val")) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoValSplitWarning)  # nothing to say: no split was given, or all is pooled
        prepare_dataset(str(tmp_path / "sheet.csv"), pooled=True)
        (tmp_path / "sheet.csv").write_text("\n".join(row.rsplit(",", 1)[0] for row in rows) + "\n")
        prepare_dataset(str(tmp_path / "sheet.csv"))


def test_a_val_fraction_the_datas_own_split_leaves_unused_is_said_to_be(tmp_path):
    """`probe sheet.csv --val-fraction 0.5` on a manifest with its own split dropped the option without a word."""
    import warnings

    from helpers import noise_image

    from tltool.errors import IgnoredOptionsWarning
    from tltool.inspection import prepare_dataset

    for s, split in enumerate(("train", "val")):
        for k, label in enumerate(("a", "b")):
            for i in range(3):
                noise_image(tmp_path / "d" / split / label / f"{i}.jpg", seed=100 * s + 10 * k + i)
    with pytest.warns(IgnoredOptionsWarning, match=r"--val-fraction 0.5 is not used: d has a split of its own"):
        checked = prepare_dataset(str(tmp_path / "d"), val_fraction=0.5)
    assert len(checked.dataset.subset("val")) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredOptionsWarning)
        prepare_dataset(str(tmp_path / "d"))  # the default: nothing was asked for


def test_a_photo_whose_name_is_not_utf8_is_named_by_a_run_s_check_and_data_split(tmp_path):
    """Only `data inspect` and `predict` named it: probe and `data split` left it out without a word."""
    import os

    from helpers import noise_image

    from tltool.errors import BadFilesWarning
    from tltool.inspection import prepare_dataset

    for k, label in enumerate(("a", "b")):
        for i in range(4):
            noise_image(tmp_path / "d" / label / f"{i}.jpg", seed=10 * k + i)
    with open(os.fsencode(tmp_path / "d" / "a") + b"/bad\xff.jpg", "wb") as f:
        f.write((tmp_path / "d" / "a" / "0.jpg").read_bytes())
    with pytest.warns(BadFilesWarning, match=r"1 file\(s\) or folder\(s\) not read:\n  .*/d/a/bad.\.jpg: file name is "
                                             r"not valid UTF-8"):
        prepare_dataset(str(tmp_path / "d"))
    with pytest.warns(BadFilesWarning, match="not valid UTF-8"):
        write_split_manifest(str(tmp_path / "d"), tmp_path / "s.csv")
