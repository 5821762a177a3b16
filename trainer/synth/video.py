"""One synthetic procedure video: frames with exact ground truth, iterated or rendered by index."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from pipeline.types import GroundTruthBox

from .camera import FisheyeCamera
from .config import SynthConfig, validate_config
from .motion import plan_video
from .render import MAX_DISTANCE_MM, Renderer
from .scene import Colon, PlacedPolyp, PolypSpec, draw_polyp_specs
from .texture import make_mucosa_texture

TEXTURE_AXIAL_PERIOD_MM = 80.0


@dataclass
class SynthFrame:
    index: int
    time: float                       # seconds from the start (index / fps)
    image: np.ndarray                 # RGB uint8 HxWx3
    polyps: list[GroundTruthBox]      # visible polyps only
    depth: np.ndarray | None = None   # float32 HxW distance along each pixel's ray, mm


class SyntheticVideo:
    """`SyntheticVideo(cfg, seed=7, name="001-001")`: everything follows from (cfg, seed).

    The same config and seed give bit-identical frames whether iterated with `frames()` or
    rendered out of order with `render(index)`.
    """

    def __init__(self, cfg: SynthConfig, seed: int = 0, name: str = "001-001"):
        self.cfg = validate_config(cfg)
        self.seed = int(seed)
        self.name = name
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5EED]))
        self.camera = FisheyeCamera(cfg.width, cfg.height, cfg.fov_deg)
        self.colon = Colon(rng, cfg)
        self.polyps: list[PolypSpec] = draw_polyp_specs(rng, cfg)
        self.path, self.placed = plan_video(rng, cfg, self.colon, self.polyps, self.camera)
        texture = make_mucosa_texture(rng, 2 * math.pi * self.colon.radius_mm, TEXTURE_AXIAL_PERIOD_MM,
                                      cfg.texture_px_per_mm)
        self._renderer = Renderer(cfg, self.camera, self.colon, texture, self.placed, name,
                                  seed=int(rng.integers(0, 2**31)), z_range=(
                                      float(self.path.position[:, 2].min()) - 80.0,
                                      float(self.path.position[:, 2].max()) + MAX_DISTANCE_MM + 80.0))

    @property
    def num_frames(self) -> int:
        return self.cfg.num_frames

    @property
    def fps(self) -> float:
        return self.cfg.fps

    @property
    def size(self) -> tuple[int, int]:
        return (self.cfg.width, self.cfg.height)

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    @property
    def placed_polyps(self) -> list[PlacedPolyp]:
        return self.placed

    @property
    def swings(self) -> list[tuple[int, int, int]]:
        """(polyp id, first frame, last frame) of each planned swing away (polyp id 0: none aimed)."""
        return list(self.path.swings)

    def fov_mask(self) -> np.ndarray:
        """bool HxW: True inside the lens's circular field of view."""
        return self.camera.fov_mask_image() > 0

    def render(self, index: int) -> SynthFrame:
        if not 0 <= index < self.num_frames:
            raise IndexError(f"{self.name}: frame {index} outside 0..{self.num_frames - 1}")
        time_s = index / self.fps
        image, truths = self._renderer.render(index, self.path.position[index], self.path.rotation[index],
                                              self.path.blur_px[index], time_s)
        boxes = [GroundTruthBox(polyp_id=t.polyp_id, box=t.box, diameter_mm=t.diameter_mm,
                                distance_mm=t.distance_mm, visible_fraction=t.visible_fraction)
                 for t in truths]
        return SynthFrame(index=index, time=time_s, image=image, polyps=boxes,
                          depth=self._renderer.last_depth)

    def frames(self, start: int = 0) -> Iterator[SynthFrame]:
        for index in range(start, self.num_frames):
            yield self.render(index)
