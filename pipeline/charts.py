"""Charts for reports: inline-SVG line plots and confusion matrices, HTML tables and pages.

Everything is self-contained text (no plotting library, no external files), so a report opens
in any browser from the run directory, survives being mailed around, and the pipeline's
training reports (`trainer.report`) and the annotation report (`pipeline.report`) share them.
"""
from __future__ import annotations

import html
import math
from typing import Mapping, Sequence

# A colour-blind-safe qualitative palette (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

Series = Mapping[str, Sequence[float | None]]


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 5 x 10^k steps)."""
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        high = low + (abs(low) if low else 1.0)
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _format_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 1e-3:
        return f"{value:.0e}"
    return f"{value:.4g}"


def _svg_open(width: int, height: int, title: str | None) -> list[str]:
    """The start of an SVG chart: root element, white background, bold centred title (if any)."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>']
    if title:
        parts.append(f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" '
                     f'font-weight="bold">{html.escape(title)}</text>')
    return parts


def svg_line_plot(series: Series, *, x: Sequence[float] | None = None, title: str = "",
                  xlabel: str = "", ylabel: str = "", width: int = 460, height: int = 260,
                  log_y: bool = False, markers: bool = True) -> str:
    """An `<svg>` line plot of named series over a shared x axis (default 1, 2, ...).

    `None` and non-finite values leave gaps. `log_y` plots on a log scale (non-positive values
    are dropped). Returns the SVG element as a string, ready to inline into HTML.
    """
    names = list(series)
    length = max((len(v) for v in series.values()), default=0)
    xs = list(x) if x is not None else list(range(1, length + 1))

    def usable(v) -> bool:
        return v is not None and math.isfinite(v) and (not log_y or v > 0)

    def transform(v: float) -> float:
        return math.log10(v) if log_y else v

    points = [transform(v) for vals in series.values() for v in vals if usable(v)]
    # the legend sits under the plot, two entries per row, so long names never cover data
    legend_rows = (len(names) + 1) // 2
    left, right, top, bottom = 58, 12, 26 if title else 10, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    height += 15 * legend_rows
    parts = _svg_open(width, height, title)
    if not points or not xs:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#888">no data</text>')
        parts.append("</svg>")
        return "".join(parts)

    y_low, y_high = min(points), max(points)
    if y_high - y_low < 1e-12:
        pad = abs(y_low) * 0.05 or 0.5
        y_low, y_high = y_low - pad, y_high + pad
    if log_y:
        y_ticks = list(range(math.floor(y_low), math.ceil(y_high) + 1))
    else:
        y_ticks = _nice_ticks(y_low, y_high)
    y_low, y_high = min(y_low, y_ticks[0]), max(y_high, y_ticks[-1])
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    x_ticks = [t for t in _nice_ticks(x_low, x_high, 6) if x_low <= t <= x_high]

    def px(xv: float) -> float:
        return left + (xv - x_low) / (x_high - x_low) * plot_w

    def py(yv: float) -> float:
        return top + (1 - (yv - y_low) / (y_high - y_low)) * plot_h

    for t in y_ticks:
        y = py(t)
        label = _format_tick(10 ** t) if log_y else _format_tick(t)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    for t in x_ticks:
        xp = px(t)
        parts.append(f'<line x1="{xp:.1f}" y1="{top + plot_h}" x2="{xp:.1f}" y2="{top + plot_h + 4}" '
                     f'stroke="#333"/>')
        parts.append(f'<text x="{xp:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_format_tick(t)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>')
    if xlabel:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 32}" text-anchor="middle">'
                     f'{html.escape(xlabel)}</text>')
    if ylabel:
        parts.append(f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
                     f'transform="rotate(-90 12 {top + plot_h / 2})">{html.escape(ylabel)}</text>')

    for i, name in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        segment: list[str] = []
        segments: list[list[str]] = []
        dots = []
        for xv, v in zip(xs, series[name]):
            if usable(v):
                xy = f"{px(xv):.1f},{py(transform(v)):.1f}"
                segment.append(xy)
                dots.append(xy)
            elif segment:
                segments.append(segment)
                segment = []
        if segment:
            segments.append(segment)
        for seg in segments:
            parts.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
        if markers and len(dots) <= 60:
            for xy in dots:
                cx, cy = xy.split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.2" fill="{colour}"/>')
        lx = 10 + (i % 2) * (width // 2)
        ly = top + plot_h + bottom + 10 + 15 * (i // 2)
        parts.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 16}" y2="{ly - 4}" '
                     f'stroke="{colour}" stroke-width="2.5"/>')
        parts.append(f'<text x="{lx + 20}" y="{ly}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_confusion_matrix(matrix: Sequence[Sequence[float]], labels: Sequence[str], *,
                         title: str = "", cell: int = 56) -> str:
    """An `<svg>` confusion matrix: rows are the true class, columns the predicted class.

    Cells show the count and the row percentage (recall); shading follows the row fraction.
    """
    n = len(labels)
    left, top = 92, 44 if title else 24
    width, height = left + n * cell + 12, top + n * cell + 40
    parts = _svg_open(width, height, title)
    parts.append(f'<text x="{left + n * cell / 2}" y="{top - 6}" text-anchor="middle">predicted</text>')
    parts.append(f'<text x="12" y="{top + n * cell / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + n * cell / 2})">true</text>')
    for r in range(n):
        row_total = sum(matrix[r]) or 1
        parts.append(f'<text x="{left - 5}" y="{top + r * cell + cell / 2 + 4}" text-anchor="end">'
                     f'{html.escape(labels[r])}</text>')
        for c in range(n):
            count = matrix[r][c]
            fraction = count / row_total
            shade = int(round(255 - 190 * fraction))
            fill = f"rgb({shade},{shade + (255 - shade) // 3},255)"
            text_colour = "white" if fraction > 0.6 else "black"
            x, y = left + c * cell, top + r * cell
            parts.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#999"/>')
            count_text = f"{count:g}" if isinstance(count, float) else str(count)
            parts.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 - 2}" text-anchor="middle" '
                         f'fill="{text_colour}" font-weight="bold">{count_text}</text>')
            parts.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 12}" text-anchor="middle" '
                         f'fill="{text_colour}" font-size="9">{100 * fraction:.0f}%</text>')
    for c in range(n):
        parts.append(f'<text x="{left + c * cell + cell / 2}" y="{top + n * cell + 14}" '
                     f'text-anchor="middle">{html.escape(labels[c])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def html_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None) -> str:
    """A plain HTML table of dict rows; floats are shown with 4 significant digits."""
    if not rows:
        return "<p>(none)</p>"
    columns = list(columns or rows[0].keys())

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(row.get(c))}</td>" for c in columns) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(title: str, body: str) -> str:
    style = ("body{font-family:sans-serif;margin:24px;color:#222}h1{font-size:20px}"
             "h2{font-size:16px;margin-top:28px}.figs{display:flex;flex-wrap:wrap;gap:12px}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
             "padding:3px 7px;text-align:right}th{background:#f3f3f3}.note{color:#666;font-size:12px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def svg_bland_altman(predicted: Sequence[float], true: Sequence[float], *, title: str = "Bland-Altman",
                     unit: str = "mm", width: int = 460, height: int = 280) -> str:
    """An `<svg>` Bland-Altman plot: mean of (predicted, true) on x, predicted - true on y, with
    the bias and the 95 % limits of agreement (bias +- 1.96 SD) as horizontal lines."""
    pairs = [(float(p), float(t)) for p, t in zip(predicted, true)
             if math.isfinite(float(p)) and math.isfinite(float(t))]
    parts = _svg_open(width, height, title)
    if not pairs:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#888">no data</text>')
        parts.append("</svg>")
        return "".join(parts)
    means = [(p + t) / 2 for p, t in pairs]
    diffs = [p - t for p, t in pairs]
    n = len(diffs)
    bias = sum(diffs) / n
    sd = math.sqrt(sum((d - bias) ** 2 for d in diffs) / (n - 1)) if n > 1 else 0.0
    lines = [("bias", bias, "#D55E00"), ("-1.96 SD", bias - 1.96 * sd, "#0072B2"),
             ("+1.96 SD", bias + 1.96 * sd, "#0072B2")]
    left, right, top, bottom = 58, 70, 26 if title else 10, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    y_values = diffs + [v for _, v, _ in lines] + [0.0]
    y_ticks = _nice_ticks(min(y_values), max(y_values))
    x_ticks = _nice_ticks(min(means), max(means))
    y_low, y_high = min(y_ticks[0], min(y_values)), max(y_ticks[-1], max(y_values))
    x_low, x_high = min(x_ticks[0], min(means)), max(x_ticks[-1], max(means))
    if x_high - x_low < 1e-9:
        x_low, x_high = x_low - 1, x_high + 1
    if y_high - y_low < 1e-9:
        y_low, y_high = y_low - 1, y_high + 1

    def px(v: float) -> float:
        return left + (v - x_low) / (x_high - x_low) * plot_w

    def py(v: float) -> float:
        return top + (1 - (v - y_low) / (y_high - y_low)) * plot_h

    for t in y_ticks:
        parts.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + plot_w}" y2="{py(t):.1f}" stroke="#e5e5e5"/>')
        parts.append(f'<text x="{left - 5}" y="{py(t) + 4:.1f}" text-anchor="end">{_format_tick(t)}</text>')
    for t in x_ticks:
        parts.append(f'<text x="{px(t):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_format_tick(t)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 32}" text-anchor="middle">'
                 f'mean of predicted and true ({html.escape(unit)})</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" transform="rotate(-90 12 '
                 f'{top + plot_h / 2})">predicted - true ({html.escape(unit)})</text>')
    for m, d in zip(means, diffs):
        parts.append(f'<circle cx="{px(m):.1f}" cy="{py(d):.1f}" r="2.2" fill="#009E73" fill-opacity="0.55"/>')
    for name, value, colour in lines:
        y = py(value)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="{colour}" '
                     f'stroke-dasharray="5,3"/>')
        parts.append(f'<text x="{left + plot_w + 4}" y="{y + 4:.1f}" fill="{colour}">{html.escape(name)} '
                     f'{value:.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)
