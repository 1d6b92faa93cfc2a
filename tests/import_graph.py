"""The import graph of `sq_jax`, read with `ast` (nothing is imported), and the size counts the renovation tracks.

`python tests/import_graph.py [PACKAGE_DIR]` prints circles, upward imports, function-level imports, files over
300 lines and functions over 60 lines; `tests/test_import_graph.py` turns the import rules into failures.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

PACKAGE = "sq_jax"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE

# Floors, lowest first: a module may import its own floor or any floor below, never one above. The ground floors
# are pure (configs, prompt text, meshes, the model); `toy/` sits above what it uses and below its callers.
FLOORS: dict[str, int] = {
    name: level for level, name in enumerate((
        "configlib", "prompts", "parallel", "models", "data", "toy",
        "train", "sampling", "eval", "pipeline", "cli",
    ))
}
# The one module where function-level imports need no reason: each subcommand imports only what it runs.
LAZY_IMPORTS_ALLOWED = (f"{PACKAGE}.cli",)
LONG_FILE_LINES = 300
LONG_FUNCTION_LINES = 60


@dataclasses.dataclass(frozen=True)
class ImportStatement:
    """One `import` / `from ... import` statement and the modules it loads."""

    module: str  # the importing module, dotted
    path: Path  # its file, relative to the package's parent
    line: int
    targets: tuple[str, ...]  # dotted modules loaded: a `from m import sub` loads the submodule `m.sub`
    in_function: bool
    type_only: bool  # under `if TYPE_CHECKING:`: never runs
    has_why: bool  # a comment on the statement's lines, or heading the run of import lines it is in

    @property
    def internal_targets(self) -> tuple[str, ...]:
        return tuple(t for t in self.targets if t == PACKAGE or t.startswith(PACKAGE + "."))

    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclasses.dataclass
class ImportGraph:
    package_dir: Path
    modules: dict[str, Path]  # dotted name -> file
    statements: list[ImportStatement]

    def edges(self, *, runtime_only: bool = False) -> dict[str, set[str]]:
        """module -> the sq_jax modules it imports (explicitly), function-level imports included."""
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for s in self.statements:
            if not (runtime_only and s.type_only):
                out[s.module].update(t for t in s.internal_targets if t in self.modules and t != s.module)
        return out

    def runtime_edges(self) -> dict[str, set[str]]:
        """`edges` plus the packages Python initialises on the way: importing `a.b.c` from outside `a.b` runs
        `a/b/__init__.py` first, which is how a package's `__init__` joins a circle."""
        out = self.edges(runtime_only=True)
        for importer, targets in list(out.items()):
            for target in list(targets):
                parts = target.split(".")
                for n in range(2, len(parts)):
                    package = ".".join(parts[:n])
                    if package in self.modules and not (importer + ".").startswith(package + "."):
                        out[importer].add(package)
        return out

    def file(self, module: str) -> str:
        return str(self.modules[module].relative_to(self.package_dir))


def module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_imports(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Every import node with (inside a function, under `if TYPE_CHECKING`)."""
    def visit(nodes: Iterable[ast.AST], in_function: bool, type_only: bool) -> Iterator:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node, in_function, type_only
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from visit(node.body, in_function, True)
                yield from visit(node.orelse, in_function, type_only)
            else:
                nested = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                yield from visit(ast.iter_child_nodes(node), nested, type_only)
    yield from visit(ast.iter_child_nodes(tree), False, False)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> tuple[str, ...]:
    if isinstance(node, ast.Import):
        return tuple(alias.name for alias in node.names)
    base = node.module or ""
    if node.level:  # relative: `from . import x` in a.b.c (module) or a.b (package) means a.b.x
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in modules else base)
    return tuple(dict.fromkeys(out))


def _has_why(lines: list[str], node: ast.stmt) -> bool:
    """A comment on the statement's lines, or above it; one comment may head a run of import lines (blank lines
    between third-party and sq_jax groups included)."""
    if any("#" in line for line in lines[node.lineno - 1: node.end_lineno]):
        return True
    above = node.lineno - 2
    while above >= 0 and (lines[above].strip().startswith(("import ", "from ")) or not lines[above].strip()):
        if "#" in lines[above]:
            return True
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


def build_graph(package_dir: Path = PACKAGE_DIR) -> ImportGraph:
    """Parse every module of the package under `package_dir` and collect its import statements."""
    package_dir = Path(package_dir).resolve()
    files = sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)
    modules = {module_name(p, package_dir): p for p in files}
    statements = []
    for module, path in modules.items():
        text = path.read_text()
        lines = text.splitlines()
        for node, in_function, type_only in _walk_imports(ast.parse(text, filename=str(path))):
            statements.append(ImportStatement(
                module=module, path=path.relative_to(package_dir.parent), line=node.lineno,
                targets=_targets(node, module, path.name == "__init__.py", set(modules)),
                in_function=in_function, type_only=type_only, has_why=_has_why(lines, node)))
    return ImportGraph(package_dir, modules, statements)


def floor_of(module: str) -> str | None:
    """`sq_jax.models.hf_io` -> `models`; the bare package has no floor (it imports nothing)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def circles(graph: ImportGraph) -> list[list[str]]:
    """One circle per group of modules that import each other at run time, as [a, b, c, a] (Tarjan's SCCs)."""
    edges = graph.runtime_edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(v: str) -> None:  # recursive; the graph is a few hundred modules deep at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [_shortest_circle(min(g), g, edges) for g in groups]


