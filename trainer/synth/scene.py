"""The scene: a bent tube with haustral folds (the lumen) and polyps standing on its wall.

World frame: z runs along the colon (millimetres), the lumen centre line wanders in x and y.
Polyps are ellipsoids on the wall: sessile (a dome), flat (a low lens), pedunculated (a head on
a narrow stalk). Their diameter is the head's width, which is what a clinician measures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.sizeclass import DIMINUTIVE_MAX_MM, LARGE_MIN_MM
from .config import COLOURS, SynthConfig


@dataclass(frozen=True)
class PolypSpec:
    id: int
    diameter_mm: float
    shape: str
    colour: str


class Colon:
    """Lumen geometry: radius(z, angle) with folds, and a gently bending centre line."""

    def __init__(self, rng: np.random.Generator, cfg: SynthConfig):
        self.radius_mm = float(rng.uniform(*cfg.lumen_radius_mm))
        self.fold_spacing_mm = float(rng.uniform(*cfg.fold_spacing_mm))
        self.fold_depth = float(rng.uniform(*cfg.fold_depth))
        self.fold_sharpness = 5.0
        self.taenia_phase = float(rng.uniform(0, 2 * math.pi))
        self.fold_warp_phase = float(rng.uniform(0, 2 * math.pi))
        self.bend_amp = rng.uniform(4.0, 10.0, size=2)
        self.bend_wavelength = rng.uniform(180.0, 400.0, size=2)
        self.bend_phase = rng.uniform(0, 2 * math.pi, size=2)

    def centre(self, z):
        """Centre line (x, y) at axial positions z."""
        w = 2 * np.pi / self.bend_wavelength
        return (self.bend_amp[0] * np.sin(w[0] * z + self.bend_phase[0]),
                self.bend_amp[1] * np.sin(w[1] * z + self.bend_phase[1]))

    def centre_slope(self, z):
        w = 2 * np.pi / self.bend_wavelength
        return (self.bend_amp[0] * w[0] * np.cos(w[0] * z + self.bend_phase[0]),
                self.bend_amp[1] * w[1] * np.cos(w[1] * z + self.bend_phase[1]))

    def fold_profile(self, z, phi):
        """0 between folds, 1 on a fold's crest. Folds are crescents between the three taeniae."""
        p = self.fold_spacing_mm
        u = z / p + 0.12 * np.sin(z * (2 * np.pi / (3.3 * p)) + self.fold_warp_phase)
        crest = (0.5 + 0.5 * np.cos((2 * np.pi) * u)) ** self.fold_sharpness
        crescent = 0.35 + 0.65 * (0.5 + 0.5 * np.cos(3.0 * phi + self.taenia_phase))
        return crest * crescent

    def radius(self, z, phi):
        base = self.radius_mm * (1.0 + 0.05 * np.cos(3.0 * phi + self.taenia_phase + np.pi / 3))
        return base * (1.0 - self.fold_depth * self.fold_profile(z, phi))

    def between_folds(self, z: float) -> float:
        """The nearest axial position midway between two fold crests (where polyps sit)."""
        p = self.fold_spacing_mm
        best, best_fold = z, 2.0
        for dz in np.linspace(-p / 2, p / 2, 41):
            f = float(self.fold_profile(z + dz, -self.taenia_phase / 3.0))
            if f < best_fold - 1e-9:
                best, best_fold = z + dz, f
        return float(best)


@dataclass
class Ellipsoid:
    centre: np.ndarray        # (3,)
    axes: np.ndarray          # (3, 3) columns: tangent 1, tangent 2, wall normal (into the lumen)
    semi: np.ndarray          # (3,) semi-axis lengths along those columns


@dataclass
class PlacedPolyp:
    spec: PolypSpec
    z_mm: float
    phi: float
    base: np.ndarray          # point on the wall under the polyp
    normal: np.ndarray        # wall normal pointing into the lumen
    head: Ellipsoid
    stalk: Ellipsoid | None
    tint: np.ndarray          # RGB multiplier on mucosa albedo
    texture_offset: tuple[float, float]

    @property
    def centre(self) -> np.ndarray:
        return self.head.centre

    @property
    def bound_centre_radius(self) -> tuple[np.ndarray, float]:
        """A sphere enclosing head and stalk."""
        if self.stalk is None:
            return self.head.centre, float(self.head.semi.max()) * 1.01
        top = self.head.centre + self.normal * self.head.semi[2]
        centre = 0.5 * (top + self.base)
        radius = max(float(np.linalg.norm(top - centre)), float(self.head.semi[0]) * 1.2)
        return centre, radius * 1.05


