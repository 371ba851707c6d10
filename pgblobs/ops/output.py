"""Presenting results to an operator: tables, CSV, JSON, sizes, reasons, progress."""

import csv
import datetime
import io
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, SupportsFloat

from tqdm import tqdm

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")

# A column's table cell from its value. The value's type is the column's
# (an int, a Decimal sum, a date, None), which only each function knows.
Shown = Mapping[str, Callable[[Any], object]]


def human_size(count: SupportsFloat | None) -> str:
    """1536 -> '1.5 KiB'; whole bytes below 1 KiB."""
    if count is None:
        return "-"
    value = float(count)
    for unit in _UNITS[:-1]:
        if abs(value) < 1024:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {_UNITS[-1]}"


def first_line(error: BaseException) -> str:
    """What a report shows of an error: its first line (a PostgreSQL error
    goes on with DETAIL, HINT and CONTEXT lines)."""
    return str(error).strip().splitlines()[0]


def _plain(value: object) -> object:
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    return value


def render(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str],
    output_format: str,
    shown: Shown | None = None,
) -> str:
    """``rows`` as an aligned table, CSV or JSON. ``shown`` maps a column to
    a function giving its table cell (sizes, dates)."""
    if output_format == "json":
        return json.dumps([{c: _plain(row[c]) for c in columns} for row in rows], indent=2)
    if output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows([[_plain(row[c]) for c in columns] for row in rows])
        return buffer.getvalue().rstrip("\n")
    shown = shown or {}
    cells = [[str(shown.get(c, _cell)(row[c])) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for line in cells:
        lines.append(
            "  ".join(
                cell.rjust(w) if _numeric(cell) else cell.ljust(w)
                for cell, w in zip(line, widths, strict=True)
            )
        )
    return "\n".join(lines)


def _cell(value: object) -> object:
    if value is None:
        return "-"
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return _plain(value)


def _numeric(cell: str) -> bool:
    return cell.replace(".", "", 1).replace("%", "").replace(" ", "").rstrip("BKMGTPi").isdigit()


def progress(total: int, description: str, unit: str = "B") -> tqdm:
    """A progress bar on a terminal; silent otherwise (callers print a
    summary). Bytes are shown scaled (kB, MB); other units as counted."""
    return tqdm(
        total=total,
        unit=unit,
        desc=description,
        unit_scale=unit == "B",
        disable=not sys.stderr.isatty(),
        file=sys.stderr,
        leave=False,
    )
