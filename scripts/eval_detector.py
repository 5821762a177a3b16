#!/usr/bin/env python
"""Detector accuracy on real polyp data sets, per data set and per PolypGen centre, through the
serving path: `pipeline.detecting.PolypDetector` on the bundle (the FOV mask estimated from the
frame as the pipeline does for a new video, letterbox, the engine, the bundle's decoding), then
the operating threshold of the pipeline's detect stage.

Per data set and per centre (`FrameRecord.source`, e.g. `polypgen/C3`): AP50 (detections down to
--score-floor), recall, precision and false boxes per frame at the operating threshold (the
bundle's `outputs.decoding.score_threshold` unless --score-threshold), matched at IoU 0.5
(`trainer.detection_metrics`). On frames without polyps: false boxes per frame on real negatives
(--negatives) and on polyp-free synthetic frames rendered here with trainer.synth
(--synthetic-negatives N). JSON under --out (bench-results/); --overlays DIR writes pictures of
hits, misses and false boxes for a person to look at (at most --overlay-limit per data set and
kind).

  .venv/bin/python scripts/eval_detector.py --data kvasir_seg:/work/shared/data/kvasir-seg \\
      --data polypgen:/work/shared/data/polypgen --negatives /work/shared/data/negatives
  ... --bundle runs/x/export/detector --overlays /tmp/overlays

Cross-dataset protocol (EndoCV's generalisation check; train with `data.sources`, see
/work/notes or README "Real data"):
- train without PolypGen, then `--data polypgen:PATH` gives every centre held out;
- train without Kvasir-SEG, then `--data kvasir_seg:PATH`;
- leave one centre out: train with `options: {centres: [all but Ck]}`, then
  `--data polypgen:PATH --centres Ck`.
A data set the bundle's provenance lists as training data is flagged `"trained_on": true` and
warned about: its figures are not held-out figures.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.bundle import load_bundle  # noqa: E402
from pipeline.cli_util import run_cli  # noqa: E402
from pipeline.detecting import PolypDetector  # noqa: E402
from pipeline.errors import ConfigError, DataError  # noqa: E402
from pipeline.fsutil import write_bytes_atomic, write_json_atomic  # noqa: E402
from pipeline.progress import Progress  # noqa: E402
from trainer.data import READERS, read_dataset  # noqa: E402
from trainer.data.detection import source_key  # noqa: E402
from trainer.data.images import read_image_rgb  # noqa: E402
from trainer.data.records import FrameRecord  # noqa: E402
from trainer.detection_metrics import FrameDetections, detection_metrics, match_frame  # noqa: E402

log = logging.getLogger("eval_detector")
DEFAULT_BUNDLE = ROOT / "pipeline" / "assets" / "bundles" / "detector"
IOU = 0.5
SCORE_FLOOR = 0.01
SYNTH_SIZE = (640, 480)
SYNTH_FRAMES_PER_VIDEO = 25          # evenly spaced through each 10-second polyp-free video
METRIC_KEYS = ("frames", "gt_boxes", "ap50", "recall", "precision")


@dataclass
class Evaluated:
    """One frame: where it came from, its ground truth and the detector's boxes (frame pixels)."""
    group: str                  # data set label (polyp data) or negatives label
    source: str                 # FrameRecord.source (centre) or the synthetic video
    name: str
    image_path: str | None
    gt: np.ndarray              # (K,4)
    gt_ids: list[str]
    boxes: np.ndarray           # (M,4)
    scores: np.ndarray          # (M,)
    difficult: np.ndarray | None = None   # (K,) VOC's flag (video sets); None: none is


def parse_data(spec: str) -> tuple[str, Path]:
    kind, sep, path = spec.partition(":")
    if not sep or not path:
        raise ConfigError(f"--data {spec!r}: expected KIND:PATH, e.g. polypgen:/data/polypgen")
    if kind not in READERS or kind in ("negatives", "synthetic", "manifest"):
        raise ConfigError(f"--data {spec!r}: kind must be one of kvasir_seg, polypgen, image_folder, "
                          f"realcolon, sun")
    return kind, Path(path)


