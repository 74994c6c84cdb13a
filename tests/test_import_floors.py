"""The import floors of docs/ARCHITECTURE.md hold for every module of the tree.

Each source file is parsed (not imported) with the package-dir mapping of setup.py, and every
``import`` / ``from ... import`` in it, at module level or inside a function, is resolved to a
module of the project. A module may import only its own floor and the floors below it:

    0  hysparse_kernels (ops, backends, dispatch, tuned configs, cli)
    1  hysparse_kernels.ir
    2  hysparse_kernels.models, hysparse_kernels.autotune   (neither imports the other)
    3  hysparse_kernels.training

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
