"""The depth stream end to end (issue 16): depth maps beside the frames, the generator's exact
depth, the training data set, a bring-your-own depth bundle, and a masked-frame + depth sizer
that trains, exports, folds and runs in the pipeline."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.bundle import load_bundle
from pipeline.depth import DepthEstimator, make_depth_bundle
from pipeline.errors import BundleError, DataError
from pipeline.prep import SizerInputSpec, prepare_sizer_inputs
from pipeline.sizing import TrackSizingStage
from trainer.data.augment import PairedAugment
from trainer.data.datasets import SizerDataset
from trainer.data.depth import (PNG_UNITS_PER_MM, find_depth_path, load_frame_depth, read_depth_map,
                                write_depth_png)
from trainer.data.records import SampleRecord

TINY_DEPTH_RUN = """
model: {name: hag_resnet18, width_mult: 0.125, hidden: 8}
data:
  kind: synthetic
  split_method: sklearn
  split_seed: 1
  folds: 3
  protocol: test_val
  min_frames_per_polyp: 2
  train_per_polyp: 6
  val_per_polyp: 6
  val_sampling: random
  input: {streams: [mask, depth], size: 32, mode: reference}
  synthetic:
    videos: 4
    seed: 5
    cache_dir: CACHE
    overrides: {width: 160, height: 128, seconds: 2.0, fps: 10.0, polyps: {min_count: 2, max_count: 3}}
