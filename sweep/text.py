"""Someone else's text, made safe to show on one line.

Study names, attribute values and parameter names are anyone's JSON in a shared database;
error messages come from a database server. Whatever they hold (line breaks, ANSI escape
codes that would repaint the user's terminal, Markdown's backticks), sweep shows them through
here.
"""

from __future__ import annotations


def printable(text: str, limit: int) -> str:
    """Someone else's text, safe inside one line of Markdown: no control characters or
    backticks, at most ``limit`` characters."""
    clean = "".join(c if c.isprintable() and c != "`" else "?" for c in str(text))
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"
