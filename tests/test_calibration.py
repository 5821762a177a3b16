"""Calibrated size intervals: hand-made tracks with a known bias and with perfectly correlated
frames, the conformal table's properties, and the calibration's round trip through bundle.json
into the pipeline."""
from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from pipeline.calibration import (FRAME_EDGES, LEVELS, SizeCalibration, TrackInterval, attach_calibration,
                                  bundle_calibration, capped_note, conformal_quantile, fit_halfwidths, interval_for)
from pipeline.errors import BundleError, ConfigError, DataError
from pipeline.smoothing import SizeSmoother
from trainer.calibrate import TrackLog, calibration_from_tracks

Z90 = NormalDist().inv_cdf(0.95)


def replay(readings, truth_mm, interval=None, **kwargs) -> TrackLog:
    """A track fed through the smoother, logged as trainer.calibrate logs the pipeline's tracks."""
    smoother = SizeSmoother(interval, **kwargs)
    log = TrackLog("hand-made", 1, truth_mm=truth_mm, polyp=1, best_for_polyp=True)
    for reading in readings:
        est = smoother.add(float(reading))
        log.frames_used.append(est.frames_used)
        log.size_mm.append(est.size_mm)
        log.low_mm.append(est.low_mm)
        log.high_mm.append(est.high_mm)
        log.claim.append(est.size_class)
    return log


