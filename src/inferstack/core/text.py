"""Text for log lines and messages."""

from __future__ import annotations

MAX_LINE = 300  # characters `one_line` keeps by default


def one_line(text: str | BaseException, limit: int = MAX_LINE) -> str:
    """A message (or an exception's) as one bounded line: its lines joined with " | ",
    control characters as "?", at most `limit` characters (a longer one cut to end in "...").
    An exception without a message reads as its type's name."""
    if isinstance(text, BaseException):
        text = str(text) or type(text).__name__
    flat = " | ".join(part for part in text.splitlines() if part)
    flat = "".join(c if c.isprintable() else "?" for c in flat)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
