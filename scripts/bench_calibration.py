#!/usr/bin/env python3
"""Do the size intervals tell the truth? Coverage of the shown interval on held-out polyps.

    .venv/bin/python scripts/bench_calibration.py --data DIR [DIR...] [--sizer BUNDLE] [--detector BUNDLE]
        [--boxes given detector] [--out results.json]

DATA: videos with ground truth beside them (`hagview-synth` output), rendered from seeds neither
the sizer nor its calibration saw (checked: the script refuses them). The figures in the
closing note of issue 19 come from runs 1902 and 1904 (scripts/calibrate_demo_sizer.sh used
1901 and 1903), each rendered as

    hagview-synth --out eval-1902 --videos 20 --seconds 8 --fps 10 --size 640x480 --seed 1902 \
        --config synth.yaml         # synth.yaml: polyps: {min_count: 2, max_count: 3, diameter_mm: [2.0, 20.0]} The pipeline runs on each as `hagview-annotate` would, with the
given (ground-truth) boxes and with the detector's; each confirmed track is matched to the polyp
its boxes overlap most (trainer.calibrate.collect_tracks). Per way of finding boxes:

- reliability: the share of polyps whose final interval (of the track that covers most of the
  polyp's frames) contains the true size, at 50/80/90/95% nominal; also per track;
- coverage over the track's life: the share of frames, over every frame where a size is shown,
  whose interval contains the true size;
- median final interval width (mm) at the configured level, MAE of the final estimate (mm), and
  the frames whose label contradicts itself (pipeline.smoothing.claim_contradicts).

Intervals at the levels other than the configured one: from the bundle's calibration table when
it has one; otherwise the shown interval's log half-width scaled by z(level) / z(configured),
which is how the uncalibrated interval depends on its level.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from statistics import NormalDist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pipeline.bundle import load_bundle  # noqa: E402
from pipeline.calibration import BOX_SOURCES, LEVELS, bundle_calibration  # noqa: E402
from pipeline.config import load_run_config  # noqa: E402
from pipeline.fsutil import write_json_atomic  # noqa: E402
from pipeline.runtime import default_bundle, share_cores_between_threads  # noqa: E402
from pipeline.sizeclass import triclass_name  # noqa: E402
from pipeline.smoothing import claim_contradicts, claimed_classes  # noqa: E402
from trainer.calibrate import analysis_factory, collect_tracks, find_videos, training_video_seeds, video_seeds  # noqa: E402


def halfwidth_fn(calibration, level: float, shown_level: float, given: bool):
    """(track, i) -> log half-width at `level` for the estimate shown at the track's i-th frame."""
    if calibration is not None:
        interval = calibration.interval(level, given)
        return lambda t, i: interval.halfwidth(t.frames_used[i])
    ratio = NormalDist().inv_cdf(0.5 + level / 2) / NormalDist().inv_cdf(0.5 + shown_level / 2)
    return lambda t, i: ratio * math.log(t.high_mm[i] / t.size_mm[i])


