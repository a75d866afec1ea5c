"""The architecture as the code's own imports draw it (README, Architecture).

Every import statement counts, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedveil", "server", "client", "privacy", "distill", "dashboard")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
             if "migrations" not in p.parts}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                # `from pkg import name` depends on pkg.name when that is a module, else on pkg
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    graph[mod].add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_any_product_package() -> None:
    assert _cycles(_graph()) == []


def test_server_and_client_never_import_each_other() -> None:
    graph = _graph()
    arrows = [(a, b) for a, deps in graph.items() for b in deps
              if (a.split(".")[0], b.split(".")[0]) in {("server", "client"), ("client", "server")}]
    assert arrows == []


def test_foundation_does_not_import_the_commands() -> None:
    graph = _graph()
    arrows = [(a, b) for a, deps in graph.items() for b in deps
              if a.startswith("fedveil.") and not a.startswith("fedveil.commands") and b.startswith("fedveil.commands")]
    assert arrows == []


def test_the_graph_sees_real_imports() -> None:
    # guards the checks above against a parser that finds nothing
    graph = _graph()
    assert "privacy.dp.accounting" in graph["privacy.dp.session"]
    assert "server.nodes" in graph["server.coordinator"]
