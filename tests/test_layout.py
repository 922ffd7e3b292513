"""The README's layout section and the tree agree: every module and subpackage listed
under the package that holds it, and nothing else."""

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
