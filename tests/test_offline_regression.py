"""The per-frame cost cuts of offline annotation keep its results: a fixed video annotated with
the committed bundles gives the frames.jsonl recorded before the cuts (tests/fixtures/
offline_regression/README.md), within the tolerances below, and the rendered video keeps every
frame. The recording re-estimated the FOV mask every 30 frames; since then it is re-estimated on
a scene change (pipeline.fov.BorderWatch), which changes which frame a mask comes from, not what
the cuts compute, so this test runs with the old schedule."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _pipeline_media import decode_times
from pipeline.annotate import main as annotate
from pipeline.cli_util import EXIT_OK

FIXTURE = Path(__file__).parent / "fixtures" / "offline_regression"
BOX_PX = 1.0          # box corners: within a pixel (the detector input may be resampled differently)
SCORE = 0.02          # detection score
SIZE_MM = 0.1         # per-frame sizer output


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_frames_jsonl_matches_the_recording_before_the_cost_cuts(tmp_path):
    out = tmp_path / "out"
    assert annotate([str(FIXTURE / "synthetic.mp4"), "--out", str(out), "--backend", "onnxruntime",
                     "--render", "--quiet", "--set", "preprocess.fov_scene_watch=false",
                     "--set", "preprocess.fov_refresh_frames=30"]) == EXIT_OK
    got, want = _rows(out / "synthetic" / "frames.jsonl"), _rows(FIXTURE / "frames.before.jsonl")
    assert [r["index"] for r in got] == [r["index"] for r in want] == list(range(50))
    assert [r["time"] for r in got] == [r["time"] for r in want]
    assert sum(len(r["tracks"]) for r in want) >= 40        # the fixture really has tracks to compare
    for a, b in zip(got, want):
        assert [(t["id"], t["missed"]) for t in a["tracks"]] == [(t["id"], t["missed"]) for t in b["tracks"]], \
            f"frame {a['index']}"
        for ta, tb in zip(a["tracks"], b["tracks"]):
            assert ta["box"] == pytest.approx(tb["box"], abs=BOX_PX)
            assert ta["score"] == pytest.approx(tb["score"], abs=SCORE)
            assert (ta["size_mm"] is None) == (tb["size_mm"] is None), f"frame {a['index']} track {ta['id']}"
            if tb["size_mm"] is not None:
                assert ta["size_mm"] == pytest.approx(tb["size_mm"], abs=SIZE_MM)
    # Rendering on its own thread still writes every frame, at the input's times.
    assert decode_times(out / "synthetic" / "annotated.mp4") == pytest.approx(decode_times(FIXTURE / "synthetic.mp4"),
                                                                               abs=1e-3)
