"""The polyp detector: model, gate folding, targets on real frames, metrics, and a training step."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from trainer.detection_metrics import (FrameDetections, average_precision, detection_metrics,
                                       recall_at_fp_rate)
from trainer.models import Gate, build_model

SIZE = 128


def _randomise(model: torch.nn.Module) -> None:
    """Gates far from 0.5 and non-trivial BatchNorm statistics, so folding has work to do."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for gate in model.gate_parameters():
            gate.copy_(torch.randn(gate.shape, generator=generator) * 2.0)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


@pytest.mark.parametrize("stride", [8, 4])
def test_detector_outputs_and_gates(stride):
    model = build_model("hag_detector", input_size=SIZE, width_mult=0.25, output_stride=stride,
                        neck_channels=16, head_channels=16).eval()
    assert model.input_names == ("rgb",)
    assert model.output_names == ("heatmap", "wh", "offset")
    assert len(list(model.gate_parameters())) == 5           # four trunk stages + the neck
    with torch.no_grad():
        out = model({"rgb": torch.randn(2, 3, SIZE, SIZE)})
    grid = SIZE // stride
    assert list(out) == ["heatmap", "wh", "offset"]
    assert out["heatmap"].shape == (2, 1, grid, grid)
    assert out["wh"].shape == (2, 2, grid, grid) and out["offset"].shape == (2, 2, grid, grid)
    # the heatmap starts at the 0.1 prior almost everywhere (biased final layer)
    assert abs(float(torch.sigmoid(out["heatmap"]).mean()) - 0.1) < 0.05
    baseline = build_model("hag_detector", input_size=SIZE, width_mult=0.25, gates=False, output_stride=stride)
    assert len(list(baseline.gate_parameters())) == 0


@pytest.mark.parametrize("stride", [8, 4])
def test_fold_gates_is_exact(stride):
    torch.manual_seed(0)
    model = build_model("hag_detector", input_size=SIZE, width_mult=0.25, output_stride=stride,
                        neck_channels=16, head_channels=16).eval()
    _randomise(model)
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model({"rgb": x})
        folded = model.fold_gates().eval()
        got = folded({"rgb": x})
    assert len(list(folded.gate_parameters())) == 0
    assert not any(isinstance(m, Gate) for m in folded.modules())
    assert folded.init_kwargs["gates"] is False
    for name in expected:
        scale = float(expected[name].abs().max())
        assert float((got[name] - expected[name]).abs().max()) <= 1e-5 * scale, name
    # the gated model is left as it was
    assert len(list(model.gate_parameters())) == 5


# ---------------------------------------------------------------------------------------- metrics

def _frame(video, index, gt, ids, boxes, scores):
    return FrameDetections(video, index, np.array(gt, dtype=float).reshape(-1, 4), ids,
                           np.array(boxes, dtype=float).reshape(-1, 4), np.array(scores, dtype=float))


def test_average_precision_and_recall_at_fp_budget_by_hand():
    # 4 ground-truth boxes; ranked detections: TP, FP, TP, TP (FP, then a missed one)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    is_tp = np.array([True, False, True, True])
    # precision envelope: 1.0 up to recall 0.25, then 3/4 up to 0.75 -> 0.25*1 + 0.5*0.75
    assert math.isclose(average_precision(scores, is_tp, num_gt=4), 0.25 + 0.375)
    # 100 frames allow 1 FP: every detection can be admitted -> recall 3/4
    assert recall_at_fp_rate(scores, is_tp, 4, num_frames=100) == (0.75, 0.6)
    # 50 frames allow 0.5 FP: stop before the FP -> recall 1/4 at threshold 0.9
    assert recall_at_fp_rate(scores, is_tp, 4, num_frames=50) == (0.25, 0.9)
    assert math.isnan(average_precision(scores, is_tp, num_gt=0))


