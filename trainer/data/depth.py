"""Depth maps stored beside a data set's frames, for the sizer's depth stream.

Layout: a frame `<root>/<video>_frames/<name>.jpg` has its depth map in
`<root>/<video>_depth/<name>.png` (16-bit PNG) or `<name>.npy` (a 2-D float or integer array),
the frame's width and height. Values are relative depth (larger is farther); their unit does
not matter because the sizer normalises each crop to 0..1 (`pipeline.prep`). The synthetic
generator writes its exact ray depth as PNG in 1/16 mm (`write_depth_png`); a depth model run
offline (MiDaS and the like) can write either format.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import DataError
from pipeline.fsutil import write_bytes_atomic

DEPTH_SUFFIXES = (".png", ".npy")
PNG_UNITS_PER_MM = 16.0          # synthetic depth PNGs: 1/16 mm steps, up to 4 m


def depth_dir(frames_dir: str | os.PathLike, video: str) -> Path:
    return Path(frames_dir).parent / f"{video}_depth"


def find_depth_path(image_path: str | os.PathLike, video: str) -> Path | None:
    """The depth file of a frame (PNG first, then .npy), or None when there is none."""
    image_path = Path(image_path)
    folder = depth_dir(image_path.parent, video)
    for suffix in DEPTH_SUFFIXES:
        candidate = folder / (image_path.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def read_depth_map(path: str | os.PathLike) -> np.ndarray:
    """float32 HxW from a 16-bit (or 8-bit) single-channel PNG or a 2-D .npy; DataError otherwise."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            depth = np.load(path, allow_pickle=False)    # never unpickle a data file
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot be read as a depth map ({exc})") from None
        if depth.ndim == 3 and depth.shape[2] == 1:
            depth = depth[:, :, 0]
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.number):
            raise DataError(f"{path}: a depth map must be a 2-D numeric array, got {depth.dtype} {depth.shape}")
        return depth.astype(np.float32)
    data = np.fromfile(str(path), dtype=np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    depth = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if depth is None:
        raise DataError(f"{path}: cannot be decoded as a depth PNG")
    if depth.ndim != 2:
        raise DataError(f"{path}: a depth PNG must have one channel, got shape {depth.shape}")
    return depth.astype(np.float32)


def load_frame_depth(image_path: str | os.PathLike, video: str, image_size: tuple[int, int]) -> np.ndarray:
    """The depth map of one frame, checked against the frame's (width, height)."""
    path = find_depth_path(image_path, video)
    if path is None:
        folder = depth_dir(Path(image_path).parent, video)
        raise DataError(f"{folder / Path(image_path).stem}.png (or .npy): no depth map for frame "
                        f"{image_path} (the sizer's input has a depth stream)")
    depth = read_depth_map(path)
    if (depth.shape[1], depth.shape[0]) != tuple(image_size):
        raise DataError(f"{path}: depth map is {depth.shape[1]}x{depth.shape[0]}, "
                        f"the frame {image_size[0]}x{image_size[1]}")
    return depth


def write_depth_png(path: str | os.PathLike, depth_mm: np.ndarray) -> None:
    """Depth in mm as a 16-bit PNG in 1/16 mm (clipped to 0..65535), written atomically."""
    values = np.nan_to_num(np.asarray(depth_mm, dtype=np.float64) * PNG_UNITS_PER_MM,
                           nan=0.0, posinf=65535.0, neginf=0.0)
    ok, png = cv2.imencode(".png", np.clip(np.rint(values), 0, 65535).astype(np.uint16))
    if not ok:
        raise DataError(f"{path}: PNG encoding of the depth map failed")
    write_bytes_atomic(path, png.tobytes())
