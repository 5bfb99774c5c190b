"""Dev tooling (``broker.local``: moto, LocalStack, the demo) stays out of the runtime.

The runtime never imports ``broker.local`` (only ``cli`` does, and only inside its
``demo`` command), ``import broker`` loads neither moto nor LocalStack code, and no import
cycle runs through the local tooling or the command, lazy imports counted.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[2] / "broker"


def _module_name(path: Path) -> str:
    parts = path.relative_to(_PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(_PACKAGE.rglob("*.py"))}


_LAZY_ALLOWED = {("broker.cli", "broker.local.demo")}


def _imports(path: Path) -> Iterator[str]:
    """Modules ``path`` imports, at load time or inside a function; TYPE_CHECKING blocks
    left out, since they never run."""
    pending: list[ast.stmt] = list(ast.parse(path.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                pending.append(child)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {imported for imported in _imports(path) if imported in modules}
        for name, path in modules.items()
    }


def _is_local(module: str) -> bool:
    return module == "broker.local" or module.startswith("broker.local.")


def test_the_runtime_never_imports_the_local_tooling() -> None:
    offenders = {
        (module, imported)
        for module, imports in _graph().items()
        for imported in imports
        if not _is_local(module) and _is_local(imported)
    }
    assert offenders - _LAZY_ALLOWED == set()
    cli = (_PACKAGE / "cli.py").read_text()
    # The one allowed import is lazy: moto is an optional extra.
    assert "\nfrom broker.local" not in cli
    assert "\nimport broker.local" not in cli


def test_no_import_cycle_runs_through_the_local_tooling_or_the_command() -> None:
    graph = _graph()
    watched = [module for module in graph if _is_local(module) or module == "broker.cli"]
    for start in watched:
        # Every module reachable from `start`; a cycle through it comes back to it.
        seen: set[str] = set()
        pending = list(graph[start])
        while pending:
            module = pending.pop()
            if module not in seen:
                seen.add(module)
                pending.extend(graph[module])
        assert start not in seen, f"{start} imports itself through {sorted(seen & set(watched))}"


def test_import_broker_loads_neither_moto_nor_localstack_code() -> None:
    probe = (
        "import sys, broker, broker.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('moto', 'localstack')\n"
        "      or m == 'broker.local' or m.startswith('broker.local.')))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert completed.stdout.strip() == "[]"
