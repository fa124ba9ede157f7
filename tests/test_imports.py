"""The package's import structure: Ray and MLflow stay at the edges, and no import cycles.

Read from the source (every ``import`` statement, at the top of a module or inside a
function), so a lazy import counts as much as an eager one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "medaug"

# Packages that must work without Ray and MLflow (the core a library user or a test calls).
CORE = ("data", "pairs", "models", "moco", "mvmae", "engine", "eval")
# The one direction dependencies point: a package may import only those before it.
LAYERS = ("errors", "files", "_lazy", "data", "pairs", "models", "methods", "config", "moco", "mvmae",
          "engine", "eval", "tune", "commands", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) of every import statement in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = _module_name(path).split(".")
                if path.name != "__init__.py":
                    here = here[:-1]
                base = here[: len(here) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((name, node.lineno))
            # "from medaug import eval" imports the subpackage medaug.eval
            if name == "medaug":
                out += [(f"medaug.{alias.name}", node.lineno) for alias in node.names]
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = getattr(child, "test", None) if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def _files(package: str) -> list[Path]:
    folder = ROOT / package
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [ROOT / f"{package}.py"]


def _top(module: str) -> str | None:
    """medaug.engine.pretrain -> engine; a module outside medaug -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "medaug" and len(parts) > 1 else None


@pytest.mark.parametrize("package", CORE)
def test_core_packages_never_import_ray_or_mlflow(package):
    found = [
        f"{path.relative_to(ROOT.parent)}:{line} imports {name}"
        for path in _files(package) if path.exists()
        for name, line in _imports(path)
        if name.split(".")[0] in ("ray", "mlflow")
    ]
    assert not found, "\n".join(found)


def test_dependencies_point_one_way():
    """Every import between medaug's packages goes from a later layer to an earlier one (or
    stays inside its package), so no cycle can form."""
    order = {name: i for i, name in enumerate(LAYERS)}
    top_level = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
                 if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.stem != "__init__"}
    assert top_level <= set(LAYERS), f"place {sorted(top_level - set(LAYERS))} in LAYERS"
    wrong = []
    for package in top_level:
        for path in _files(package):
            for name, line in _imports(path):
                target = _top(name)
                if target is None or target == package or target not in order:
                    continue
                if order[target] > order[package]:
                    wrong.append(f"{path.relative_to(ROOT.parent)}:{line} ({package}) imports "
                                 f"{name} ({target}, a later layer)")
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_imports_inside_functions(tmp_path):
    """The checks above would pass vacuously if the scan missed lazy imports."""
    mod = tmp_path / "m.py"
    mod.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
                   "def f():\n    import ray.train\n    from mlflow import log_metric\n")
    assert sorted(n for n, _ in _imports(mod)) == ["mlflow", "ray.train", "typing"]


def _lazy_packages() -> list[str]:
    return sorted(f"medaug.{p.name}" for p in ROOT.iterdir()
                  if (p / "__init__.py").exists() and "_LAZY" in (p / "__init__.py").read_text())


@pytest.mark.parametrize("package", _lazy_packages())
def test_lazy_names_are_what_they_name_even_after_their_modules_load(package):
    """``medaug.eval.evaluate`` would be the submodule once it is imported, not the function
    of that name: a re-exported name must never shadow or be shadowed by a submodule."""
    import importlib
    import types

    pkg = importlib.import_module(package)
    for target in set(pkg._LAZY.values()):
        importlib.import_module(target)
    for name, target in pkg._LAZY.items():
        value = getattr(pkg, name)
        assert not isinstance(value, types.ModuleType), f"{package}.{name} is a module"
        assert value is getattr(importlib.import_module(target), name)