def _shortest_circle(start: str, group: set[str], edges: dict[str, set[str]]) -> list[str]:
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & group):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a circle but no path returns to it")


def upward_imports(graph: ImportGraph) -> list[tuple[ImportStatement, str]]:
    """(statement, target) where the target's floor is above the importer's; type-only imports count too."""
    out = []
    for s in graph.statements:
        here = floor_of(s.module)
        for target in s.internal_targets:
            there = floor_of(target)
            if here is not None and there is not None and FLOORS[there] > FLOORS[here]:
                out.append((s, target))
    return out


def unresolved_imports(graph: ImportGraph) -> list[tuple[ImportStatement, str]]:
    """(statement, target) naming an sq_jax module that is not there: an importer a move forgot."""
    return [(s, t) for s in graph.statements for t in s.internal_targets if t not in graph.modules]


def modules_without_floor(graph: ImportGraph) -> list[str]:
    return sorted({f for m in graph.modules if (f := floor_of(m)) is not None and f not in FLOORS})


def function_level_imports(graph: ImportGraph, *, internal_only: bool = False) -> list[ImportStatement]:
    """Imports inside functions, outside `cli.py`; `internal_only`: only those that load an sq_jax module."""
    return [s for s in graph.statements if s.in_function and s.module not in LAZY_IMPORTS_ALLOWED
            and (s.internal_targets or not internal_only)]


def unexplained_function_level_imports(graph: ImportGraph) -> list[ImportStatement]:
    return [s for s in function_level_imports(graph) if not s.has_why]


def long_files(graph: ImportGraph) -> list[tuple[str, int]]:
    sizes = ((graph.file(m), len(p.read_text().splitlines())) for m, p in graph.modules.items())
    return sorted(((f, n) for f, n in sizes if n > LONG_FILE_LINES), key=lambda x: -x[1])


def long_functions(graph: ImportGraph) -> list[tuple[str, int]]:
    out = []
    for module, path in graph.modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONG_FUNCTION_LINES:
                    out.append((f"{graph.file(module)}:{node.lineno} {node.name}", length))
    return sorted(out, key=lambda x: -x[1])


def format_circle(graph: ImportGraph, circle: list[str]) -> str:
    return " -> ".join(graph.file(m) for m in circle)


def main(argv: list[str]) -> None:
    graph = build_graph(Path(argv[0]) if argv else PACKAGE_DIR)
    found = circles(graph)
    upward = upward_imports(graph)
    lazy_all = function_level_imports(graph)
    lazy_internal = function_level_imports(graph, internal_only=True)
    unexplained = unexplained_function_level_imports(graph)
    files, functions = long_files(graph), long_functions(graph)
    print(f"package: {graph.package_dir} ({len(graph.modules)} modules)")
    print(f"circles: {len(found)}")
    for c in found:
        print(f"  {format_circle(graph, c)}")
    print(f"upward imports: {len(upward)}")
    for s, target in upward:
        print(f"  {s.where()} ({floor_of(s.module)}) imports {target} ({floor_of(target)})")
    missing = unresolved_imports(graph)
    if missing:
        print(f"imports of missing modules: {len(missing)}")
        for s, target in missing:
            print(f"  {s.where()} imports {target}")
    print(f"function-level imports outside cli.py: {len(lazy_internal)} of sq_jax, {len(lazy_all)} in all, "
          f"{len(unexplained)} without a why-comment")
    for s in lazy_all:
        mark = "" if s.has_why else "  [no why-comment]"
        print(f"  {s.where()} {', '.join(s.targets)}{mark}")
    print(f"files over {LONG_FILE_LINES} lines: {len(files)}")
    for name, n in files:
        print(f"  {n:4d} {name}")
    print(f"functions over {LONG_FUNCTION_LINES} lines: {len(functions)}")
    for name, n in functions:
        print(f"  {n:4d} {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
