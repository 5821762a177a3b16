"""Writing synthetic videos to disk in the REAL-Colon layout plus MP4 and ground-truth files.

Per run (see docs/design.md):
  lesion_info.csv, video_info.csv
  <video>_frames/<video>_<i>.jpg, <video>_annotations/<video>_<i>.xml (Pascal VOC)
  <video>.mp4 (H.264), <video>.gt.json, <video>.gt.txt (MOTChallenge)
  with depth=True also <video>_depth/<video>_<i>.png: the renderer's exact depth (ray distance)
  as 16-bit PNG in 1/16 mm (trainer.data.depth), for the sizer's depth stream
The whole run is built in a temporary directory beside the output and renamed into place when
complete, so an interrupted run leaves nothing under the final name.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

from pipeline.errors import ConfigError
from pipeline.fsutil import atomic_dir
from pipeline.progress import Progress
from pipeline.videowriter import H264Writer
from ..data.depth import write_depth_png
from .config import SynthConfig, config_to_dict
from .difficulty import is_difficult_box
from .video import SyntheticVideo

LESION_COLUMNS = ["unique_object_id", "unique_video_name", "size [mm]", "site",
                  "histology_extended", "histology_class"]
VIDEO_COLUMNS = ["unique_video_name", "age", "sex", "endoscope_brand", "fps", "num_frames",
                 "num_lesions", "bbps"]
SITES = ("cecum", "ascending", "transverse", "descending", "sigmoid", "rectum")


def video_name(index: int, study: int = 1) -> str:
    """REAL-Colon style `SSS-VVV` for the index-th video (0-based) of a study."""
    return f"{study:03d}-{index + 1:03d}"


def video_seed(seed: int, index: int) -> int:
    """Each video's seed, derived from the run seed so videos differ but runs repeat."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def unique_id(video: str, polyp_id: int) -> str:
    return f"{video}_{polyp_id}"


