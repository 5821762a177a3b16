"""Frame rendering: ray-traced lumen wall and polyps, shaded by the light at the scope's tip.

Per frame, per pixel work is a handful of vectorised numpy/OpenCV operations:
- the wall is intersected on a half-resolution grid (smooth geometry: distance, wall position,
  shading), upsampled, and the millimetre-scaled mucosa texture is sampled with one `cv2.remap`;
- polyps are intersected at full resolution, only inside their projected bounding boxes;
- light falls off with the square of the distance (the light source is at the lens), with
  specular highlights where the wet surface faces the lens, automatic exposure like a video
  processor, motion blur from the camera's movement, the black border outside the lens's
  circle and the tower's text strip.
Ground truth comes from the same rays: per polyp the visible pixels give the box, and the
polyp's unoccluded projection (also outside the image) gives the visible fraction.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass

import cv2
import numpy as np

from .camera import FisheyeCamera
from .config import SynthConfig
from .scene import Colon, Ellipsoid, PlacedPolyp
from .texture import MUCOSA_RGB

REFERENCE_DISTANCE_MM = 20.0      # distance at which the light gives unit irradiance
MAX_DISTANCE_MM = 400.0           # rays going further see darkness (the far lumen)
TABLE_STEP_MM = 0.5
TABLE_ANGLES = 180
TEXTURE_PAD_COLS = 240           # wrap-around margin of the texture (texels) on both ends
WALL_STEP = 0.5                   # damping: larger steps oscillate on rays grazing the folds
WALL_ITERATIONS_QUARTER = 8       # damped fixed-point steps onto the folds on the quarter grid ...
WALL_ITERATIONS = 3               # ... and then on the half grid (3 steps alone leave p99 depth errors ~10 %)
HEAD_CODE_BASE = 1                # id buffer: head of polyp k -> 1 + k, stalk -> 100 + k
STALK_CODE_BASE = 100
MIN_VISIBLE_PIXELS = 6            # smaller slivers are not annotated (as a human annotator would not)
DENOMINATOR_SAMPLES = 40000       # grid points used for a polyp's unoccluded projection at most


@dataclass
class PolypTruth:
    polyp_id: int
    box: tuple[float, float, float, float]
    diameter_mm: float
    distance_mm: float
    visible_fraction: float


def _intersect_ellipsoid(body: Ellipsoid, origin: np.ndarray, dx, dy, dz):
    """Nearest positive hit distance of rays with an ellipsoid (inf where missed), and the
    hit point in the body's unit-sphere coordinates."""
    inv = 1.0 / body.semi
    local_axes = (body.axes * inv[None, :]).T.astype(np.float32)          # world -> unit-sphere frame
    o = (local_axes @ (origin - body.centre)).astype(np.float32)
    ld = [local_axes[i, 0] * dx + local_axes[i, 1] * dy + local_axes[i, 2] * dz for i in range(3)]
    a = ld[0] * ld[0] + ld[1] * ld[1] + ld[2] * ld[2]
    b = 2.0 * (o[0] * ld[0] + o[1] * ld[1] + o[2] * ld[2])
    c = float(o @ o) - 1.0
    disc = b * b - 4.0 * a * c
    hit = disc > 0
    sq = np.sqrt(np.maximum(disc, 0.0))
    t = (-b - sq) / (2.0 * a)
    if c < 0:       # camera inside the body (never in a sane path, but keep it defined)
        t = (-b + sq) / (2.0 * a)
    hit &= t > 1e-3
    t = np.where(hit, t, np.inf).astype(np.float32)
    local = [o[i] + t * ld[i] for i in range(3)]
    return t, local


