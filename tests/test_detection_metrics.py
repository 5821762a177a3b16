"""Detection delays per clip (issue 20): a SUN case holds several recordings of its one polyp,
each timed from the polyp's first visible frame in that recording."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from trainer.detection_metrics import FrameDetections, detection_metrics

BOX = [10, 10, 50, 50]
HIT = [11, 10, 50, 51]          # IoU > 0.9 with BOX


def two_clip_case(detected_from: dict[str, int | None]) -> list[FrameDetections]:
    """SUN case1 (one polyp, "case1"), indexed 0..19 in SUN-SEG order: clip a1 = frames 0-9,
    clip a2 = frames 10-19 (its image numbers restart, the case index does not); the polyp is
    visible from frame 2 of a1 and from frame 12 of a2, found from `detected_from[clip]` on."""
    frames = []
    for index in range(20):
        clip = "case_M_1_005_001-1_a1_ayy" if index < 10 else "case_M_1_005_001-1_a2_ayy"
        short = "a1" if index < 10 else "a2"
        visible = index % 10 >= 2
        found = detected_from[short] is not None and index >= detected_from[short]
        frames.append(FrameDetections("case1", index, [BOX] if visible else np.zeros((0, 4)),
                                      ["case1"] if visible else [], [HIT] if found else np.zeros((0, 4)),
                                      [0.9] if found else [], clip=clip))
    return frames


def test_a_polyp_first_found_in_its_second_recording_is_timed_from_that_recording():
    frames = two_clip_case({"a1": None, "a2": 15})
    m = detection_metrics(frames, 25.0, score_threshold=0.3)
    # across clips the delay would be 15 - 2 = 13 frames; within a2 it is 15 - 12 = 3
    assert m["mean_delay_frames"] == 3.0 and math.isclose(m["mean_delay_s"], 3 / 25.0)
    assert m["polyps"] == 1 and m["polyps_detected"] == 1 and m["polyp_detection_rate"] == 1.0
    assert m["polyp_clips"] == 2 and m["polyp_clips_detected"] == 1
    # the same frames without clip names: one appearance, timed from frame 2
    merged = detection_metrics([FrameDetections(f.video, f.frame_index, f.gt_boxes, f.gt_ids, f.boxes, f.scores)
                                for f in frames], 25.0, score_threshold=0.3)
    assert merged["mean_delay_frames"] == 13.0 and merged["polyp_clips"] == 1


def test_each_recording_is_an_encounter_and_frame_order_does_not_matter():
    frames = two_clip_case({"a1": 6, "a2": 12})           # delays 4 (a1) and 0 (a2)
    random.Random(7).shuffle(frames)
    m = detection_metrics(frames, {"case1": 10.0}, score_threshold=0.3)
    assert m["mean_delay_frames"] == 2.0 and math.isclose(m["mean_delay_s"], 0.2)
    assert m["polyp_clips"] == 2 and m["polyp_clips_detected"] == 2 and m["polyps"] == 1
    # the every-box figures count the same appearances
    assert m["polyp_detection_rate_all_boxes"] == 1.0


@pytest.fixture(scope="module")
def two_clip_records(tmp_path_factory):
    """One synthetic video's frames as a SUN-like case: one polyp id, two clips split in the
    middle of the frames that show it (so it is visible in both)."""
    import cv2

    from trainer.data.records import BoxAnnotation, FrameRecord
    from trainer.synth import SynthConfig, SyntheticVideo
    from trainer.synth.config import PolypConfig

    root = tmp_path_factory.mktemp("two-clips")
    cfg = SynthConfig(width=192, height=160, seconds=2.0, fps=10.0,
                      polyps=PolypConfig(min_count=1, max_count=1, diameter_mm=(8.0, 16.0)))
    video = SyntheticVideo(cfg, seed=3, name="case1")
    rendered = list(video.frames())
    visible = [f.index for f in rendered if f.polyps]
    assert len(visible) >= 4, "the synthetic polyp must be in view on a few frames"
    split = visible[len(visible) // 2]
    records = []
    for frame in rendered:
        path = root / f"case1_{frame.index}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        boxes = tuple(BoxAnnotation(tuple(float(v) for v in p.box), "case1") for p in frame.polyps)
        clip = "case_M_1_005_001-1_a1_ayy" if frame.index < split else "case_M_1_005_001-1_a2_ayy"
        records.append(FrameRecord(str(path), "case1", frame.index, (192, 160), boxes, clip=clip))
    return records


def test_detector_validation_passes_each_frame_clip_to_the_metrics(two_clip_records):
    """The detector task's evaluation (a real tiny model on real frames) counts the polyp's two
    recordings as two appearances: FrameRecord.clip reaches the delay metrics."""
    import torch
    from torch.utils.data import DataLoader

    from trainer.config import load_config
    from trainer.data.detection import DetectionDataset
    from trainer.tasks import build_task

    cfg = load_config(None, {"task": "detector", "model.name": "hag_detector", "model.width_mult": 0.25,
                             "model.kwargs": {"neck_channels": 16, "head_channels": 16},
                             "data.kind": "synthetic", "data.input.size": 128,
                             "data.input.streams": ["rgb"]}, check_paths=False)
    task = build_task(cfg)
    torch.manual_seed(0)
    model = task.build_model().eval()
    val = DetectionDataset(two_clip_records, task.spec, task.stride, sampling="uniform")
    with torch.no_grad():
        metrics = task.evaluate(model, DataLoader(val, batch_size=8))
    assert metrics["polyps"] == 1 and metrics["polyp_clips"] == 2
    assert metrics["frames"] == len(val)
