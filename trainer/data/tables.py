"""Small tables typed by people: CSV, TSV or Markdown pipe tables, read into rows of strings."""
from __future__ import annotations

import csv
import io
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