def voc_xml(video: str, index: int, width: int, height: int,
            objects: list[tuple[int, tuple, int, bool]]) -> str:
    """One frame's Pascal VOC annotation; objects are (polyp id, float box xyxy, box id, difficult)."""
    filename = f"{video}_{index}.jpg"
    parts = ["<annotation>",
             f"  <folder>{escape(video)}_frames</folder>",
             f"  <filename>{escape(filename)}</filename>",
             "  <source><database>hagview synthetic colonoscopy</database></source>",
             f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
             "  <segmented>0</segmented>"]
    for polyp_id, box, box_id, difficult in objects:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        truncated = int(x1 <= 0 or y1 <= 0 or x2 >= width or y2 >= height)
        parts += ["  <object>",
                  "    <name>lesion</name>",
                  f"    <unique_id>{escape(unique_id(video, polyp_id))}</unique_id>",
                  f"    <box_id>{box_id}</box_id>",
                  "    <pose>Unspecified</pose>",
                  f"    <truncated>{truncated}</truncated>",
                  f"    <difficult>{int(difficult)}</difficult>",
                  f"    <bndbox><xmin>{x1}</xmin><xmax>{x2}</xmax><ymin>{y1}</ymin><ymax>{y2}</ymax></bndbox>",
                  "  </object>"]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def _csv_text(columns: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def write_video(video: SyntheticVideo, out_dir: Path, progress: Progress | None = None,
                encoder_threads: int | None = None, depth: bool = False) -> dict:
    """Render `video` into `out_dir` (which must be a directory being built, not a final one).

    Returns its video_info row values and lesion rows.
    """
    name = video.name
    width, height = video.size
    frames_dir = out_dir / f"{name}_frames"
    notes_dir = out_dir / f"{name}_annotations"
    frames_dir.mkdir(parents=True, exist_ok=True)
    notes_dir.mkdir(parents=True, exist_ok=True)
    depth_dir = out_dir / f"{name}_depth"
    if depth:
        depth_dir.mkdir(parents=True, exist_ok=True)
    quality = [int(cv2.IMWRITE_JPEG_QUALITY), int(video.cfg.jpeg_quality)]
    gt_frames = []
    mot_rows = []
    box_id = 0
    with H264Writer(out_dir / f"{name}.mp4", video.fps, video.size, crf=video.cfg.mp4_crf,
                    threads=encoder_threads) as mp4:
        for frame in video.frames():
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), quality)
            if not ok:
                raise ConfigError(f"{name}: JPEG encoding failed for frame {frame.index}")
            (frames_dir / f"{name}_{frame.index}.jpg").write_bytes(jpeg.tobytes())
            if depth:
                write_depth_png(depth_dir / f"{name}_{frame.index}.png", frame.depth)
            objects = []
            difficult = [is_difficult_box(gt.box, gt.visible_fraction, width) for gt in frame.polyps]
            for gt, hard in zip(frame.polyps, difficult):
                box_id += 1
                objects.append((gt.polyp_id, gt.box, box_id, hard))
                x1, y1, x2, y2 = gt.box
                mot_rows.append(f"{frame.index + 1},{gt.polyp_id},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},1,-1,-1,-1")
            (notes_dir / f"{name}_{frame.index}.xml").write_text(
                voc_xml(name, frame.index, width, height, objects), encoding="utf-8")
            mp4.write(frame.image, pts_seconds=frame.time)
            gt_frames.append({"index": frame.index, "time": round(frame.time, 6),
                              "polyps": [{"id": gt.polyp_id, "box": [round(v, 2) for v in gt.box],
                                          "diameter_mm": gt.diameter_mm, "distance_mm": gt.distance_mm,
                                          "visible_fraction": gt.visible_fraction, "difficult": hard}
                                         for gt, hard in zip(frame.polyps, difficult)]})
            if progress is not None:
                progress.update(1)
    ground_truth = {
        "video": name, "fps": video.fps, "width": width, "height": height,
        "num_frames": video.num_frames, "synthetic": True, "seed": video.seed,
        "polyps": [{"id": p.id, "unique_id": unique_id(name, p.id), "diameter_mm": p.diameter_mm,
                    "shape": p.shape, "colour": p.colour} for p in video.polyps],
        "swings": [{"polyp_id": pid, "first_frame": a, "last_frame": b} for pid, a, b in video.swings],
        "config": config_to_dict(video.cfg),
        "frames": gt_frames,
    }
    (out_dir / f"{name}.gt.json").write_text(json.dumps(ground_truth, separators=(",", ":")) + "\n",
                                             encoding="utf-8")
    (out_dir / f"{name}.gt.txt").write_text("".join(row + "\n" for row in mot_rows), encoding="utf-8")
    return {"video": name, "num_frames": video.num_frames, "fps": video.fps, "polyps": video.polyps}


def generate_dataset(out_dir: str | os.PathLike, cfg: SynthConfig, videos: int = 1, seed: int = 0,
                     progress: bool = True, overwrite: bool = False,
                     encoder_threads: int | None = None, depth: bool = False) -> list[str]:
    """Render `videos` videos into `out_dir` and return their names.

    `out_dir` must not exist or be empty unless `overwrite` (then it is replaced as a whole
    once the new run is complete).
    """
    out_dir = Path(out_dir)
    if videos < 1:
        raise ConfigError(f"videos must be at least 1, got {videos}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir}: directory is not empty (choose a new one or pass --overwrite)")
    names = [video_name(i) for i in range(videos)]
    lesion_rows = []
    video_rows = []
    with Progress(videos * cfg.num_frames, "frames", "hagview-synth", enabled=progress,
                  rate_unit="fps") as bar, atomic_dir(out_dir) as tmp:
        for i, name in enumerate(names):
            vseed = video_seed(seed, i)
            video = SyntheticVideo(cfg, seed=vseed, name=name)
            bar.extra = name
            write_video(video, tmp, bar, encoder_threads, depth=depth)
            site_rng = np.random.default_rng(vseed)
            for p in video.polyps:
                lesion_rows.append([unique_id(name, p.id), name, f"{p.diameter_mm:.1f}",
                                    SITES[int(site_rng.integers(len(SITES)))], f"synthetic {p.shape} {p.colour}",
                                    "synthetic"])
            video_rows.append([name, "", "", "synthetic", f"{video.fps:g}", video.num_frames,
                               len(video.polyps), ""])
        (tmp / "lesion_info.csv").write_text(_csv_text(LESION_COLUMNS, lesion_rows), encoding="utf-8")
        (tmp / "video_info.csv").write_text(_csv_text(VIDEO_COLUMNS, video_rows), encoding="utf-8")
    return names
