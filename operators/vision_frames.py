"""Frames -> pixels: decoding, sampling, cropping and normalising, shared by every vision encoder.

Kept apart from the encoders because none of it depends on the backbone: every family sees the
same (N, 3, S, S) normalised crops, and every bound on hostile input (declared sizes, aspect
ratio, corrupt frames in a long window) lives here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from operators._opencv import cv2  # OpenCV with its decoders bounded: imported before any other cv2 use here
from operators.frame_decode import decode_frame  # one decode, shared with the web view
from stream.contract import VideoFrame

__all__ = ["MAX_ASPECT", "SampledFrames", "crop_frame", "decode_frame", "normalise_frames", "sample_frames",
           "sample_indices"]

MAX_ASPECT = 4  # long side / short side kept before resizing; the centre crop is square anyway


def sample_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (first and last included); all when k == 0 or k >= n."""
    if k <= 0 or k >= n:
        return list(range(n))
    if k == 1:
        return [(n - 1) // 2]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _nearest_untried(i: int, n: int, tried: set[int], queued: list[int]) -> int | None:
    """The index nearest ``i`` (the lower one on a tie) in ``range(n)``, neither tried nor queued.

    Searched outward from ``i`` rather than by sorting all ``n`` candidates per failed frame:
    that was quadratic, so a long window of corrupt frames (4,000) held a preprocessing thread
    for seconds; the walk stops at the first free index, next to ``i`` in practice, and nothing
    is searched once every frame is tried or queued (``frames_per_window: 0``).
    """
    if len(tried) + len(queued) >= n:  # disjoint: an index leaves the queue before it is tried
        return None
    for d in range(1, n):
        for j in (i - d, i + d):
            if 0 <= j < n and j not in tried and j not in queued:
                return j
    return None


class SampledFrames(NamedTuple):
    """One window's prepared frames and the ones that failed, as (frame index, reason), sorted."""

    images: list[np.ndarray]
    dropped: list[tuple[int, str]]


def sample_frames(frames: list[VideoFrame], k: int, prepare: Callable[[np.ndarray], np.ndarray]) -> SampledFrames:
    """Decode ``k`` frames spread evenly over the window (all when ``k`` is 0), each passed
    through ``prepare`` (the crop) as soon as it is decoded, so a window never holds more than
    one full-size picture. A sampled frame that fails is replaced by the nearest untried one,
    so a corrupt frame costs a substitute, not the window's picture."""
    images: list[np.ndarray] = []
    bad: list[tuple[int, str]] = []
    n = len(frames)
    target = k if k > 0 else n
    tried: set[int] = set()
    queue = sample_indices(n, k)
    while queue and len(images) < target:
        i = queue.pop(0)
        tried.add(i)
        img, reason = decode_frame(frames[i])
        if img is None:
            bad.append((i, reason))
            alt = _nearest_untried(i, n, tried, queue)
            if alt is not None:
                queue.append(alt)
            continue
        images.append(prepare(img))
    bad.sort()
    return SampledFrames(images, bad)


def crop_frame(img_bgr: np.ndarray, short_side: int, size: int) -> np.ndarray:
    """The (S, S, 3) uint8 RGB centre crop the backbone sees (a view; ``normalise_frames`` scales it)."""
    h, w = img_bgr.shape[:2]
    # Scaling the short side to 256 scales the long side too: a 1 x 20,000 raw frame (60 KB)
    # became a 256 x 5,120,000 image (4 GB, 13 s) only to keep its centre square, and a slightly
    # longer one gets the processor OOM-killed. Only the centre of the long side can reach the
    # crop, so cut it down first; frames within MAX_ASPECT (every real camera) are untouched.
    if max(h, w) > MAX_ASPECT * min(h, w):
        keep = MAX_ASPECT * min(h, w)
        if h > w:
            img_bgr = img_bgr[(h - keep) // 2:(h - keep) // 2 + keep]
        else:
            img_bgr = img_bgr[:, (w - keep) // 2:(w - keep) // 2 + keep]
        h, w = img_bgr.shape[:2]
    scale = short_side / min(h, w)
    nh, nw = max(short_side, round(h * scale)), max(short_side, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    img = cv2.resize(img_bgr, (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[top:top + size, left:left + size, ::-1]


def normalise_frames(crops: list[np.ndarray], mean: tuple[float, float, float],
                     std: tuple[float, float, float]) -> torch.Tensor:
    """(N, 3, S, S) float32 channels-last pixels, (x / 255 - mean) / std, from N uint8 RGB crops.

    One vectorised pass over the batch rather than a float copy, a normalisation and a transpose
    per frame; the result is already the NHWC tensor the folded convolutions want.
    """
    x = torch.from_numpy(np.stack(crops)).float().div_(255.0)
    x = x.sub_(torch.tensor(mean, dtype=torch.float32)).div_(torch.tensor(std, dtype=torch.float32))
    return x.permute(0, 3, 1, 2)
