"""`report.html` of an annotated video: a summary, one row per polyp with its thumbnail, and
each polyp's size over time (per-frame sizer output and the smoothed estimate with its
interval) as inline SVG, so the page is one self-contained file next to its thumbnails."""
from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from pipeline.charts import html_page, html_table, svg_bland_altman, svg_line_plot
from pipeline.size_metrics import CLASS_LABELS

from .provenance import mark_text

MAX_PLOT_POINTS = 600     # longer series are thinned evenly: the page stays light for long videos


def thin_indices(n: int) -> list[int]:
    """At most MAX_PLOT_POINTS evenly spread indices of 0..n-1 (always keeping the last)."""
    if n <= MAX_PLOT_POINTS:
        return list(range(n))
    step = n / MAX_PLOT_POINTS
    return sorted({int(i * step) for i in range(MAX_PLOT_POINTS)} | {n - 1})


def size_plot(history: Sequence[Mapping[str, Any]], track_id: int) -> str:
    """SVG of one track: per-frame size, smoothed size and its interval over media time."""
    keep = thin_indices(len(history))
    rows = [history[i] for i in keep]
    return svg_line_plot(
        {"per-frame mm": [r.get("frame_mm") for r in rows],
         "smoothed mm": [r.get("smoothed_mm") for r in rows],
         "interval low": [r.get("low_mm") for r in rows],
         "interval high": [r.get("high_mm") for r in rows]},
        x=[r["time"] for r in rows], title=f"polyp #{track_id}: size over time",
        xlabel="time (s)", ylabel="size (mm)", markers=False)


ACCURACY_COLUMNS = {"count": "count", "mae_mm": "MAE (mm)", "within_1mm": "within 1 mm",
                    "within_10pct": "within 10 %", "missed_above_5_rate": ">5 mm called <=5 mm",
                    "missed_large_rate": ">=10 mm called <10 mm", "ba_bias_mm": "Bland-Altman bias (mm)",
                    "ba_loa_low_mm": "95 % limit low (mm)", "ba_loa_high_mm": "95 % limit high (mm)"}


def accuracy_html(accuracy: Mapping[str, Any]) -> str:
    """Size accuracy against ground truth (pipeline.truth_accuracy.TruthAccuracy.report())."""
    parts = ["<h2>Size accuracy against ground truth</h2>"]
    rows = []
    for level in ("per_polyp", "per_frame"):
        m = accuracy.get(level) or {}
        rows.append({"": level.replace("_", " "), **{label: m.get(key) for key, label in ACCURACY_COLUMNS.items()}})
    parts.append(html_table(rows))
    t = accuracy.get("time_to_first_size")
    if t:
        parts.append("<p>From a polyp's first visible frame to the first size shown for it: median "
                     f"{_seconds(t['median_s'])}, max {_seconds(t['max_s'])}; "
                     f"{int(t['polyps'] - t['sized_polyps'])} of {int(t['polyps'])} polyps never sized.</p>")
    matrices = []
    for level in ("per_polyp", "per_frame"):
        matrix = (accuracy.get(level) or {}).get("confusion_5_10")
        if matrix:
            matrices.append(html_table([{"true \\ shown": CLASS_LABELS[r], **dict(zip(CLASS_LABELS, row))}
                                        for r, row in enumerate(matrix)]))
    if matrices:
        parts.append("<p>Confusion at 5 and 10 mm (rows: true class), per polyp and per frame:</p>"
                     "<div class='figs'>" + "".join(matrices) + "</div>")
    pairs = accuracy.get("pairs") or {}
    plots = [svg_bland_altman([p for p, _ in pairs[level]], [t for _, t in pairs[level]],
                              title=f"Bland-Altman, {level.replace('_', ' ')}")
             for level in ("per_polyp", "per_frame") if pairs.get(level)]
    if plots:
        parts.append("<div class='figs'>" + "".join(plots) + "</div>")
    return "".join(parts)


def _seconds(value) -> str:
    return "-" if value is None or value != value else f"{value:.2f} s"


def report_html(title: str, summary: Mapping[str, Any], polyps: Sequence[Mapping[str, Any]],
                histories: Mapping[int, Sequence[Mapping[str, Any]]], *, synthetic: bool,
                accuracy: Mapping[str, Any] | None = None) -> str:
    parts = []
    if synthetic:
        parts.append(f"<p style='color:#a00;font-weight:bold'>{html.escape(mark_text(synthetic))}</p>")
    parts.append("<h2>Summary</h2>" + html_table([summary], list(summary.keys())))
    parts.append("<h2>Polyps</h2>")
    if not polyps:
        parts.append("<p>No polyp was tracked in this video.</p>")
    rows = []
    for p in polyps:
        interval = "" if p.get("size_mm") is None else f"{p['low_mm']:.1f}-{p['high_mm']:.1f}"
        thumb = p.get("thumbnail")
        rows.append(
            "<tr>"
            + (f"<td><img src='{html.escape(thumb)}' alt='polyp {p['id']}'></td>" if thumb else "<td></td>")
            + f"<td>#{p['id']}</td><td>{'' if p.get('size_mm') is None else format(p['size_mm'], '.1f')}</td>"
            + f"<td>{interval}</td><td>{html.escape(str(p.get('class') or ''))}</td>"
            + f"<td>{p['first_time']:.2f}-{p['last_time']:.2f}</td><td>{p['frames']}</td></tr>")
    if rows:
        parts.append("<table><thead><tr><th>thumbnail</th><th>id</th><th>size (mm)</th><th>interval (mm)</th>"
                     "<th>class</th><th>seen (s)</th><th>frames</th></tr></thead><tbody>"
                     + "".join(rows) + "</tbody></table>")
    if accuracy:
        parts.append(accuracy_html(accuracy))
    figures = [size_plot(histories[p["id"]], p["id"]) for p in polyps if histories.get(p["id"])]
    if figures:
        parts.append("<h2>Size over time</h2><div class='figs'>" + "".join(figures) + "</div>")
    parts.append("<p class='note'>Sizes are the smoothed per-track estimate (robust, weighted by detection "
                 "confidence and frame quality) with its uncertainty interval; research software, "
                 "not a medical device.</p>")
    return html_page(title, "".join(parts))
