"""The package's layout holds: no import cycles, the runtime never loads the dev tooling,
modules stay small, and the version is written once (issue 11).

The import graph is read from the source (``ast``), not from an import: what a module
would load is checked without running it, and every module is seen, loaded or not.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import statistics
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

import broker

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "broker"
MAX_LINES = 400
MAX_MEDIAN_LINES = 150
#: The only module that may load the dev tooling, and only inside a function (a command).
LAZY_LOCAL_IMPORTERS = frozenset({"broker.cli", "broker.cli_parser"})


@dataclass(frozen=True, slots=True)
class Import:
    target: str
    line: int
    #: Inside a function: runs when called, not when the module is loaded.
    lazy: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """The ``broker`` modules ``name`` imports, as Python would resolve them.

    ``from a.b import c`` counts as an import of ``a.b.c`` when that is a module, else of
    ``a.b``.  Imports under ``if TYPE_CHECKING:`` never run and are left out.  Parent
    packages loaded on the way (``broker/__init__`` for ``broker.core.x``) are not
    edges: Python has them in ``sys.modules`` already, half-initialised, by then.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.orelse:
                visit(statement, lazy)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, node.lineno, lazy))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append(Import(candidate if candidate in known else base, node.lineno, lazy))
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, lazy=False)
    return [i for i in found if i.target == "broker" or i.target.startswith("broker.")]


def import_graph(*, include_lazy: bool) -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        graph[name] = {
            i.target
            for i in imports_of(name, path, known)
            if i.target in known and i.target != name and (include_lazy or not i.lazy)
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return groups


def _described(graph: dict[str, set[str]], group: list[str]) -> str:
    members = set(group)
    edges = [f"{a} -> {b}" for a in group for b in sorted(graph[a] & members)]
    return "; ".join(edges)


def test_the_graph_reader_sees_a_cycle_and_resolves_relative_imports(tmp_path: Path) -> None:
    # The checks below are only as good as the reader: a cycle it cannot see passes.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    module = tmp_path / "broker" / "sqs" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import consumer\n"
        "from ..core.settings import QueueSettings\n"
        "if TYPE_CHECKING:\n"
        "    from broker.service import Broker\n"
        "def f() -> None:\n"
        "    import broker.local.demo\n",
        encoding="utf-8",
    )
    known = {"broker.sqs.consumer", "broker.core.settings", "broker.local.demo"}
    found = imports_of("broker.sqs.x", module, known)
    assert [(i.target, i.lazy) for i in found] == [
        ("broker.sqs.consumer", False),
        ("broker.core.settings", False),
        ("broker.local.demo", True),
    ]


def test_no_import_cycles_among_the_modules_of_broker() -> None:
    graph = import_graph(include_lazy=False)
    assert len(graph) > 30, sorted(graph)  # the reader found the package
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(_described(graph, g) for g in found)


def test_no_import_cycles_even_through_imports_inside_functions() -> None:
    # A lazy import breaks a cycle at load time but not in the design: two modules that
    # need each other are one module, or a third one is missing.
    graph = import_graph(include_lazy=True)
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(_described(graph, g) for g in found)


def test_the_runtime_never_imports_the_local_tooling() -> None:
    found = modules()
    known = set(found)
    offenders = []
    for name, path in found.items():
        if name == "broker.local" or name.startswith("broker.local."):
            continue
        for i in imports_of(name, path, known):
            if not (i.target == "broker.local" or i.target.startswith("broker.local.")):
                continue
            if i.lazy and name in LAZY_LOCAL_IMPORTERS:
                continue  # a command that runs the demo or the emulator, loaded when asked
            offenders.append(f"{path.relative_to(ROOT)}:{i.line} imports {i.target}")
    assert not offenders, offenders


@pytest.mark.parametrize("module", ["broker", "broker.cli", "broker.testing"])
def test_importing_the_package_loads_no_emulator_code(module: str) -> None:
    probe = (
        "import sys\n"
        f"import {module}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('moto', 'localstack')"
        " or m == 'broker.local' or m.startswith('broker.local.'))\n"
        "print('\\n'.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [], f"import {module} loaded: {done.stdout.split()}"


def module_sizes() -> dict[str, int]:
    return {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_modules_are_small() -> None:
    sizes = module_sizes()
    too_long = {path: lines for path, lines in sizes.items() if lines > MAX_LINES}
    median = statistics.median(sizes.values())
    assert not too_long, f"over {MAX_LINES} lines: {too_long}"
    assert median <= MAX_MEDIAN_LINES, f"median {median} lines over {MAX_MEDIAN_LINES}"


def test_the_version_is_written_once() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"], "pyproject.toml writes a version of its own"
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "broker._version.__version__"
    assert broker.__version__ == importlib.metadata.version("sfn-callback-broker")


def test_architecture_doc_names_every_module() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"^\| `([\w.]+)`", doc, flags=re.MULTILINE))
    wanted = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            # A package's docstring is its line; only the top-level and testing ones are rows.
            if len(parts) == 1:
                wanted.add("broker")
            elif parts[0] == "testing":
                wanted.add("testing")
            continue
        wanted.add(".".join(parts))
    assert not wanted - named, f"modules docs/architecture.md does not name: {wanted - named}"
    assert not named - wanted, f"docs/architecture.md names modules that are gone: {named - wanted}"