def test_detection_metrics_per_polyp_rate_and_delay():
    box_a = [10, 10, 50, 50]
    box_b = [100, 100, 140, 150]
    frames = [
        _frame("v1", 10, [box_a], ["v1_1"], [], []),                       # A visible, missed
        _frame("v1", 11, [box_a], ["v1_1"], [[12, 12, 50, 52]], [0.2]),    # below the threshold
        _frame("v1", 13, [box_a], ["v1_1"], [[11, 10, 50, 50]], [0.8]),    # A found: 3 frames late
        _frame("v1", 14, [], [], [[200, 200, 220, 220]], [0.9]),           # a false positive
        _frame("v2", 0, [box_b], ["v2_1"], [[0, 0, 20, 20]], [0.5]),       # B never found (wrong place)
        _frame("v2", 1, [], [], [], []),
    ]
    m = detection_metrics(frames, {"v1": 25.0, "v2": 30.0}, score_threshold=0.3)
    assert m["polyps"] == 2 and m["polyps_detected"] == 1
    assert m["polyp_detection_rate"] == 0.5
    assert m["mean_delay_frames"] == 3.0
    assert math.isclose(m["mean_delay_s"], 3 / 25.0)
    assert m["gt_boxes"] == 4 and m["frames"] == 6
    # at the operating point: 1 TP (0.8), 2 FP (0.9, 0.5) over 6 frames
    assert math.isclose(m["precision"], 1 / 3)
    assert math.isclose(m["recall"], 1 / 4)
    assert math.isclose(m["fp_per_100_frames"], 200 / 6)
    # ranked: 0.9 FP, 0.8 TP, 0.5 FP, 0.2 TP -> AP = 0.25*0.5 + 0.25*0.5
    assert math.isclose(m["ap50"], 0.25)
    # 6 frames allow 0.06 FP: the top detection is already false -> recall 0
    assert m["recall_at_1fp_per_100"] == 0.0


