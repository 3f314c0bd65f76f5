"""OpenCV, imported with its image decoders bounded to ``MAX_FRAME_SIDE``.

OpenCV checks a decoded image's size against ``OPENCV_IO_MAX_IMAGE_WIDTH``, ``_HEIGHT`` and
``_PIXELS`` after reading the header and before allocating the image (``validateInputImageSize``
in imgcodecs' loadsave.cpp; a refusal is a ``cv2.error``). It reads them once, into static
constants, when the library loads: they must be in the environment before the first
``import cv2`` of the process, which is why every model module imports OpenCV from here. The
defaults (2^20 a side, 2^30 pixels: 3 GB of BGR) let a few kilobytes of crafted JPEG cost
gigabytes and seconds.

This is the second line: ``operators.vision.decode_frame`` reads the size the header declares
itself (``stream.contract.declared_size``) and refuses a frame over the bound before calling
OpenCV, which also holds where OpenCV was imported before this module (a caller that imported
cv2 first, in the same process, keeps OpenCV's own defaults; ``BOUNDED`` says which). A smaller
value already in the environment is kept.
"""

from __future__ import annotations

import os
import sys

from stream.contract import MAX_FRAME_SIDE

__all__ = ["BOUNDED", "LIMITS", "cv2"]

LIMITS = {
    "OPENCV_IO_MAX_IMAGE_WIDTH": MAX_FRAME_SIDE,
    "OPENCV_IO_MAX_IMAGE_HEIGHT": MAX_FRAME_SIDE,
    "OPENCV_IO_MAX_IMAGE_PIXELS": MAX_FRAME_SIDE * MAX_FRAME_SIDE,
}

for _name, _bound in LIMITS.items():
    _given = os.environ.get(_name, "")
    if not (_given.isdigit() and 0 < int(_given) <= _bound):
        os.environ[_name] = str(_bound)

BOUNDED: bool = "cv2" not in sys.modules  # whether the limits above reach OpenCV in this process

import cv2  # noqa: E402  (after the environment is set: OpenCV reads it once, when it loads)
