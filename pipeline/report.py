"""`report.html` of an annotated video: a summary, one row per polyp with its thumbnail, and
each polyp's size over time (per-frame sizer output and the smoothed estimate with its
interval) as inline SVG, so the page is one self-contained file next to its thumbnails."""
from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from pipeline.charts import html_page, html_table, svg_line_plot

from .overlay import SYNTHETIC_MARK

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


def report_html(title: str, summary: Mapping[str, Any], polyps: Sequence[Mapping[str, Any]],
                histories: Mapping[int, Sequence[Mapping[str, Any]]], *, synthetic: bool) -> str:
    parts = []
    if synthetic:
        parts.append(f"<p style='color:#a00;font-weight:bold'>{html.escape(SYNTHETIC_MARK)}</p>")
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
    figures = [size_plot(histories[p["id"]], p["id"]) for p in polyps if histories.get(p["id"])]
    if figures:
        parts.append("<h2>Size over time</h2><div class='figs'>" + "".join(figures) + "</div>")
    parts.append("<p class='note'>Sizes are the smoothed per-track estimate (robust, weighted by detection "
                 "confidence and frame quality) with its uncertainty interval; research software, "
                 "not a medical device.</p>")
    return html_page(title, "".join(parts))
