"""Tracker behaviour on hand-made detections over synthetic images (a distinctive blob on texture)."""
import cv2
import numpy as np
import pytest

from pipeline.tracker import Tracker, appearance_distance, appearance_embedding
from pipeline.types import Detection
from pipeline.errors import ConfigError

FPS = 30.0
W, H = 320, 240


def background(rng):
    base = np.empty((H, W, 3), np.float64)
    base[:] = (170, 90, 80)
    coarse = cv2.resize(rng.normal(0, 18, (H // 8, W // 8, 3)), (W, H), interpolation=cv2.INTER_CUBIC)
    return np.clip(base + coarse + rng.normal(0, 6, (H, W, 3)), 0, 255).astype(np.uint8)


def draw_polyp(img, kind, cx, cy, r):
    """'striped': red disc with pale stripes; 'dotted': teal disc with dark dots."""
    c = (int(cx), int(cy))
    if kind == "striped":
        cv2.circle(img, c, int(r), (225, 60, 50), -1)
        for k in range(-2, 3):
            y = int(cy + k * r * 0.3)
            cv2.line(img, (int(cx - r * 0.7), y), (int(cx + r * 0.7), y), (250, 230, 200), 2)
    else:
        cv2.circle(img, c, int(r), (60, 170, 160), -1)
        for k in range(6):
            cv2.circle(img, (int(cx + 0.5 * r * np.cos(k)), int(cy + 0.5 * r * np.sin(k))),
                       max(2, int(r / 6)), (30, 60, 120), -1)
    return (cx - r, cy - r, cx + r, cy + r)


def run(tracker, scenes, seed=0, with_image=True):
    """scenes: list per frame of [(kind, cx, cy, r)]; returns per frame the confirmed track id
    matched to each object (None while unconfirmed/unmatched) and the raw track lists."""
    rng = np.random.default_rng(seed)
    ids, outputs = [], []
    for index, objects in enumerate(scenes):
        img = background(rng)
        dets = [Detection(draw_polyp(img, *o), 0.9) for o in objects]
        tracks = tracker.update(dets, index, index / FPS, img if with_image else None)
        by_det = {t.detection_index: t for t in tracks if t.missed == 0}
        ids.append([by_det[k].id if k in by_det and by_det[k].confirmed else None for k in range(len(objects))])
        outputs.append(tracks)
    return ids, outputs


def exit_and_return(kind_after="striped", gap=40):
    before = [[("striped", 80 + 2 * i, 120, 24)] for i in range(20)]
    after = [[(kind_after, 240 - i, 80, 26)] for i in range(20)]
    return before + [[] for _ in range(gap)] + after


def confirmed_ids(ids, frames):
    return {ids[i][0] for i in frames if ids[i] and ids[i][0] is not None}


def test_embedding_separates_looks_and_ignores_position():
    rng = np.random.default_rng(1)
    a1, a2, b1 = background(rng), background(rng), background(rng)
    ea1 = appearance_embedding(a1, draw_polyp(a1, "striped", 100, 100, 25))
    ea2 = appearance_embedding(a2, draw_polyp(a2, "striped", 220, 150, 32))
    eb1 = appearance_embedding(b1, draw_polyp(b1, "dotted", 100, 100, 25))
    assert appearance_distance(ea1, ea2) < 0.2
    assert appearance_distance(ea1, eb1) > 0.5
    assert appearance_embedding(a1, (400, 10, 500, 50)) is None      # off the image


def test_id_kept_across_exit_and_return_within_window():
    scenes = exit_and_return()
    tracker = Tracker(reid_window_s=5.0)
    ids, outputs = run(tracker, scenes)
    first = confirmed_ids(ids, range(0, 20))
    second = confirmed_ids(ids, range(60, 80))
    assert first == {1}
    assert second == {1}
    # confirmed after min_hits frames on both visits; the returning frame flags the re-identification
    assert ids[1][0] is None and ids[2][0] == 1
    assert ids[61][0] is None and ids[62][0] == 1 and any(t.reidentified for t in outputs[62])
    # while away (beyond max_missed_frames) it is not reported but still remembered
    assert outputs[50] == [] and tracker.remembered_ids == {1}
    back = [t for t in outputs[79] if t.id == 1][0]
    assert back.hits == 40 and back.first_frame_index == 0


def test_new_id_after_window_or_for_different_polyp_or_without_images():
    after_window = run(Tracker(reid_window_s=1.0), exit_and_return())[0]       # gap 40 frames = 1.33 s
    assert confirmed_ids(after_window, range(20)) == {1} and confirmed_ids(after_window, range(60, 80)) == {2}

    different = run(Tracker(reid_window_s=5.0), exit_and_return(kind_after="dotted"))[0]
    assert confirmed_ids(different, range(60, 80)) == {2}

    blind = run(Tracker(reid_window_s=5.0), exit_and_return(), with_image=False)[0]
    assert confirmed_ids(blind, range(60, 80)) == {2}


def test_short_occlusion_coasts_on_prediction_and_keeps_id():
    scenes = [[("striped", 60 + 4 * i, 120, 22)] for i in range(40)]
    for i in range(15, 22):
        scenes[i] = []                          # 7 missed frames < max_missed_frames
    tracker = Tracker()
    ids, outputs = run(tracker, scenes)
    assert confirmed_ids(ids, range(40)) == {1}
    coasting = outputs[18][0]
    assert coasting.missed == 4 and coasting.detection_index is None
    # the coasting box kept moving right (damped), it did not freeze at the last detection
    assert coasting.box[0] > 60 + 4 * 14 - 22 + 4


def test_crossing_polyps_keep_their_ids():
    # two polyps pass each other with overlapping boxes, one drifting slightly up, one down
    scenes = [[("striped", 60 + 8 * i, 110 + 0.3 * i, 22), ("dotted", 260 - 8 * i, 130 - 0.3 * i, 22)]
              for i in range(26)]
    ids, _ = run(Tracker(), scenes)
    striped = {f[0] for f in ids[2:]}
    dotted = {f[1] for f in ids[2:]}
    assert striped == {1} and dotted == {2}


def test_nearby_lookalike_polyps_keep_ids_by_motion():
    # same appearance, side by side, moving together with the scope: only motion separates them
    scenes = [[("striped", 100 + 3 * i, 120, 20), ("striped", 150 + 3 * i, 125, 20)] for i in range(20)]
    ids, _ = run(Tracker(), scenes)
    assert {f[0] for f in ids[2:]} == {1} and {f[1] for f in ids[2:]} == {2}


def test_abrupt_scope_jump_handled_by_centre_gate():
    # still for 10 frames, then the scope jerks: the polyp jumps 1.2 box widths (IoU 0)
    scenes = [[("striped", 100, 120, 20)] for _ in range(10)] + [[("striped", 148, 128, 20)] for _ in range(10)]
    ids, _ = run(Tracker(), scenes)
    assert confirmed_ids(ids, range(20)) == {1} and all(f[0] == 1 for f in ids[2:])
    # without the centre gate the jump breaks the track: a tentative track starts, and only
    # re-identification at its confirmation gives the id back; without images it is a new id
    ids_no_gate, outputs = run(Tracker(centre_gate=0.0), scenes)
    assert ids_no_gate[10][0] is None and ids_no_gate[12][0] == 1 and outputs[12][0].reidentified
    ids_blind, _ = run(Tracker(centre_gate=0.0), scenes, with_image=False)
    assert confirmed_ids(ids_blind, range(10, 20)) == {2}


def test_fast_swing_followed_by_prediction():
    # the scope accelerates to 30 px per frame with a 40 px box: consecutive boxes then overlap
    # with IoU 0.14 < iou_threshold, so only the constant-velocity prediction keeps the track
    # (centre gate and images off, so neither the gate nor re-identification can help)
    steps = [0, 6, 12, 18, 24, 30, 30, 30, 30, 30]
    xs = np.cumsum(steps) + 25
    scenes = [[("striped", x, 120, 20)] for x in xs]
    ids, outputs = run(Tracker(centre_gate=0.0, velocity_damping=1.0), scenes, with_image=False)
    assert all(f[0] == 1 for f in ids[2:])
    assert outputs[-1][0].velocity[0] == pytest.approx(30, rel=0.2)
    # with the velocity damped away (no real prediction) the same swing breaks the track
    ids_static, _ = run(Tracker(centre_gate=0.0, velocity_damping=0.01), scenes, with_image=False)
    assert [f[0] for f in ids_static[5:]] == [None] * 5


def test_false_positive_never_confirmed_and_spends_no_id():
    tracker = Tracker()
    scenes = [[("dotted", 250, 60, 15)]] + [[] for _ in range(3)] + [[("striped", 100, 100, 20)] for _ in range(5)]
    ids, outputs = run(tracker, scenes)
    assert outputs[0][0].id < 0 and not outputs[0][0].confirmed      # provisional id while tentative
    assert outputs[3] == []                                          # deleted after one missed frame
    assert confirmed_ids(ids, range(4, 9)) == {1}


def test_weak_detections_keep_tracks_but_do_not_start_them():
    tracker = Tracker(min_score=0.1, new_track_min_score=0.5)
    box = (100.0, 100.0, 140.0, 140.0)
    for i in range(3):
        tracks = tracker.update([Detection(box, 0.9)], i, i / FPS)
    for i in range(3, 30):                                            # weak but present
        tracks = tracker.update([Detection(box, 0.2)], i, i / FPS)
    assert [(t.id, t.missed) for t in tracks] == [(1, 0)]
    tracks = tracker.update([Detection((200.0, 20.0, 240.0, 60.0), 0.3)], 30, 1.0)   # weak, elsewhere
    assert [t.id for t in tracks] == [1]
    assert tracker.update([Detection(box, 0.05)], 31, 31 / FPS)[0].missed == 2      # below min_score


@pytest.mark.parametrize("kwargs, words", [
    ({"min_hits": 0}, "min_hits must be an integer >= 1, got 0"),
    ({"max_missed_frames": -1}, "max_missed_frames"),
    ({"iou_threshold": 1.5}, "iou_threshold must be a number in (0, 1], got 1.5"),
    ({"reid_window_s": -2}, "reid_window_s"),
    ({"reid_threshold": "0.3"}, "reid_threshold"),
    ({"min_score": 0.5, "new_track_min_score": 0.3}, "new_track_min_score must be a number in [min_score=0.5, 1]"),
    ({"velocity_damping": 0}, "velocity_damping"),
    ({"centre_gate": float("nan")}, "centre_gate"),
])
def test_parameter_validation_names_the_problem(kwargs, words):
    with pytest.raises(ConfigError) as err:
        Tracker(**kwargs)
    assert words in str(err.value) and str(err.value).startswith("Tracker: ")


def test_update_rejects_time_going_backwards_and_bad_images():
    tracker = Tracker()
    tracker.update([], 5, 0.5)
    with pytest.raises(ValueError, match="frame_index 5 is not after the previous frame 5"):
        tracker.update([], 5, 0.5)
    with pytest.raises(ValueError, match="RGB uint8"):
        tracker.update([], 6, 0.6, np.zeros((10, 10), np.uint8))
    # an invalid box is skipped, not fatal
    assert tracker.update([Detection((10.0, 10.0, 5.0, 20.0), 0.9)], 7, 0.7) == []


def test_reidentification_shows_in_mot_metrics():
    from pipeline.mot import MotBox, evaluate_mot, tracks_to_mot

    scenes = exit_and_return()
    gt = {i: [MotBox(1, (cx - r, cy - r, cx + r, cy + r)) for _, cx, cy, r in objects]
          for i, objects in enumerate(scenes)}
    results = {}
    for with_image in (True, False):
        _, outputs = run(Tracker(reid_window_s=5.0), scenes, with_image=with_image)
        hyp = {i: tracks_to_mot(tracks) for i, tracks in enumerate(outputs)}
        results[with_image] = evaluate_mot(gt, hyp)
    # 40 ground-truth boxes; 2 per visit are missed while the track is tentative
    assert results[True]["id_switches"] == 0 and results[True]["recall"] == pytest.approx(36 / 40)
    assert results[True]["idf1"] == pytest.approx(2 * 36 / (40 + 36))
    assert results[False]["id_switches"] == 1 and results[False]["idf1"] == pytest.approx(2 * 18 / (40 + 36))


def test_update_accepts_a_frame():
    from pipeline.types import Frame

    rng = np.random.default_rng(4)
    tracker = Tracker(min_hits=2)
    for i in range(3):
        img = background(rng)
        box = draw_polyp(img, "striped", 100 + 2 * i, 100, 20)
        tracks = tracker.update([Detection(box, 0.8)], Frame(index=10 + 2 * i, pts=(10 + 2 * i) / FPS, image=img))
    assert [(t.id, t.hits, t.last_frame_index) for t in tracks] == [(1, 3, 14)]
    assert tracks[0].last_seen_time == pytest.approx(14 / FPS)
    with pytest.raises(ValueError, match="time_s"):
        tracker.update([], 20)


# -- fragmentation causes found on the synthetic videos (scope swings, returns, tiny boxes) --------

def pair_scene(dx, dy, frames, kind=("striped", "striped")):
    """Two polyps side by side, drifting right; the whole view offset by (dx, dy)."""
    return [[(kind[0], 100 + dx + i, 120 + dy, 18), (kind[1], 170 + dx + i, 140 + dy, 18)] for i in frames]


def test_swing_away_and_back_keeps_both_ids_by_their_layout():
    # Both polyps leave together (the scope swings away) for 40 frames and come back 50 px
    # right and 30 px up. Without images (no appearance) only their relative layout can tell
    # which is which; lookalikes side by side must neither swap nor get new ids.
    scenes = pair_scene(0, 0, range(20)) + [[] for _ in range(40)] + pair_scene(50, -30, range(60, 80))
    ids, outputs = run(Tracker(), scenes, with_image=False)
    assert {f[0] for f in ids[2:20]} == {1} and {f[1] for f in ids[2:20]} == {2}
    assert {f[0] for f in ids[62:80]} == {1} and {f[1] for f in ids[62:80]} == {2}
    assert all(t.reidentified for t in outputs[62] if t.confirmed)
    off, _ = run(Tracker(layout_tolerance=0.0), scenes, with_image=False)
    assert {f[0] for f in off[62:80]} == {3} and {f[1] for f in off[62:80]} == {4}


def test_swing_within_view_keeps_both_ids_on_the_jump_frame():
    # The view jumps by 130 px (over three box widths, beyond the centre gate) between two
    # frames and stays there: the common displacement of both boxes carries the tracks across.
    scenes = pair_scene(0, 0, range(15)) + pair_scene(130, 40, range(15, 30))
    ids, _ = run(Tracker(), scenes, with_image=False)
    assert [f for f in ids[2:]] == [[1, 2]] * 28
    broken, _ = run(Tracker(layout_tolerance=0.0), scenes, with_image=False)
    assert broken[15] == [None, None] and {f[0] for f in broken[17:]} == {3}


def test_returning_polyp_placed_by_the_one_that_stayed():
    # Polyp 2 leaves for 40 frames while polyp 1 stays in view; the scope pans meanwhile. Polyp
    # 2 comes back where it sits relative to polyp 1: it takes back id 2 without any appearance.
    scenes = []
    for i in range(80):
        pan = 2.0 * i
        objects = [("striped", 80 + pan, 120, 18)]
        if not 20 <= i < 60:
            objects.append(("striped", 150 + pan, 150, 18))
        scenes.append(objects)
    ids, _ = run(Tracker(), scenes, with_image=False)
    assert {f[0] for f in ids[2:]} == {1}
    assert {f[1] for f in ids[62:80]} == {2}
    off, _ = run(Tracker(layout_tolerance=0.0), scenes, with_image=False)
    assert {f[1] for f in off[62:80]} == {3}


def test_tiny_jittery_box_keeps_its_id_through_the_gate_floor():
    # A far-away polyp 6 px across whose box jitters by 6 px: in its own diagonals (8.5 px)
    # the jumps fall outside the gates, so without the floor (min_gate_px) every frame starts
    # a new tentative track and the polyp is never confirmed.
    jitter = [(0, 0), (6, 0), (0, 6), (6, 6), (0, 0), (6, 3)] * 5
    boxes = [(200.0 + x, 100.0 + y, 206.0 + x, 106.0 + y) for x, y in jitter]

    def ids_for(tracker):
        out = []
        for i, box in enumerate(boxes):
            tracks = tracker.update([Detection(box, 0.9)], i, i / FPS)
            out.append(next((t.id for t in tracks if t.missed == 0 and t.confirmed), None))
        return out
    assert ids_for(Tracker()) == [None, None] + [1] * 28
    assert ids_for(Tracker(min_gate_px=0.0)) == [None] * 30


def test_appearance_learnt_only_from_whole_views():
    # A sliver at the image edge shows the border, not the polyp: it must not become the
    # appearance a later re-identification compares with.
    rng = np.random.default_rng(3)
    tracker = Tracker(min_hits=1)
    img = background(rng)
    box = draw_polyp(img, "striped", 100, 100, 20)
    tracker.update([Detection(box, 0.9)], 0, 0.0, img)
    learnt = tracker._active[0].appearance
    edge = background(rng)
    tracker.update([Detection((0.0, 90.0, 6.0, 130.0), 0.9)], 1, 1 / FPS, edge)
    assert tracker._active[0].appearance is learnt


def test_synthetic_video_with_given_boxes_reaches_idf1_bar():
    """End to end on the generator's own video (320x240, 8 s, three scope swings, polyps that
    leave and return, slivers at the view's edge) with its ground-truth boxes: the paper's
    setting. Measured: seeds 3 and 5 give IDF1 0.83 and 0.89 (mean 0.86); the tracker before
    the layout re-identification gave 0.49 and 0.50."""
    from dataclasses import replace

    from pipeline.mot import MotBox, evaluate_mot, tracks_to_mot
    from trainer.synth import SyntheticVideo, load_synth_config

    cfg = replace(load_synth_config(preset="demo"), width=320, height=240, fps=30.0, seconds=8.0)
    scores = []
    for seed in (3, 5):
        video = SyntheticVideo(cfg, seed=seed)
        assert len(video.swings) >= 2
        tracker, truth, hyp = Tracker(), {}, {}
        for f in video.frames():
            truth[f.index] = [MotBox(g.polyp_id, g.box) for g in f.polyps]
            tracks = tracker.update([Detection(g.box, 1.0) for g in f.polyps], f.index, f.time, f.image)
            hyp[f.index] = tracks_to_mot(tracks)
        scores.append(evaluate_mot(truth, hyp)["idf1"])
    assert np.mean(scores) >= 0.75 and min(scores) >= 0.7, scores
