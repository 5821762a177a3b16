"""No label contradicts itself (issue 13): the demo replayed through hagview-annotate, every label
read back from where a clinician sees it - the viewer's overlay and track panel, the burnt-in
video (its label function, called as it draws), frames.jsonl and polyps.json - names a class
that admits the printed size and every size of the printed interval."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

from pipeline.smoothing import claim_contradicts

LABEL = re.compile(r"(\d+\.\d) mm \[(\d+\.\d)[-\u2013](\d+\.\d)\]\s+(.+)$")


def contradiction(text: str) -> str | None:
    """Why the printed label contradicts itself (None: it does not)."""
    match = LABEL.search(text)
    if match is None:
        return f"unreadable label {text!r}"
    size, low, high = (float(v) for v in match.groups()[:3])
    return claim_contradicts(size, low, high, match.group(4).strip())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """hagview-annotate demo --boxes auto --render with the committed (calibrated) demo sizer, on
    a 6 s, 320x240 demo clip; the FrameResults and the burnt-in labels are kept as drawn."""
    from trainer.synth import load_synth_config

    import pipeline.annotate as annotate
    from pipeline.overlay import draw_overlay, track_label
    from pipeline.runtime import DEFAULT_SIZER

    small = dataclasses.replace(load_synth_config(None, "demo"), width=320, height=240, seconds=6.0)
    results, burnt = [], []
    original_call = annotate.AnnotationWriter.__call__

    def record_result(self, result):
        results.append(result)
        return original_call(self, result)

    def drawing(image, tracks, **kwargs):
        burnt.extend(track_label(r) for r in tracks if r.confirmed and r.estimate is not None)
        return draw_overlay(image, tracks, **kwargs)

    patch = pytest.MonkeyPatch()
    try:
        patch.setattr("trainer.synth.load_synth_config", lambda path=None, preset=None: small)
        patch.setattr(annotate.AnnotationWriter, "__call__", record_result)
        patch.setattr(annotate, "draw_overlay", drawing)
        out = tmp_path_factory.mktemp("labels")
        assert annotate.main(["demo", "--out", str(out), "--boxes", "auto", "--sizer", str(DEFAULT_SIZER),
                              "--render", "--quiet"]) == 0
    finally:
        patch.undo()
    return out / "demo", results, burnt


def test_demo_ran_with_the_calibrated_interval(demo_run):
    directory, results, burnt = demo_run
    run = json.loads((directory / "run.json").read_text())
    assert run["models"]["interval"].startswith("90% interval calibrated on synthetic data (given boxes")
    assert "90% interval calibrated on synthetic data" in (directory / "report.html").read_text()
    assert len(results) == run["frames"] == 150 and len(burnt) > 100
    # the demo sizer decides classes at the definition's boundaries (no decision block)
    assert run["class_thresholds_mm"] == {"diminutive_max": 5.0, "large_min": 10.0}


def test_burnt_in_and_viewer_overlay_labels_never_contradict_themselves(demo_run):
    from gui.video import track_text

    _, results, burnt = demo_run
    viewer = [track_text(r) for res in results for r in res.tracks if r.confirmed and r.estimate is not None]
    assert len(viewer) == len(burnt)
    bad = [(text, why) for text in burnt + viewer if (why := contradiction(text))]
    assert not bad, bad[:3]


def test_track_panel_rows_never_contradict_themselves(demo_run):
    from PyQt6.QtWidgets import QApplication

    from gui.tracks import TrackPanel

    _, results, _ = demo_run
    app = QApplication.instance() or QApplication([])
    panel = TrackPanel()
    panel.set_interval_note("90% interval calibrated on synthetic data")
    titles = 0
    for result in results:
        panel.add_result(result)
        panel.refresh()          # every frame, where the viewer refreshes on a timer
        for _, row in panel._rows.values():
            text = row.title.text()
            if "mm" in text:
                titles += 1
                assert contradiction(text) is None, text
    app.processEvents()
    assert titles > 100 and panel.note.text() == "Sizes: 90% interval calibrated on synthetic data"


def test_frames_jsonl_and_polyps_json_never_contradict_themselves(demo_run):
    directory, _, _ = demo_run
    rows = [json.loads(line) for line in (directory / "frames.jsonl").read_text().splitlines()]
    sized = [t for r in rows for t in r["tracks"] if t["smoothed_mm"] is not None]
    assert len(sized) > 100
    for t in sized:
        assert claim_contradicts(t["smoothed_mm"], t["low_mm"], t["high_mm"], t["class"]) is None, t
    polyps = json.loads((directory / "polyps.json").read_text())["polyps"]
    assert len([p for p in polyps if p["size_mm"] is not None]) >= 2
    for p in polyps:
        if p["size_mm"] is not None:
            assert claim_contradicts(p["size_mm"], p["low_mm"], p["high_mm"], p["class"]) is None, p
