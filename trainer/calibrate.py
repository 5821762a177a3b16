"""`python -m trainer.calibrate SIZER_BUNDLE DATA_DIR... [--detector BUNDLE]`: calibrate a sizer
bundle's size interval on held-out videos and store it in the bundle's bundle.json.

DATA_DIR holds videos with their ground truth beside them (`<name>.mp4` + `<name>.gt.json`, as
`hagview-synth` writes them). The pipeline runs on every video as `hagview-annotate` would, once
with the given (ground-truth) boxes and once with the detector's boxes; every confirmed track
is matched to the polyp its boxes overlap most (IoU >= 0.5, majority of frames), and its
estimate's log-ratio to that polyp's true size, at every frame where a size is shown, goes into
the tables of pipeline.calibration. Videos the bundle was trained on are refused (their seeds
are derived from the bundle's provenance for synthetic training data).

`hagview-export --calibrate DATA` runs the same calibration on a bundle as it is exported.
Re-running it is the one step after a new sizer or detector: the detector table records which
detector bundle it was measured with, and the pipeline names what the interval is calibrated on.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pipeline.bundle import git_commit, load_bundle, utc_now_iso
from pipeline.calibration import (BOX_SOURCES, FRAME_EDGES, LEVELS, MIN_TRACKS, SizeCalibration, attach_calibration,
                                  fit_halfwidths)
from pipeline.cli_util import run_cli
from pipeline.config import load_run_config, section_kwargs
from pipeline.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROG = "python -m trainer.calibrate"
MATCH_IOU = 0.5


@dataclass
class TrackLog:
    """One confirmed track of one video: what was shown at every frame with a size."""
    video: str
    track_id: int
    votes: dict[int, int] = field(default_factory=dict)      # polyp id -> frames matched
    frames_used: list[int] = field(default_factory=list)
    size_mm: list[float] = field(default_factory=list)
    low_mm: list[float] = field(default_factory=list)
    high_mm: list[float] = field(default_factory=list)
    claim: list[str] = field(default_factory=list)
    polyp: int | None = None
    truth_mm: float | None = None
    best_for_polyp: bool = False       # the track that covers most of its polyp's frames

    def log_errors(self) -> np.ndarray:
        return np.abs(np.log(np.asarray(self.size_mm) / self.truth_mm))


def find_videos(directories: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """(video, ground truth) pairs in the directories, sorted; DataError when there are none."""
    pairs = []
    for directory in map(Path, directories):
        if not directory.is_dir():
            raise DataError(f"{directory}: not a directory")
        for video in sorted(directory.glob("*.mp4")):
            gt = video.with_name(video.name[:-len(".mp4")] + ".gt.json")
            if gt.is_file():
                pairs.append((video, gt))
    if not pairs:
        raise DataError(f"{', '.join(map(str, directories))}: no <name>.mp4 with a <name>.gt.json beside it")
    return pairs


def training_video_seeds(bundle) -> set[int]:
    """Seeds of the synthetic videos the bundle was trained on (empty when it does not say)."""
    data = (bundle.provenance.get("config") or {}).get("data") or {}
    synth = data.get("synthetic") or {}
    if data.get("kind") != "synthetic" or synth.get("seed") is None or not synth.get("videos"):
        return set()
    from trainer.synth.writer import video_seed
    return {video_seed(int(synth["seed"]), i) for i in range(int(synth["videos"]))}


def video_seeds(videos: Sequence[tuple[Path, Path]]) -> list[int]:
    """The generator seeds recorded in the ground-truth files (synthetic videos only)."""
    seeds = []
    for _, gt in videos:
        seed = json.loads(gt.read_text(encoding="utf-8")).get("seed")
        if seed is not None:
            seeds.append(int(seed))
    return seeds


def collect_tracks(videos: Sequence[tuple[Path, Path]], make_analysis: Callable[[Path], Any],
                   config) -> list[TrackLog]:
    """Run the pipeline on each video and log every confirmed track matched to a true polyp."""
    from pipeline.boxes import box_iou
    from pipeline.mot import read_ground_truth_json
    from pipeline.runtime import run_offline
    from pipeline.sources import FileSource

    matched_tracks: list[TrackLog] = []
    for video, gt_path in videos:
        gt = read_ground_truth_json(gt_path)
        tracks: dict[int, TrackLog] = {}

        def on_result(result, gt=gt, tracks=tracks, name=video.stem):
            truth = gt.frames.get(result.frame.index, [])
            for r in result.tracks:
                if not r.confirmed:
                    continue
                log_ = tracks.setdefault(r.track_id, TrackLog(name, r.track_id))
                if r.missed == 0 and truth:
                    ious = box_iou([g.box for g in truth], [r.box])[:, 0]
                    if ious.max() >= MATCH_IOU:
                        pid = truth[int(ious.argmax())].polyp_id
                        log_.votes[pid] = log_.votes.get(pid, 0) + 1
                est = r.estimate
                if est is not None:
                    log_.frames_used.append(est.frames_used)
                    log_.size_mm.append(est.size_mm)
                    log_.low_mm.append(est.low_mm)
                    log_.high_mm.append(est.high_mm)
                    log_.claim.append(est.size_class)

        run_offline(FileSource(video), make_analysis(gt_path), on_result,
                    queue_capacity=config.runtime.offline_queue_capacity)
        for polyp in sorted(gt.diameters_mm):
            covering = [t for t in tracks.values() if t.votes.get(polyp) and t.size_mm]
            if covering:
                max(covering, key=lambda t: t.votes[polyp]).best_for_polyp = True
        for t in tracks.values():
            if t.votes and t.size_mm:
                t.polyp = max(t.votes, key=t.votes.get)
                t.truth_mm = gt.diameters_mm[t.polyp]
                t.best_for_polyp = t.best_for_polyp and t.votes[t.polyp] == max(t.votes.values())
                matched_tracks.append(t)
    return matched_tracks


def analysis_factory(config, sizer: str | Path, source: str, detector: str | Path | None, backend: str):
    """`make_analysis(gt_path)` for one box source; models load once."""
    from pipeline.runtime import GROUND_TRUTH_BOXES, Analysis, BoxProvider, build_analysis

    if source == "given":
        shared, _ = build_analysis(config, sizer=sizer, boxes=GROUND_TRUTH_BOXES, backend=backend, offline=True)
        return lambda gt_path: Analysis(config, boxes=BoxProvider(gt_path), sizer=shared.sizer)
    if detector is None:
        raise ConfigError("detector boxes: no detector bundle (pass --detector or drop 'detector' from --boxes)")
    analysis, _ = build_analysis(config, sizer=sizer, detector=detector, backend=backend, offline=True)
    return lambda gt_path: analysis


def calibration_from_tracks(by_source: dict[str, list[TrackLog]], *, data: dict[str, Any], smoother: dict,
                            detector: dict | None, levels=LEVELS, edges=FRAME_EDGES,
                            min_tracks: int = MIN_TRACKS, command: str = "") -> SizeCalibration:
    tables = {}
    for source, tracks in by_source.items():
        halfwidths, counts = fit_halfwidths([(t.frames_used, t.log_errors()) for t in tracks],
                                            levels=levels, edges=edges, min_tracks=min_tracks)
        tables[source] = {"halfwidth_log": halfwidths.tolist(), "tracks": counts.tolist(),
                          "polyps": len({(t.video, t.polyp) for t in tracks}),
                          "detector": detector if source == "detector" else None}
    return SizeCalibration(levels=tuple(levels), edges=tuple(edges), tables=tables, data=data, smoother=smoother,
                           created={"date": utc_now_iso(), "git_commit": git_commit(), "command": command})


def _shown_path(path) -> str:
    """Relative to the working directory when inside it (bundle.json is committed)."""
    path = Path(os.path.abspath(path))
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description="Calibrate a sizer bundle's size interval on held-out "
                                "videos with ground truth; writes the calibration into its bundle.json.")
    p.add_argument("sizer", help="sizer bundle directory (its bundle.json is updated)")
    p.add_argument("data", nargs="+", help="directories of <name>.mp4 + <name>.gt.json (e.g. from hagview-synth)")
    p.add_argument("--detector", help="detector bundle for the detector-box table (default: the committed demo one)")
    p.add_argument("--boxes", nargs="+", choices=BOX_SOURCES, default=list(BOX_SOURCES),
                   help="which tables to make (default: both)")
    p.add_argument("--backend", default="onnxruntime", help="inference backend (default onnxruntime)")
    p.add_argument("--config", help="run config YAML: the smoother settings the pipeline will use")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run-config key")
    p.add_argument("--description", help="what the data is, for the viewer and reports (default: from the data)")
    p.add_argument("--dry-run", action="store_true", help="print the tables, do not write the bundle")
    return p.parse_args(argv)


def calibrate_bundle(sizer: str | Path, data_dirs: Sequence[str | Path], *, config, detector: str | Path | None = None,
                     boxes: Sequence[str] = BOX_SOURCES, backend: str = "onnxruntime", description: str | None = None,
                     command: str = "", write: bool = True, prog: str = PROG) -> SizeCalibration:
    """Calibrate the sizer bundle in `sizer` on the videos in `data_dirs` and (with `write`) store
    the block in its bundle.json, atomically. Videos rendered from the bundle's training seeds
    are refused (DataError) before any pipeline runs. `detector`: the bundle for the
    detector-box table (default: the committed demo detector). Used by this command and by
    `hagview-export --calibrate`."""
    from pipeline.mot import read_ground_truth_json
    from pipeline.runtime import default_bundle

    bundle = load_bundle(sizer)
    if bundle.kind != "sizer":
        raise ConfigError(f"{bundle.path}: a {bundle.kind} bundle; only sizer bundles are calibrated")
    videos = find_videos(data_dirs)
    truths = [read_ground_truth_json(gt) for _, gt in videos]
    seeds = video_seeds(videos)
    used = training_video_seeds(bundle) & set(seeds)
    if used:
        raise DataError(f"{len(used)} calibration video(s) were rendered from seeds the bundle was trained on "
                        f"(e.g. {sorted(used)[0]}): calibrate on held-out videos")
    synthetic = all(t.synthetic for t in truths)
    detector = detector or (default_bundle("detector") if "detector" in boxes else None)
    detector_info = None
    if "detector" in boxes and detector is not None:
        det = load_bundle(detector)
        detector_info = {"path": _shown_path(detector), "content_hash": det.content_hash,
                         "synthetic_training_data": det.synthetic_training_data}
    by_source = {}
    for source in boxes:
        make = analysis_factory(config, sizer, source, detector, backend)
        print(f"{prog}: {source} boxes: running the pipeline on {len(videos)} videos", file=sys.stderr)
        by_source[source] = collect_tracks(videos, make, config)
    description = description or (f"synthetic data ({len(videos)} hagview-synth videos)" if synthetic
                                  else f"{len(videos)} videos in {', '.join(map(str, data_dirs))}")
    data = {"synthetic": synthetic, "description": description, "directories": [_shown_path(d) for d in data_dirs],
            "videos": len(videos), "video_seeds": sorted(seeds),
            "polyps": len({(t.video, t.polyp) for tracks in by_source.values() for t in tracks})}
    calibration = calibration_from_tracks(by_source, data=data, smoother=section_kwargs(config.smooth),
                                          detector=detector_info, command=command)
    for source, table in calibration.tables.items():
        print(f"{source} boxes: {table['polyps']} polyps; half-width (x size) by sized frames:", file=sys.stderr)
        for edge, row, count in zip(calibration.edges, table["halfwidth_log"], table["tracks"]):
            print(f"  n>={edge:<4d} tracks {count:<4d} " + "  ".join(
                f"{level:.0%}: x{math.exp(h):.2f}" for level, h in zip(calibration.levels, row)), file=sys.stderr)
    if write:
        attach_calibration(sizer, calibration)
    return calibration


@run_cli(PROG)
def main(argv: list[str] | None = None) -> int:
    from pipeline.runtime import share_cores_between_threads

    args = parse_args(argv)
    config = load_run_config(args.config, args.set)
    share_cores_between_threads()
    calibrate_bundle(args.sizer, args.data, config=config, detector=args.detector, boxes=args.boxes,
                     backend=args.backend, description=args.description, write=not args.dry_run,
                     command=" ".join([PROG, *(argv if argv is not None else sys.argv[1:])]))
    if not args.dry_run:
        print(f"{PROG}: calibration written to {Path(args.sizer) / 'bundle.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
