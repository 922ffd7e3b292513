"""The README's layout section and the tree agree: every module and subpackage listed
under the package that holds it, and nothing else."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("mlp", "sweep")


def _listed() -> set[str]:
    """The paths the README's layout block names: ``pkg/``, ``pkg/sub/``, ``pkg/[sub/]x.py``.

    An entry is indented two spaces per level under the folder above it; a deeper line is the
    previous entry's description going on."""
    block = (ROOT / "README.md").read_text().split("## Layout")[1].split("```")[1]
    listed, folders = set(), []
    for line in block.splitlines():
        m = re.match(r"^( *)(\w+/|\w+\.py)(?:\s|$)", line)
        if not m or len(m[1]) > 2 * len(folders) or len(m[1]) % 2:
            continue
        del folders[len(m[1]) // 2 :]
        listed.add("".join(folders) + m[2])
        if m[2].endswith("/"):
            folders.append(m[2])
    return {path for path in listed if path.split("/")[0] in PACKAGES}


def _tree() -> set[str]:
    """Every module of the packages, and every folder on the way to one."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT)
            found.update(f"{folder.as_posix()}/" for folder in relative.parents[:-1])
            if path.name != "__init__.py":
                found.add(relative.as_posix())
    return found


def test_the_readme_layout_lists_every_module_and_only_those():
    assert _listed() == _tree()


def test_every_folder_of_modules_is_a_package():
    folders = {path[:-1] for path in _tree() if path.endswith("/")}
    assert {f for f in folders if not (ROOT / f / "__init__.py").exists()} == set()


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``module`` imports anywhere in its file: at the top, in
    a function, under ``TYPE_CHECKING`` (a dependency all the same). ``from pkg import name``
    is ``pkg.name`` where that is a module, else ``pkg`` (its ``__init__``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # a name in a module: that module
                name = name.rpartition(".")[0]
            found.add(name)
    return found - {"", module}


def _way_back(graph: dict[str, set[str]], start: str) -> str | None:
    """A shortest way from ``start`` through its imports back to itself, or None."""
    parent, frontier = {start: start}, [start]
    while frontier:
        following = []
        for module in frontier:
            if start in graph[module]:
                way = [module]
                while way[-1] != start:
                    way.append(parent[way[-1]])
                return " → ".join([*reversed(way), start])
            for after in graph[module] - parent.keys():
                parent[after] = module
                following.append(after)
        frontier = following
    return None


def test_no_import_circle_in_mlp_or_sweep():
    paths = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: _imports(p, m, set(paths)) for m, p in paths.items()}
    assert {way for m in graph if (way := _way_back(graph, m))} == set()
