"""A training fold's HTML report: metric curves per group and the confusion matrices."""
from __future__ import annotations

from typing import Mapping, Sequence

from pipeline.charts import html_page, html_table, svg_confusion_matrix, svg_line_plot
from pipeline.fsutil import write_text_atomic


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
                     notes: Mapping[str, object] | None = None) -> str:
    """One page: training curves from per-epoch rows, the latest confusion matrices, notes."""
    body = []
    if notes:
        body.append(html_table([dict(notes)]))
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
                      confusion=None, notes=None) -> None:
    write_text_atomic(path, fold_report_html(title, history, confusion, notes))
