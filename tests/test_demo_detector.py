"""The committed demo detector finds the polyps of fresh synthetic videos.

Fresh = rendered here from seeds that `scripts/train_demo_detector.sh` did not train on, with
the same generator settings. Scored with the project's detection metrics at IoU 0.5.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.detecting import PolypDetector
from trainer.data.fov import FovMaskCache
from trainer.detection_metrics import FrameDetections, detection_metrics

BUNDLE = Path(__file__).resolve().parents[1] / "pipeline" / "assets" / "bundles" / "detector"
TRAINING_RUN_SEED, TRAINING_VIDEOS = 11, 32           # scripts/train_demo_detector.sh
FRESH_SEEDS = (90101, 90102)
# A polyp box counts as findable when at least half of the polyp is in view and the box is at
# least 16 px on its short side (5% of the 320 px frame width; 32 px on a 640x480 frame):
# smaller ones are far down the lumen, a few blurred pixels, and too small to size anyway.
# The metrics over every box are computed too and printed with any failure.
MIN_VISIBLE_FRACTION = 0.5
MIN_SIDE_PX = 16.0

pytestmark = pytest.mark.skipif(not (BUNDLE / "bundle.json").is_file(),
                                reason=f"demo detector bundle is absent ({BUNDLE}); "
                                       f"make it with scripts/train_demo_detector.sh")


@pytest.fixture(scope="module")
def bundle():
    from trainer.export.bundle import load_bundle
    return load_bundle(BUNDLE)


def test_demo_bundle_is_a_small_synthetic_detector(bundle):
    assert bundle.kind == "detector" and bundle.architecture == "hag_detector"
    assert bundle.synthetic_training_data is True and bundle.clinical_use is False
    assert "not for clinical use" in bundle.provenance["note"]
    total = sum((BUNDLE / name).stat().st_size for name in bundle.manifest["files"])
    assert total <= 4 * 1024 * 1024, f"demo detector is {total / 2**20:.1f} MB"
    assert bundle.inputs["letterbox"] is True and bundle.inputs["fov_masking"] is True


def test_demo_detector_finds_the_polyps_of_fresh_videos(bundle):
    from trainer.synth import SynthConfig, SyntheticVideo
    from trainer.synth.config import PolypConfig
    from trainer.synth.writer import video_seed

    training_seeds = {video_seed(TRAINING_RUN_SEED, i) for i in range(TRAINING_VIDEOS)}
    assert not training_seeds & set(FRESH_SEEDS)
    cfg = SynthConfig(width=320, height=240, fps=12.5, seconds=8.0,
                      polyps=PolypConfig(min_count=2, max_count=3))
    detector = PolypDetector(bundle, score_threshold=0.3, backend="onnxruntime")
    fov_cache = FovMaskCache()
    frames, findable_frames = [], []
    for seed in FRESH_SEEDS:
        video = SyntheticVideo(cfg, seed=seed, name=f"fresh-{seed}")
        for frame in video.frames():
            found = detector.detect(frame.image, fov_cache.get(video.name, frame.image))
            boxes = np.array([d.box for d in found]).reshape(-1, 4)
            scores = np.array([d.score for d in found])
            gt = frame.polyps
            frames.append(FrameDetections(video.name, frame.index, [p.box for p in gt],
                                          [f"{video.name}_{p.polyp_id}" for p in gt], boxes, scores))
            findable = [p for p in gt if p.visible_fraction >= MIN_VISIBLE_FRACTION
                        and min(p.box[2] - p.box[0], p.box[3] - p.box[1]) >= MIN_SIDE_PX]
            findable_frames.append(FrameDetections(
                video.name, frame.index, [p.box for p in findable],
                [f"{video.name}_{p.polyp_id}" for p in findable], boxes, scores))
    assert sum(len(f.gt_boxes) for f in findable_frames) >= 100
    findable = detection_metrics(findable_frames, cfg.fps, iou_threshold=0.5, score_threshold=0.3)
    everything = detection_metrics(frames, cfg.fps, iou_threshold=0.5, score_threshold=0.3)
    summary = (f"findable boxes: recall {findable['recall']:.3f}; all boxes: recall {everything['recall']:.3f}, "
               f"precision {everything['precision']:.3f}, AP50 {everything['ap50']:.3f}, "
               f"FP/100 frames {everything['fp_per_100_frames']:.1f}, "
               f"polyps found {everything['polyps_detected']:.0f}/{everything['polyps']:.0f}")
    assert findable["recall"] >= 0.8, summary
    assert findable["polyp_detection_rate"] == 1.0, summary
    # recall is not bought with false alarms: at most one reported box in two is false
    # (precision over every box the detector reports, matched against every ground-truth box)
    assert everything["precision"] >= 0.45, summary
