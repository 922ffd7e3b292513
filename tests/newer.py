"""Which installed packages differ from the lock: ``pip list --format=freeze | python -m
tests.newer LOCK`` (``make test-newest`` prints it before it runs the tests)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[1]


def pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` lines (comments and blanks skipped) → {normalised name: version}."""
    found = {}
    for line in lines:
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            found[name.strip().lower().replace("_", "-")] = version.strip()
    return found


def installed_pins(lock: Path) -> dict[str, str]:
    """The lock's pins of what is installed into an environment: all but the build's own
    packages (pyproject.toml's build-system), which live in pip's build environment."""
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in build}
    return {n: v for n, v in pins(lock.read_text().splitlines()).items() if n not in names}


def main() -> None:
    locked = installed_pins(Path(sys.argv[1]))
    installed = pins(sys.stdin.read().splitlines())
    moved = [f"{name} {installed[name]} (lock {v})" for name, v in sorted(locked.items())
             if name in installed and installed[name] != v]  # fmt: skip
    print("not as locked:", ", ".join(moved) or "nothing (the lock is the newest)")


if __name__ == "__main__":
    main()
