"""Dataset readers (REAL-Colon, SUN, CSV manifest), splits, sampling, augmentation, FOV masks.

`read_dataset(kind, **kw)` picks the reader by name; every reader returns a `DatasetIndex`.
Importing this package does not import torch (the torch Datasets live in `.datasets`).
"""
from __future__ import annotations

from pipeline.errors import ConfigError
from .image_folder import read_image_folder
from .kvasir import read_kvasir_seg
from .manifest import read_manifest
from .negatives import read_negatives
from .polypgen import read_polypgen
from .realcolon import read_realcolon
from .records import (BoxAnnotation, DatasetIndex, FrameRecord, SampleRecord, Skip,
                      parse_size_mm)
from .sampling import (TRAIN_FRAMES_PER_POLYP, VAL_FRAMES_PER_POLYP, PolypFrameSampler,
                       sample_per_polyp)
from .splits import load_split_file, make_kfold_splits, save_split_file, train_val_ids
from .sun import read_sun
from .sunseg import read_sun_seg

READERS = {
    "realcolon": read_realcolon,
    "synthetic": read_realcolon,     # the generator writes the REAL-Colon layout
    "sun": read_sun,
    "sun_seg": read_sun_seg,         # SUN-SEG: Frame/caseN_M/ + Detection/bbox_annotation.json
    "manifest": read_manifest,
    # still images with masks (detector data: frames and boxes, no polyp sizes)
    "kvasir_seg": read_kvasir_seg,
    "polypgen": read_polypgen,       # also CVC-ClinicDB's Original/ + Ground Truth/ layout
    "image_folder": read_image_folder,
    "negatives": read_negatives,
}


def read_dataset(kind: str, **kwargs) -> DatasetIndex:
    """`read_dataset("realcolon", root=...)`, `("sun", root=..., size_table=...)`,
    `("manifest", csv_path=...)`; `root=` is accepted for the manifest too."""
    reader = READERS.get(kind)
    if reader is None:
        raise ConfigError(f"data kind {kind!r} is not one of {', '.join(sorted(READERS))}")
    if kind == "manifest" and "root" in kwargs and "csv_path" not in kwargs:
        kwargs["csv_path"] = kwargs.pop("root")
    try:
        return reader(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"data kind {kind!r}: {exc}") from None


__all__ = ["BoxAnnotation", "DatasetIndex", "FrameRecord", "SampleRecord", "Skip", "READERS",
           "TRAIN_FRAMES_PER_POLYP", "VAL_FRAMES_PER_POLYP", "PolypFrameSampler",
           "load_split_file", "make_kfold_splits", "parse_size_mm", "read_dataset",
           "read_image_folder", "read_kvasir_seg", "read_manifest", "read_negatives", "read_polypgen",
           "read_realcolon", "read_sun", "read_sun_seg", "sample_per_polyp", "save_split_file",
           "train_val_ids"]
