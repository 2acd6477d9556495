"""The package's layers, as docs/design.md §7 states them: the core never imports the lab,
importing ``orthosparse`` loads no lab module, and no module imports another in a circle.

Imports are read from the source (every ``import`` statement, at module level or inside a
function), so a lazy import counts as much as one at the top.
"""

import ast
import subprocess
import sys
from pathlib import Path

import orthosparse

PACKAGE = Path(orthosparse.__file__).parent


def module_name(path: Path) -> str:
    parts = ["orthosparse", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The package modules that module ``name`` imports (``from pkg import sub`` names ``sub``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def is_lab(name: str) -> bool:
    return name == "orthosparse.lab" or name.startswith("orthosparse.lab.")


def test_the_core_never_imports_the_lab():
    core = [n for n in GRAPH if not is_lab(n) and n != "orthosparse.__main__"]
    assert len(core) > 20  # the walk found the package
    offenders = {n: sorted(t for t in GRAPH[n] if is_lab(t)) for n in core}
    assert {n: t for n, t in offenders.items() if t} == {}


def test_importing_the_package_loads_no_lab_module():
    code = ("import sys, orthosparse; "
            "print(sorted(m for m in sys.modules if m.startswith('orthosparse.lab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a list of nodes (first == last), or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for root in sorted(graph):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_no_module_imports_another_in_a_circle():
    cycle = find_cycle({n: {t for t in ts if not n.startswith(t + ".")} for n, ts in GRAPH.items()})
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_literal_name_aliases_are_their_registries():
    """A ``Literal`` alias of names (for type checkers) lists exactly its registry's built-in names.

    Checked in a fresh process: other tests register extra names into the same registries.
    """
    code = """
import typing
from orthosparse.data.loader import AUGMENTATIONS, Augment
from orthosparse.masks.registry import MASK_METHODS, MaskMethodName
from orthosparse.models._activations import ACTIVATIONS, Activation
from orthosparse.schemes import SCHEMES, SchemeName
import orthosparse.masks  # registers the built-in mask methods
for alias, registry in [(SchemeName, SCHEMES), (MaskMethodName, MASK_METHODS),
                        (Activation, ACTIVATIONS), (Augment, AUGMENTATIONS)]:
    names, listed = registry.names(), sorted(typing.get_args(alias))
    print("ok" if names == listed else f"{registry.kind}: registry {names} != Literal {listed}")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:4] == ["ok"] * 4, out.stdout