def detect(detector: PolypDetector, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    found = detector.detect(image)          # FOV estimated from the frame, as for a new video
    boxes = np.array([d.box for d in found], dtype=np.float64).reshape(-1, 4)
    return boxes, np.array([d.score for d in found], dtype=np.float64)


def evaluate_records(detector: PolypDetector, frames: list[FrameRecord], group: str,
                     progress: bool) -> tuple[list[Evaluated], int]:
    out, unreadable = [], 0
    with Progress(len(frames), "frames", f"detecting {group}", enabled=progress) as bar:
        for frame in frames:
            bar.update(1)
            image = read_image_rgb(frame.image_path)
            if image is None:
                log.warning("skipped %s: unreadable image", frame.image_path)
                unreadable += 1
                continue
            boxes, scores = detect(detector, image)
            gt = np.array([b.box for b in frame.boxes], dtype=np.float64).reshape(-1, 4)
            out.append(Evaluated(group, frame.source or group, Path(frame.image_path).stem, frame.image_path,
                                 gt, [b.polyp_id for b in frame.boxes], boxes, scores,
                                 np.array([b.difficult for b in frame.boxes], dtype=bool)))
    return out, unreadable


def synthetic_negatives(count: int, seed: int):
    """(video name, frame index, RGB image) of `count` polyp-free synthetic frames."""
    from trainer.synth import SynthConfig, SyntheticVideo
    from trainer.synth.config import PolypConfig

    cfg = SynthConfig(width=SYNTH_SIZE[0], height=SYNTH_SIZE[1], polyps=PolypConfig(min_count=0, max_count=0))
    videos = -(-count // SYNTH_FRAMES_PER_VIDEO)
    made = 0
    for v in range(videos):
        video = SyntheticVideo(cfg, seed=seed + v, name=f"negative-{seed + v}")
        take = min(SYNTH_FRAMES_PER_VIDEO, count - made)
        for index in np.linspace(0, video.num_frames - 1, take).round().astype(int):
            frame = video.render(int(index))
            if frame.polyps:                # cannot happen with no polyps placed; never count one
                raise DataError(f"synthetic negative {video.name} frame {index} shows a polyp")
            yield video.name, int(index), frame.image
            made += 1


def metrics(frames: list[Evaluated], threshold: float) -> dict:
    det = [FrameDetections(f.group, i, f.gt, f.gt_ids, f.boxes, f.scores, gt_difficult=f.difficult)
           for i, f in enumerate(frames)]
    m = detection_metrics(det, 30.0, iou_threshold=IOU, score_threshold=threshold)
    out = {k: m[k] for k in METRIC_KEYS}
    out["false_boxes_per_frame"] = m["fp_per_100_frames"] / 100.0
    return out


def negative_metrics(frames: list[Evaluated], threshold: float) -> dict:
    false = np.array([int((f.scores >= threshold).sum()) for f in frames])
    return {"frames": len(frames), "false_boxes": int(false.sum()),
            "false_boxes_per_frame": float(false.mean()) if len(frames) else float("nan"),
            "frames_with_false_boxes": int((false > 0).sum())}


def by_key(frames: list[Evaluated], key) -> dict[str, list[Evaluated]]:
    out: dict[str, list[Evaluated]] = {}
    for f in frames:
        out.setdefault(key(f), []).append(f)
    return out


def frame_status(frame: Evaluated, threshold: float) -> tuple[str, np.ndarray, np.ndarray]:
    """("miss" | "false" | "hit" | "clean", per-gt found flags, per-detection true flags) at the
    threshold: a box missed, else a false box, else all found ("clean": no polyp, no box)."""
    fd = FrameDetections(frame.group, 0, frame.gt, frame.gt_ids, frame.boxes, frame.scores,
                         gt_difficult=frame.difficult)
    match_frame(fd, IOU)
    at_op = frame.scores >= threshold
    found = np.zeros(len(frame.gt), dtype=bool)
    found[fd.matched_gt[(fd.matched_gt >= 0) & at_op]] = True
    true = (fd.matched_gt >= 0) | fd.ignored          # a box on a difficult polyp is not false
    if np.any(~found & ~fd.gt_difficult):
        return "miss", found, true
    if np.any(at_op & ~true):
        return "false", found, true
    return ("hit" if len(frame.gt) else "clean"), found, true


def draw(image_rgb: np.ndarray, frame: Evaluated, found, true, threshold: float) -> np.ndarray:
    """Ground truth green (found) or red (missed); detections at the threshold cyan (true) or
    magenta (false), with their scores."""
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    thick = max(2, round(max(out.shape[:2]) / 300))
    for box, ok in zip(frame.gt, found):
        p = tuple(int(round(v)) for v in box)
        cv2.rectangle(out, p[:2], p[2:], (0, 200, 0) if ok else (0, 0, 255), thick + 1)
    for box, score, ok in zip(frame.boxes, frame.scores, true):
        if score < threshold:
            continue
        p = tuple(int(round(v)) for v in box)
        colour = (255, 255, 0) if ok else (255, 0, 255)
        cv2.rectangle(out, p[:2], p[2:], colour, thick)
        cv2.putText(out, f"{score:.2f}", (p[0], max(p[1] - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, colour, max(1, thick // 2), cv2.LINE_AA)
    return out


def write_overlays(folder: Path, frames: list[Evaluated], threshold: float, limit: int,
                   images: dict[str, np.ndarray] | None = None) -> dict[str, int]:
    """At most `limit` pictures per (data set or centre, status); returns how many were written."""
    written: dict[str, int] = {}
    names: set[str] = set()
    for frame in frames:
        status, found, true = frame_status(frame, threshold)
        key = f"{frame.source}/{status}"
        if written.get(key, 0) >= limit:
            continue
        name, n = frame.name, 1
        while f"{key}/{name}" in names:     # same file name in two folders of one source
            n += 1
            name = f"{frame.name}-{n}"
        names.add(f"{key}/{name}")
        if frame.image_path is None:
            image = (images or {}).get(frame.name)
        else:
            image = read_image_rgb(frame.image_path)
        if image is None:
            continue
        ok, data = cv2.imencode(".jpg", draw(image, frame, found, true, threshold), [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            write_bytes_atomic(folder / key / f"{name}.jpg", data.tobytes())
            written[key] = written.get(key, 0) + 1
    return written


def trained_on(bundle, label: str, centre: str | None = None) -> bool:
    """Whether the bundle's provenance lists `label` (and, for a PolypGen centre such as
    `polypgen/C3`, that centre: a leave-one-centre-out model lists the centres it used)."""
    for d in bundle.provenance.get("datasets") or []:
        if not isinstance(d, dict) or d.get("name") != label:
            continue
        centres = (d.get("options") or {}).get("centres")
        if centre is None or centres is None:
            return True
        listed = centres.split(",") if isinstance(centres, str) else list(centres)
        if centre.rsplit("/", 1)[-1].upper() in {str(c).strip().upper() for c in listed}:
            return True
    return False


def evenly(items: list, limit: int | None) -> list:
    if limit is None or limit >= len(items):
        return items
    picks = np.floor((np.arange(limit) + 0.5) * len(items) / limit).astype(int)
    return [items[i] for i in picks]


def row(name: str, m: dict) -> str:
    def f(v):
        return "    -" if v != v else f"{v:5.3f}"
    return (f"{name:<26}{int(m['frames']):>7}{int(m['gt_boxes']):>7}  {f(m['ap50'])}  {f(m['recall'])}  "
            f"{f(m['precision'])}  {f(m['false_boxes_per_frame'])}")


@run_cli("eval_detector")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", default=[], metavar="KIND:PATH",
                    help="a polyp data set (kvasir_seg, polypgen, image_folder, ...); repeatable")
    ap.add_argument("--negatives", action="append", default=[], metavar="PATH",
                    help="a folder tree of frames without polyps; repeatable")
    ap.add_argument("--synthetic-negatives", type=int, default=100, metavar="N",
                    help="polyp-free synthetic frames rendered here (0: none; default 100)")
    ap.add_argument("--centres", help="PolypGen centres to evaluate, e.g. C3 or C1,C2 (default all)")
    ap.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="detector bundle (default: the committed one)")
    ap.add_argument("--score-threshold", type=float, help="operating threshold (default: the bundle's)")
    ap.add_argument("--score-floor", type=float, default=SCORE_FLOOR, help="lowest score kept for AP50")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--limit", type=int, help="at most N frames per data set (evenly spaced; quick runs)")
    ap.add_argument("--overlays", help="write pictures of hits, misses and false boxes here")
    ap.add_argument("--overlay-limit", type=int, default=40, help="pictures per data set/centre and kind")
    ap.add_argument("--seed", type=int, default=9000, help="first seed of the synthetic negatives")
    ap.add_argument("--out", default=str(ROOT / "bench-results"), help="folder for the JSON results")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if not args.data and not args.negatives and args.synthetic_negatives <= 0:
        raise ConfigError("nothing to evaluate: give --data, --negatives or --synthetic-negatives")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be 1 or more, got {args.limit}")
    progress = not args.no_progress

    bundle = load_bundle(args.bundle)
    decoding = bundle.outputs.get("decoding", {})
    threshold = args.score_threshold if args.score_threshold is not None else float(decoding.get("score_threshold", 0.3))
    if not 0.0 < args.score_floor <= threshold < 1.0:
        raise ConfigError(f"need 0 < --score-floor <= operating threshold < 1, got {args.score_floor} and {threshold}")
    detector = PolypDetector(bundle.path, score_threshold=args.score_floor,
                             max_detections=int(decoding.get("max_detections", 10)),
                             backend=args.backend, threads=args.threads)

    report: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["scripts/eval_detector.py", *(argv if argv is not None else sys.argv[1:])]),
        "bundle": str(bundle.path), "bundle_hash": bundle.content_hash,
        "bundle_training_data": bundle.provenance.get("datasets"),
        "engine": detector.engine.name, "score_threshold": threshold, "score_floor": args.score_floor,
        "iou_threshold": IOU,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version()},
        "datasets": {}, "negatives": {},
    }
    polyp_frames: list[Evaluated] = []
    for spec in args.data:
        kind, path = parse_data(spec)
        options = {"centres": args.centres} if kind == "polypgen" and args.centres else {}
        index = read_dataset(kind, root=path, **options)
        frames = evenly(index.frames, args.limit)
        label = source_key(frames[0]) if frames and frames[0].source else kind
        evaluated, unreadable = evaluate_records(detector, frames, label, progress)
        polyp_frames += evaluated
        seen = sorted({f.source for f in frames if f.source})
        used = [c for c in (seen or [None]) if trained_on(bundle, label, c if c != label else None)]
        report["datasets"][label] = {"kind": kind, "root": str(path), "skipped_by_reader": len(index.skipped),
                                     "reader_warnings": len(index.warnings), "unreadable": unreadable,
                                     "trained_on": bool(used)}
        if used:
            log.warning("%s is listed as training data of %s: these are not held-out figures",
                        ", ".join(c or label for c in used), bundle.path)

    negative_frames: list[Evaluated] = []
    for path in args.negatives:
        index = read_dataset("negatives", root=path)
        evaluated, _ = evaluate_records(detector, evenly(index.frames, args.limit), "negatives", progress)
        negative_frames += evaluated
    synth_images: dict[str, np.ndarray] = {}
    if args.synthetic_negatives > 0:
        with Progress(args.synthetic_negatives, "frames", "synthetic negatives", enabled=progress) as bar:
            for video, index, image in synthetic_negatives(args.synthetic_negatives, args.seed):
                bar.update(1)
                boxes, scores = detect(detector, image)
                name = f"{video}_{index:04d}"
                negative_frames.append(Evaluated("synthetic", f"synthetic/{video}", name, None,
                                                 np.zeros((0, 4)), [], boxes, scores))
                if args.overlays and (scores >= threshold).any() and len(synth_images) < args.overlay_limit:
                    synth_images[name] = image

    print(f"\n{bundle.path} ({detector.engine.name}), operating threshold {threshold:g}, IoU {IOU}")
    header = f"{'data set / centre':<26}{'frames':>7}{'boxes':>7}  {'AP50':>5}  {'recall':>5}  {'prec.':>5}  false/frame"
    print(header)
    print("-" * len(header))
    for label, frames in by_key(polyp_frames, lambda f: f.group).items():
        entry = report["datasets"][label]
        entry.update(metrics(frames, threshold))
        print(row(label, entry))
        centres = by_key(frames, lambda f: f.source)
        if len(centres) > 1 or next(iter(centres)) != label:
            entry["centres"] = {}
            for centre, part in sorted(centres.items()):
                entry["centres"][centre] = {**metrics(part, threshold),
                                            "trained_on": trained_on(bundle, label, centre)}
                print(row(f"  {centre}", entry["centres"][centre]))
    for label, frames in by_key(negative_frames, lambda f: f.group).items():
        entry = negative_metrics(frames, threshold)
        entry["parts"] = {k: negative_metrics(v, threshold)
                          for k, v in sorted(by_key(frames, lambda f: f.source).items())}
        report["negatives"][label] = entry
        print(f"{'negatives: ' + label:<26}{entry['frames']:>7}      -      -      -      -  "
              f"{entry['false_boxes_per_frame']:.3f}  ({entry['frames_with_false_boxes']} frames with a false box)")
    if args.overlays:
        written = write_overlays(Path(args.overlays), polyp_frames + negative_frames, threshold,
                                 args.overlay_limit, synth_images)
        report["overlays"] = {"dir": str(args.overlays), "written": written}
        print(f"overlays: {sum(written.values())} pictures under {args.overlays}")
    path = Path(args.out) / f"eval_detector-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    write_json_atomic(path, report)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
