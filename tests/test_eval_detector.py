"""scripts/eval_detector.py on generated fixtures with the committed detector bundle: per data set
and per centre figures, negatives, overlays, and figures equal to the serving path's own output."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from _polyp_fixtures import kvasir_layout, negatives_layout, polypgen_layout, write
from pipeline.boxes import box_iou
from pipeline.detecting import PolypDetector

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "pipeline" / "assets" / "bundles" / "detector"


def _script():
    if "eval_detector" not in sys.modules:      # registered first: its dataclass needs its module
        spec = importlib.util.spec_from_file_location("eval_detector", ROOT / "scripts" / "eval_detector.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["eval_detector"] = module
        spec.loader.exec_module(module)
    return sys.modules["eval_detector"]


def _run(tmp_path, *args) -> dict:
    out = tmp_path / "results"
    assert _script().main([*args, "--out", str(out), "--no-progress", "--backend", "onnxruntime"]) == 0
    files = sorted(out.glob("eval_detector-*.json"))
    assert len(files) == 1
    return json.loads(files[0].read_text())


def test_eval_on_fixture_layouts(tmp_path):
    kvasir_layout(tmp_path / "kvasir")
    polypgen_layout(tmp_path / "polypgen")
    negatives_layout(tmp_path / "negatives")
    overlays = tmp_path / "overlays"
    report = _run(tmp_path, "--data", f"kvasir_seg:{tmp_path / 'kvasir'}", "--data",
                  f"polypgen:{tmp_path / 'polypgen'}", "--negatives", str(tmp_path / "negatives"),
                  "--synthetic-negatives", "2", "--overlays", str(overlays), "--overlay-limit", "1")
    assert report["score_threshold"] == 0.3 and report["iou_threshold"] == 0.5
    kv, pg = report["datasets"]["kvasir_seg"], report["datasets"]["polypgen"]
    # frames and boxes exactly as the fixtures make them (reader skips excluded)
    assert (kv["frames"], kv["gt_boxes"], kv["skipped_by_reader"], kv["reader_warnings"]) == (4, 6, 2, 2)
    assert (pg["frames"], pg["gt_boxes"], pg["skipped_by_reader"]) == (10, 11, 2)
    assert sorted(pg["centres"]) == ["polypgen/C1", "polypgen/C2", "polypgen/C4"]
    assert [pg["centres"][c]["frames"] for c in sorted(pg["centres"])] == [4, 3, 3]
    assert sum(pg["centres"][c]["gt_boxes"] for c in pg["centres"]) == 11
    assert "centres" not in kv
    for m in [kv, pg, *pg["centres"].values()]:
        for key in ("ap50", "recall", "precision"):
            assert m[key] != m[key] or 0.0 <= m[key] <= 1.0
        assert m["false_boxes_per_frame"] >= 0
        assert m["trained_on"] is False if "trained_on" in m else True
    real, synth = report["negatives"]["negatives"], report["negatives"]["synthetic"]
    assert (real["frames"], synth["frames"]) == (4, 2)
    for entry in (real, synth):
        assert entry["false_boxes_per_frame"] == pytest.approx(entry["false_boxes"] / entry["frames"])
        assert entry["frames_with_false_boxes"] <= entry["frames"]
    assert sum(p["frames"] for p in real["parts"].values()) == 4
    # overlays: at most one picture per data set/centre and kind, each a decodable image
    pictures = sorted(overlays.rglob("*.jpg"))
    assert len(pictures) == sum(report["overlays"]["written"].values()) >= 1
    assert all(n == 1 for n in report["overlays"]["written"].values())
    assert all(cv2.imread(str(p)) is not None for p in pictures)


def _synthetic_polyp_set(root: Path) -> list[tuple[Path, list]]:
    """An image folder of synthetic frames showing polyps, masks = their (not difficult) boxes."""
    from trainer.synth import SynthConfig, SyntheticVideo, is_difficult_box
    from trainer.synth.config import PolypConfig

    cfg = SynthConfig(width=320, height=240, fps=12.5, seconds=8.0, polyps=PolypConfig(min_count=2, max_count=3))
    video = SyntheticVideo(cfg, seed=90103, name="eval")
    out = []
    for index in range(0, video.num_frames, 4):
        frame = video.render(index)
        boxes = [p.box for p in frame.polyps if not is_difficult_box(p.box, p.visible_fraction, cfg.width)]
        if not boxes or len(boxes) != len(frame.polyps):
            continue
        mask = np.zeros((cfg.height, cfg.width), np.uint8)
        for x1, y1, x2, y2 in boxes:
            mask[int(np.ceil(y1)):int(y2), int(np.ceil(x1)):int(x2)] = 255
        image = write(root / "images" / f"{index:04d}.png", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        write(root / "masks" / f"{index:04d}.png", mask)
        out.append((image, mask))
        if len(out) == 8:
            break
    return out


def test_eval_figures_equal_the_serving_path(tmp_path):
    made = _synthetic_polyp_set(tmp_path / "synth")
    assert len(made) == 8
    report = _run(tmp_path, "--data", f"image_folder:{tmp_path / 'synth'}", "--synthetic-negatives", "0")
    entry = report["datasets"]["synth"]
    # the same frames straight through the pipeline's detector at the operating threshold
    from trainer.data.masks import mask_boxes
    detector = PolypDetector(BUNDLE, score_threshold=0.3, backend="onnxruntime")
    hits = gt_total = false = 0
    for image_path, mask in made:
        gt = np.array(mask_boxes(mask > 127), float).reshape(-1, 4)
        found = detector.detect(cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB))
        boxes = np.array([d.box for d in found], float).reshape(-1, 4)
        iou = box_iou(boxes, gt)
        taken = set()
        for i in range(len(boxes)):                 # detections come best first
            free = [j for j in range(len(gt)) if j not in taken and iou[i, j] >= 0.5]
            if free:
                taken.add(max(free, key=lambda j: iou[i, j]))
            else:
                false += 1
        hits += len(taken)
        gt_total += len(gt)
    assert entry["frames"] == 8 and entry["gt_boxes"] == gt_total
    assert entry["recall"] == pytest.approx(hits / gt_total)
    assert entry["false_boxes_per_frame"] == pytest.approx(false / 8)
    assert hits >= 1            # the demo detector finds synthetic polyps; a coordinate slip would not


def test_trained_on_flag_and_bad_arguments(tmp_path):
    import shutil
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["provenance"]["datasets"] = [{"name": "kvasir_seg"}]
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    kvasir_layout(tmp_path / "kvasir")
    report = _run(tmp_path, "--data", f"kvasir_seg:{tmp_path / 'kvasir'}", "--bundle", str(bundle),
                  "--synthetic-negatives", "0")
    assert report["datasets"]["kvasir_seg"]["trained_on"] is True
    # leave one centre out: a model trained on C1 and C2 is held out on C4 only
    manifest["provenance"]["datasets"] = [{"name": "polypgen", "options": {"centres": ["C1", "C2"]}}]
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    polypgen_layout(tmp_path / "polypgen")
    report = _run(tmp_path / "all", "--data", f"polypgen:{tmp_path / 'polypgen'}", "--bundle", str(bundle),
                  "--synthetic-negatives", "0")
    centres = report["datasets"]["polypgen"]["centres"]
    assert {c: centres[c]["trained_on"] for c in centres} == {"polypgen/C1": True, "polypgen/C2": True,
                                                              "polypgen/C4": False}
    assert report["datasets"]["polypgen"]["trained_on"] is True
    report = _run(tmp_path / "c4", "--data", f"polypgen:{tmp_path / 'polypgen'}", "--bundle", str(bundle),
                  "--centres", "C4", "--synthetic-negatives", "0")
    assert report["datasets"]["polypgen"]["trained_on"] is False
    script = _script()
    assert script.main(["--data", "kvasir:/x", "--no-progress"]) == 2
    assert script.main(["--synthetic-negatives", "0", "--no-progress"]) == 2
    assert script.main(["--data", f"polypgen:{tmp_path / 'nope'}", "--no-progress"]) == 2


def test_frame_status_follows_voc_for_difficult_boxes():
    script = _script()
    gt = np.array([[10, 10, 50, 50], [100, 100, 110, 110]], float)

    def status(boxes, difficult):
        boxes = np.array(boxes, float).reshape(-1, 4)
        frame = script.Evaluated("d", "d", "x", None, gt, ["a", "b"], boxes, np.full(len(boxes), 0.9),
                                 np.array(difficult))
        return script.frame_status(frame, 0.3)[0]

    assert status([[10, 10, 50, 50]], [False, True]) == "hit"          # a missed difficult box is no miss
    assert status([[10, 10, 50, 50], [100, 100, 110, 110]], [False, True]) == "hit"   # nor a box on it false
    assert status([[10, 10, 50, 50]], [False, False]) == "miss"
    assert status([[10, 10, 50, 50], [200, 10, 240, 50]], [False, True]) == "false"
