"""Camera path: travel between polyps, inspection, rotation, tremor and sudden swings.

Everything is planned up front as per-frame arrays (position, orientation, blur), so any
frame can be rendered on its own (random access) and the same seed gives the same path.

A video with polyps is a sequence of visits. Each visit travels (advance or withdrawal) to
the next polyp, then inspects it: the tip bends towards it while the camera moves between
near and far distances; some visits contain a sudden swing that throws the polyp out of view
for a moment before it comes back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .camera import FisheyeCamera
from .config import SynthConfig
from .scene import Colon, PlacedPolyp, PolypSpec, place_polyp


@dataclass
class CameraPath:
    position: np.ndarray       # (N, 3) world mm
    rotation: np.ndarray       # (N, 3, 3) columns: camera right, down, forward in world
    blur_px: np.ndarray        # (N, 2) motion blur extent along image x and y, pixels
    swings: list[tuple[int, int, int]]   # (polyp id or 0, first frame, last frame) swung away


def _smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.5 or len(values) < 3:
        return values
    radius = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(values, (radius, radius), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def _sines(rng: np.random.Generator, t: np.ndarray, freq: tuple[float, float], count: int) -> np.ndarray:
    """A smooth random signal with unit peak-ish amplitude from a few sines."""
    out = np.zeros_like(t)
    for _ in range(count):
        out += np.sin(2 * np.pi * rng.uniform(*freq) * t + rng.uniform(0, 2 * np.pi))
    return out / math.sqrt(count)


def _rotation_from_to(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation taking unit vector a to unit vector b."""
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -0.999999:
        return np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / (np.linalg.norm(axis) + 1e-12)
    x, y, z = axis
    c, s = math.cos(angle), math.sin(angle)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def plan_video(rng: np.random.Generator, cfg: SynthConfig, colon: Colon, specs: list[PolypSpec],
               camera: FisheyeCamera) -> tuple[CameraPath, list[PlacedPolyp]]:
    m = cfg.motion
    n_frames = cfg.num_frames
    fps = cfg.fps
    t = np.arange(n_frames) / fps
    duration = max(n_frames / fps, 1e-3)
    direction = -1.0 if rng.random() < m.withdrawal_probability else 1.0
    n_polyps = len(specs)

    # --- axial path: keyframes (time, camera z), then smoothed ------------------------------
    key_t: list[float] = []
    key_z: list[float] = []
    placed: list[PlacedPolyp] = []
    aim = np.zeros(n_frames)
    aim_target = np.full(n_frames, -1, dtype=int)
    swing_plans: list[tuple[int, float, float, float]] = []     # (polyp index, start, hold, angle)
    if n_polyps == 0:
        speed = rng.uniform(*m.travel_speed_mm_s)
        key_t += [0.0, duration]
        key_z += [0.0, direction * speed * duration * 0.6]
        if rng.random() < m.swing_probability:
            swing_plans.append((-1, rng.uniform(0.2, 0.6) * duration, rng.uniform(*m.swing_hold_s),
                                math.radians(rng.uniform(*m.swing_deg))))
    else:
        window = duration / n_polyps
        polyp_z = 0.0
        for i, spec in enumerate(specs):
            start, end = i * window, (i + 1) * window
            travel = 0.0 if i == 0 else 0.25 * window
            near = max(m.inspect_distance_mm[0], spec.diameter_mm * 0.5 + 6.0)
            far = max(m.inspect_distance_mm[1], near + 10.0)
            if i > 0:
                gap = float(np.clip(rng.uniform(*m.travel_speed_mm_s) * travel, 50.0, 160.0))
                polyp_z += direction * gap
            z_polyp = colon.between_folds(polyp_z)
            polyp_z = z_polyp
            phi = float(rng.uniform(0, 2 * math.pi))
            placed.append(place_polyp(rng, colon, spec, z_polyp, phi))
            inspect_start = start + travel
            span = end - inspect_start
            # Distances (camera behind the polyp along the axis) at fractions of the inspection.
            if direction > 0:
                profile = [far, rng.uniform(near, 0.5 * (near + far)), rng.uniform(0.5 * (near + far), far),
                           near, rng.uniform(near, far)]
            else:
                profile = [near * 0.6, rng.uniform(0.5 * (near + far), far), rng.uniform(near, 0.5 * (near + far)),
                           near, far]
            for frac, dz in zip(np.linspace(0.0, 1.0, len(profile)), profile):
                key_t.append(inspect_start + frac * span * 0.98)
                key_z.append(z_polyp - dz)
            # Bend towards the polyp during the inspection (a raised-cosine bump).
            inside = (t >= inspect_start) & (t < end)
            phase = (t[inside] - inspect_start) / max(span, 1e-6)
            aim[inside] = rng.uniform(*m.aim_weight) * np.sin(np.pi * np.clip(phase * 1.2, 0, 1)) ** 2
            aim_target[inside] = i
            if rng.random() < m.swing_probability:
                hold = rng.uniform(*m.swing_hold_s)
                swing_start = inspect_start + rng.uniform(0.35, 0.55) * span
                swing_plans.append((i, swing_start, hold, math.radians(rng.uniform(*m.swing_deg))))
    cam_z = np.interp(t, key_t, key_z)
    cam_z = _smooth(cam_z, 0.3 * fps)

    # --- lateral position ---------------------------------------------------------------
    cx, cy = colon.centre(cam_z)
    offset = m.lateral_offset * colon.radius_mm * (1 - colon.fold_depth)
    ox = offset * _sines(rng, t, (0.03, 0.15), 2) / 1.5
    oy = offset * _sines(rng, t, (0.03, 0.15), 2) / 1.5
    jitter_pos = m.jitter_mm * np.stack([_sines(rng, t, (3.0, 8.0), 3) for _ in range(3)], axis=1)
    position = np.stack([cx + ox, cy + oy, cam_z], axis=1) + jitter_pos

    # --- orientation ---------------------------------------------------------------------
    sx, sy = colon.centre_slope(cam_z)
    axis_dir = np.stack([sx, sy, np.ones_like(sx)], axis=1)
    axis_dir /= np.linalg.norm(axis_dir, axis=1, keepdims=True)
    roll_speed = math.radians(m.roll_deg_s) * _sines(rng, t, (0.02, 0.12), 2)
    roll = np.cumsum(roll_speed) / fps + rng.uniform(0, 2 * math.pi)
    wander = math.radians(m.wander_deg) * np.stack([_sines(rng, t, (0.05, 0.3), 2) for _ in range(2)], axis=1)
    jitter = math.radians(m.jitter_deg) * np.stack([_sines(rng, t, (3.0, 8.0), 3) for _ in range(2)], axis=1)
    tilt = wander + jitter

    swing_env = np.zeros(n_frames)
    swing_axis = np.zeros((n_frames, 3))
    swings = []
    ramp = max(m.swing_ramp_s, 1.0 / fps)
    for target, start, hold, angle in swing_plans:
        rise = _smoothstep((t - start) / ramp)
        fall = 1.0 - _smoothstep((t - (start + ramp + hold)) / ramp)
        env = np.minimum(rise, fall) * angle
        active = env > 1e-6
        swing_env = np.where(active, env, swing_env)
        frames = np.flatnonzero(active)
        if len(frames):
            swings.append((0 if target < 0 else specs[target].id, int(frames[0]), int(frames[-1])))
        if target < 0:
            random_axis = np.array([math.cos(a := rng.uniform(0, 2 * math.pi)), math.sin(a), 0.0])
            swing_axis[active] = random_axis
        else:
            swing_axis[active] = np.nan   # towards/away from the polyp: resolved per frame below
            aim_target[active] = target

    ez = np.array([0.0, 0.0, 1.0])
    rotation = np.empty((n_frames, 3, 3))
    for k in range(n_frames):
        forward = axis_dir[k]
        to_polyp = None
        if aim_target[k] >= 0:
            to_polyp = placed[aim_target[k]].centre - position[k]
            to_polyp /= np.linalg.norm(to_polyp)
            blend = (1 - aim[k]) * forward + aim[k] * to_polyp
            forward = blend / np.linalg.norm(blend)
        base = _rotation_from_to(ez, forward) @ _axis_angle(ez, roll[k])
        local = _axis_angle(np.array([1.0, 0.0, 0.0]), tilt[k, 0]) @ _axis_angle(np.array([0.0, 1.0, 0.0]), tilt[k, 1])
        rot = base @ local
        if swing_env[k] > 0:
            if np.isnan(swing_axis[k, 0]) and to_polyp is not None:
                axis = np.cross(to_polyp, rot[:, 2])     # turning about it moves the view away from the polyp
                if np.linalg.norm(axis) < 1e-6:
                    axis = rot[:, 0]
            else:
                axis = rot @ np.nan_to_num(swing_axis[k])
            rot = _axis_angle(axis, swing_env[k]) @ rot
        rotation[k] = rot

    # --- motion blur: image shift during the exposure --------------------------------------
    blur = np.zeros((n_frames, 2))
    if n_frames > 1 and cfg.motion_blur > 0:
        forward = rotation[:, :, 2]
        delta_dir = np.gradient(forward, axis=0)                          # per frame
        shift_x = np.einsum("ni,ni->n", delta_dir, rotation[:, :, 0]) * camera.focal_px
        shift_y = np.einsum("ni,ni->n", delta_dir, rotation[:, :, 1]) * camera.focal_px
        roll_rate = np.abs(np.gradient(roll)) * camera.radius_px * 0.5
        advance = np.abs(np.gradient(cam_z)) / (0.8 * colon.radius_mm) * camera.radius_px * 0.5
        blur[:, 0] = np.abs(shift_x) + 0.5 * (roll_rate + advance)
        blur[:, 1] = np.abs(shift_y) + 0.5 * (roll_rate + advance)
        blur *= cfg.motion_blur
    return CameraPath(position=position, rotation=rotation, blur_px=blur, swings=swings), placed
