"""The import graph of pipelines/ and app/, read from the source with `ast` (imports at module
level and inside functions): no circles, and the engine never imports the app or Streamlit."""

from __future__ import annotations

import ast
from pathlib import Path

from pipelines.config import REPO_ROOT

PACKAGES = ("pipelines", "app")


def module_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} of every module under `packages` (a package is its
    __init__.py)."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(module: str, path: Path) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for every import statement in `path`,
    relative imports resolved against `module`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            out.extend((base, alias.name) for alias in node.names)
    return out


def dependencies(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that `module` depends on. `from pkg import name` depends on
    pkg.name when that is a module, else on pkg; `import pkg.mod` depends on pkg.mod alone (a
    package's own __init__ being run on the way is not an edge)."""
    out = set()
    for base, name in imports(module, path):
        if name is not None and f"{base}.{name}" in modules:
            out.add(f"{base}.{name}")
        elif base in modules:
            out.add(base)
    out.discard(module)
    return out


def graph(root: Path = REPO_ROOT) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: dependencies(name, path, modules) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each strongly connected group of modules (Tarjan), each as
    [a, b, ..., a]; empty when the graph has none."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_circle(group, edges) for group in groups]


def _circle(group: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest circle from the group's first module back to itself, inside the group."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(edges[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"no circle through {start} in {sorted(group)}")


def test_no_import_circles() -> None:
    found = cycles(graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_engine_never_imports_the_app_or_streamlit() -> None:
    bad = []
    for module, path in module_files(REPO_ROOT, ("pipelines",)).items():
        for base, name in imports(module, path):
            top = base.split(".")[0]
            if top in ("app", "streamlit"):
                bad.append(f"{module} imports {base}{'.' + name if name else ''}")
    assert not bad, "\n".join(bad)


def test_the_rules_find_a_planted_circle_and_read_from_imports(tmp_path: Path) -> None:
    """The reader on a small made-up tree: a circle through a function-level import and a
    relative import is found and named; `from pkg import module` is an edge to the module,
    not to the package, so a package whose __init__ imports its own module is no circle."""
    files = {
        "pipelines/__init__.py": "",
        "pipelines/a.py": "from pipelines import b\n",
        "pipelines/b.py": "def f():\n    from .c import g\n",
        "pipelines/c.py": "import pipelines.a\n",
        "pipelines/pkg/__init__.py": "from pipelines.pkg.x import y\n",
        "pipelines/pkg/x.py": "from pipelines.pkg import z\n",
        "pipelines/pkg/z.py": "",
        "app/__init__.py": "",
        "app/ui.py": "from pipelines.pkg import x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    edges = graph(tmp_path)
    assert edges["pipelines.b"] == {"pipelines.c"}
    assert edges["pipelines.pkg.x"] == {"pipelines.pkg.z"}
    assert edges["app.ui"] == {"pipelines.pkg.x"}
    assert cycles(edges) == [["pipelines.a", "pipelines.b", "pipelines.c", "pipelines.a"]]
    # A name that is not a module is an edge to the package that defines it.
    (tmp_path / "pipelines/pkg/z.py").write_text("from pipelines.pkg import y\n")
    assert ["pipelines.pkg", "pipelines.pkg.x", "pipelines.pkg.z", "pipelines.pkg"] in cycles(
        graph(tmp_path)
    )
