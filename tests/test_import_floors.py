"""The import floors of docs/ARCHITECTURE.md hold for every module of the tree.

Each source file is parsed (not imported) with the package-dir mapping of setup.py, and every
``import`` / ``from ... import`` in it, at module level or inside a function, is resolved to a
module of the project. A module may import only its own floor and the floors below it:

    0  hysparse_kernels (ops, backends, dispatch, tuned configs, cli)
    1  hysparse_kernels.ir
    2  hysparse_kernels.models, hysparse_kernels.autotune   (neither imports the other)
    3  hysparse_kernels.training

and no two modules import each other, directly or round a longer loop (a lazy import inside a
function counts: it still ties the two files together).

The ``hysparse`` CLI names its subcommands by module string and imports them lazily, so it is
no import in this sense.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# setup.py's package-dir mapping: folder -> package name.
PACKAGES = {
    "hysparse_kernels": "hysparse_kernels",
    "ir": "hysparse_kernels.ir",
    "models": "hysparse_kernels.models",
    "autotune": "hysparse_kernels.autotune",
    "training": "hysparse_kernels.training",
}
FLOOR = {
    "hysparse_kernels": 0,
    "hysparse_kernels.ir": 1,
    "hysparse_kernels.models": 2,
    "hysparse_kernels.autotune": 2,
    "hysparse_kernels.training": 3,
}


def _module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> tuple[str, bool]:
    rel = path.relative_to(root)
    parts = list(rel.with_suffix("").parts)
    package = PACKAGES[parts[0]]
    is_init = parts[-1] == "__init__"
    rest = parts[1:-1] if is_init else parts[1:]
    return ".".join([package, *rest]), is_init


def _top_package(module: str) -> str | None:
    """The floor package a project module belongs to (longest match), or None for third party."""
    best = None
    for package in FLOOR:
        if module == package or module.startswith(package + "."):
            if best is None or len(package) > len(best):
                best = package
    return best


def _imports(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[tuple[int, str]]:
    name, is_init = _module_name(path, root)
    package = name if is_init else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import sub` may name a submodule: record both readings.
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def _module_edges(path: pathlib.Path, modules: set[str], root: pathlib.Path = ROOT) -> set[str]:
    """The project modules ``path`` imports: ``from pkg import sub`` counts as an import of the
    submodule when ``pkg.sub`` is one, else of ``pkg`` (the parent packages Python loads on the way
    are implied by any import and are not edges)."""
    name, is_init = _module_name(path, root)
    package = name if is_init else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        edges.update(t for t in targets if t in modules and t != name)
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    paths = {_module_name(p, root)[0]: p for folder in PACKAGES if (root / folder).is_dir()
             for p in sorted((root / folder).rglob("*.py"))}
    return {name: _module_edges(p, set(paths), root) for name, p in paths.items()}


def _sources():
    for folder in PACKAGES:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_the_tree_has_sources_for_every_floor():
    names = {_top_package(_module_name(p)[0]) for p in _sources()}
    assert names == set(FLOOR)


@pytest.mark.parametrize("folder", list(PACKAGES))
def test_no_module_imports_a_floor_above_its_own(folder):
    violations = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        own = _top_package(_module_name(path)[0])
        for line, target in _imports(path):
            other = _top_package(target)
            if other is None or other == own:
                continue
            if FLOOR[other] > FLOOR[own] or (FLOOR[other] == FLOOR[own] and other != own):
                violations.append(f"{path.relative_to(ROOT)}:{line} imports {target} (floor {FLOOR[other]}, own {FLOOR[own]})")
    assert not violations, "upward or sideways imports:\n" + "\n".join(violations)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule above can fail: a kernel-layer file importing the models (even lazily, or
    relatively) is reported."""
    (tmp_path / "hysparse_kernels" / "ops").mkdir(parents=True)
    bad = tmp_path / "hysparse_kernels" / "ops" / "bad.py"
    bad.write_text("import torch\ndef f():\n    from hysparse_kernels.models import build_model\nfrom ..ir import presets\n")
    targets = {_top_package(t) for _, t in _imports(bad, tmp_path)}
    assert {"hysparse_kernels.models", "hysparse_kernels.ir"} <= targets


def test_no_import_cycle_between_modules():
    cycles = _cycles(_import_graph())
    assert not cycles, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle(tmp_path):
    """The cycle rule can fail: two kernel-layer modules that import each other (one lazily) and
    a loop of three are each reported; a package importing its own submodules is not a cycle."""
    ops = tmp_path / "hysparse_kernels" / "ops"
    ops.mkdir(parents=True)
    (tmp_path / "hysparse_kernels" / "__init__.py").write_text("from .ops import a\n")
    (ops / "__init__.py").write_text("")
    (ops / "a.py").write_text("from . import b\n")
    (ops / "b.py").write_text("def f():\n    from .a import g\n")
    (ops / "c.py").write_text("import hysparse_kernels.ops.d\n")
    (ops / "d.py").write_text("from hysparse_kernels.ops import e\n")
    (ops / "e.py").write_text("from .c import x\nfrom .. import ops\n")
    cycles = _cycles(_import_graph(tmp_path))
    assert sorted(cycles) == [
        ["hysparse_kernels.ops.a", "hysparse_kernels.ops.b"],
        ["hysparse_kernels.ops.c", "hysparse_kernels.ops.d", "hysparse_kernels.ops.e"],
    ]