def _sample_points(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear texture samples at scattered points (wrapping), as float32 (n, channels).

    cv2.remap takes 2-D maps below 32767 columns, so the points are laid out in rows.
    """
    n = len(u)
    width = 1024
    rows = max(1, -(-n // width))
    mu = np.zeros(rows * width, dtype=np.float32)
    mv = np.zeros(rows * width, dtype=np.float32)
    mu[:n] = u
    mv[:n] = v
    out = cv2.remap(texture, mu.reshape(rows, width), mv.reshape(rows, width), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_WRAP)
    return out.reshape(rows * width, -1)[:n].astype(np.float32)


class Renderer:
    def __init__(self, cfg: SynthConfig, camera: FisheyeCamera, colon: Colon, texture: np.ndarray,
                 polyps: list[PlacedPolyp], name: str, seed: int, z_range: tuple[float, float]):
        self.cfg = cfg
        self.camera = camera
        self.colon = colon
        self.texture = texture
        self.polyps = polyps
        self.name = name
        w, h = camera.width, camera.height
        self.step = 2
        cols, rows = w // self.step, h // self.step
        gx, gy = camera.pixel_grid(0.0, 0.0, cols, rows, float(self.step))
        rx, ry, rz, _ = camera.rays(gx, gy)
        self.coarse_rays = np.stack([rx.ravel(), ry.ravel(), rz.ravel()])      # (3, n) camera frame
        self.coarse_shape = (rows, cols)
        qcols, qrows = w // (2 * self.step), h // (2 * self.step)
        qx_, qy_ = camera.pixel_grid(0.0, 0.0, qcols, qrows, w / qcols)
        qrx, qry, qrz, _ = camera.rays(qx_, qy_)
        self.quarter_rays = np.stack([qrx.ravel(), qry.ravel(), qrz.ravel()])
        self.quarter_shape = (qrows, qcols)
        self.coarse_fov = camera.fov_mask(gx, gy)
        self._zero_map = np.zeros((rows, cols), dtype=np.float32)
        theta = np.arccos(np.clip(rz, -1, 1))
        # Light guides sit beside the lens and light the periphery less.
        self.coarse_vignette = (np.clip(np.cos(theta * 0.75), 0.05, 1.0) ** 1.2).astype(np.float32)

        fx, fy = camera.pixel_grid(0.0, 0.0, w, h)
        frx, fry, frz, _ = camera.rays(fx, fy)
        self.full_rays = (frx, fry, frz)
        ftheta = np.arccos(np.clip(frz, -1, 1))
        self.full_vignette = (np.clip(np.cos(ftheta * 0.75), 0.05, 1.0) ** 1.2).astype(np.float32)
        self.fov_u8 = camera.fov_mask_image()
        self.fov_bool = self.fov_u8 > 0
        # The texture is padded with its own wrap-around so that lookups stay in range (OpenCV's
        # in-range remap is several times faster than its wrapping border mode).
        self.tex_rows, self.tex_cols = texture.shape[:2]
        self.tex_pad = TEXTURE_PAD_COLS
        self.texture_padded = cv2.copyMakeBorder(texture, 1, 2, self.tex_pad, self.tex_pad, cv2.BORDER_WRAP)
        self.axial_period_mm = self.tex_cols / cfg.texture_px_per_mm
        self._build_tables(z_range)
        self.px_per_mm = cfg.texture_px_per_mm
        rng = np.random.default_rng(seed)
        self.start_time = _dt.datetime(2024, 1, 8, 9, 0, 0) + _dt.timedelta(
            days=int(rng.integers(0, 700)), seconds=int(rng.integers(0, 8 * 3600)))
        self.patient = f"SYN{int(rng.integers(100000, 999999))}"
        self.text_boxes = self._text_layout()

    # ------------------------------------------------------------------ wall
    def _build_tables(self, z_range: tuple[float, float]) -> None:
        """Lumen geometry as one lookup table, so the per-pixel solve is a remap and arithmetic.

        Rows: angle around the centre line (the last row repeats the first); columns: z in
        TABLE_STEP_MM steps; channels: wall radius, its z-derivative, centre line x and y.
        """
        colon = self.colon
        z0, z1 = z_range
        self.table_z0 = float(z0)
        self.table_kz = float(1.0 / TABLE_STEP_MM)
        z = z0 + np.arange(int(math.ceil((z1 - z0) / TABLE_STEP_MM)) + 2) * TABLE_STEP_MM
        phi = np.arange(TABLE_ANGLES + 1) * (2 * math.pi / TABLE_ANGLES)
        zz, pp = np.meshgrid(z, phi)
        radius = colon.radius(zz, pp)
        slope = np.gradient(radius, TABLE_STEP_MM, axis=1)
        cx, cy = colon.centre(zz)
        self.wall_table = np.stack([radius, slope, cx, cy], axis=-1).astype(np.float32)
        self.table_kphi = float(TABLE_ANGLES / (2 * math.pi))

    def _lookup(self, hz: np.ndarray, phi: np.ndarray) -> np.ndarray:
        mx = (hz - np.float32(self.table_z0)) * np.float32(self.table_kz)
        my = phi * np.float32(self.table_kphi)
        return cv2.remap(self.wall_table, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def _above_wall(self, position: np.ndarray, t: np.ndarray, dx, dy, dz) -> np.ndarray:
        """Whether the points at distance t along the rays lie inside the lumen (not embedded in
        the wall): the part of a polyp that exists to be seen."""
        finite = np.isfinite(t)
        ts = np.where(finite, t, np.float32(0.0))
        hz = np.float32(position[2]) + ts * dz
        geo = self._lookup(hz, np.zeros_like(hz))                  # centre line at those z
        px = np.float32(position[0]) + ts * dx - geo[..., 2]
        py = np.float32(position[1]) + ts * dy - geo[..., 3]
        radius = self._lookup(hz, cv2.phase(px, py))[..., 0]
        return finite & (px * px + py * py < radius * radius)

    def _solve_wall(self, position, d, t, iterations: int):
        """Damped fixed-point steps towards the wall along rays d (3, rows, cols) from estimate t:
        look the wall up where the last estimate hit it (the centre line lagging one step behind)
        and re-solve the circle there. Returns t and the last lookup (radius, dR/dz, centre)."""
        dx, dy, dz = d[0], d[1], d[2]
        ox, oy, oz = (float(v) for v in position)
        inv_a = 1.0 / np.maximum(dx * dx + dy * dy, np.float32(1e-8))
        geo = None
        for _ in range(iterations):
            hz = oz + t * dz
            if geo is None:
                cx, cy = (float(v) for v in self.colon.centre(oz))
                qx, qy = ox - cx, oy - cy
            else:
                qx, qy = ox - geo[..., 2], oy - geo[..., 3]
            geo = self._lookup(hz, cv2.phase(qx + t * dx, qy + t * dy))
            qx = ox - geo[..., 2]
            qy = oy - geo[..., 3]
            radius = geo[..., 0]
            b = qx * dx + qy * dy
            disc = np.maximum(b * b + (radius * radius - qx * qx - qy * qy) / inv_a, np.float32(0.0))
            t = np.minimum(t + np.float32(WALL_STEP) * ((np.sqrt(disc) - b) * inv_a - t),
                           np.float32(MAX_DISTANCE_MM))
        return t, geo

    def _wall(self, position: np.ndarray, rotation: np.ndarray):
        """Distance to the wall along each coarse ray, the hit's radial offset (x, y) from the
        centre line, its z, and how squarely the wall faces the lens (n . v).

        Most fixed-point steps run on a grid half as fine again; the result seeds the last
        steps on the coarse grid, where fold edges are resolved.
        """
        rot = rotation.astype(np.float32)
        ox, oy, oz = (float(v) for v in position)
        cx, cy = (float(v) for v in self.colon.centre(oz))
        qx, qy = ox - cx, oy - cy
        r0 = self.colon.radius_mm
        d4 = (rot @ self.quarter_rays).reshape(3, *self.quarter_shape)
        b = qx * d4[0] + qy * d4[1]
        a = np.maximum(d4[0] * d4[0] + d4[1] * d4[1], np.float32(1e-8))
        t4 = np.minimum((np.sqrt(b * b + (r0 * r0 - qx * qx - qy * qy) * a) - b) / a, np.float32(MAX_DISTANCE_MM))
        t4, _ = self._solve_wall(position, d4, t4, WALL_ITERATIONS_QUARTER)
        rows, cols = self.coarse_shape
        d = (rot @ self.coarse_rays).reshape(3, rows, cols)
        dx, dy, dz = d[0], d[1], d[2]
        t = cv2.resize(t4, (cols, rows), interpolation=cv2.INTER_LINEAR)
        t, geo = self._solve_wall(position, d, t, WALL_ITERATIONS)
        slope_x, slope_y = (float(v) for v in self.colon.centre_slope(oz + 60.0))
        hz = oz + t * dz
        rx = ox + t * dx - geo[..., 2]
        ry = oy + t * dy - geo[..., 3]
        inv_rho = 1.0 / (np.sqrt(rx * rx + ry * ry) + np.float32(1e-6))
        ex, ey = rx * inv_rho, ry * inv_rho
        gz = -(ex * slope_x + ey * slope_y) - geo[..., 1]
        # n . v with n the outward gradient of (rho - R): the lens sees the side facing it.
        ndotv = np.clip((ex * dx + ey * dy + gz * dz) / np.sqrt(1.0 + gz * gz), 0.0, 1.0)
        return t, rx, ry, hz, ndotv

    # ------------------------------------------------------------------ frame
    def render(self, index: int, position: np.ndarray, rotation: np.ndarray, blur_px: np.ndarray,
               time_s: float) -> tuple[np.ndarray, list[PolypTruth]]:
        cfg = self.cfg
        h, w = self.camera.height, self.camera.width
        rows, cols = self.coarse_shape
        t, rx, ry, hz, ndotv = self._wall(position, rotation)
        falloff = (REFERENCE_DISTANCE_MM / np.maximum(t, 1.0)) ** 2 * self.coarse_vignette
        diffuse = falloff * (0.12 + 0.88 * ndotv)
        # Automatic exposure, as the video processor does: keep the picture's mean level steady.
        level = float(np.mean(np.minimum(diffuse[self.coarse_fov], 4.0)))
        regions = self._polyp_regions(position, rotation)
        cover, polyp_level = self._polyp_light(regions, position)
        level = level * (1.0 - cover) + min(polyp_level, 6.0) * cover + 1e-6
        gain = float(np.clip(0.38 / level, 0.2, 3.0))
        n2 = ndotv * ndotv
        n8 = n2 * n2
        n8 = n8 * n8
        spec = falloff * (0.25 * n8 + 0.75 * (n8 * n8) * (n8 * n8)) * (cfg.specular * 200.0 * gain)
        diffuse *= gain

        def up(a):
            return cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)

        full_t = up(t)
        angle = cv2.phase(up(rx), up(ry))
        map_y = angle * np.float32(self.tex_rows / (2 * math.pi)) + np.float32(1.0)
        # Wrap z into one texture period: the period index comes from the coarse grid with
        # nearest-neighbour upsampling, so near a wrap the linear z overshoots into the padding.
        period = np.float32(self.axial_period_mm)
        wraps = np.floor(hz * (1.0 / period)) * period
        map_x = (up(hz) - cv2.resize(wraps, (w, h), interpolation=cv2.INTER_NEAREST)) * np.float32(self.px_per_mm)
        map_x += np.float32(self.tex_pad)
        tex = cv2.remap(self.texture_padded, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        diffuse_full = up(diffuse)
        # Per-channel OpenCV arithmetic: several times faster than numpy broadcasting here.
        planes = cv2.split(tex)
        sheen = cv2.multiply(planes[3], up(spec), scale=1.0 / 255.0, dtype=cv2.CV_32F)
        out = cv2.merge([cv2.convertScaleAbs(cv2.add(cv2.multiply(planes[c], diffuse_full, dtype=cv2.CV_32F), sheen))
                         for c in range(3)])

        truths = self._polyps(out, full_t, position, rotation, gain, regions)
        self.last_depth = full_t      # ray distance in mm with the polyps drawn in (depth maps)
        kx = int(round(float(blur_px[0])))
        ky = int(round(float(blur_px[1])))
        if kx > 1 or ky > 1:
            out = cv2.blur(out, (max(1, kx), max(1, ky)))
        out = cv2.bitwise_and(out, out, mask=self.fov_u8)
        if cfg.overlay_text:
            self._draw_text(out, index, time_s)
        return out, truths

    # ------------------------------------------------------------------ polyps
    def _polyp_regions(self, position: np.ndarray, rotation: np.ndarray) -> list:
        """Per polyp: None (out of view), ("outside", extended box) or (image box, extended box);
        boxes are pixel bounds of its projected bounding sphere (extended: not clipped to the image)."""
        cam = self.camera
        h, w = cam.height, cam.width
        regions = []
        for polyp in self.polyps:
            centre, radius = polyp.bound_centre_radius
            rel = rotation.T @ (centre - position)
            dist = float(np.linalg.norm(rel))
            if dist <= radius:
                box = (0, 0, w, h)
                extended = None
            else:
                angular = math.asin(min(1.0, radius / dist))
                off_axis = math.acos(max(-1.0, min(1.0, rel[2] / dist)))
                if off_axis - angular > cam.max_angle * 1.02:
                    regions.append(None)
                    continue
                extended = self._projected_box(rel / dist, angular)
                if extended is None:
                    box = (0, 0, w, h)
                else:
                    x0, y0, x1, y1 = extended
                    box = (max(0, int(math.floor(x0))), max(0, int(math.floor(y0))),
                           min(w, int(math.ceil(x1))), min(h, int(math.ceil(y1))))
            if box[2] <= box[0] or box[3] <= box[1]:
                regions.append(("outside", extended))
                continue
            regions.append((box, extended))
        return regions

    def _polyp_light(self, regions: list, position: np.ndarray) -> tuple[float, float]:
        """(fraction of the field of view covered by polyps, their mean irradiance): a close polyp
        fills the picture with light and the exposure control must see it."""
        cover, light = 0.0, 0.0
        fov_area = float(np.count_nonzero(self.fov_bool))
        for polyp, region in zip(self.polyps, regions):
            if region is None or region[0] == "outside":
                continue
            x0, y0, x1, y1 = region[0]
            share = min(1.0, (x1 - x0) * (y1 - y0) * (math.pi / 4) / fov_area)
            centre, radius = polyp.bound_centre_radius
            surface = max(1.0, float(np.linalg.norm(centre - position)) - radius)
            cover += share
            light += share * 0.9 * (REFERENCE_DISTANCE_MM / surface) ** 2
        if cover <= 0:
            return 0.0, 0.0
        return min(cover, 1.0), light / cover

    def _polyps(self, image: np.ndarray, depth: np.ndarray, position: np.ndarray, rotation: np.ndarray,
                gain: float, regions: list) -> list[PolypTruth]:
        if not self.polyps:
            return []
        h, w = self.camera.height, self.camera.width
        ids = None
        for k, polyp in enumerate(self.polyps):
            region = regions[k]
            if region is None or region[0] == "outside":
                continue
            if ids is None:
                ids = np.zeros((h, w), dtype=np.uint8)
            self._draw_polyp(k, polyp, region[0], image, depth, ids, position, rotation, gain)

        truths = []
        for k, polyp in enumerate(self.polyps):
            region = regions[k]
            if region is None or region[0] == "outside" or ids is None:
                continue
            box, extended = region
            x0, y0, x1, y1 = box
            mine = (ids[y0:y1, x0:x1] == HEAD_CODE_BASE + k) & self.fov_bool[y0:y1, x0:x1]
            count = int(np.count_nonzero(mine))
            if count < MIN_VISIBLE_PIXELS:
                continue
            cols = np.flatnonzero(mine.any(axis=0))
            rws = np.flatnonzero(mine.any(axis=1))
            bbox = (float(x0 + cols[0]), float(y0 + rws[0]), float(x0 + cols[-1] + 1), float(y0 + rws[-1] + 1))
            fraction = self._visible_fraction(k, polyp, extended, ids, position, rotation)
            distance = float(np.linalg.norm(polyp.centre - position))
            truths.append(PolypTruth(polyp_id=polyp.spec.id, box=bbox, diameter_mm=polyp.spec.diameter_mm,
                                     distance_mm=round(distance, 3), visible_fraction=round(fraction, 4)))
        return truths

    def _projected_box(self, direction: np.ndarray, angular: float):
        """Pixel bounding box (unclipped) of a cone around `direction`; None if it wraps behind."""
        cam = self.camera
        theta = math.acos(max(-1.0, min(1.0, float(direction[2]))))
        if theta + angular >= math.pi * 0.98:
            return None
        helper = np.array([1.0, 0.0, 0.0]) if abs(direction[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        e1 = np.cross(direction, helper)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(direction, e1)
        beta = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        ring = (math.cos(angular) * direction[None, :]
                + math.sin(angular) * (np.cos(beta)[:, None] * e1[None, :] + np.sin(beta)[:, None] * e2[None, :]))
        pts = np.concatenate([cam.project(ring), cam.project(direction[None, :])])
        pad = 2.0
        return (float(pts[:, 0].min()) - pad, float(pts[:, 1].min()) - pad,
                float(pts[:, 0].max()) + pad, float(pts[:, 1].max()) + pad)

    def _draw_polyp(self, k: int, polyp: PlacedPolyp, box, image, depth, ids, position, rotation, gain):
        x0, y0, x1, y1 = box
        frx, fry, frz = self.full_rays
        rx, ry, rz = frx[y0:y1, x0:x1], fry[y0:y1, x0:x1], frz[y0:y1, x0:x1]
        r32 = rotation.astype(np.float32)
        dx = r32[0, 0] * rx + r32[0, 1] * ry + r32[0, 2] * rz
        dy = r32[1, 0] * rx + r32[1, 1] * ry + r32[1, 2] * rz
        dz = r32[2, 0] * rx + r32[2, 1] * ry + r32[2, 2] * rz
        region_depth = depth[y0:y1, x0:x1]
        region_ids = ids[y0:y1, x0:x1]
        bodies = [(polyp.head, HEAD_CODE_BASE + k)]
        if polyp.stalk is not None:
            bodies.append((polyp.stalk, STALK_CODE_BASE + k))
        for body, code in bodies:
            t, local = _intersect_ellipsoid(body, position, dx, dy, dz)
            # Only the part inside the lumen exists; what is embedded in the wall is not drawn.
            win = self._above_wall(position, t, dx, dy, dz) & (t < region_depth)
            if not win.any():
                continue
            ys, xs = np.nonzero(win)
            tw = t[ys, xs]
            lx, ly, lz = local[0][ys, xs], local[1][ys, xs], local[2][ys, xs]
            # Normal of an ellipsoid: gradient in the unit frame scaled back by the semi-axes.
            inv = (1.0 / body.semi).astype(np.float32)
            n_world = body.axes.astype(np.float32) @ np.stack([lx * inv[0], ly * inv[1], lz * inv[2]])
            n_world /= np.linalg.norm(n_world, axis=0, keepdims=True) + 1e-9
            ndotv = np.clip(-(n_world[0] * dx[ys, xs] + n_world[1] * dy[ys, xs] + n_world[2] * dz[ys, xs]), 0, 1)
            falloff = (REFERENCE_DISTANCE_MM / np.maximum(tw, 1.0)) ** 2 * self.full_vignette[y0 + ys, x0 + xs]
            diffuse = falloff * (0.12 + 0.88 * ndotv) * gain
            # A wet dome: a faint broad sheen and one small, sharp highlight where it faces the lens.
            n8 = ndotv ** 8
            spec = falloff * (0.12 * n8 + 0.9 * n8 ** 12) * (self.cfg.specular * 220.0 * gain)
            # Surface texture: the mucosa pattern mapped across the polyp, softened and tinted.
            u = (lx * np.float32(body.semi[0]) + np.float32(polyp.texture_offset[0])) * np.float32(self.px_per_mm)
            v = (ly * np.float32(body.semi[1]) + np.float32(polyp.texture_offset[1])) * np.float32(self.px_per_mm)
            texel = _sample_points(self.texture, u, v)
            albedo = (0.7 * texel[:, :3] + 0.3 * 255.0 * MUCOSA_RGB[None, :]) * polyp.tint[None, :]
            image[y0 + ys, x0 + xs] = np.clip(albedo * diffuse[:, None] + spec[:, None], 0, 255).astype(np.uint8)
            region_depth[ys, xs] = tw
            region_ids[ys, xs] = code

    def _visible_fraction(self, k: int, polyp: PlacedPolyp, extended, ids, position, rotation) -> float:
        """Visible head pixels over the head's whole unoccluded projection (inside the image or not)."""
        cam = self.camera
        h, w = cam.height, cam.width
        if extended is None:
            extended = (-cam.focal_px * math.pi + cam.cx, -cam.focal_px * math.pi + cam.cy,
                        cam.focal_px * math.pi + cam.cx, cam.focal_px * math.pi + cam.cy)
        x0, y0 = math.floor(extended[0]), math.floor(extended[1])
        x1, y1 = math.ceil(extended[2]), math.ceil(extended[3])
        area = max(1, (x1 - x0) * (y1 - y0))
        step = max(1, int(math.ceil(math.sqrt(area / DENOMINATOR_SAMPLES))))
        cols, rows = max(1, (x1 - x0) // step), max(1, (y1 - y0) // step)
        # Grid points on integer pixel positions so that inside the image they are real pixels.
        xi = x0 + np.arange(cols) * step
        yi = y0 + np.arange(rows) * step
        gx, gy = np.meshgrid(xi.astype(np.float32) + 0.5, yi.astype(np.float32) + 0.5)
        rx, ry, rz, valid = cam.rays(gx, gy)
        r32 = rotation.astype(np.float32)
        dx = r32[0, 0] * rx + r32[0, 1] * ry + r32[0, 2] * rz
        dy = r32[1, 0] * rx + r32[1, 1] * ry + r32[1, 2] * rz
        dz = r32[2, 0] * rx + r32[2, 1] * ry + r32[2, 2] * rz
        body = polyp.head
        t, _ = _intersect_ellipsoid(body, position, dx, dy, dz)
        full = self._above_wall(position, t, dx, dy, dz) & valid
        total = int(np.count_nonzero(full))
        if total == 0:
            return 0.0
        inside_x = (xi >= 0) & (xi < w)
        inside_y = (yi >= 0) & (yi < h)
        sub = ids[np.clip(yi, 0, h - 1)][:, np.clip(xi, 0, w - 1)]
        seen = (sub == HEAD_CODE_BASE + k) & inside_y[:, None] & inside_x[None, :]
        seen &= self.fov_bool[np.clip(yi, 0, h - 1)][:, np.clip(xi, 0, w - 1)]
        return float(min(1.0, np.count_nonzero(seen & full) / total))

    # ------------------------------------------------------------------ tower text
    def _text_layout(self):
        """Text lines and their origins, placed in the black area left of the lens circle."""
        cam = self.camera
        scale = cam.height / 480.0 * 0.42
        thickness = 1
        line_h = max(6, int(round(cam.height * 0.04)))
        top = [("HAGVIEW SYNTH", None), ("ID " + self.patient, None), (self.name, None),
               ("{date}", None), ("{clock}", None)]
        bottom = [("Eh:A3 Ce:2", None), ("CVP:1 D.F", None), ("Fr {frame}", None)]
        layout = []
        margin = max(2, int(round(cam.width * 0.01)))
        sample = {"date": "2024/01/01", "clock": "00:00:00", "frame": "00000"}
        placed = [(text, margin, line_h * (i + 1)) for i, (text, _) in enumerate(top)]
        placed += [(text, margin, cam.height - margin - line_h * i) for i, (text, _) in enumerate(reversed(bottom))]
        for text, x, y in placed:
            (tw, th), base = cv2.getTextSize(text.format(**sample), cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
            # Keep the strip on the black border: a line that would touch the lens circle is left out.
            corners_x = np.array([x, x + tw + 2, x, x + tw + 2], dtype=np.float64)
            corners_y = np.array([y - th - 2, y - th - 2, y + base + 1, y + base + 1], dtype=np.float64)
            near_x = np.clip(cam.cx, x, x + tw + 2)
            near_y = np.clip(cam.cy, y - th - 2, y + base + 1)
            if (near_x - cam.cx) ** 2 + (near_y - cam.cy) ** 2 > (cam.radius_px + 1) ** 2 and \
                    corners_y.min() >= 0 and corners_y.max() < cam.height and corners_x.max() < cam.width:
                layout.append((text, x, y))
        return {"scale": scale, "thickness": thickness, "lines": layout}

    def _draw_text(self, image: np.ndarray, index: int, time_s: float) -> None:
        layout = self.text_boxes
        now = self.start_time + _dt.timedelta(seconds=time_s)
        values = {"date": now.strftime("%Y/%m/%d"), "clock": now.strftime("%H:%M:%S"), "frame": f"{index:05d}"}
        for text, x, y in layout["lines"]:
            cv2.putText(image, text.format(**values), (x, y), cv2.FONT_HERSHEY_SIMPLEX, layout["scale"],
                        (235, 235, 235), layout["thickness"], cv2.LINE_AA)