def draw_polyp_specs(rng: np.random.Generator, cfg: SynthConfig) -> list[PolypSpec]:
    p = cfg.polyps
    count = int(rng.integers(p.min_count, p.max_count + 1))
    lo, hi = p.diameter_mm
    # Size-class bands clipped to the configured range; spread draws one band per polyp.
    bands = [(lo, min(hi, DIMINUTIVE_MAX_MM)), (max(lo, DIMINUTIVE_MAX_MM + 0.5), min(hi, LARGE_MIN_MM - 0.5)),
             (max(lo, LARGE_MIN_MM + 0.5), hi)]
    bands = [b for b in bands if b[0] <= b[1]] or [(lo, hi)]
    order = rng.permutation(len(bands))
    specs = []
    for i in range(count):
        if p.spread_size_classes and count > 1:
            band = bands[order[i % len(bands)]]
        else:
            band = (lo, hi)
        diameter = float(rng.uniform(*band))
        shapes = list(p.shapes)
        if diameter < 6.0 and "pedunculated" in shapes and len(shapes) > 1:
            shapes.remove("pedunculated")        # stalked polyps this small are rare
        shape = str(shapes[int(rng.integers(len(shapes)))])
        colour = str(p.colours[int(rng.integers(len(p.colours)))])
        specs.append(PolypSpec(id=i + 1, diameter_mm=round(diameter, 1), shape=shape, colour=colour))
    return specs


def place_polyp(rng: np.random.Generator, colon: Colon, spec: PolypSpec, z_mm: float, phi: float) -> PlacedPolyp:
    cx, cy = colon.centre(z_mm)
    wall_r = float(colon.radius(z_mm, phi))
    radial = np.array([math.cos(phi), math.sin(phi), 0.0])
    base = np.array([cx, cy, z_mm]) + wall_r * radial
    normal = -radial
    t1 = np.array([0.0, 0.0, 1.0])
    t2 = np.cross(normal, t1)
    axes = np.stack([t1, t2, normal], axis=1)
    a = spec.diameter_mm / 2.0
    # The tube's wall curves up around the base: lift the body by that much so its full
    # diameter stands clear of the wall (else a flat lesion would show narrower than it is).
    beta = np.linspace(0, 2 * math.pi, 24, endpoint=False)
    dphi = a * np.sin(beta) / wall_r
    rim_r = colon.radius(z_mm + a * np.cos(beta), phi + dphi)
    rise = float(max(0.0, np.max(wall_r - rim_r * np.cos(dphi))))      # rim height above the base plane
    stalk = None
    if spec.shape == "sessile":
        semi = np.array([a, a, a * 0.9])
        centre = base + normal * (0.35 * a + rise)   # dome: most of the head above the wall
    elif spec.shape == "flat":
        semi = np.array([a, a, a * 0.28])
        centre = base + normal * (rise - 0.03 * a)   # a low lens barely raised
    else:  # pedunculated
        semi = np.array([a, a, a * 0.95])
        stalk_len = a * 0.9
        centre = base + normal * (stalk_len + 0.8 * a)
        stalk = Ellipsoid(centre=base + normal * (0.5 * (stalk_len + 0.4 * a)), axes=axes,
                          semi=np.array([0.32 * a, 0.32 * a, 0.5 * (stalk_len + 0.4 * a) + 0.3 * a]))
    head = Ellipsoid(centre=centre, axes=axes, semi=semi)
    tint = np.array(COLOURS[spec.colour], dtype=np.float32)
    return PlacedPolyp(spec=spec, z_mm=float(z_mm), phi=float(phi), base=base, normal=normal,
                       head=head, stalk=stalk, tint=tint,
                       texture_offset=(float(rng.uniform(0, 500)), float(rng.uniform(0, 500))))
