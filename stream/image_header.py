"""The size an encoded frame declares in its header, read without decoding it.

Two places must agree on it: ``decode`` (the contract check on the event loop: a JPEG or PNG
declaring a side over ``limits.max_frame_side`` is a ``bad_image`` dead letter) and the model's
frame decoding (``operators.vision.decode_frame``, which refuses such a frame before OpenCV
allocates anything). A few kilobytes of JPEG or PNG can declare 65535 x 65535 pixels: 12 GB
once decoded.

The walk is strict on purpose. libjpeg skips junk between segments (with a warning) and then
decodes whatever size the frame header behind the junk declares, so a walk that gave up on junk
and let the frame through was a way around the bound: four junk bytes after the start marker and
a 16000 x 16000 frame was decoded (3 s, 1.5 GB). Here a JPEG whose segments do not lead to its
frame header within a bounded walk, or a PNG whose first chunk is not a well-formed ``IHDR``, has
no size anyone can vouch for and is refused. Real encoders write exactly that layout.
"""

from __future__ import annotations

from typing import NamedTuple

from stream.errors import ContractError, Reason

__all__ = ["JPEG_HEADER_STEPS", "ImageSize", "declared_size"]

JPEG_HEADER_STEPS = 256  # real files reach their frame header within a dozen segments
_JPEG_SOI = b"\xff\xd8"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_IHDR = (13).to_bytes(4, "big") + b"IHDR"
# start-of-frame markers; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# markers without a length field, or that may not come before the frame header: TEM, RSTn, SOI,
# EOI, SOS (a scan before the frame), and the reserved ones below C0
_NOT_BEFORE_FRAME = frozenset(range(0x00, 0xC0)) | frozenset(range(0xD0, 0xDB))


class ImageSize(NamedTuple):
    """Pixels, as the header declares them."""

    width: int
    height: int


def declared_size(data: bytes, encoding: str) -> ImageSize:
    """The size a JPEG's frame header or a PNG's ``IHDR`` declares.

    Raises:
        ContractError: ``bad_image``, saying why, when the header cannot vouch for a size:
            another signature, junk where a marker belongs, a segment running past the end,
            no frame header within ``JPEG_HEADER_STEPS`` segments, a missing ``IHDR``, a zero side.
    """
    if encoding == "jpeg":
        size = _jpeg_size(data)
    elif encoding == "png":
        size = _png_size(data)
    else:
        raise ContractError(Reason.BAD_IMAGE, f"no header to read the size of a {encoding!r} frame from")
    if size.width == 0 or size.height == 0:
        raise ContractError(Reason.BAD_IMAGE, f"{encoding.upper()} declares {size.width}x{size.height} pixels")
    return size


def _jpeg_size(value: bytes) -> ImageSize:
    if not value.startswith(_JPEG_SOI):
        raise ContractError(Reason.BAD_IMAGE, "JPEG lacks its start marker")
    i, n = 2, len(value)
    for _ in range(JPEG_HEADER_STEPS):  # bounded: fill bytes and empty segments cost a step each
        if i + 4 > n:
            raise ContractError(Reason.BAD_IMAGE, "JPEG ends before its frame header")
        marker = value[i + 1]
        if value[i] != 0xFF:
            raise ContractError(Reason.BAD_IMAGE, f"JPEG has junk where a marker belongs (byte {i}), "
                                                  "before its frame header")
        if marker == 0xFF:  # a fill byte
            i += 1
            continue
        if marker in _NOT_BEFORE_FRAME:
            raise ContractError(Reason.BAD_IMAGE, f"JPEG has marker {marker:02X} before its frame header")
        length = int.from_bytes(value[i + 2:i + 4], "big")  # of the segment, its own 2 bytes included
        if length < 2 or i + 2 + length > n:
            raise ContractError(Reason.BAD_IMAGE, f"JPEG segment {marker:02X} at byte {i} runs past the end")
        if marker in _SOF:
            if length < 8:
                raise ContractError(Reason.BAD_IMAGE, f"JPEG frame header of {length} bytes is too short")
            return ImageSize(int.from_bytes(value[i + 7:i + 9], "big"), int.from_bytes(value[i + 5:i + 7], "big"))
        i += 2 + length
    raise ContractError(Reason.BAD_IMAGE, f"JPEG has no frame header within {JPEG_HEADER_STEPS} segments")


def _png_size(value: bytes) -> ImageSize:
    # libpng requires IHDR first, 13 bytes long; the CRC is libpng's to check
    if not value.startswith(_PNG_SIG) or value[8:16] != _PNG_IHDR or len(value) < 33:
        raise ContractError(Reason.BAD_IMAGE, "PNG does not open with its signature and IHDR chunk")
    return ImageSize(int.from_bytes(value[16:20], "big"), int.from_bytes(value[20:24], "big"))