def evaluate(tracks, calibration, shown_level: float, given: bool) -> dict:
    polyps = [t for t in tracks if t.best_for_polyp]
    out = {"polyps": len(polyps), "tracks": len(tracks), "frames_shown": int(sum(len(t.size_mm) for t in tracks)),
           "reliability_polyps": {}, "reliability_tracks": {}, "coverage_over_life": {}}
    for level in LEVELS:
        h = halfwidth_fn(calibration, level, shown_level, given)
        final = lambda t: abs(math.log(t.size_mm[-1] / t.truth_mm)) <= h(t, len(t.size_mm) - 1) + 1e-12  # noqa: E731
        out["reliability_polyps"][f"{level:g}"] = float(np.mean([final(t) for t in polyps])) if polyps else None
        out["reliability_tracks"][f"{level:g}"] = float(np.mean([final(t) for t in tracks])) if tracks else None
        hits = [abs(math.log(t.size_mm[i] / t.truth_mm)) <= h(t, i) + 1e-12 for t in tracks for i in range(len(t.size_mm))]
        out["coverage_over_life"][f"{level:g}"] = float(np.mean(hits)) if hits else None
    # At the configured level the shown interval is the one evaluated: check the table agrees with it.
    h = halfwidth_fn(calibration, shown_level, shown_level, given)
    mismatch = max((abs(h(t, i) - math.log(t.high_mm[i] / t.size_mm[i])) for t in tracks for i in range(len(t.size_mm))),
                   default=0.0)
    out["shown_vs_table_max_log_diff"] = mismatch
    out["median_final_width_mm"] = float(np.median([t.high_mm[-1] - t.low_mm[-1] for t in polyps])) if polyps else None
    out["mae_final_mm"] = float(np.mean([abs(t.size_mm[-1] - t.truth_mm) for t in polyps])) if polyps else None
    out["median_abs_error_final_mm"] = float(np.median([abs(t.size_mm[-1] - t.truth_mm) for t in polyps])) \
        if polyps else None
    out["class_not_of_size"] = sum(      # the issue-13 contradiction: the class is not the number's
        triclass_name(round(t.size_mm[i], 1)) not in claimed_classes(t.claim[i])
        for t in tracks for i in range(len(t.size_mm)))
    out["contradicting_labels"] = sum(
        claim_contradicts(t.size_mm[i], t.low_mm[i], t.high_mm[i], t.claim[i]) is not None
        for t in tracks for i in range(len(t.size_mm)))
    return out


def print_table(results: dict) -> None:
    print(f"sizer: {results['sizer']}")
    for source, r in results["boxes"].items():
        print(f"{source} boxes: {r['interval']}")
    header = "| boxes | polyps (tracks) | " + " | ".join(f"{level:.0%} polyps / tracks / life" for level in LEVELS) + \
        " | median width mm | MAE mm |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for source, r in results["boxes"].items():
        cells = [f"{r['reliability_polyps'][f'{lv:g}']:.2f} / {r['reliability_tracks'][f'{lv:g}']:.2f} / "
                 f"{r['coverage_over_life'][f'{lv:g}']:.2f}" for lv in LEVELS]
        print(f"| {source} | {r['polyps']} ({r['tracks']}) | " + " | ".join(cells) +
              f" | {r['median_final_width_mm']:.2f} | {r['mae_final_mm']:.2f} |")
    for source, r in results["boxes"].items():
        print(f"{source}: of {r['frames_shown']} shown labels, {r['class_not_of_size']} name a class that is not the "
              f"size's, {r['contradicting_labels']} a class the interval leaves out; "
              f"shown vs table max |log diff| {r['shown_vs_table_max_log_diff']:.2g}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", required=True, help="directories of <name>.mp4 + <name>.gt.json")
    p.add_argument("--sizer", help="sizer bundle (default: the committed demo bundle)")
    p.add_argument("--detector", help="detector bundle (default: the committed demo bundle)")
    p.add_argument("--boxes", nargs="+", choices=BOX_SOURCES, default=list(BOX_SOURCES))
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run-config key")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    config = load_run_config(None, args.set)
    share_cores_between_threads()
    sizer = args.sizer or default_bundle("sizer")
    detector = args.detector or default_bundle("detector")
    bundle = load_bundle(sizer)
    videos = find_videos(args.data)
    seeds = set(video_seeds(videos))
    calibration = bundle_calibration(bundle)
    seen = training_video_seeds(bundle) | set(calibration.data.get("video_seeds", []) if calibration else [])
    if seen & seeds:
        print(f"bench_calibration: {len(seen & seeds)} video(s) were used in training or calibration", file=sys.stderr)
        return 2
    level = config.smooth.confidence_level
    results = {"sizer": str(sizer), "detector": str(detector), "videos": len(videos),
               "calibrated": calibration is not None, "level": level, "boxes": {}}
    for source in args.boxes:
        make = analysis_factory(config, sizer, source, detector, args.backend)
        print(f"[bench_calibration] {source} boxes on {len(videos)} videos", file=sys.stderr)
        tracks = collect_tracks(videos, make, config)
        results["boxes"][source] = evaluate(tracks, calibration, level, source == "given")
        results["boxes"][source]["interval"] = getattr(make(videos[0][1]), "interval_note", "") or "(before)"
    print_table(results)
    if args.out:
        write_json_atomic(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
