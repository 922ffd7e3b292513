"""The README's layout section and the tree agree: every module listed, and nothing else."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_readme_layout_lists_every_module_and_only_those():
    block = (ROOT / "README.md").read_text().split("## Layout")[1].split("```")[1]
    listed, package = set(), None
    for line in block.splitlines():
        if m := re.match(r"^(\w+)/\s", line):
            package = m[1]
        elif m := re.match(r"^  (\w+\.py)\s", line):
            listed.add(f"{package}/{m[1]}")
    modules = {
        f"{package}/{path.name}"
        for package in ("mlp", "sweep")
        for path in (ROOT / package).glob("*.py")
        if path.name != "__init__.py"
    }
    assert listed == modules
