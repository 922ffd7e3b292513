"""Which installed packages differ from the lock: ``pip list --format=freeze | python -m
tests.newer LOCK`` (``make test-newest`` prints it before it runs the tests)."""

from __future__ import annotations

import sys
from pathlib import Path


def pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` lines (comments and blanks skipped) → {normalised name: version}."""
    found = {}
    for line in lines:
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            found[name.strip().lower().replace("_", "-")] = version.strip()
    return found


def main() -> None:
    locked = pins(Path(sys.argv[1]).read_text().splitlines())
    installed = pins(sys.stdin.read().splitlines())
    moved = [f"{name} {installed[name]} (lock {v})" for name, v in sorted(locked.items())
             if name in installed and installed[name] != v]  # fmt: skip
    print(
        "newer than the lock: "
        + (", ".join(moved) if moved else "nothing (the lock is the newest)")
    )


if __name__ == "__main__":
    main()
