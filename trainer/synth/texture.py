"""Tileable mucosa texture with a physical scale: vessels and mucosal grain sized in millimetres.

The texture is wrapped around the lumen wall (columns = along the axis, rows = around the
circumference) at a fixed number of texels per millimetre, so how large the vessel pattern
looks on screen tells the distance, as it does in real video. Noise is shaped in the Fourier
domain, which makes it periodic in both directions: the seams never show.
"""
from __future__ import annotations

import cv2
import numpy as np

MUCOSA_RGB = np.array([0.92, 0.46, 0.36], dtype=np.float32)   # albedo of healthy mucosa under white light


def _band_noises(rng: np.random.Generator, shape: tuple[int, int], px_per_mm: float,
                 bands: list[tuple[float, float]]) -> list[np.ndarray]:
    """Periodic noise layers, one per (wavelength_mm, relative bandwidth), each of unit variance.

    Random spectra are shaped by a ring around 1 / wavelength and transformed back in one batch;
    a spectrum of independent Gaussians gives independent, seamlessly tiling layers.
    """
    rows, cols = shape
    ky = np.fft.fftfreq(rows).astype(np.float32) * np.float32(px_per_mm)     # cycles per millimetre
    kx = np.fft.rfftfreq(cols).astype(np.float32) * np.float32(px_per_mm)
    k = np.hypot(ky[:, None], kx[None, :])
    spectra = np.empty((len(bands), rows, len(kx)), dtype=np.complex64)
    for i, (wavelength_mm, bandwidth) in enumerate(bands):
        k0 = 1.0 / wavelength_mm
        ring = np.exp(-((k - k0) / (bandwidth * k0)) ** 2)
        spectra[i].real = rng.standard_normal((rows, len(kx)), dtype=np.float32) * ring
        spectra[i].imag = rng.standard_normal((rows, len(kx)), dtype=np.float32) * ring
    layers = np.fft.irfft2(spectra, s=shape, axes=(-2, -1))
    return [(layer / (layer.std() + 1e-12)).astype(np.float32) for layer in layers]


def _vessels(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin lines along the zero crossings of band-limited noise: a branching, vessel-like net."""
    return np.exp(-(noise / width) ** 2)


def make_mucosa_texture(rng: np.random.Generator, circumference_mm: float, axial_period_mm: float,
                        px_per_mm: float) -> np.ndarray:
    """uint8 (rows, cols, 4): RGB albedo and a gloss channel (wet sheen, 255 = fully glossy).

    rows span the circumference exactly once, cols one axial period.
    """
    rows = max(16, int(round(circumference_mm * px_per_mm)))
    cols = max(16, int(round(axial_period_mm * px_per_mm)))
    shape = (rows, cols)

    (big_net, big_fade_n, small_net, small_fade_n, blotch, grain, glint, wet_n) = _band_noises(
        rng, shape, px_per_mm,
        [(14.0, 0.35), (30.0, 0.8), (4.5, 0.35), (12.0, 0.8), (25.0, 0.9), (0.9, 0.6), (1.6, 0.5), (20.0, 0.8)])
    big = _vessels(big_net, 0.10)
    big_fade = np.clip(0.6 + 0.6 * big_fade_n, 0.0, 1.0)
    small = _vessels(small_net, 0.07)
    small_fade = np.clip(0.5 + 0.5 * small_fade_n, 0.0, 1.0)

    # Vessels darken mostly green and blue: they read as red-purple on pink mucosa.
    vessel_rgb = np.array([0.35, 0.75, 0.70], dtype=np.float32)
    strength = 0.4 * big * big_fade + 0.4 * small * small_fade
    rgb = MUCOSA_RGB[None, None, :] * (1.0 - strength[..., None] * vessel_rgb[None, None, :])
    rgb *= (1.0 + 0.07 * blotch + 0.04 * grain)[..., None]
    rgb[..., 0] *= 1.0 + 0.03 * blotch          # redder patches
    rgb = cv2.GaussianBlur(rgb, (0, 0), 0.6)    # a little pre-filtering against shimmer when far away

    # Wet sheen: a low floor everywhere and sparse glints where the mucus film is thick.
    sparkle = np.clip((glint - 2.0) / 1.0, 0.0, 1.0)
    wet = np.clip(0.2 + 0.8 * wet_n, 0.0, 1.0)
    gloss = 0.3 + 0.7 * sparkle * wet

    out = np.empty((rows, cols, 4), dtype=np.uint8)
    out[..., :3] = np.clip(rgb * 255.0, 0, 255).astype(np.uint8)
    out[..., 3] = np.clip(gloss * 255.0, 0, 255).astype(np.uint8)
    return out
