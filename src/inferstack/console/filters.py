"""Jinja filters: numbers as the console's pages print them (a dash where there is none)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NONE = "\u2013"  # an en dash


def milliseconds(seconds: float | None) -> str:
    """Seconds as milliseconds with three significant digits."""
    if seconds is None:
        return NONE
    ms = seconds * 1e3
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def ms(value: float | None) -> str:
    """A value already in milliseconds."""
    return NONE if value is None else (f"{value:.3f}" if value < 10 else f"{value:.1f}")


def rate(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value:.1f}/s" if value < 100 else f"{value:,.0f}/s"


def percent(value: float | None) -> str:
    return NONE if value is None else f"{value * 100:.1f} %"


def fraction(value: float) -> str:
    """0..1 as a percentage for SVG and CSS lengths."""
    return f"{max(0.0, min(1.0, value)) * 100:.3f}%"


def count(value: int | float) -> str:
    return f"{int(value):,}"


FILTERS: dict[str, Callable[..., Any]] = {
    "milliseconds": milliseconds,
    "ms": ms,
    "rate": rate,
    "percent": percent,
    "fraction": fraction,
    "count": count,
}
