"""One video frame -> BGR pixels, with every bound on hostile input; torch-free.

Shared by the model's preprocessing (``operators.vision_frames``) and the web view's thumbnails
(``stream.view.thumbs``), so a frame is decoded the same way, and refused for the same reasons,
wherever it is shown or scored. It imports no torch: the view process stays small.
"""

from __future__ import annotations

import numpy as np

from operators._opencv import cv2  # OpenCV with its decoders bounded: imported before any other cv2 use here
from stream.contract import MAX_FRAME_SIDE, ContractError, VideoFrame, declared_size

__all__ = ["decode_frame"]

# (factor, flag): a JPEG at least ``factor`` times wider than wanted is decoded at 1/factor scale
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def decode_frame(frame: VideoFrame, *, min_width: int | None = None) -> tuple[np.ndarray | None, str]:
    """(BGR uint8 image (H, W, 3), "") or (None, reason). Never raises for bad data.

    The decode is bounded whatever the header says: the size a JPEG or PNG declares is read
    first (the contract's own walk, ``declared_size``) and a frame over ``MAX_FRAME_SIDE`` is
    refused before OpenCV allocates anything, so a frame that reached the model without the
    contract check, or slipped past it, costs microseconds instead of gigabytes. OpenCV's own
    limits (``operators._opencv``) stand behind this, should its reading of a header differ.

    ``min_width``: the caller shrinks the picture to this width anyway (a thumbnail), so a JPEG
    far wider is decoded at 1/2, 1/4 or 1/8 scale, never below ``min_width`` (several times cheaper).
    """
    try:
        if frame.encoding == "raw":
            w, h = frame.width or 0, frame.height or 0
            if w * h * 3 != len(frame.data) or w == 0:
                return None, f"raw frame is {len(frame.data)} bytes, expected {w}x{h}x3"
            return np.frombuffer(frame.data, dtype=np.uint8).reshape(h, w, 3), ""
        try:
            size = declared_size(frame.data, frame.encoding)
        except ContractError as exc:
            return None, f"{frame.encoding} frame not decoded: {exc.detail}"
        if max(size) > MAX_FRAME_SIDE:
            return None, (f"{frame.encoding} frame declares {size.width}x{size.height} pixels; "
                          f"the model decodes no side over {MAX_FRAME_SIDE}")
        flag = cv2.IMREAD_COLOR
        if frame.encoding == "jpeg" and min_width is not None:
            flag = next((reduced for factor, reduced in _REDUCED if size.width // factor >= min_width), flag)
        img = cv2.imdecode(np.frombuffer(frame.data, dtype=np.uint8), flag)
        if img is None:
            return None, f"OpenCV could not decode the {frame.encoding} frame ({len(frame.data)} bytes)"
        return img, ""
    except (cv2.error, ValueError) as exc:
        return None, f"decode failed: {exc}".splitlines()[0]