loss: {kind: reference}
routing: {loss: {kind: reference}}
decision: {clamp_mm: [0.5, 22.0], diminutive_max_mm: 4.75}
train: {epochs: 1, batch_size: 8, workers: 0, seed: 0, steps_per_epoch: 2, primary_metric: loss}
"""


def test_depth_files_round_trip(tmp_path):
    frames = tmp_path / "001-001_frames"
    frames.mkdir()
    image = frames / "001-001_7.jpg"
    image.write_bytes(b"")
    assert find_depth_path(image, "001-001") is None
    with pytest.raises(DataError, match=r"001-001_depth/001-001_7\.png \(or \.npy\): no depth map"):
        load_frame_depth(image, "001-001", (4, 3))
    depth_mm = np.array([[10.0, 20.5, 30.25, 4000.0]] * 3)
    (tmp_path / "001-001_depth").mkdir()
    write_depth_png(tmp_path / "001-001_depth" / "001-001_7.png", depth_mm)
    found = find_depth_path(image, "001-001")
    assert found.name == "001-001_7.png"
    raw = cv2.imread(str(found), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw[0].tolist() == [160, 328, 484, 64000]
    np.testing.assert_array_equal(load_frame_depth(image, "001-001", (4, 3)), raw.astype(np.float32))
    with pytest.raises(DataError, match=r"depth map is 4x3, the frame 5x3"):
        load_frame_depth(image, "001-001", (5, 3))
    npy = tmp_path / "d.npy"
    np.save(npy, depth_mm.astype(np.float16))
    np.testing.assert_allclose(read_depth_map(npy), depth_mm, rtol=1e-3)
    np.save(npy, np.zeros((2, 2, 3)))
    with pytest.raises(DataError, match="2-D numeric array"):
        read_depth_map(npy)


def test_generator_writes_its_exact_depth(tmp_path):
    from trainer.synth import SynthConfig, SyntheticVideo, generate_dataset
    from trainer.synth.config import apply_overrides
    from trainer.synth.writer import video_seed

    cfg = apply_overrides(SynthConfig(), {"width": 96, "height": 80, "seconds": 0.4, "fps": 5.0})
    generate_dataset(tmp_path / "d", cfg, videos=1, seed=3, progress=False, depth=True)
    pngs = sorted((tmp_path / "d" / "001-001_depth").glob("*.png"))
    assert len(pngs) == cfg.num_frames == 2
    video = SyntheticVideo(cfg, seed=video_seed(3, 0), name="001-001")
    for i in range(cfg.num_frames):
        exact = video.render(i).depth
        stored = read_depth_map(tmp_path / "d" / "001-001_depth" / f"001-001_{i}.png") / PNG_UNITS_PER_MM
        inside = exact < 65535 / PNG_UNITS_PER_MM
        assert inside.mean() > 0.5 and exact.shape == (80, 96)
        assert np.abs(stored[inside] - exact[inside]).max() <= 0.5 / PNG_UNITS_PER_MM + 1e-6
    # without depth=True no depth folder is written
    generate_dataset(tmp_path / "e", cfg, videos=1, seed=3, progress=False)
    assert not (tmp_path / "e" / "001-001_depth").exists()


def test_dataset_reads_depth_and_augments_it_with_the_frame(tmp_path):
    frames = tmp_path / "v_frames"
    frames.mkdir()
    (tmp_path / "v_depth").mkdir()
    ramp = np.tile(np.arange(64, dtype=np.float32), (48, 1))
    image = np.zeros((48, 64, 3), np.uint8)
    image[..., 0] = (ramp * 3).astype(np.uint8)
    cv2.imwrite(str(frames / "v_0.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    np.save(tmp_path / "v_depth" / "v_0.npy", ramp)
    sample = SampleRecord(str(frames / "v_0.png"), "v", 0, (20, 12, 40, 36), "p", 6.0, (64, 48))
    spec = SizerInputSpec(streams=("rgb", "depth"), size=16, fov_masking=False, box_grow=0.0)
    plain = SizerDataset([sample], spec)[0][0]["depth"][0]
    assert np.all(np.diff(plain, axis=1) >= 0) and plain[:, -1].min() > 0.9      # farther to the right
    flip = PairedAugment(hflip_p=1.0, vflip_p=0.0, rotate_deg=0.0, scale=(1.0, 1.0), shift=0.0,
                         brightness=0.0, contrast=0.0, gamma=(1.0, 1.0), hue_deg=0.0, saturation=0.0, blur_p=0.0)
    flipped = SizerDataset([sample], spec, flip)[0][0]
    # the frame's red ramp and the depth ramp turned round together
    assert np.all(np.diff(flipped["depth"][0].numpy(), axis=1) <= 1e-6)
    assert np.all(np.diff(flipped["rgb"][0].numpy(), axis=1) <= 1e-5)
    missing = SampleRecord(str(frames / "v_0.png"), "w", 0, (20, 12, 40, 36), "p", 6.0, (64, 48))
    with pytest.raises(DataError, match="no depth map"):
        SizerDataset([missing], spec)[0]


def _tiny_depth_onnx(path: Path, size: int = 24) -> None:
    """A 1x1 convolution averaging the three normalised channels: (1,3,S,S) -> (1,1,S,S)."""
    weight = numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 3, np.float32), "w")
    node = helper.make_node("Conv", ["image", "w"], ["depth"])
    graph = helper.make_graph([node], "tiny_depth",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, 1, size, size])],
                              [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)


def test_depth_bundle_runs_its_model_and_flips_inverse_depth(tmp_path):
    _tiny_depth_onnx(tmp_path / "tiny.onnx")
    bundle = make_depth_bundle(tmp_path / "tiny.onnx", tmp_path / "depth", size=24, mean=(0, 0, 0), std=(1, 1, 1))
    assert load_bundle(tmp_path / "depth").kind == "depth" and bundle.is_external
    est = DepthEstimator.from_bundle(tmp_path / "depth", backend="onnxruntime")
    frame = np.zeros((48, 72, 3), np.uint8)
    frame[:, 36:] = 255
    d = est.estimate(frame)
    assert d.shape == (48, 72) and d[:, :30].max() < 0.05 and d[:, 42:].min() > 0.95
    inverse = DepthEstimator.from_bundle(
        make_depth_bundle(tmp_path / "tiny.onnx", tmp_path / "inv", size=24, mean=(0, 0, 0), std=(1, 1, 1),
                          inverse=True).path, backend="onnxruntime")
    np.testing.assert_allclose(inverse.estimate(frame), d.max() - d, atol=1e-5)
    fov = np.zeros((48, 72), bool)
    fov[:, :60] = True
    assert est.estimate(frame, fov)[:, 60:].max() == 0


@pytest.fixture(scope="module")
def depth_run(tmp_path_factory):
    from trainer.train import main

    base = tmp_path_factory.getbasetemp()
    config = base / "tiny_depth.yaml"
    config.write_text(TINY_DEPTH_RUN.replace("CACHE", str(base / "synth-cache")))
    out = tmp_path_factory.mktemp("depth-run") / "run"
    assert main(["--config", str(config), "--out", str(out), "--fold", "0", "--quiet"]) == 0
    return out


def test_masked_frame_and_depth_sizer_trains_exports_and_runs_in_the_pipeline(depth_run, tmp_path):
    from trainer.export.cli import main as export_main

    summary = json.loads((depth_run / "summary.json").read_text())
    fold = summary["folds"]["0"]
    assert summary["primary_metric"] == "loss" and summary["higher_is_better"] is False
    assert "loss" in fold["best_metrics"] and "frame_binary_f1_weighted" in fold["best_metrics"]
    # the test_val protocol tests fold 0 on all its frames with the best checkpoint
    test = fold["test_metrics"]
    assert test["frame_count"] >= test["polyp_count"] >= 1 and "frame_ba_bias_mm" in test
    report = (depth_run / "fold-0" / "report.html").read_text()
    assert "What clinicians read" in report and "Bland-Altman, validation frames" in report
    assert "comparable to the paper" in report

    assert export_main([str(depth_run), "--out", str(tmp_path / "sizer"), "--fold", "0"]) == 0
    sizer = load_bundle(tmp_path / "sizer")
    assert list(sizer.input_names) == ["mask", "depth"] and sizer.input_channels == {"mask": 3, "depth": 1}
    assert sizer.outputs["decision"] == {"clamp_mm": [0.5, 22.0], "diminutive_max_mm": 4.75}
    assert sizer.inputs["spec"]["mode"] == "reference"

    _tiny_depth_onnx(tmp_path / "tiny.onnx")
    make_depth_bundle(tmp_path / "tiny.onnx", tmp_path / "depth", size=24)
    with pytest.raises(BundleError, match="depth stream; give it a depth bundle"):
        TrackSizingStage.from_bundle(tmp_path / "sizer", backend="onnxruntime")
    with pytest.raises(BundleError, match="expected a depth model"):
        DepthEstimator.from_bundle(tmp_path / "sizer", backend="onnxruntime")
    stage = TrackSizingStage.from_bundle(tmp_path / "sizer", backend="onnxruntime", depth_bundle=tmp_path / "depth")
    frame_path = sorted(Path(sizer.provenance["data"]["root"]).glob("001-001_frames/*.jpg"))[3]
    frame = cv2.cvtColor(cv2.imread(str(frame_path)), cv2.COLOR_BGR2RGB)
    boxes = [(1, (40.0, 30.0, 90.0, 80.0)), (2, (10.0, 10.0, 30.0, 40.0))]
    sizes = stage.size(frame, boxes, frame_index=0)
    assert sorted(sizes) == [1, 2] and all(0.5 <= s <= 22.0 for s in sizes.values())
    # the same numbers by hand: depth model once per frame, then the sizer
    depth = DepthEstimator.from_bundle(tmp_path / "depth", backend="onnxruntime").estimate(frame)
    inputs = prepare_sizer_inputs(frame, [b for _, b in boxes], stage.spec, depth=depth,
                                  fov_mask=None if not stage.spec.fov_masking else _fov(frame))
    direct = np.clip(stage.engine.run(inputs)["size_mm"].reshape(-1), 0.5, 22.0)
    np.testing.assert_allclose([sizes[1], sizes[2]], direct, rtol=1e-5)
    # the bundle's decision threshold reaches the class the pipeline shows
    from pipeline.config import load_run_config
    from pipeline.stages import Analysis
    assert stage.diminutive_max_mm == 4.75
    analysis = Analysis(load_run_config(None), boxes=lambda frame: [], sizer=stage)
    assert analysis.smooth.smoothers.smoother_settings["diminutive_max_mm"] == 4.75


def _fov(frame):
    from pipeline.fov import estimate_fov_mask
    return estimate_fov_mask(frame)