def biased_tracks(n_tracks, seed, bias=1.3, frame_sd=0.05, track_sd=0.03, frames=(10, 60)):
    """A sizer that reads every polyp 30% too large (track-to-track wobble 3%, frame noise 5%)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_tracks):
        truth = float(rng.uniform(3.0, 15.0))
        n = int(rng.integers(*frames))
        shared = bias * math.exp(rng.normal(0, track_sd))
        out.append((truth * shared * np.exp(rng.normal(0, frame_sd, n)), truth))
    return out


def calibrate(tracks, **kwargs) -> SizeCalibration:
    logs = {"given": [replay(r, t) for r, t in tracks]}
    return calibration_from_tracks(logs, data={"synthetic": True, "description": "hand-made"}, smoother={},
                                   detector=None, **kwargs)


def covered(log: TrackLog, i: int = -1) -> bool:
    return log.low_mm[i] <= log.truth_mm <= log.high_mm[i]


def test_conformal_quantile_is_the_finite_sample_rank():
    scores = np.arange(1.0, 20.0)                      # m = 19 units of weight 1
    # rank ceil(0.9 * 20) = 18 -> 18.0; 0.95 * 20 = 19 -> the largest; 0.96 needs m >= 24
    assert conformal_quantile(scores, np.ones(19), 0.9) == 18.0
    assert conformal_quantile(scores, np.ones(19), 0.95) == 19.0
    assert conformal_quantile(scores, np.ones(19), 0.96) == math.inf
    # a track's frames share its unit weight: four frames of one track count once (m = 3, rank 2),
    # where counting frames (m = 6, rank 4) would give 1.0
    assert conformal_quantile(np.array([1.0, 1.0, 1.0, 1.0, 3.0, 5.0]),
                              np.array([0.25, 0.25, 0.25, 0.25, 1.0, 1.0]), 0.5) == 3.0


def test_known_bias_interval_widens_to_include_it_after_calibration():
    # Without calibration, an interval that trusts the frames' scatter (a small shared error)
    # sits around the biased estimate and misses the truth on every track.
    fresh = biased_tracks(60, seed=2)
    before = [replay(r, t, uncalibrated_log_sd=0.02) for r, t in fresh]
    assert sum(map(covered, before)) == 0
    calibration = calibrate(biased_tracks(80, seed=1))
    interval = calibration.interval(0.9, given_boxes=True)
    assert all(h > math.log(1.3) for h in interval.halfwidths)          # wide enough to reach the truth
    after = [replay(r, t, interval) for r, t in fresh]
    final = np.mean([covered(log) for log in after])
    life = np.mean([covered(log, i) for log in after for i in range(len(log.size_mm))])
    assert final >= 0.85 and life >= 0.85
    # and no wider than needed: the bias (0.26) plus a few track wobbles, not the whole prior
    assert max(interval.halfwidths) < math.log(1.3) + 4 * 0.03 + 0.1


def test_interval_does_not_shrink_with_frames_on_perfectly_correlated_estimates():
    # Every frame of a track reads the same size (perfectly correlated); tracks err by 20% (sd).
    rng = np.random.default_rng(5)

    def tracks(k, shortest=60):
        out = []
        for _ in range(k):
            truth = float(rng.uniform(3.0, 15.0))
            out.append((np.full(int(rng.integers(shortest, 130)), truth * math.exp(rng.normal(0, 0.2))), truth))
        return out

    interval = calibrate(tracks(200)).interval(0.9, given_boxes=True)
    h1, h100 = interval.halfwidth(1), interval.halfwidth(100)
    assert h100 > 0.75 * h1                      # 1/sqrt(n) would give 0.1
    assert h100 == pytest.approx(Z90 * 0.2, rel=0.25)
    logs = [replay(r, t, interval) for r, t in tracks(150, shortest=100)]
    at_100 = np.mean([covered(log, 99) for log in logs])
    assert 0.82 <= at_100 <= 0.97
    # The uncalibrated interval keeps the sizer's shared error however many frames agree.
    log = replay(np.full(300, 7.0), 7.0)
    assert all(math.log(h / lo) >= 2 * Z90 * 0.25 - 1e-6 for lo, h in zip(log.low_mm, log.high_mm))


def test_table_never_widens_with_frames_and_keeps_a_floor():
    rng = np.random.default_rng(0)
    # Errors that do shrink with frames, from 40 tracks of 1..40 frames: the buckets past the
    # data keep the last supported value instead of narrowing further.
    tracks = []
    for k in range(40):
        n = 1 + k
        frames = np.arange(1, n + 1)
        tracks.append((frames, np.abs(rng.normal(0, 0.3, n)) / np.sqrt(frames) + 0.05))
    table, counts = fit_halfwidths(tracks)
    assert counts[0] == 40 and table.shape == (len(FRAME_EDGES), len(LEVELS))
    assert np.all(np.diff(table, axis=0) <= 0) and np.all(np.diff(table, axis=1) >= 0)
    last = max(b for b, c in enumerate(counts) if c >= 10)
    assert np.all(table[last:] == table[last]) and np.all(table[last] > 0.05)
    with pytest.raises(DataError, match="level"):
        fit_halfwidths(tracks[:5])


def test_a_higher_level_is_never_narrower_when_a_bucket_lacks_tracks_for_it():
    """25 one-frame tracks with small errors; 12 of them go on to a second frame with large
    errors: enough tracks for 90% in the second bucket (>= 9) but not for 95% (19), whose value
    is carried over from the first bucket. Before the fix the 95% half-width stayed at the
    small first-bucket value while 90% took the large one."""
    tracks = [([1], [0.1 + 0.001 * k]) for k in range(13)]
    tracks += [([1, 2], [0.1 + 0.001 * k, 1.0 + 0.01 * k]) for k in range(12)]
    table, counts = fit_halfwidths(tracks, levels=(0.9, 0.95), edges=(1, 2), min_tracks=1)
    assert list(counts) == [25, 12]
    assert table[1, 0] > 1.0                       # 90% from the second bucket's large errors
    assert np.all(table[:, 1] >= table[:, 0])      # 95% at least as wide, in every bucket
    # the same with the levels given in the other order
    flipped, _ = fit_halfwidths(tracks, levels=(0.95, 0.9), edges=(1, 2), min_tracks=1)
    np.testing.assert_array_equal(flipped, table[:, ::-1])


@pytest.fixture(scope="module")
def sizer_bundle(tmp_path_factory):
    from trainer.export.standin import export_untrained_sizer

    return export_untrained_sizer(tmp_path_factory.mktemp("bundles") / "sizer", input_size=64, width_mult=0.125,
                                  hidden=16, exporter="legacy")


def test_bundle_calibration_round_trip_into_the_pipeline(sizer_bundle, tmp_path):
    from pipeline.bundle import load_bundle
    from pipeline.config import load_run_config
    from pipeline.runtime import Analysis, BoxProvider, build_analysis
    from pipeline.sizing import TrackSizingStage

    assert bundle_calibration(load_bundle(sizer_bundle)) is None
    calibration = calibrate(biased_tracks(40, seed=3))
    attach_calibration(sizer_bundle, calibration)
    bundle = load_bundle(sizer_bundle)                      # hashes and the block validate
    loaded = bundle_calibration(bundle)
    assert loaded.to_dict() == json.loads(json.dumps(calibration.to_dict()))
    assert loaded.synthetic and loaded.levels == LEVELS

    stage = TrackSizingStage.from_bundle(sizer_bundle, backend="onnxruntime")
    given = interval_for(stage, given_boxes=True, level=0.8)
    assert isinstance(given, TrackInterval) and given.level == 0.8
    assert given.note.startswith("80% interval calibrated on synthetic data (given boxes")
    # a bundle calibrated with given boxes only also serves a detector, and says which boxes
    assert "given boxes" in interval_for(stage, given_boxes=False, level=0.9).note

    config = load_run_config(None, {"smooth.confidence_level": 0.8})
    analysis = Analysis(config, boxes=BoxProvider("ground-truth"), sizer=stage)
    # the note says the ends stop at the sizer's range (this bundle names none: 0.5-20 mm)
    assert analysis.interval == given and analysis.interval_note == capped_note(given.note, (0.5, 20.0))
    assert analysis.interval_note.endswith("ends capped at the sizer's 0.5-20 mm range (an end at 20 mm means "
                                           "20 mm or more)")
    est = None
    for size in (6.0, 6.5, 5.5, 6.2):
        est = analysis.smooth.smoothers.add(1, size)
    assert math.log(est.high_mm / est.size_mm) == pytest.approx(given.halfwidth(4))
    assert math.log(est.size_mm / est.low_mm) == pytest.approx(given.halfwidth(4))
    _, info = build_analysis(config, sizer=sizer_bundle, boxes="ground-truth", backend="onnxruntime")
    assert info["interval"] == analysis.interval_note

    with pytest.raises(ConfigError, match=r"smooth.confidence_level 0.85 is not a level .*0.5, 0.8, 0.9, 0.95"):
        Analysis(load_run_config(None, {"smooth.confidence_level": 0.85}), boxes=BoxProvider("ground-truth"),
                 sizer=stage)


def test_the_bundle_clamp_range_reaches_the_smoother_and_the_note(sizer_bundle, tmp_path):
    """A sizer bundle clamping to 0.5-22 mm (the reference's outputs.decision.clamp_mm): the
    pipeline's smoother keeps 21.5 mm readings (not cut to 20 mm) and caps the interval at 22 mm,
    and the note says an end there means "22 mm or more"."""
    import shutil

    from pipeline.config import load_run_config
    from pipeline.runtime import Analysis, BoxProvider
    from pipeline.sizing import TrackSizingStage

    bundle = tmp_path / "sizer"
    shutil.copytree(sizer_bundle, bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["outputs"]["decision"] = {"clamp_mm": [0.5, 22.0], "diminutive_max_mm": 4.75}
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    stage = TrackSizingStage.from_bundle(bundle, backend="onnxruntime")
    analysis = Analysis(load_run_config(None), boxes=BoxProvider("ground-truth"), sizer=stage)
    assert analysis.smooth.smoothers.smoother_settings["clamp_mm"] == (0.5, 22.0)
    assert analysis.interval_note.endswith("ends capped at the sizer's 0.5-22 mm range (an end at 22 mm means "
                                           "22 mm or more)")
    est = None
    for size in (21.5, 21.0, 21.8):
        est = analysis.smooth.smoothers.add(1, size)
    assert 21.0 <= est.size_mm <= 21.8 and est.high_mm == 22.0 and est.low_mm < est.size_mm
    analysis.reset()                        # a new stream keeps the bundle's range
    assert analysis.smooth.smoothers.add(1, 30.0).size_mm == 22.0


@pytest.mark.parametrize("change, words", [
    (lambda c: c.update(format="other/1"), "format"),
    (lambda c: c["tables"]["given"]["halfwidth_log"].pop(), "halfwidth_log must be"),
    (lambda c: c["tables"]["given"]["halfwidth_log"][-1].__setitem__(0, 9.0), "grows with frames"),
    (lambda c: c.update(levels=[0.9, 0.5, 0.8, 0.95]), "levels must be increasing"),
    (lambda c: c["data"].pop("synthetic"), "synthetic"),
])
def test_a_malformed_calibration_fails_at_load_naming_the_key(sizer_bundle, tmp_path, change, words):
    import shutil

    from pipeline.bundle import load_bundle

    bundle = tmp_path / "sizer"
    shutil.copytree(sizer_bundle, bundle)
    attach_calibration(bundle, calibrate(biased_tracks(40, seed=3)))
    manifest = json.loads((bundle / "bundle.json").read_text())
    change(manifest["calibration"])
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"bundle.json: calibration: ") as err:
        load_bundle(bundle)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_detector_table_says_when_another_detector_runs():
    tracks = [replay(r, t) for r, t in biased_tracks(40, seed=4)]
    calibration = calibration_from_tracks({"given": tracks, "detector": tracks}, data={"synthetic": False,
                                          "description": "40 annotated videos"}, smoother={},
                                          detector={"path": "det", "content_hash": "a" * 64})
    same = calibration.interval(0.9, given_boxes=False, detector_hash="a" * 64)
    other = calibration.interval(0.9, given_boxes=False, detector_hash="b" * 64)
    assert same.note == "90% interval calibrated on 40 annotated videos (detector boxes, 1 polyps)"
    assert other.note == same.note + ", measured with another detector" and other.halfwidths == same.halfwidths
    assert calibration.interval(0.9, given_boxes=True).note.startswith("90% interval calibrated on 40 annotated "
                                                                        "videos (given boxes")


# ---------------------------------------------------------------------------------------
# hagview-export --calibrate: the calibration made as the bundle is exported

CAL_SEED, CAL_VIDEOS = 4242, 22      # 1 polyp each: >= 19 tracks, the fewest the 95% level needs


@pytest.fixture(scope="module")
def calibration_videos(tmp_path_factory):
    """22 tiny held-out synthetic videos (160x128, 10 frames, one polyp each)."""
    from trainer.synth import SynthConfig, generate_dataset
    from trainer.synth.config import apply_overrides

    root = tmp_path_factory.mktemp("cal") / "videos"
    cfg = apply_overrides(SynthConfig(), {"width": 160, "height": 128, "seconds": 2.0, "fps": 5.0,
                                          "polyps": {"min_count": 1, "max_count": 1}})
    generate_dataset(root, cfg, videos=CAL_VIDEOS, seed=CAL_SEED, progress=False)
    return root


def sizer_checkpoint(path, training_seed: int, training_videos: int = 40):
    """A tiny sizer checkpoint whose config says it was trained on synthetic videos of `training_seed`."""
    import torch

    from trainer.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("hag_resnet18", streams=("rgb", "mask"), input_size=64, width_mult=0.125, hidden=16,
                        head="regression").eval()
    metadata = {"kind": "sizer",
                "input_spec": {"streams": ["rgb", "mask"], "size": 64, "mean": [0.5, 0.45, 0.4],
                               "std": [0.25, 0.25, 0.25], "fov_masking": True, "box_grow": 0.5},
                "config": {"model": {"name": "hag_resnet18"},
                           "data": {"kind": "synthetic",
                                    "synthetic": {"seed": training_seed, "videos": training_videos}}},
                "data": {"kind": "synthetic", "synthetic": True}, "metrics": {}, "epoch": 1, "fold": 0}
    return save_checkpoint(model, path, metadata)


def _last_error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_export_calibrates_the_new_bundle(calibration_videos, tmp_path, capsys):
    from pipeline.bundle import load_bundle
    from pipeline.config import load_run_config
    from pipeline.runtime import Analysis, BoxProvider
    from pipeline.sizing import TrackSizingStage
    from trainer.calibrate import calibrate_bundle
    from trainer.export.cli import main as export_main
    from trainer.synth.writer import video_seed

    checkpoint = sizer_checkpoint(tmp_path / "ckpt" / "best.pt", training_seed=17)
    out = tmp_path / "out" / "sizer"
    argv = [str(checkpoint), "--out", str(out), "--exporter", "legacy", "--calibrate", str(calibration_videos),
            "--calibrate-boxes", "given", "--calibrate-description", "22 tiny synthetic videos"]
    assert export_main(argv) == 0
    assert "size interval calibrated on 22 tiny synthetic videos (given boxes, 22 polyps)" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["sizer"]      # no staging directory left behind
    bundle = load_bundle(out)                                              # hashes and the block validate
    calibration = bundle_calibration(bundle)
    assert set(calibration.tables) == {"given"} and calibration.synthetic and calibration.levels == LEVELS
    assert calibration.data["videos"] == CAL_VIDEOS and calibration.data["polyps"] == CAL_VIDEOS
    assert calibration.data["video_seeds"] == sorted(video_seed(CAL_SEED, i) for i in range(CAL_VIDEOS))
    assert calibration.tables["given"]["tracks"][0] >= 19
    assert calibration.created["command"] == "hagview-export " + " ".join(argv)
    # the same calibration trainer.calibrate makes on that bundle (the pipeline is deterministic)
    again = calibrate_bundle(out, [calibration_videos], config=load_run_config(None), boxes=["given"], write=False)
    assert again.to_dict()["tables"] == calibration.to_dict()["tables"]
    # and the pipeline shows it
    stage = TrackSizingStage.from_bundle(out, backend="onnxruntime")
    analysis = Analysis(load_run_config(None), boxes=BoxProvider("ground-truth"), sizer=stage)
    assert analysis.interval_note.startswith("90% interval calibrated on synthetic data (given boxes, 22 polyps)")


def test_export_refuses_calibration_on_training_data_and_writes_nothing(calibration_videos, tmp_path, capsys):
    from trainer.export.cli import main as export_main

    trained_on_them = sizer_checkpoint(tmp_path / "ckpt" / "best.pt", training_seed=CAL_SEED, training_videos=30)
    out = tmp_path / "out" / "sizer"
    assert export_main([str(trained_on_them), "--out", str(out), "--exporter", "legacy",
                        "--calibrate", str(calibration_videos), "--calibrate-boxes", "given"]) == 2
    error = _last_error_line(capsys)
    assert error.startswith("hagview-export: error: 22 calibration video(s) were rendered from seeds the bundle "
                            "was trained on")
    assert not out.exists() and list(out.parent.iterdir()) == []         # no bundle without its calibration
    # options that need --calibrate, a missing directory and a detector checkpoint fail before any export work
    held_out = sizer_checkpoint(tmp_path / "ckpt2" / "best.pt", training_seed=17)
    assert export_main([str(held_out), "--out", str(out), "--calibrate-boxes", "given"]) == 2
    assert _last_error_line(capsys) == "hagview-export: error: --calibrate-boxes: applies only with --calibrate DATA"
    assert export_main([str(held_out), "--out", str(out), "--calibrate", str(tmp_path / "nope")]) == 2
    assert _last_error_line(capsys).endswith("nope: not a directory")
    assert not out.exists()
