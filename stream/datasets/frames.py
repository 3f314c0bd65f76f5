"""A handwritten 8x8 digit scan rendered as a small camera frame of a sheet of paper.

The scan is upscaled (cubic, so strokes look like ink rather than blocks), placed with some
shift, scale and rotation on a tinted sheet under uneven light, then blurred (focus), partly
covered by an object in front of it (occlusion) and given sensor noise, by the corruption level.
"""

from __future__ import annotations

import numpy as np

from stream.datasets.levels import Corruption

__all__ = ["render_digit"]


def _span(rng: np.random.Generator, r: tuple[float, float]) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def render_digit(scan: np.ndarray, level: Corruption, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """``scan``: 8x8 ink values 0-16 (scikit-learn's ``load_digits``). Returns a BGR uint8 frame
    ``size`` x ``size``."""
    import cv2

    j = level.jitter
    ink = np.clip(scan.astype(np.float32) / 16.0, 0, 1)
    side = max(8, round(size * rng.uniform(0.7 - 0.2 * j, 0.8)))
    glyph = np.clip(cv2.resize(ink, (side, side), interpolation=cv2.INTER_CUBIC), 0, 1)
    canvas = np.zeros((size, size), np.float32)
    room = size - side
    y0 = round(room / 2 + rng.uniform(-1, 1) * j * room / 2)
    x0 = round(room / 2 + rng.uniform(-1, 1) * j * room / 2)
    canvas[y0:y0 + side, x0:x0 + side] = glyph
    angle = float(rng.uniform(-20, 20) * j)
    turn = cv2.getRotationMatrix2D((x0 + side / 2, y0 + side / 2), angle, 1.0)
    canvas = cv2.warpAffine(canvas, turn, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)

    paper = rng.uniform(0.75, 0.95) * (1 - 0.1 * rng.random(3)).astype(np.float32)  # BGR tint
    contrast = _span(rng, level.contrast)
    ink_colour = paper * (1 - contrast)
    img = paper[None, None, :] * (1 - canvas[..., None]) + ink_colour[None, None, :] * canvas[..., None]
    # uneven light: a linear ramp in a random direction
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    img = img * (1 + 0.5 * j * (np.cos(theta) * xx + np.sin(theta) * yy))[..., None]

    sigma = _span(rng, level.blur) * size / 64
    if sigma > 0.05:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma)
    if rng.random() < level.occlusion:
        area = _span(rng, level.occluded) * side * side
        h = int(np.clip(np.sqrt(area) * rng.uniform(0.6, 1.6), 2, side))
        w = int(np.clip(area / h, 2, side))
        oy = y0 + int(rng.integers(0, max(1, side - h + 1)))
        ox = x0 + int(rng.integers(0, max(1, side - w + 1)))
        colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        img[oy:oy + h, ox:ox + w] = colour
    noise = _span(rng, level.noise)
    if noise > 0:
        img = img + rng.normal(0, noise, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
