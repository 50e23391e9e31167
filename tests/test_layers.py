"""The house's layers, read from the import lines: the CLI sits on the library, never the other way round."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tltool

ROOT = Path(tltool.__file__).parent
ENTRY_POINTS = {"tltool.__main__"}  # `python -m tltool`: runs the CLI
# registries whose entries register themselves: the registry imports its entries, and they import the registry
SELF_REGISTERING = {"tltool.backbones", "tltool.arch"}
# the dataset-source registry (dataset.py) reaches its ``tfds:`` entry, which builds Dataset records, lazily
REGISTRY_CYCLES = [["tltool.dataset", "tltool.tfds_source"]]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, as absolute names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import data` names a module
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_library_module_imports_the_cli_or_click():
    offenders = []
    for name, path in ((_module_name(p), p) for p in ROOT.rglob("*.py")):
        if name.startswith("tltool.cli") or name in ENTRY_POINTS:
            continue
        bad = {m for m in _imports(path) if m == "click" or m.startswith(("click.", "tltool.cli"))}
        if bad:
            offenders.append(f"{name}: {sorted(bad)}")
    assert not offenders


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _registry_cycle(component: list[str]) -> bool:
    if component in REGISTRY_CYCLES:
        return True
    return any(all(m == package or m.startswith(package + ".") for m in component) for package in SELF_REGISTERING)


def test_no_import_cycle_except_self_registering_registries():
    cycles = [c for c in _cycles(_graph()) if not _registry_cycle(c)]
    assert not cycles


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _registry_cycle(["tltool.backbones", "tltool.backbones.registry"])


def test_importing_the_cli_does_not_import_tensorflow():
    code = ("import sys, tltool.cli; heavy = [m for m in ('tensorflow', 'keras', 'sklearn', 'matplotlib') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_settings_and_reports_sit_below_the_engines():
    graph = _graph()
    assert not {m for m in graph["tltool.configs"] if m.startswith(("tltool.training", "tltool.supervised"))}
    assert not {m for m in graph["tltool.report"] if m.startswith("tltool.viz")}
    assert not {m for m in graph["tltool.plotting"] if m.startswith("tltool.")} - {"tltool.utils"}


def test_the_report_draws_the_overlays_its_caller_gives(tmp_path, monkeypatch):
    import numpy as np

    from tltool import report
    from tltool.evaluation import Evaluation

    evaluation = Evaluation(["a", "b"], np.array([0, 1, 0]), np.array([[0.2, 0.8], [0.9, 0.1], [0.7, 0.3]]))
    monkeypatch.setattr(report, "load_thumbnail", lambda *a, **k: pytest.fail("an overlay was given: no image read"))
    overlays = [np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)]
    assert report.plot_misclassified(evaluation, ["x.jpg", "y.jpg", "z.jpg"], tmp_path / "m.png",
                                     overlays=overlays) == 2
    assert (tmp_path / "m.png").stat().st_size > 0


def test_metrics_inspection_and_run_loading_keep_to_their_job():
    imports = {name: _imports(path) for name, path in ((_module_name(p), p) for p in ROOT.rglob("*.py"))}
    assert not {m for m in imports["tltool.evaluation"] if m.startswith(("tltool._tf", "tltool.pipeline", "tensorflow"))}
    assert not {m for m in imports["tltool.inspection"] if m.startswith("rich")}  # the CLI prints
    assert not {m for m in imports["tltool.models"] if m.startswith(("tltool.report", "tltool.runs"))}  # no tasks
    assert not {m for m in imports["tltool.finetune"] if m == "tltool.features"}  # it needed only prepare_dataset


def test_no_function_in_tltool_is_longer_than_60_lines():
    package = Path(__file__).resolve().parents[1] / "tltool"
    long = [f"{path.relative_to(package)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted(package.rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert not long, long
