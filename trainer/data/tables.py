"""Small tables typed by people: CSV, TSV or Markdown pipe tables, read into rows of strings."""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from pipeline.errors import DataError


def read_table(path: str | Path) -> list[list[str]]:
    """Rows (header first) of a CSV/TSV file or a Markdown table (`| a | b |`), cells stripped.

    The delimiter is taken from the header line: `|`, tab, `;` or `,`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: table file is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as text ({exc})") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: empty table")
    if lines[0].lstrip().startswith("|"):
        rows = []
        for ln in lines:
            if not ln.lstrip().startswith("|"):
                continue
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            if all(set(c) <= set("-: ") for c in cells):   # the |---|:--| separator row
                continue
            rows.append(cells)
        return rows
    first = lines[0]
    delimiter = "\t" if "\t" in first else (";" if first.count(";") > first.count(",") else ",")
    try:
        return [[c.strip() for c in row] for row in csv.reader(io.StringIO("\n".join(lines)),
                                                                delimiter=delimiter)]
    except csv.Error as exc:
        raise DataError(f"{path}: cannot be parsed as a table ({exc})") from None


_LEADING_GROUP = re.compile(r"^\d{1,3}$")
_GROUP = re.compile(r"^\d{3}$")


def join_split_thousands(rows: list[list[str]], count_columns) -> tuple[list[list[str]], list[int]]:
    """Repair rows of a CSV exported from a web table whose counts had unquoted thousands
    separators: `1,1,313,Is,6mm` under `ID,Number of frames,Shape,Size` is `1,1313,Is,6mm`.

    Only rows with more cells than the header are touched, and only at `count_columns` (header
    positions of count columns), where a 1-3 digit cell followed by 3-digit cells is joined while
    the row is too long. Returns (rows, line numbers repaired; the header is line 1). Rows that
    are still too long are left as they are for the caller to report.
    """
    if not rows:
        return rows, []
    width = len(rows[0])
    out = [list(rows[0])]
    joined = []
    for line_no, row in enumerate(rows[1:], start=2):
        row = list(row)
        while len(row) > width and row[-1] == "":        # a trailing comma
            row.pop()
        repaired = False
        for col in sorted(count_columns):
            while (len(row) > width and col + 1 < len(row) and _LEADING_GROUP.match(row[col])
                   and _GROUP.match(row[col + 1])):
                row[col:col + 2] = [row[col] + row[col + 1]]
                repaired = True
        if repaired and len(row) == width:
            joined.append(line_no)
        out.append(row)
    return out, joined
