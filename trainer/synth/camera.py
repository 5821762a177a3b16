"""The endoscope's wide-angle lens: an equidistant fisheye (image radius = f * angle off axis).

Camera frame: x right, y down, z forward (optical axis). The circular image of the lens is
placed right of centre, as endoscopy towers show it, leaving a black strip on the left for the
tower's text; the circle is clipped at the top and bottom edges like a real scope's picture.
"""
from __future__ import annotations

import math

import numpy as np


class FisheyeCamera:
    def __init__(self, width: int, height: int, fov_deg: float = 140.0):
        self.width = int(width)
        self.height = int(height)
        self.fov_deg = float(fov_deg)
        self.radius_px = 0.54 * self.height                     # field-of-view circle radius
        self.cx = min(0.56 * self.width, self.width - self.radius_px * 0.98)
        self.cy = 0.5 * self.height
        self.max_angle = math.radians(self.fov_deg) / 2.0
        self.focal_px = self.radius_px / self.max_angle          # pixels per radian

    # Pixel centres sit at integer + 0.5 (so a box edge at x=3 lies between pixels 2 and 3).
    def pixel_grid(self, x0: float, y0: float, cols: int, rows: int, step: float = 1.0):
        xs = x0 + (np.arange(cols, dtype=np.float32) + 0.5) * step
        ys = y0 + (np.arange(rows, dtype=np.float32) + 0.5) * step
        return np.meshgrid(xs, ys)

    def rays(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Unit ray directions (camera frame) through pixel positions, and whether the lens sees
        them at all (angle below 180 degrees)."""
        dx = px - np.float32(self.cx)
        dy = py - np.float32(self.cy)
        r = np.sqrt(dx * dx + dy * dy)
        theta = r / np.float32(self.focal_px)
        valid = theta < np.float32(math.pi * 0.999)
        sin_t = np.sin(theta)
        inv_r = np.where(r > 1e-6, 1.0 / np.maximum(r, 1e-6), 0.0).astype(np.float32)
        return (sin_t * dx * inv_r).astype(np.float32), (sin_t * dy * inv_r).astype(np.float32), \
            np.cos(theta).astype(np.float32), valid

    def fov_mask(self, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        dx = px - self.cx
        dy = py - self.cy
        return dx * dx + dy * dy <= self.radius_px ** 2

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points (N, 3) -> pixel coordinates (N, 2); defined for any direction."""
        x, y, z = points_cam[:, 0], points_cam[:, 1], points_cam[:, 2]
        lateral = np.hypot(x, y)
        theta = np.arctan2(lateral, z)
        r = self.focal_px * theta
        scale = np.where(lateral > 1e-9, r / np.maximum(lateral, 1e-9), 0.0)
        return np.stack([self.cx + x * scale, self.cy + y * scale], axis=1)

    def fov_mask_image(self) -> np.ndarray:
        """uint8 HxW, 255 inside the field-of-view circle."""
        px, py = self.pixel_grid(0.0, 0.0, self.width, self.height)
        return (self.fov_mask(px, py) * 255).astype(np.uint8)
