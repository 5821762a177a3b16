"""trainer.synth: determinism, on-disk layout and frame-count agreement, geometry of the ground
truth, the field-of-view border, and the hagview-synth command line."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.sizeclass import triclass_index
from trainer.synth import SynthConfig, SyntheticVideo, generate_dataset, load_synth_config
from trainer.synth.cli import main as synth_main
from trainer.synth.writer import video_seed

cv2.setNumThreads(1)

TINY = replace(SynthConfig(), width=160, height=120, fps=10.0, seconds=2.0)


def _digest(video: SyntheticVideo, indices) -> list[str]:
    return [hashlib.sha256(video.render(i).image.tobytes()).hexdigest() for i in indices]


def test_same_seed_bit_identical_and_random_access_matches_iteration():
    a = SyntheticVideo(TINY, seed=11)
    b = SyntheticVideo(TINY, seed=11)
    iterated = [hashlib.sha256(f.image.tobytes()).hexdigest() for f in a.frames()]
    assert len(iterated) == a.num_frames == 20
    # Out of order on a second instance: the same bytes.
    order = [13, 2, 19, 0, 7]
    assert _digest(b, order) == [iterated[i] for i in order]
    assert [f.polyps for f in a.frames()] == [b.render(i).polyps for i in range(b.num_frames)]
    other = SyntheticVideo(TINY, seed=12)
    assert _digest(other, [0, 7, 13]) != [iterated[i] for i in (0, 7, 13)]


def test_frame_properties():
    video = SyntheticVideo(TINY, seed=3, name="002-005")
    frame = video.render(4)
    assert frame.image.shape == (120, 160, 3) and frame.image.dtype == np.uint8
    assert frame.image.flags["C_CONTIGUOUS"]
    assert frame.index == 4 and frame.time == pytest.approx(0.4)
    assert video.size == (160, 120) and video.fps == 10.0
    with pytest.raises(IndexError):
        video.render(20)


def test_fov_border_is_black_and_text_stays_on_it():
    plain = SyntheticVideo(replace(TINY, width=320, height=240, overlay_text=False), seed=5)
    inside = plain.fov_mask()
    for index in (0, 9, 15):
        image = plain.render(index).image
        assert image[~inside].max() == 0
        assert image[inside].mean() > 15          # the lit mucosa is there
    with_text = SyntheticVideo(replace(TINY, width=320, height=240, overlay_text=True), seed=5)
    image = with_text.render(9).image
    text = image.max(axis=2) > 0
    assert text[~inside].sum() > 200               # the tower's text strip is drawn ...
    assert np.array_equal(image[inside], plain.render(9).image[inside])   # ... only on the border


def test_config_yaml_overrides_and_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("seconds: 3\npolyps:\n  min_count: 2\n  max_count: 2\n  shapes: [flat]\n"
                    "motion:\n  jitter_deg: 0.2\n")
    cfg = load_synth_config(good)
    assert cfg.seconds == 3.0 and cfg.polyps.min_count == 2 and cfg.polyps.shapes == ("flat",)
    assert cfg.motion.jitter_deg == 0.2 and cfg.width == 640
    demo = load_synth_config(preset="demo")
    assert (demo.width, demo.height) == (640, 480) and demo.seconds == 20.0 and demo.polyps.min_count == 3

    cases = {
        "polyps:\n  sizes: [1, 2]\n": "unknown key 'polyps.sizes'",
        "motion:\n  jitter_deg: lots\n": "motion.jitter_deg: expected a number",
        "fps: [25]\n": "fps: expected a number",
        "polyps:\n  diameter_mm: [9, 3]\n": "polyps.diameter_mm: expected [low, high] with low <= high",
        "polyps:\n  shapes: [round]\n": "unknown shape 'round'",
        "width: 161\n": "need even sizes",
        "motion: 3\n": "motion: expected a mapping",
        "seconds: [\n": "invalid YAML",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_synth_config(bad)
        assert message in str(err.value) and str(bad) in str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_synth_config(tmp_path / "missing.yaml")


def test_box_size_follows_diameter_over_distance():
    """Fully visible polyps near the image centre: the box spans f * angular diameter.

    A round dome's box side is that span; a flat lesion seen obliquely is an ellipse whose
    axis-aligned box lies between side = span / sqrt(2) (major axis diagonal) and
    diagonal = span * sqrt(2) (face on), so all boxes must satisfy side <= span <= diagonal
    within the tolerance of pixel rounding and the fisheye's tangential stretch (20 %).
    """
    cfg = replace(load_synth_config(preset="demo"), width=320, height=240, fps=8.0)
    side_ratio, diag_ratio, dome_ratio, distances, diameters = [], [], [], set(), set()
    cut_fractions, central_fractions = [], []
    for seed in (1, 2):
        video = SyntheticVideo(cfg, seed=seed)
        cam = video.camera
        shapes = {p.id: p.shape for p in video.polyps}
        for frame in video.frames():
            for gt in frame.polyps:
                x1, y1, x2, y2 = gt.box
                off_centre = math.hypot((x1 + x2) / 2 - cam.cx, (y1 + y2) / 2 - cam.cy) / cam.radius_px
                span = cam.focal_px * 2 * math.asin(min(1.0, gt.diameter_mm / 2 / gt.distance_mm))
                if x1 <= 0 or y1 <= 0 or x2 >= cam.width or y2 >= cam.height:
                    cut_fractions.append(gt.visible_fraction)
                elif off_centre < 0.6 and gt.distance_mm < 50:
                    central_fractions.append(gt.visible_fraction)
                if gt.visible_fraction >= 0.999 and off_centre < 0.6 and span >= 6:
                    side_ratio.append(max(x2 - x1, y2 - y1) / span)
                    diag_ratio.append(math.hypot(x2 - x1, y2 - y1) / span)
                    if shapes[gt.polyp_id] != "flat":
                        dome_ratio.append(side_ratio[-1])
                    distances.add(round(gt.distance_mm / 10))
                    diameters.add(gt.diameter_mm)
    assert len(side_ratio) >= 40 and len(dome_ratio) >= 20 and len(distances) >= 4 and len(diameters) >= 3
    assert max(side_ratio) <= 1.2 and min(diag_ratio) >= 0.8
    # Domes (sessile, pedunculated heads): box side within 15 %, median within 5 %.
    assert 0.85 <= min(dome_ratio) and max(dome_ratio) <= 1.15
    assert 0.95 <= np.median(dome_ratio) <= 1.05
    # Visible fraction: polyps cut by the image edge are partly visible; near, central ones
    # are mostly whole (folds in front may still hide part of some).
    assert cut_fractions and max(cut_fractions) < 1.0
    assert len(central_fractions) >= 40 and np.median(central_fractions) >= 0.95


def test_demo_spans_size_classes_and_a_polyp_leaves_and_returns():
    # The very clip `hagview-synth --preset demo` writes (run seed 0, first video), smaller frames.
    cfg = replace(load_synth_config(preset="demo"), width=96, height=72)
    video = SyntheticVideo(cfg, seed=video_seed(0, 0))
    assert video.num_frames == 500
    assert sorted(triclass_index(p.diameter_mm) for p in video.polyps) == [0, 1, 2]
    visible = {p.id: np.zeros(video.num_frames, bool) for p in video.polyps}
    fractions = []
    for frame in video.frames():
        for gt in frame.polyps:
            visible[gt.polyp_id][frame.index] = True
            fractions.append(gt.visible_fraction)
            assert 0.0 < gt.visible_fraction <= 1.0
    min_gap = int(0.3 * video.fps)

    def leaves_and_returns(seen: np.ndarray) -> bool:
        idx = np.flatnonzero(seen)
        return bool(len(idx)) and bool((np.diff(idx) > min_gap).any())
    assert any(leaves_and_returns(seen) for seen in visible.values())
    assert min(fractions) < 0.5 < max(fractions)       # partial views happen, full views too


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "run"
    cfg = replace(TINY, seconds=1.6, polyps=replace(TINY.polyps, min_count=1))
    names = generate_dataset(out, cfg, videos=2, seed=4, progress=False)
    return out, names, cfg


def test_dataset_layout_and_frame_counts_agree(dataset):
    out, names, cfg = dataset
    assert names == ["001-001", "001-002"]
    n = cfg.num_frames
    assert n == 16
    with open(out / "video_info.csv", newline="") as fh:
        videos = list(csv.DictReader(fh))
    assert list(videos[0]) == ["unique_video_name", "age", "sex", "endoscope_brand", "fps", "num_frames",
                               "num_lesions", "bbps"]
    for name, info in zip(names, videos):
        jpgs = sorted((out / f"{name}_frames").iterdir())
        xmls = sorted((out / f"{name}_annotations").iterdir())
        assert {p.name for p in jpgs} == {f"{name}_{i}.jpg" for i in range(n)}
        assert {p.name for p in xmls} == {f"{name}_{i}.xml" for i in range(n)}
        assert cv2.imread(str(jpgs[0])).shape == (120, 160, 3)
        with av.open(str(out / f"{name}.mp4")) as container:
            decoded = sum(1 for _ in container.decode(video=0))
        gt = json.loads((out / f"{name}.gt.json").read_text())
        assert decoded == n == gt["num_frames"] == len(gt["frames"]) == int(info["num_frames"])
        assert [f["index"] for f in gt["frames"]] == list(range(n))
        assert gt["synthetic"] is True and (gt["width"], gt["height"], gt["fps"]) == (160, 120, 10.0)
        rows = [line.split(",") for line in (out / f"{name}.gt.txt").read_text().splitlines()]
        assert all(len(r) == 10 and r[6:] == ["1", "-1", "-1", "-1"] for r in rows)
        assert max(int(r[0]) for r in rows) <= n
        json_rows = sorted((f["index"] + 1, p["id"]) for f in gt["frames"] for p in f["polyps"])
        assert sorted((int(r[0]), int(r[1])) for r in rows) == json_rows
        assert {int(r[1]) for r in rows} <= {p["id"] for p in gt["polyps"]}
        assert int(info["num_lesions"]) == len(gt["polyps"])


def test_voc_and_lesion_info_match_ground_truth(dataset):
    out, names, _ = dataset
    with open(out / "lesion_info.csv", newline="") as fh:
        lesions = list(csv.DictReader(fh))
    assert list(lesions[0]) == ["unique_object_id", "unique_video_name", "size [mm]", "site",
                                "histology_extended", "histology_class"]
    sizes = {row["unique_object_id"]: float(row["size [mm]"]) for row in lesions}
    boxes_seen = 0
    for name in names:
        gt = json.loads((out / f"{name}.gt.json").read_text())
        for polyp in gt["polyps"]:
            assert polyp["unique_id"] == f"{name}_{polyp['id']}"
            assert sizes[polyp["unique_id"]] == pytest.approx(polyp["diameter_mm"], abs=0.05)
        box_ids = []
        for frame in gt["frames"]:
            root = ET.parse(out / f"{name}_annotations" / f"{name}_{frame['index']}.xml").getroot()
            assert root.findtext("filename") == f"{name}_{frame['index']}.jpg"
            objects = root.findall("object")
            assert len(objects) == len(frame["polyps"])
            for obj, truth in zip(objects, frame["polyps"]):
                assert obj.findtext("name") == "lesion"
                assert obj.findtext("unique_id") == f"{name}_{truth['id']}"
                bnd = obj.find("bndbox")
                assert [child.tag for child in bnd] == ["xmin", "xmax", "ymin", "ymax"]
                x1, y1, x2, y2 = truth["box"]
                assert [int(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")] == \
                    [round(x1), round(y1), round(x2), round(y2)]
                assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 120
                box_ids.append(int(obj.findtext("box_id")))
                boxes_seen += 1
        assert box_ids == list(range(1, len(box_ids) + 1))
    assert boxes_seen > 0


def test_generate_refuses_non_empty_directory(dataset, tmp_path):
    out, _, cfg = dataset
    with pytest.raises(ConfigError, match="not empty"):
        generate_dataset(out, cfg, videos=1, seed=0, progress=False)
    assert (out / "001-002.gt.json").exists()          # untouched


def test_cli_writes_a_run(tmp_path, capsys):
    out = tmp_path / "cli"
    code = synth_main(["--out", str(out), "--videos", "1", "--seconds", "0.5", "--fps", "8",
                       "--size", "96x72", "--seed", "3", "--quiet"])
    assert code == 0
    gt = json.loads((out / "001-001.gt.json").read_text())
    assert gt["num_frames"] == 4 and (gt["width"], gt["height"]) == (96, 72)
    assert len(list((out / "001-001_frames").iterdir())) == 4
    assert "wrote 1 video" in capsys.readouterr().out
    # Nothing but the run under the output's parent: no temporary leftovers.
    assert [p.name for p in tmp_path.iterdir()] == ["cli"]


@pytest.mark.parametrize("argv, message", [
    (["--videos", "2"], "the following arguments are required: --out"),
    (["--out", "X", "--size", "640by480"], "expected WIDTHxHEIGHT"),
    (["--out", "X", "--size", "641x480"], "need even sizes"),
    (["--out", "X", "--fps", "0"], "fps: must be between"),
    (["--out", "X", "--videos", "0"], "--videos must be at least 1"),
    (["--out", "X", "--preset", "nope"], "invalid choice: 'nope'"),
    (["--out", "X", "--config", "MISSING.yaml"], "config file not found"),
])
def test_cli_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    argv = [a.replace("X", str(tmp_path / "o")).replace("MISSING", str(tmp_path / "missing")) for a in argv]
    assert synth_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("hagview-synth: error:") and "\n" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_cli_bad_config_via_entry_point(tmp_path):
    import subprocess
    import sys
    script = Path(sys.executable).with_name("hagview-synth")
    if not script.exists():
        pytest.skip("hagview-synth is not installed in this environment")
    bad = tmp_path / "bad.yaml"
    bad.write_text("motion:\n  swing_deg: fast\n")
    proc = subprocess.run([str(script), "--out", str(tmp_path / "o"), "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"hagview-synth: error: {bad}: motion.swing_deg: expected a list of two "
                                   "numbers [low, high], got 'fast'")


def test_shipped_configs_load():
    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "synth").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_synth_config(path)
        assert cfg.num_frames >= 1
    assert load_synth_config(configs[0].with_name("default.yaml")) == SynthConfig()
