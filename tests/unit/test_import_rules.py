"""The import rules of docs/architecture.md ("Import rules"), checked on the source.

Walks every module's imports with ``ast`` (module level and inside functions):

1. agent_guest and agent_host never import each other;
2. only emu and tests import both agents;
3. agent code reaches emu only through a registry string, never ``import emu``,
   and every registry string names a module and class that exist;
4. only backend modules (``*_backend.py``, ``linux_*.py``, ``libvirt_*.py``)
   import ctypes or libvirt or name a /proc, /sys or /dev path (a string
   literal, docstrings aside; a config module's default paths are data);
5. hypertier_common and hypertier_wire import neither agent nor emu.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_guest.backend import BACKENDS as GUEST_BACKENDS
from agent_host.backend import BACKENDS as HOST_BACKENDS

ROOT = Path(__file__).parents[2]
AGENTS = ("agent_guest", "agent_host")
PRODUCT = (*AGENTS, "hypertier_common", "hypertier_wire", "emu")
SYSTEM = ("ctypes", "libvirt", "libvirt_qemu")
_KERNEL_PATH = re.compile(r"^/?(proc|sys|dev)(/|$)")


def _modules(*packages: str) -> Iterator[tuple[str, Path]]:
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            yield ".".join(rel.parts), path


def _imports(name: str, path: Path) -> set[str]:
    """Top-level packages and full module names ``path`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
    return found | {m.split(".")[0] for m in found}


def _top(imports: set[str]) -> set[str]:
    return {m for m in imports if "." not in m}


def _is_backend(path: Path) -> bool:
    stem = path.stem
    return stem.endswith("_backend") or stem.startswith(("linux_", "libvirt_"))


def _kernel_paths(path: Path) -> list[str]:
    """String literals naming /proc, /sys or /dev (docstrings excluded)."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {
        id(body[0].value)
        for node in ast.walk(tree)
        if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        )
        and (body := node.body)
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and _KERNEL_PATH.match(node.value)
    ]


def test_the_walk_finds_the_product() -> None:
    names = {name for name, _ in _modules(*PRODUCT)}
    assert {"agent_guest.daemon", "agent_host.daemon", "hypertier_common.cli"} <= names
    assert len(names) > 60


@pytest.mark.parametrize("agent", AGENTS)
def test_agents_never_import_each_other(agent: str) -> None:
    other = next(a for a in AGENTS if a != agent)
    offenders = [n for n, p in _modules(agent) if other in _top(_imports(n, p))]
    assert offenders == [], f"{offenders} import {other}"


def test_only_emu_and_tests_import_both_agents() -> None:
    packages = [p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()]
    allowed = {"emu", "tests"}
    offenders = [
        name
        for name, path in _modules(*(p for p in packages if p not in allowed))
        if set(AGENTS) <= _top(_imports(name, path))
    ]
    assert offenders == []


@pytest.mark.parametrize("agent", AGENTS)
def test_agents_reach_emu_only_through_registry_strings(agent: str) -> None:
    offenders = [n for n, p in _modules(agent) if "emu" in _top(_imports(n, p))]
    assert offenders == []


@pytest.mark.parametrize("target", [*GUEST_BACKENDS.values(), *HOST_BACKENDS.values()])
def test_every_registry_string_names_an_existing_class(target: str) -> None:
    module, _, cls = target.partition(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} not found"
    assert spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    assert cls in {n.name for n in tree.body if isinstance(n, ast.ClassDef)}


def test_only_backend_modules_import_ctypes_or_libvirt() -> None:
    offenders = [
        (name, sorted(_top(_imports(name, path)) & set(SYSTEM)))
        for name, path in _modules(*PRODUCT)
        if not _is_backend(path) and _top(_imports(name, path)) & set(SYSTEM)
    ]
    assert offenders == []


def test_only_backend_modules_name_kernel_paths() -> None:
    offenders = [
        (name, _kernel_paths(path))
        for name, path in _modules(*AGENTS, "hypertier_common", "hypertier_wire")
        if not _is_backend(path) and path.stem != "config" and _kernel_paths(path)
    ]
    assert offenders == []


@pytest.mark.parametrize("package", ["hypertier_common", "hypertier_wire"])
def test_shared_packages_import_neither_agent_nor_emu(package: str) -> None:
    offenders = [
        name
        for name, path in _modules(package)
        if _top(_imports(name, path)) & {*AGENTS, "emu"}
    ]
    assert offenders == []


def test_the_rules_find_a_breach() -> None:
    """The walker is not blind: it sees this test's own imports."""
    here = Path(__file__)
    assert set(AGENTS) <= _top(_imports("tests.unit.test_import_rules", here))
    assert _kernel_paths(ROOT / "agent_guest/linux_backend.py")