def test_matching_is_one_to_one():
    gt = [[0, 0, 10, 10]]
    frames = [_frame("v", 0, gt, ["v_1"], [[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8])]
    m = detection_metrics(frames, 25.0)
    assert m["precision"] == 0.5 and m["recall"] == 1.0   # the duplicate is a false positive


# ---------------------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def synthetic_frames(tmp_path_factory):
    """A few real synthetic frames (with polyps and without) as JPEGs and FrameRecords."""
    from trainer.data.records import BoxAnnotation, FrameRecord
    from trainer.synth import SynthConfig, SyntheticVideo
    from trainer.synth.config import PolypConfig

    root = tmp_path_factory.mktemp("det-frames")
    cfg = SynthConfig(width=192, height=160, seconds=2.0, fps=10.0,
                      polyps=PolypConfig(min_count=1, max_count=2, diameter_mm=(6.0, 18.0)))
    records = []
    for seed in (3, 4):
        video = SyntheticVideo(cfg, seed=seed, name=f"001-00{seed}")
        for frame in video.frames():
            path = root / f"{video.name}_{frame.index}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
            boxes = tuple(BoxAnnotation(tuple(float(v) for v in p.box), f"{video.name}_{p.polyp_id}")
                          for p in frame.polyps)
            records.append(FrameRecord(str(path), video.name, frame.index, (192, 160), boxes))
    assert any(r.boxes for r in records) and any(not r.boxes for r in records)
    return records


def test_dataset_items_carry_letterboxed_targets(synthetic_frames):
    from trainer.data.detection import MAX_BOXES, DetectionDataset
    from pipeline.prep import DetectorInputSpec

    spec = DetectorInputSpec(size=SIZE)
    ds = DetectionDataset(synthetic_frames, spec, stride=8, positives_per_polyp=5, negative_fraction=0.25,
                          sampling="uniform")
    positives = sum(1 for f in ds.frames if f.boxes)
    negatives = len(ds) - positives
    assert positives <= 5 * len(ds.polyp_ids) and negatives == min(round(positives / 3), len(ds.negatives))
    frame = next(f for f in ds.frames if f.boxes)
    inputs, targets = ds[ds.frames.index(frame)]
    assert inputs["rgb"].shape == (3, SIZE, SIZE) and inputs["rgb"].dtype == torch.float32
    n = int(targets["num_boxes"])
    assert n == len(frame.boxes) and targets["boxes"].shape == (MAX_BOXES, 4)
    # 192x160 -> 128: scale 2/3, 10 px bars above and below
    scale, pad_y = SIZE / 192, (SIZE - round(160 * SIZE / 192)) // 2
    expected = np.array([b.box for b in frame.boxes]) * scale + np.array([0, pad_y, 0, pad_y])
    np.testing.assert_allclose(targets["boxes"][:n].numpy(), expected, atol=1e-4)
    assert int((targets["reg_weight"] == 1.0).sum()) == n and float(targets["heatmap"].max()) == 1.0
    assert [ds.polyp_ids[i] for i in targets["polyp_index"][:n]] == [b.polyp_id for b in frame.boxes]
    assert ds.videos[int(targets["video_index"])] == frame.video
    # random sampling redraws per epoch, deterministically
    train = DetectionDataset(synthetic_frames, spec, stride=8, positives_per_polyp=3, sampling="random")
    first = list(train.frames)
    train.set_epoch(1)
    again = DetectionDataset(synthetic_frames, spec, stride=8, positives_per_polyp=3, sampling="random")
    again.set_epoch(1)
    assert train.frames == again.frames and train.frames != first


def test_task_training_step_and_evaluation(synthetic_frames):
    """One Gradient Routing step with the task's losses updates gates and weights; the routing
    loss weighs centres more; evaluation returns every metric, the primary one included."""
    from torch.utils.data import DataLoader

    from trainer.config import load_config
    from trainer.data.detection import DetectionDataset
    from trainer.routing import GradientRouter
    from trainer.tasks import build_task

    cfg = load_config(None, {"task": "detector", "model.name": "hag_detector", "model.width_mult": 0.25,
                             "model.kwargs": {"neck_channels": 16, "head_channels": 16},
                             "data.kind": "synthetic", "data.input.size": SIZE,
                             "data.input.streams": ["rgb"]}, check_paths=False)
    task = build_task(cfg)
    assert task.kind == "detector" and task.primary_metric == "ap50" and task.higher_is_better
    model = task.build_model()
    ds = DetectionDataset(synthetic_frames, task.spec, task.stride, task.augmentation(),
                          positives_per_polyp=4, negative_fraction=0.25)
    inputs, targets = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    main_opt = torch.optim.Adam(list(model.main_parameters()), lr=1e-3)
    gate_opt = torch.optim.Adam(list(model.gate_parameters()), lr=1e-2)
    router = GradientRouter(model, main_opt, gate_opt, task.main_loss, task.routing_loss)
    gates_before = [g.detach().clone() for g in model.gate_parameters()]
    head_before = model.heatmap_head.out.weight.detach().clone()
    losses = router.step(inputs, targets)
    assert all(math.isfinite(float(v)) for k, v in losses.items() if k != "skipped")
    assert any(not torch.equal(a, b) for a, b in zip(gates_before, model.gate_parameters()))
    assert not torch.equal(head_before, model.heatmap_head.out.weight)
    with torch.no_grad():
        out = model(inputs)
        assert float(task.routing_loss(out, targets)) > float(task.main_loss(out, targets))
    val = DetectionDataset(synthetic_frames, task.spec, task.stride, positives_per_polyp=2, sampling="uniform")
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, DataLoader(val, batch_size=8))
    for key in ("ap50", "recall_at_1fp_per_100", "polyp_detection_rate", "mean_delay_frames", "mean_delay_s"):
        assert key in metrics
    assert metrics["frames"] == len(val) and 0.0 <= metrics["ap50"] <= 1.0
    meta = task.checkpoint_metadata()
    assert meta["kind"] == "detector" and meta["input_spec"]["size"] == SIZE
    assert meta["input_spec"]["letterbox"] is True


# ---------------------------------------------------------------------------------------- difficult boxes

def test_difficult_rule_half_visible_and_five_percent_of_the_width():
    from trainer.synth.difficulty import is_difficult_box

    # 320 px frame: 16 px short side is the limit; visible fraction 0.5 is the limit
    assert not is_difficult_box((10, 10, 26, 40), 0.5, 320)
    assert is_difficult_box((10, 10, 25.9, 40), 1.0, 320)          # short side 15.9 px
    assert is_difficult_box((10, 10, 60, 60), 0.49, 320)           # under half in view
    assert not is_difficult_box((10, 10, 42, 42), 1.0, 640)        # 32 px on a 640 px frame
    assert is_difficult_box((10, 10, 40, 80), 1.0, 640)            # 30 px on a 640 px frame


