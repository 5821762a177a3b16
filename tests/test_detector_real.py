"""The real-data detector recipe: operating threshold from validation, left-out data sets, config."""
import numpy as np
import pytest

from pipeline.configfile import set_dotted
from pipeline.errors import ConfigError
from trainer.data.records import BoxAnnotation, DatasetIndex, FrameRecord
from trainer.detection_metrics import FrameDetections, detection_metrics
from trainer.tasks.detector import choose_operating_threshold, without_left_out_sources


def frames_for_threshold():
    """10 polyp frames (8 found at 0.9, 2 at 0.4) and 20 polyp-free frames with false boxes
    at 0.8, 0.5 and 0.35."""
    frames = []
    for i in range(10):
        frames.append(FrameDetections("pos", i, [[0, 0, 10, 10]], [f"p{i}"], [[0, 0, 10, 10]],
                                      [0.9 if i < 8 else 0.4]))
    for i in range(20):
        score = {0: [0.8], 1: [0.5], 2: [0.35]}.get(i, [])
        frames.append(FrameDetections("neg", i, np.zeros((0, 4)), [], [[50, 50, 60, 60]] * len(score), score))
    detection_metrics(frames, 25.0, score_threshold=0.3)        # matches every frame
    return frames


def test_threshold_is_best_f1_raised_until_negatives_are_clean():
    frames = frames_for_threshold()
    # best F1 at 0.4 (10 found, 2 false: 20/22); 0.05 false boxes per polyp-free frame allows
    # one of the 20 frames a box, so the threshold rises to 0.8
    threshold, figures = choose_operating_threshold(frames, floor=0.2, max_false_per_negative=0.05)
    assert figures["f1_threshold"] == pytest.approx(0.4)
    assert threshold == pytest.approx(0.8)
    assert figures["op_false_per_negative_frame"] == pytest.approx(0.05)
    assert figures["negative_frames"] == 20
    # a looser budget (3 of 20) lets the F1 threshold stand
    threshold, _ = choose_operating_threshold(frames, floor=0.2, max_false_per_negative=0.2)
    assert threshold == pytest.approx(0.4)
    # never under the floor
    threshold, _ = choose_operating_threshold(frames, floor=0.6, max_false_per_negative=1.0)
    assert threshold == pytest.approx(0.9)       # best F1 above 0.6: no false box left


def test_threshold_above_every_negative_score_when_the_budget_is_zero():
    threshold, figures = choose_operating_threshold(frames_for_threshold(), floor=0.2, max_false_per_negative=0.0)
    assert threshold > 0.8 and figures["op_false_per_negative_frame"] == 0.0


def frame(source, video, boxes=()):
    return FrameRecord(image_path=f"/x/{video}.jpg", video=video, frame_index=0, image_size=(100, 100),
                       boxes=tuple(BoxAnnotation(box=b, polyp_id=f"{video}#{i}") for i, b in enumerate(boxes)),
                       source=source)


def test_weight_zero_data_sets_reach_neither_training_nor_validation():
    index = DatasetIndex(frames=[frame("kvasir_seg", "k1", [(1, 1, 9, 9)]), frame("polypgen/C1", "c1", [(1, 1, 9, 9)]),
                                 frame("polypgen/C3", "c3", [(1, 1, 9, 9)]), frame("negatives/nerthus", "n1")],
                         source_weights={"kvasir_seg": 1.0, "polypgen": 0.0, "negatives": 1.0})
    kept = without_left_out_sources(index)
    assert [f.video for f in kept.frames] == ["k1", "n1"]
    assert kept.source_weights == {"kvasir_seg": 1.0, "negatives": 1.0}
    assert without_left_out_sources(kept) is kept


def test_set_dotted_indexes_lists():
    raw = {"data": {"sources": [{"kind": "kvasir_seg", "root": None}, {"kind": "polypgen"}]}}
    set_dotted(raw, "data.sources.1.root", "/d/polypgen")
    set_dotted(raw, "data.sources.0.weight", 0)
    assert raw["data"]["sources"] == [{"kind": "kvasir_seg", "root": None, "weight": 0},
                                      {"kind": "polypgen", "root": "/d/polypgen"}]
    with pytest.raises(ConfigError, match="the list has 2 entries"):
        set_dotted(raw, "data.sources.2.root", "/x")


def test_detector_real_config_reads_with_data_paths_set(tmp_path):
    from trainer.config import load_config

    roots = []
    for name in ("kvasir", "polypgen", "negatives"):
        (tmp_path / name).mkdir()
        roots.append(str(tmp_path / name))
    cfg = load_config("configs/train/detector_real.yaml",
                      [f"data.sources.{i}.root={root}" for i, root in enumerate(roots)])
    assert [s.kind for s in cfg.data.sources] == ["kvasir_seg", "polypgen", "negatives", "synthetic"]
    assert [s.root for s in cfg.data.sources[:3]] == roots
    assert cfg.model.kwargs["trunk"] == "efficientnet_lite0" and cfg.model.pretrained == "efficientnet-lite0"
    assert cfg.data.augment.inset_p > 0 and cfg.data.augment.text_p > 0 and cfg.data.augment.specular_p > 0
    with pytest.raises(ConfigError, match="data.sources"):
        load_config("configs/train/detector_real.yaml")        # the roots are the user's to set


def test_input_sweep_exports_the_same_weights_at_each_size(tmp_path):
    import importlib.util
    import torch

    from pipeline.bundle import load_bundle
    from trainer.models import build_model, save_checkpoint

    spec = importlib.util.spec_from_file_location("detector_input_sweep", "scripts/detector_input_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    torch.manual_seed(0)
    model = build_model("hag_detector", input_size=64, width_mult=0.125, neck_channels=8, head_channels=8)
    metadata = {"kind": "detector",
                "input_spec": {"streams": ["rgb"], "size": 64, "mean": [0.5] * 3, "std": [0.25] * 3,
                               "fov_masking": True},
                "detector": {"output_stride": 8, "score_threshold": 0.4, "max_detections": 10},
                "data": {"kind": "synthetic", "root": "/data", "synthetic": True},
                "config": {"model": {"name": "hag_detector"}}, "metrics": {}, "epoch": 1, "fold": 0}
    save_checkpoint(model, tmp_path / "best.pt", metadata)
    written = sweep.export_at_sizes(tmp_path / "best.pt", [64, 96], tmp_path / "sweep")
    assert [p.name for p in written] == ["input-64", "input-96"]
    small, large = (load_bundle(p) for p in written)
    assert small.input_size[0] == 64 and large.input_size[0] == 96
    assert large.init_kwargs["input_size"] == 96
    assert large.manifest["outputs"]["decoding"]["score_threshold"] == 0.4
    from safetensors.torch import load_file
    a, b = load_file(str(written[0] / "weights.safetensors")), load_file(str(written[1] / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
