"""The shape of the house, checked on the source: layers import only the layers before them,
``models`` and ``data`` never import each other, nothing but the entry point imports the demo
plugin, no experiment imports another, there is no import cycle, and ``run_all.py --help`` does not
load torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: bagrepro's layers, first to last, each a folder of bagrepro/; a module may import its own layer and
#: the layers before it. The demo is a plugin on top.
ORDER = ["core", "data", "models", "methods", "harness", "demo"]
#: same rank: they may not import each other
SIBLINGS = {frozenset({"data", "models"})}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, anywhere in the file (lazy imports too)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # `from . import x`
    return found


SOURCES = sorted((ROOT / "bagrepro").rglob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))
GRAPH = {module_name(p): {i for i in imports(p) if i.split(".")[0] in ("bagrepro", "experiments")} for p in SOURCES}
MODULES = set(GRAPH)


def layer_of(module: str) -> str | None:
    """A module's layer: the folder of bagrepro/ it lives in (None outside bagrepro)."""
    parts = module.split(".")
    if parts[0] != "bagrepro" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ORDER else None


def test_bagrepro_holds_only_its_layer_folders():
    """Folders = layers: beside the layer folders, only the package's own ``__init__.py``."""
    loose = sorted(p.name for p in (ROOT / "bagrepro").glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert not loose, f"modules outside a layer folder: {loose}"
    folders = sorted(p.name for p in (ROOT / "bagrepro").iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert folders == sorted(ORDER)


def test_every_library_module_has_a_layer():
    unplaced = [m for m in MODULES if m.startswith("bagrepro.") and m != "bagrepro" and layer_of(m) is None]
    assert not unplaced, f"modules outside the layer folders {ORDER}: {unplaced}"


def test_no_harness_module_imports_the_experiments():
    """Experiments are found by name (importlib), never imported by the library."""
    wrong = [(m, t) for m, targets in GRAPH.items() if m.startswith("bagrepro") for t in targets
             if t.startswith("experiments")]
    assert wrong == []


def test_layers_import_only_the_layers_before_them():
    wrong = []
    for module, targets in GRAPH.items():
        own = layer_of(module)
        if own is None:
            continue
        for target in targets:
            theirs = layer_of(target)
            if theirs is None:
                continue
            if ORDER.index(theirs) > ORDER.index(own) or frozenset({own, theirs}) in SIBLINGS:
                wrong.append(f"{module} ({own}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_nothing_but_the_entry_point_imports_the_demo_plugin():
    importers = [m for m, targets in GRAPH.items() if not m.startswith("bagrepro.demo")
                 and any(t.startswith("bagrepro.demo") for t in targets)]
    assert importers == []
    assert "bagrepro.demo" in imports(ROOT / "run_all.py")


def test_no_experiment_imports_another():
    experiments = {m for m in MODULES if m.startswith("experiments.")}
    wrong = [(m, t) for m in experiments for t in GRAPH[m] if t.startswith("experiments")]
    assert wrong == []


def test_there_is_no_import_cycle():
    def resolve(target: str) -> str | None:  # `from pkg import name`: the module, or None
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        return target or None

    edges = {m: {r for t in targets if (r := resolve(t)) and r != m} for m, targets in GRAPH.items()}
    # a package's __init__ importing its own submodules is how packages are built, not a cycle
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_help_does_not_load_torch():
    code = ("import runpy, sys; sys.argv = ['run_all.py', '--help']\n"
            "try:\n    runpy.run_path('run_all.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nprint('profiles listed')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout and "profiles listed" in result.stdout