def test_writer_flags_difficult_boxes_and_the_reader_reads_them(tmp_path):
    import json

    from trainer.data.realcolon import read_realcolon
    from trainer.synth import SynthConfig, generate_dataset, is_difficult_box
    from trainer.synth.config import PolypConfig

    cfg = SynthConfig(width=160, height=120, fps=10.0, seconds=3.0, polyps=PolypConfig(min_count=2, max_count=3))
    (name,) = generate_dataset(tmp_path / "d", cfg, videos=1, seed=5, progress=False)
    truth = json.loads((tmp_path / "d" / f"{name}.gt.json").read_text())
    expected = {}
    for frame in truth["frames"]:
        for polyp in frame["polyps"]:
            assert polyp["difficult"] == is_difficult_box(polyp["box"], polyp["visible_fraction"], 160)
            expected[frame["index"], f"{name}_{polyp['id']}"] = polyp["difficult"]
    flags = list(expected.values())
    assert any(flags) and not all(flags), "the clip should show both kinds of box"
    index = read_realcolon(tmp_path / "d", verify_images=False)
    read = {(f.frame_index, b.polyp_id): b.difficult for f in index.frames for b in f.boxes}
    assert read == {k: v for k, v in expected.items() if k in read}
    assert len(read) >= len(expected) - 2          # the reader only drops boxes under 2 px


def test_realcolon_reader_difficult_defaults_to_zero_and_bad_values_are_named(fixtures_dir, tmp_path):
    import shutil

    from trainer.data.realcolon import read_realcolon

    root = tmp_path / "rc"
    shutil.copytree(fixtures_dir / "realcolon_mini", root)
    assert not any(b.difficult for f in read_realcolon(root).frames for b in f.boxes)  # no field: 0
    xml = root / "001-001_annotations" / "001-001_1.xml"
    text = xml.read_text()
    xml.write_text(text.replace("<box_id>1</box_id>", "<box_id>1</box_id><difficult>1</difficult>"))
    frames = {f.frame_index: f for f in read_realcolon(root).frames if f.video == "001-001"}
    assert [b.difficult for b in frames[1].boxes] == [True]
    assert not any(b.difficult for i, f in frames.items() if i != 1 for b in f.boxes)
    xml.write_text(text.replace("<box_id>1</box_id>", "<box_id>1</box_id><difficult>maybe</difficult>"))
    index = read_realcolon(root)
    assert any(s.file.endswith("001-001_1.xml") and "difficult is 'maybe'" in s.reason for s in index.skipped)


def test_difficult_box_is_an_ignore_region_in_the_targets():
    from trainer.data.detection import centernet_targets

    normal = [16, 16, 48, 48]           # centre (32, 32) -> cell (4, 4) at stride 8
    hard = [72, 64, 104, 96]            # cells x 9..12, y 8..11
    t = centernet_targets(np.array([normal, hard], float), 128, 8, difficult=np.array([False, True]))
    plain = centernet_targets(np.array([normal], float), 128, 8)
    # the normal box gets exactly the target it gets alone; the difficult one no peak, no regression
    for key in ("heatmap", "wh", "offset", "reg_weight"):
        assert np.array_equal(t[key], plain[key]), key
    assert np.argwhere(t["heatmap"][0] == 1.0).tolist() == [[4, 4]]
    ignored = t["heatmap_weight"][0] == 0
    expected = np.zeros((16, 16), bool)
    expected[8:12, 9:13] = True
    assert np.array_equal(ignored, expected)
    assert np.all(plain["heatmap_weight"] == 1.0)
    # a difficult box smaller than a cell still blanks the cell holding its centre
    tiny = centernet_targets(np.array([[33, 41, 37, 45]], float), 128, 8, difficult=np.array([True]))
    assert np.argwhere(tiny["heatmap_weight"][0] == 0).tolist() == [[5, 4]]
    assert tiny["heatmap"].max() == 0 and tiny["reg_weight"].max() == 0
    with pytest.raises(ValueError, match="1 difficult flags for 2 boxes"):
        centernet_targets(np.array([normal, hard], float), 128, 8, difficult=np.array([True]))


def test_focal_loss_ignores_the_masked_cells():
    from trainer.data.detection import centernet_targets
    from trainer.tasks.detector import focal_heatmap_loss

    t = centernet_targets(np.array([[16, 16, 48, 48], [72, 64, 104, 96]], float), 128, 8,
                          difficult=np.array([False, True]))
    target = torch.from_numpy(t["heatmap"])[None]
    weight = torch.from_numpy(t["heatmap_weight"])[None]
    logits = torch.full_like(target, -3.0)
    firing = logits.clone()
    firing[0, 0, 8:12, 9:13] = 4.0               # confident detections inside the difficult box
    base = focal_heatmap_loss(logits, target, cell_weight=weight)
    assert torch.isclose(focal_heatmap_loss(firing, target, cell_weight=weight), base)
    assert focal_heatmap_loss(firing, target) > base + 1.0     # unmasked, they are punished


