"""Imports point one way: no two modules of spotfill need each other, in any of its three code trees.

The graph is read from the source with `ast`, never by importing it, so it sees every import whether or not
it runs: module-level and function-level imports alike (a function-level import is still a need, only a
later one), and those under `if TYPE_CHECKING:` too (a lower module that names a higher one's type still
needs it; the fix is to move the type down, not to hide the import). `from package import name` needs the
package's `__init__` (it reads the package's namespace) and, where `name` is a submodule, that module too.

A cycle is a strongly connected component of more than one module. The control plane's packages are also
checked for direction: the stages of a run build on the shared modules below them, never the other way.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TREES = (
    ROOT / "functions" / "spotfill_control",
    ROOT / "src" / "spotfill",
    ROOT / "worker" / "spotfill_worker",
)

# The control plane's layers, lowest first: a module may import from its own package or a lower layer only.
# Its top-level modules (clients, errors, configuration, the run, the spec, the shards) are the shared base.
CONTROL_LAYERS = {"": 0, "fleet": 1, "monitoring": 2, "setup": 3, "finishing": 3, "handlers": 4}


def module_name(path: Path, tree: Path) -> str:
    parts = path.relative_to(tree.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path, tree): path for tree in TREES for path in sorted(tree.rglob("*.py"))}


def imported(path: Path, name: str, known: set[str]) -> Iterator[str]:
    """The modules of the trees that `path` (module `name`) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = ".".join(part for part in (base if node.level else "", node.module or "") if part)
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in known)


def import_graph() -> dict[str, set[str]]:
    paths = modules()
    known = set(paths)
    return {
        name: {target for target in imported(path, name, known) if target in known and target != name}
        for name, path in paths.items()
    }


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.add(frozenset(component))
    return found


def named(components: set[frozenset[str]]) -> list[list[str]]:
    return sorted(sorted(component) for component in components)


def test_no_module_imports_a_module_that_imports_it_back():
    # a cycle is broken by moving what both need down (as the worker's `loaded_model` and the local cloud's
    # module-path imports did), never by allowing it here
    assert named(cycles(import_graph())) == []


def test_the_cycle_finder_finds_a_pair_and_a_ring_and_nothing_in_a_chain():
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"g"}, "g": set()}
    assert named(cycles(graph)) == [["a", "b"], ["c", "d", "e"]]


def control_layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in CONTROL_LAYERS else ""


def test_control_plane_packages_import_only_their_own_or_a_lower_layer():
    graph = import_graph()
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name.startswith("spotfill_control.")
        for target in targets
        if target.startswith("spotfill_control.")
        and control_layer(target) != control_layer(name)
        and CONTROL_LAYERS[control_layer(target)] >= CONTROL_LAYERS[control_layer(name)]
    )
    assert upward == []


def test_every_control_plane_package_has_a_layer():
    packages = {init.parent.name for init in TREES[0].glob("*/__init__.py")}
    assert sorted(packages - set(CONTROL_LAYERS)) == []
