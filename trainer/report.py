"""A training fold's HTML report: metric curves per group, the confusion matrices, and what a
clinician reads (pipeline.size_metrics figures per frame and per polyp, Bland-Altman plots)."""
from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.charts import html_page, html_table, svg_bland_altman, svg_confusion_matrix, svg_line_plot
from pipeline.fsutil import write_text_atomic
from pipeline.size_metrics import CLINICIAN_KEYS

CLINICIAN_LABELS = {"mae_mm": "MAE (mm)", "within_1mm": "within 1 mm", "within_10pct": "within 10 %",
                    "missed_above_5_rate": ">5 mm called <=5 mm", "missed_large_rate": ">=10 mm called <10 mm",
                    "ba_bias_mm": "bias (mm)", "ba_loa_low_mm": "LoA low (mm)", "ba_loa_high_mm": "LoA high (mm)"}


def clinician_rows(metrics: Mapping[str, Mapping[str, float]]) -> list[dict]:
    """Rows (set, level) x clinician figures from flat metric dicts like `{"validation": {...}}`."""
    rows = []
    for name, values in metrics.items():
        for level in ("frame", "polyp"):
            if f"{level}_mae_mm" not in values:
                continue
            row = {"set": name, "per": level, "count": values.get(f"{level}_count")}
            row.update({CLINICIAN_LABELS[k]: values.get(f"{level}_{k}") for k in CLINICIAN_KEYS})
            rows.append(row)
    return rows


def _metric_groups(columns: Sequence[str]) -> list[tuple[str, list[str], bool]]:
    """Which per-epoch columns go into which figure: (title, columns, log scale).

    Counts and balanced accuracies stay in the table; the figures show what one compares.
    """
    groups = [("Training loss", lambda c: c.startswith("train_") and c.endswith("_loss"), True),
              ("Validation MAE (mm)", lambda c: c.startswith("val_") and "mae" in c, False),
              ("Validation F1", lambda c: c.startswith("val_") and (c.endswith("binary_f1")
                                                                   or "triclass_f1" in c), False),
              ("Gradient norm", lambda c: c.startswith("train_grad_norm"), True),
              ("Learning rate", lambda c: c.startswith("lr_"), True),
              ("Gates: mean sigmoid(g), fraction < 0.1", lambda c: c.startswith("gate_"), False),
              ("Throughput (samples/s)", lambda c: c == "samples_per_s", False)]
    used: set[str] = set()
    figures = []
    for title, matches, log_y in groups:
        cols = [c for c in columns if c not in used and matches(c)]
        used.update(cols)
        if cols:
            figures.append((title, cols, log_y))
    return figures


def fold_report_html(title: str, history: Sequence[Mapping[str, float]],
                     confusion: Mapping[str, tuple[Sequence[str], Sequence[Sequence[float]]]] | None = None,
                     notes: Mapping[str, object] | None = None,
                     clinician: Mapping[str, Mapping[str, float]] | None = None,
                     agreement: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None) -> str:
    """One page: training curves from per-epoch rows, the latest confusion matrices, notes.

    clinician: {set name: best-epoch metrics} for the clinician table; agreement: {set name:
    (predicted mm, true mm) per frame} for Bland-Altman plots.
    """
    body = []
    if notes:
        body.append(html_table([dict(notes)]))
    rows = clinician_rows(clinician or {})
    if rows or agreement:
        body.append("<h2>What clinicians read (best epoch)</h2>")
        if rows:
            body.append(html_table(rows))
        if agreement:
            body.append("<div class='figs'>" + "".join(
                svg_bland_altman(pred, true, title=f"Bland-Altman, {name} frames")
                for name, (pred, true) in agreement.items()) + "</div>")
    columns = [c for c in (history[0].keys() if history else []) if c != "epoch"]
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    figures = []
    for fig_title, cols, log_y in _metric_groups(columns):
        series = {c: [row.get(c) for row in history] for c in cols}
        figures.append(svg_line_plot(series, x=epochs, title=fig_title, xlabel="epoch", log_y=log_y))
    if figures:
        body.append("<h2>Training curves</h2><div class='figs'>" + "".join(figures) + "</div>")
    if confusion:
        mats = [svg_confusion_matrix(matrix, labels, title=name)
                for name, (labels, matrix) in confusion.items()]
        body.append("<h2>Confusion matrices (best epoch)</h2><div class='figs'>" + "".join(mats) + "</div>")
    if history:
        body.append("<h2>Per-epoch metrics</h2>" + html_table(list(history)))
    return html_page(title, "".join(body))


def write_fold_report(path, title: str, history: Sequence[Mapping[str, float]],
                      confusion=None, notes=None, clinician=None, agreement=None) -> None:
    write_text_atomic(path, fold_report_html(title, history, confusion, notes, clinician, agreement))
