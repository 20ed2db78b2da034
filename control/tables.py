"""Plain-text tables and "key: value" blocks: the one formatter of every pydpctl list and status output."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

__all__ = ["format_table", "format_fields", "cell"]


def cell(v: Any) -> str:
    """The text of a value in a table: None is "-"."""
    return "-" if v is None else str(v)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """Aligned columns two spaces apart under a header line; columns whose indexes are in right are right-aligned
    (numbers); no trailing spaces. Every row has one value per header (ValueError otherwise)."""
    right = set(right)
    cells = [[str(h) for h in headers]]
    for r in rows:
        if len(r) != len(headers):
            raise ValueError(f"a row of {len(r)} values under {len(headers)} headers: {list(r)!r}")
        cells.append([cell(v) for v in r])
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(r))
                     .rstrip() for r in cells)


def format_fields(fields: Sequence[tuple[str, Any]]) -> str:
    """One "Key: value" line per field, the values aligned one space after the longest key."""
    width = max((len(k) for k, _ in fields), default=0) + 2
    return "\n".join(f"{k + ':':<{width}}{cell(v)}".rstrip() for k, v in fields)
