"""Image files: a cheap JPEG integrity check at index time and RGB reading at training time."""
from __future__ import annotations

import os
import struct

import cv2
import numpy as np

# Start-of-frame markers carry the image size (baseline, progressive, lossless...; not DHT/JPG/DAC).
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_HEADER_BYTES = 1 << 16
_TAIL_BYTES = 1024


def jpeg_size(path: str | os.PathLike) -> tuple[tuple[int, int] | None, str]:
    """(width, height) read from the JPEG header, or (None, reason) for a file that is not a
    whole JPEG: missing, empty, no start-of-image marker, no frame header, or truncated (no
    end-of-image marker near the end: a partial download still decodes, with a grey bottom).

    Reads at most 65 KiB + 1 KiB, so whole data sets can be checked when they are indexed.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_BYTES)
            f.seek(0, os.SEEK_END)
            length = f.tell()
            f.seek(max(0, length - _TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return None, "image file is missing"
    except OSError as exc:
        return None, f"image file cannot be read ({exc.strerror or exc})"
    if length == 0:
        return None, "image file is empty"
    if head[:2] != b"\xff\xd8":
        return None, "not a JPEG (no start-of-image marker)"
    if b"\xff\xd9" not in tail:
        return None, "truncated JPEG (no end-of-image marker)"
    size = _sof_size(head)
    if size is None:
        return None, "corrupt JPEG (no frame header in the first 64 KiB)"
    return size, ""


def verified_jpeg_size(image_path, stated_size: tuple[int, int] | None, stated_by: str,
                       skips) -> tuple[int, int] | None:
    """The image's (width, height) from its JPEG header when it is a whole JPEG of the size its
    annotation file (`stated_by`) states (or states none); otherwise the reason goes to `skips`
    (a records.SkipLog) and None comes back."""
    actual, problem = jpeg_size(image_path)
    if actual is None:
        skips.add(image_path, f"unreadable JPEG: {problem}")
        return None
    if stated_size is not None and actual != stated_size:
        skips.add(image_path, f"size mismatch: image is {actual[0]}x{actual[1]}, {stated_by} "
                              f"says {stated_size[0]}x{stated_size[1]}")
        return None
    return actual


def _sof_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:          # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:   # no length field
            i += 2
            continue
        (seg_len,) = struct.unpack(">H", data[i + 2:i + 4])
        if seg_len < 2:
            return None
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return (width, height) if width > 0 and height > 0 else None
        if marker == 0xDA:          # start of scan before any frame header
            return None
        i += 2 + seg_len
    return None


def read_image_rgb(path: str | os.PathLike) -> np.ndarray | None:
    """RGB uint8 HxWx3, or None when OpenCV cannot decode the file."""
    data = np.fromfile(str(path), dtype=np.uint8) if os.path.isfile(path) else None
    if data is None or data.size == 0:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
