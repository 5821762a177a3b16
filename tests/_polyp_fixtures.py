"""Small generated polyp data sets in the native layouts of Kvasir-SEG, PolypGen, CVC-ClinicDB,
a generic image + mask folder and a negatives tree (no real data: the tests must not need it).

Frames are smooth random textures; frames of one sequence are the same texture shifted a few
pixels (their centre thumbnails correlate near 1), different sequences use different seeds
(correlation near 0). Masks are filled ellipses; JPEG masks are written at quality 60, so they
carry grey levels along the edges as real ones do.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

W, H = 160, 128


def texture(seed: int, shift: int = 0, size: tuple[int, int] = (W, H)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    big = cv2.resize(small, (w + 16, h + 16), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(big[8:8 + h, 8 + shift:8 + shift + w])


def mask_of(ellipses, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """uint8 0/255 mask with filled ellipses ((cx, cy), (ax, ay))."""
    mask = np.zeros((size[1], size[0]), np.uint8)
    for centre, axes in ellipses:
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1)
    return mask


def ellipse_box(centre, axes) -> tuple[float, float, float, float]:
    """The box the reader finds for one ellipse (8-connected component bounds)."""
    ys, xs = np.nonzero(mask_of([(centre, axes)]))
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 60] if path.suffix.lower() == ".jpg" else []
    assert cv2.imwrite(str(path), image, params), path
    return path


ONE = [((60, 60), (20, 16))]
TWO = [((40, 40), (14, 12)), ((115, 85), (18, 14))]
SPECK = [((60, 60), (20, 16)), ((150, 10), (0, 0))]      # a 1-px speck: under 0.03% of 160x128


def kvasir_layout(root: Path) -> dict:
    """images/ + masks/ + kavsir_bboxes.json: a: one polyp; b: two polyps in one mask; c: an
    official sliver box (dropped) and a box the mask does not have (warned); d: an image without
    a mask; e: not in the box file; f: a near-duplicate of a (shifted 2 px)."""
    frames = {"a": (1, 0, ONE), "b": (2, 0, TWO), "c": (3, 0, ONE), "d": (4, 0, ONE),
              "e": (5, 0, ONE), "f": (1, 2, [((58, 60), (20, 16))])}
    boxes = {}
    for name, (seed, shift, ellipses) in frames.items():
        write(root / "images" / f"{name}.jpg", texture(seed, shift))
        if name != "d":
            write(root / "masks" / f"{name}.jpg", mask_of(ellipses))
        official = [ellipse_box(*e) for e in ellipses]
        if name == "c":
            official += [(10.0, 0.0, 90.0, 1.0), (120.0, 90.0, 150.0, 120.0)]
        if name != "e":
            boxes[name] = {"height": H, "width": W, "bbox": [
                {"label": "polyp", "xmin": b[0], "ymin": b[1], "xmax": b[2], "ymax": b[3]} for b in official]}
    (root / "kavsir_bboxes.json").write_text(json.dumps(boxes))
    return boxes


POLYPGEN = {
    # centre: [(stem, seed, ellipses or None for no mask file, expected group)]
    "C1": [("102OLCV1_100H0006", 11, ONE, "p102"), ("102OLCV1_100H0007", 12, TWO, "p102"),
           ("104OLCV1_100H0002", 13, ONE, "p104"), ("100H0050", 14, SPECK, "p100")],
    "C2": [("EndoCV2021_001000", 21, ONE, "b50"), ("EndoCV2021_001005", 22, ONE, "b50"),
           ("EndoCV2021_001030", 23, ONE, "b51"), ("EndoCV2021_001031", 24, None, None),
           ("EndoCV2021_001040", 25, [], None)],
    "C4": [("10_endocv2021_positive_5", 41, ONE, "v10"), ("11_endocv2021_positive_7", 42, ONE, "v11"),
           ("35_endocv2021_negative_1005", 43, ONE, "v35")],
}


def polypgen_layout(root: Path) -> None:
    """data_CN/images_CN/<stem>.jpg + masks_CN/<stem>_mask.jpg; C2 has an image without a mask
    and one with an empty mask; C1's 100H0050 has a 1-px speck besides its polyp."""
    for centre, frames in POLYPGEN.items():
        for stem, seed, ellipses, _ in frames:
            write(root / f"data_{centre}" / f"images_{centre}" / f"{stem}.jpg", texture(seed))
            if ellipses is not None:
                write(root / f"data_{centre}" / f"masks_{centre}" / f"{stem}_mask.jpg", mask_of(ellipses))


def clinicdb_layout(root: Path) -> None:
    """Original/<n>.tif + Ground Truth/<n>.tif: frames 1-3 one sequence, 4-7 another, 8-10 a
    third (10 comes after 9 in number order, not after 1); TIFF masks; frame 9 has two polyps."""
    plan = {1: (7, 0), 2: (7, 2), 3: (7, 4), 4: (8, 0), 5: (8, 2), 6: (8, 4), 7: (8, 6),
            8: (9, 0), 9: (9, 3), 10: (9, 5)}
    for n, (seed, shift) in plan.items():
        write(root / "Original" / f"{n}.tif", texture(seed, shift))
        write(root / "Ground Truth" / f"{n}.tif", mask_of(TWO if n == 9 else ONE))


def image_folder_layout(root: Path) -> None:
    """images/case1/{1,2}.png + masks/case1/{1,2}.png (PNG), images/solo.jpg + masks/solo_mask.png,
    images/nomask.jpg without a mask, images/empty.png with an empty mask."""
    write(root / "images" / "case1" / "1.png", texture(31))
    write(root / "masks" / "case1" / "1.png", mask_of(ONE))
    write(root / "images" / "case1" / "2.png", texture(31, 2))
    write(root / "masks" / "case1" / "2.png", mask_of(TWO))
    write(root / "images" / "solo.jpg", texture(32))
    write(root / "masks" / "solo_mask.png", mask_of(ONE))
    write(root / "images" / "nomask.jpg", texture(33))
    write(root / "images" / "empty.png", texture(34))
    write(root / "masks" / "empty.png", mask_of([]))


def negatives_layout(root: Path) -> None:
    """nerthus/class_0/{a,b}.jpg, endoangel/DCNN1/q/c.jpg, top.png, and a broken JPEG."""
    write(root / "nerthus" / "class_0" / "a.jpg", texture(51))
    write(root / "nerthus" / "class_0" / "b.jpg", texture(52))
    write(root / "endoangel" / "DCNN1" / "q" / "c.jpg", texture(53))
    write(root / "top.png", texture(54))
    (root / "nerthus" / "class_0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
