"""The library's structure, from its own imports: one direction, no circles.

``python tests/test_layers.py`` prints every module's imports of other likeness
modules, each module's layer (0: imports none of them) and any import that
points back up (a circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

SCANNER = Path(__file__).resolve().parent.parent / "scanner"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SCANNER.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the likeness modules it imports (anywhere in it, lazy imports included)."""
    modules = {_module(p): p for p in SCANNER.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
                # "from scanner import media" names a module; "from scanner.x import f" names x
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and t != "scanner":
                    graph[name].add(t)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layers(graph: dict[str, set[str]]) -> dict[str, int]:
    """Each module's layer: 0 when it imports no likeness module, else one above its highest import."""
    memo: dict[str, int] = {}

    def layer(m: str, seen: frozenset[str] = frozenset()) -> int:
        if m not in memo:
            memo[m] = 1 + max((layer(d, seen | {m}) for d in graph[m] if d not in seen), default=-1)
        return memo[m]

    return {m: layer(m) for m in graph}


def test_no_import_circles_in_the_library() -> None:
    assert circles(import_graph()) == []


def test_lower_stages_never_import_higher_ones() -> None:
    """DESIGN's one direction: features and search know nothing of the index; matching knows the index
    only through its own protocol; reports work from result lines (and the index's thumbnails); results,
    the policy and the ledger judge nothing."""
    graph = import_graph()
    rules = {
        "scanner.features": ("scanner.index", "scanner.match", "scanner.pipeline", "scanner.report", "scanner.search"),
        "scanner.search": ("scanner.index", "scanner.match", "scanner.pipeline", "scanner.report"),
        "scanner.match": ("scanner.index", "scanner.pipeline", "scanner.report"),
        "scanner.index": ("scanner.pipeline", "scanner.report"),
        # the page reads the index only for its reference thumbnails
        "scanner.report": ("scanner.pipeline", "scanner.index.writer", "scanner.match", "scanner.decisions"),
        "scanner.results": ("scanner.pipeline", "scanner.report", "scanner.index", "scanner.match"),
        "scanner.policy": ("scanner.pipeline", "scanner.index", "scanner.match", "scanner.report"),
        "scanner.ledger": ("scanner.pipeline", "scanner.index", "scanner.match", "scanner.decisions"),
        "scanner.pipeline": ("scanner.cli", "scanner.decisions", "scanner.engine_ray", "scanner.demo"),
    }
    wrong = [f"{m} imports {d}" for m, deps in graph.items() for d in deps for low, banned in rules.items()
             if (m == low or m.startswith(low + ".")) and any(d == b or d.startswith(b + ".") for b in banned)]
    assert wrong == []


if __name__ == "__main__":
    g = import_graph()
    lay = layers(g)
    for m in sorted(g, key=lambda m: (-lay[m], m)):
        print(f"{lay[m]:2d}  {m:32s} {', '.join(sorted(g[m]))}")
    found = circles(g)
    print("circles:", found or "none")
