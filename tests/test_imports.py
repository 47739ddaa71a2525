"""Module seams without cycles: the first-party import graph, read with ``ast`` (nothing is
imported), imports inside functions included.

    (a) no cycle in the graph of irene/, serve_app/ and pipelines/ modules
    (b) irene/ never imports serve_app or pipelines
    (c) irene/ outside irene/ray/ never imports Ray at module level; the function-level Ray
        imports there are exactly the known ones (``LIBRARY_RAY_IMPORTS``)

An edge goes to the module an import names (``from irene import io`` -> ``irene.io``,
``from irene.ray import ensure_ray`` -> ``irene.ray``); imports under ``if TYPE_CHECKING:``
never run and are left out.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("irene", "serve_app", "pipelines")

# (importing module, ray module) of the function-level Ray imports allowed in irene/ outside
# irene/ray/: none today (every Ray import of the library lives in irene/ray/).
LIBRARY_RAY_IMPORTS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (dotted; first-party or not)
    line: int
    function_level: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def first_party_modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[module_name(path)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, node.lineno, in_function))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(node, module, is_package)
            for alias in node.names:  # `from pkg import sub` names the submodule pkg.sub
                sub = f"{target}.{alias.name}"
                name = sub if sub in modules else target
                found.append(Import(module, name, node.lineno, in_function))
        fn = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or fn)

    visit(tree, False)
    return found


def _owner(target: str, modules: dict[str, Path]) -> str | None:
    """The first-party module ``target`` names (itself, or its closest parent package)."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def all_imports() -> list[Import]:
    modules = first_party_modules()
    return [imp for m, p in modules.items() for imp in imports_of(m, p, modules)]


def import_graph() -> dict[str, dict[str, list[Import]]]:
    """module -> {first-party module it imports -> the import statements}."""
    modules = first_party_modules()
    graph: dict[str, dict[str, list[Import]]] = {m: {} for m in modules}
    for imp in all_imports():
        target = _owner(imp.target, modules)
        if target is not None and target != imp.source:
            graph[imp.source].setdefault(target, []).append(imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:  # recursion depth <= number of modules (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def a_cycle(graph: dict[str, dict[str, list[Import]]], comp: list[str]) -> list[str]:
    """One shortest cycle through the component's first module, as a path a -> ... -> a."""
    members, start = set(comp), comp[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return [*paths[v], start]
                if w in members and w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return comp


def describe(graph: dict[str, dict[str, list[Import]]], cycle: list[str]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:], strict=False):
        imp = graph[a][b][0]
        where = "in a function" if all(i.function_level for i in graph[a][b]) else "module level"
        steps.append(f"  {a} -> {b}  (line {imp.line}, {where})")
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_the_graph_is_read():
    graph = import_graph()
    assert {"irene.pipeline", "irene.executor", "serve_app.app", "pipelines.prepare"} <= set(graph)
    assert "irene.config" in graph["irene.pipeline"]
    # an import inside a function is an edge too
    assert "irene.ray.executor" in graph["irene.executor"]
    assert all(i.function_level for i in graph["irene.executor"]["irene.ray.executor"])


def test_no_import_cycles():
    graph = import_graph()
    found = strongly_connected(graph)
    report = "\n\n".join(
        f"modules {', '.join(c)}; one cycle: {describe(graph, a_cycle(graph, c))}" for c in found
    )
    assert not found, f"import cycles (each: a strongly connected set of modules):\n{report}"


def test_a_cycle_is_found_and_printed():
    imp = Import("a", "b", 1, True)
    graph = {"a": {"b": [imp]}, "b": {"c": [imp]}, "c": {"a": [imp]}, "d": {"a": [imp]}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert describe(graph, ["a", "b", "c", "a"]).startswith("a -> b -> c -> a\n  a -> b  (line 1")


def test_the_library_never_imports_the_app_or_the_drivers():
    bad = [
        f"{i.source}:{i.line} imports {i.target}"
        for i in all_imports()
        if i.source.split(".")[0] == "irene"
        and i.target.split(".")[0] in ("serve_app", "pipelines")
    ]
    assert not bad, "\n".join(bad)


def _library_ray_imports() -> list[Import]:
    return [
        i
        for i in all_imports()
        if i.source.split(".")[0] == "irene"
        and not (i.source == "irene.ray" or i.source.startswith("irene.ray."))
        and i.target.split(".")[0] == "ray"
    ]


def test_the_library_imports_ray_only_inside_known_functions():
    ray_imports = _library_ray_imports()
    module_level = [
        f"{i.source}:{i.line} imports {i.target}" for i in ray_imports if not i.function_level
    ]
    assert not module_level, "Ray imported at module level outside irene/ray:\n" + "\n".join(
        module_level
    )
    found = {(i.source, i.target) for i in ray_imports}
    new, gone = sorted(found - LIBRARY_RAY_IMPORTS), sorted(LIBRARY_RAY_IMPORTS - found)
    assert not new and not gone, (
        f"function-level Ray imports outside irene/ray: new {new}, gone {gone}"
    )


if __name__ == "__main__":  # print the graph's cycles and the library's Ray imports
    g = import_graph()
    for comp in strongly_connected(g):
        print(describe(g, a_cycle(g, comp)), "\n")
    for i in _library_ray_imports():
        print(f"{i.source}:{i.line} {i.target} ({'function' if i.function_level else 'module'})")