def test_detection_dataset_draws_frames_with_only_difficult_boxes_as_negatives():
    from trainer.data.detection import DetectionDataset
    from trainer.data.records import BoxAnnotation, FrameRecord
    from pipeline.prep import DetectorInputSpec

    def frame(i, *boxes):
        return FrameRecord(f"/nowhere/{i}.jpg", "v", i, (128, 128), tuple(boxes))

    frames = [frame(0, BoxAnnotation((10, 10, 40, 40), "v_1")),
              frame(1, BoxAnnotation((10, 10, 40, 40), "v_1"), BoxAnnotation((60, 60, 64, 64), "v_2", True)),
              frame(2, BoxAnnotation((60, 60, 64, 64), "v_2", True)),
              frame(3)]
    data = DetectionDataset(frames, DetectorInputSpec(size=128), 8, positives_per_polyp=None)
    assert [f.frame_index for f in data.positives] == [0, 1]
    assert [f.frame_index for f in data.negatives] == [2, 3]
    assert data.polyp_ids == ["v_1", "v_2"]


def test_metrics_follow_voc_for_difficult_boxes():
    normal, hard = [10, 10, 50, 50], [100, 100, 110, 110]

    def frame(index, boxes, scores):
        return FrameDetections("v", index, np.array([normal, hard], float), ["v_1", "v_2"],
                               np.array(boxes, float).reshape(-1, 4), np.array(scores, float),
                               gt_difficult=[False, True])

    frames = [frame(0, [normal, hard, hard], [0.9, 0.8, 0.7]),   # hit; two detections on the difficult box
              frame(1, [[200, 200, 230, 230]], [0.6]),            # normal missed, one false positive
              frame(2, [], [])]                                   # both missed
    m = detection_metrics(frames, 10.0, score_threshold=0.3)
    # VOC: difficult boxes are neither hits nor misses, detections on them are not false positives
    assert m["gt_boxes"] == 3 and m["gt_boxes_all"] == 6
    assert math.isclose(m["recall"], 1 / 3)
    assert math.isclose(m["precision"], 1 / 2)                    # the hit and the false positive
    assert math.isclose(m["fp_per_100_frames"], 100 / 3)
    assert m["polyps"] == 1 and m["polyp_detection_rate"] == 1.0  # v_2 is only ever difficult
    assert frames[0].ignored.tolist() == [False, True, True] and frames[0].matched_gt.tolist() == [0, -1, -1]
    # every box: the difficult box is found once (the duplicate is false), missed twice
    assert math.isclose(m["recall_all_boxes"], 2 / 6)
    assert math.isclose(m["precision_all_boxes"], 2 / 4)
    assert math.isclose(m["fp_per_100_frames_all_boxes"], 200 / 3)
    assert m["polyp_detection_rate_all_boxes"] == 1.0
    # AP: ranked hit (0.9), false (0.6) over 3 boxes -> 1/3; all boxes: 0.9 T, 0.8 T, 0.7 F, 0.6 F -> 2/6
    assert math.isclose(m["ap50"], 1 / 3) and math.isclose(m["ap50_all_boxes"], 2 / 6)


def test_a_detection_prefers_the_normal_box_over_an_overlapping_difficult_one():
    normal, hard = [10, 10, 50, 50], [12, 10, 50, 50]
    frames = [FrameDetections("v", 0, np.array([hard, normal], float), ["v_2", "v_1"],
                              np.array([[11, 10, 50, 50]], float), np.array([0.9]), gt_difficult=[True, False])]
    m = detection_metrics(frames, 10.0)
    assert m["recall"] == 1.0 and m["precision"] == 1.0
    with pytest.raises(ValueError, match="1 difficult flags for 2 ground-truth boxes"):
        FrameDetections("v", 0, np.array([hard, normal], float), ["a", "b"], np.zeros((0, 4)), [],
                        gt_difficult=[True])
