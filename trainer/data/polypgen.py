"""PolypGen reader (per-centre `data_CN/images_CN` + `masks_CN/<name>_mask.jpg`), and
CVC-ClinicDB's `Original/` + `Ground Truth/` layout (TIFF masks) for users who have it.

Boxes come from the masks (`masks.mask_boxes`). Each frame records its centre as
`source` (`polypgen/C3`), so folds and metrics can go by centre, and a group as `video`, so that
frames of one patient or video stay in one fold. The groups follow PolypGen's file names:
C1 `<patient>OLCV1_100H<nnnn>` / `100H0050` and C4 `<video>_endocv2021_positive_<n>` carry the
patient or video as the leading number; C2, C3 and C5 carry none, and nearby numbers are likely
the same patient, so they are grouped in blocks of `block` consecutive numbers. CVC-ClinicDB's
frames are numbered through its sequences without saying where one ends: a new sequence starts
where a frame's centre thumbnail stops correlating with the previous frame's
(`grouping.similarity_groups(consecutive=True)`).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from pipeline.errors import DataError
from pipeline.progress import Progress
from .grouping import similarity_groups
from .masks import EMPTY_MASK_POLICIES, MIN_AREA_FRACTION, MaskPair, mask_frame, pair_images_masks
from .records import DatasetIndex, SkipLog, frame_sort_key, trailing_int

log = logging.getLogger("hagview.data")

SOURCE = "polypgen"
CLINICDB_SOURCE = "cvc_clinicdb"
CENTRE_DIR = re.compile(r"^data_(C\d+)$", re.I)
BLOCK = 20                     # C2/C3/C5: frames numbered within 20 of each other form one group
SEQUENCE_THRESHOLD = 0.5       # ClinicDB: consecutive frames of one sequence correlate above this
CLINICDB_MASK_DIRS = ("Ground Truth", "GroundTruth", "Ground_Truth", "ground truth", "masks")
_LEADING_NUMBER = re.compile(r"^(\d+)")


def read_polypgen(root, *, centres=None, block: int = BLOCK, min_area_fraction: float = MIN_AREA_FRACTION,
                  empty_mask: str = "skip", sequence_threshold: float = SEQUENCE_THRESHOLD,
                  negatives: bool = True, verify_images: bool = True,
                  progress: bool = False) -> DatasetIndex:
    """Index PolypGen (a root holding `data_C1/`...`data_C5/`, or one `data_CN/` folder) or a
    CVC-ClinicDB root (`Original/` and `Ground Truth/`).

    centres: the PolypGen centres to read (`["C1", "C3"]` or `"C1,C3"`; none: all), e.g. all but
    one for leave-one-centre-out. empty_mask: "skip" (PolypGen's empty masks are views near a
    polyp, not reliable negatives) or "negative". `negatives`/`verify_images` are accepted for
    a common reader signature (every image is checked).
    """
    del negatives, verify_images
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: PolypGen root does not exist or is not a directory")
    if empty_mask not in EMPTY_MASK_POLICIES:
        raise DataError(f"polypgen: empty_mask must be one of {', '.join(EMPTY_MASK_POLICIES)}, got {empty_mask!r}")
    if not isinstance(block, int) or block < 1:
        raise DataError(f"polypgen: block must be a positive integer, got {block!r}")
    if (root / "Original").is_dir():
        return _read_clinicdb(root, min_area_fraction, empty_mask, sequence_threshold, progress)
    centre_dirs = {m.group(1).upper(): d for d in sorted(root.iterdir())
                   if d.is_dir() and (m := CENTRE_DIR.match(d.name))}
    if not centre_dirs and CENTRE_DIR.match(root.name):
        centre_dirs = {CENTRE_DIR.match(root.name).group(1).upper(): root}
    if not centre_dirs:
        raise DataError(f"{root}: no data_C1 ... data_C5 folders and no Original/ folder "
                        f"(is this a PolypGen or CVC-ClinicDB root?)")
    wanted = _centre_list(centres)
    if wanted is not None:
        missing = sorted(set(wanted) - set(centre_dirs))
        if missing:
            raise DataError(f"{root}: no data_{missing[0]} folder (centres here: {', '.join(centre_dirs)})")
        centre_dirs = {c: d for c, d in centre_dirs.items() if c in wanted}

    skips = SkipLog(f"PolypGen {root}")
    work: list[tuple[str, MaskPair]] = []
    for centre, folder in centre_dirs.items():
        images, masks = folder / f"images_{centre}", folder / f"masks_{centre}"
        if not images.is_dir() or not masks.is_dir():
            skips.add(folder, f"missing folder: needs images_{centre}/ and masks_{centre}/")
            continue
        work += [(centre, p) for p in pair_images_masks(images, masks, suffixes=("_mask", ""))]
    index = DatasetIndex()
    members: dict[str, int] = {}
    with Progress(len(work), "images", "reading PolypGen", enabled=progress) as bar:
        for centre, pair in work:
            bar.update(1)
            video = f"{SOURCE}/{centre}/{_patient_group(centre, pair.image.stem, block)}"
            frame = mask_frame(pair, skips, video=video, frame_index=members.get(video, 0),
                               source=f"{SOURCE}/{centre}", polyp_prefix=f"{SOURCE}/{centre}/{pair.image.stem}",
                               min_area_fraction=min_area_fraction, empty_mask=empty_mask)
            if frame is not None:
                members[video] = members.get(video, 0) + 1
                index.frames.append(frame)
    return _finish(index, skips, root, "PolypGen")


def _centre_list(centres) -> list[str] | None:
    if centres is None:
        return None
    items = centres.split(",") if isinstance(centres, str) else list(centres)
    out = [str(c).strip().upper() for c in items if str(c).strip()]
    bad = [c for c in out if not re.fullmatch(r"C\d+", c)]
    if bad or not out:
        raise DataError(f"polypgen: centres must name centres like C1, C3; got {centres!r}")
    return out


def _patient_group(centre: str, stem: str, block: int) -> str:
    """The group of a PolypGen frame from its name (module docstring)."""
    if centre in ("C1", "C4"):
        m = _LEADING_NUMBER.match(stem)
        if m:
            return f"{'p' if centre == 'C1' else 'v'}{int(m.group(1))}"
    number = trailing_int(stem)
    if number is None:
        return stem
    return f"b{number // block}"


def _read_clinicdb(root: Path, min_area_fraction: float, empty_mask: str, threshold: float,
                   progress: bool) -> DatasetIndex:
    masks = next((root / d for d in CLINICDB_MASK_DIRS if (root / d).is_dir()), None)
    if masks is None:
        raise DataError(f"{root}: CVC-ClinicDB layout needs a 'Ground Truth/' folder beside Original/")
    skips = SkipLog(f"CVC-ClinicDB {root}")
    pairs = sorted(pair_images_masks(root / "Original", masks), key=lambda p: frame_sort_key(p.image))
    sequences = similarity_groups([p.image for p in pairs], threshold, consecutive=True)
    index = DatasetIndex()
    members: dict[str, int] = {}
    with Progress(len(pairs), "images", "reading CVC-ClinicDB", enabled=progress) as bar:
        for pair, seq in zip(pairs, sequences):
            bar.update(1)
            video = f"{CLINICDB_SOURCE}/seq{seq + 1}"
            frame = mask_frame(pair, skips, video=video, frame_index=members.get(video, 0),
                               source=CLINICDB_SOURCE, polyp_prefix=f"{CLINICDB_SOURCE}/{pair.image.stem}",
                               min_area_fraction=min_area_fraction, empty_mask=empty_mask)
            if frame is not None:
                members[video] = members.get(video, 0) + 1
                index.frames.append(frame)
    return _finish(index, skips, root, "CVC-ClinicDB")


def _finish(index: DatasetIndex, skips: SkipLog, root: Path, name: str) -> DatasetIndex:
    index.skipped = skips.finish()
    if not index.frames:
        raise DataError(f"{root}: no usable {name} frames ({len(index.skipped)} skipped)")
    log.info("%s %s: %s in %d groups", name, root, index.summary(), len({f.video for f in index.frames}))
    return index
