"""How numbers read on the dashboard: counts with separators, sizes in binary units, ratios as
"after / before" and as "N× smaller", accuracies in percent and drops in points."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def count(value: Any) -> str:
    return "—" if _missing(value) else f"{int(value):,}".replace(",", "\u202f")


def size(value: Any) -> str:
    if _missing(value):
        return "—"
    amount = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def ratio(value: Any) -> str:
    return "—" if _missing(value) else f"{float(value):.3f}"


def times(value: Any) -> str:
    """A ratio after / before as how many times smaller (or "1.00×" when unchanged)."""
    if _missing(value) or float(value) <= 0:
        return "—"
    factor = 1 / float(value)
    return f"{factor:.2f}×" if factor < 10 else f"{factor:.1f}×"


def factor(value: Any) -> str:
    """How many times a ratio moved, whichever way: 0.5 and 2.0 both read "2.00×"."""
    if _missing(value) or float(value) <= 0:
        return "—"
    return times(min(float(value), 1 / float(value)))


def change(value: Any, less: str = "smaller", more: str = "larger") -> str:
    """A ratio after / before, and what it means in words."""
    if _missing(value) or float(value) <= 0:
        return "—"
    if abs(float(value) - 1) < 0.005:
        return f"{ratio(value)} (unchanged)"
    return f"{ratio(value)} ({factor(value)} {less if float(value) < 1 else more})"


def percent(value: Any) -> str:
    return "—" if _missing(value) else f"{100 * float(value):.2f}\u00a0%"


def points(value: Any) -> str:
    """An accuracy drop (before − after) in percentage points; negative means it rose."""
    return "—" if _missing(value) else f"{100 * float(value):.2f}\u00a0pt"


def ms(value: Any) -> str:
    return "—" if _missing(value) else f"{float(value):.3f} ms"


def seconds(value: Any) -> str:
    if _missing(value):
        return "—"
    value = float(value)
    if value < 60:
        return f"{value:.1f} s"
    minutes, rest = divmod(round(value), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: Any) -> str:
    if _missing(value):
        return "—"
    return f"{float(value):.4g}" if isinstance(value, float) else str(value)


FILTERS = {
    "count": count,
    "size": size,
    "ratio": ratio,
    "times": times,
    "factor": factor,
    "change": change,
    "percent": percent,
    "points": points,
    "ms": ms,
    "seconds": seconds,
    "when": when,
    "number": number,
}
