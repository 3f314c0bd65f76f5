"""Malformed records of many kinds, each with the dead-letter reason docs/contract.md gives it.

Every record carries two extra headers, ``x-fault-kind`` and ``x-fault-seq``: the contract keeps
unknown headers on dead letters, so the witness can match each dead letter to what was sent and
check its reason without trusting the processor's counters. Records use the keys of the valid
sources (so they land on the same partitions as the stream they are mixed into) and event times
inside its span; only ``bad_key`` kinds have other keys, and ``decode_failed`` frames use the
junk sources ``JUNK_PREFIX-N`` (a frame that fails in preprocessing is still counted in its
window, which would make a valid window differ from the truth).

Left out on purpose: decompression bombs that pass the header checks (finding 7 of issue 12: each
costs ~1.5 GB and seconds to decode today) and ``ts_out_of_range`` (which record a source sees
first depends on the read order of three topics, so the expected reason is not fixed).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["JUNK_PREFIX", "KINDS", "FaultRecord", "Kind", "malformed_records"]

JUNK_PREFIX = "faultjunk"
H_KIND, H_SEQ = "x-fault-kind", "x-fault-seq"

_IMG = np.full((48, 64, 3), 90, np.uint8)
_JPEG = cv2.imencode(".jpg", _IMG)[1].tobytes()
_PNG = cv2.imencode(".png", _IMG)[1].tobytes()
_PCM_CT = b"audio/pcm;format=s16le;rate=16000;channels=1"


def _bogus_huffman(jpeg: bytes) -> bytes:
    """The JPEG with its first Huffman table overwritten: the header (and its declared size) is
    sound, so the cheap checks pass and only the full decode in preprocessing fails."""
    i = jpeg.find(b"\xff\xc4")
    length = int.from_bytes(jpeg[i + 2:i + 4], "big")
    return jpeg[:i + 4] + b"\xff" * (length - 2) + jpeg[i + 2 + length:]


_JPEG_UNDECODABLE = _bogus_huffman(_JPEG)


@dataclass(frozen=True)
class FaultRecord:
    """One record to send: topic modality, key, value, headers (the fault headers included)."""

    modality: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


# A builder gets (source key, event time ns) and returns (key, value, contract headers).
Builder = Callable[[bytes, int], tuple[bytes | None, bytes, list[tuple[str, bytes]]]]


@dataclass(frozen=True)
class Kind:
    """A kind of malformed record: its topic, the reason the contract gives it, how many per 10,000."""

    name: str
    modality: str
    reason: str
    build: Builder
    weight: float = 1.0


def _h(ts: int | str | None, ct: bytes | None, version: bytes | None = None) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    if ts is not None:
        out.append(("mm-ts", str(ts).encode()))
    if ct is not None:
        out.append(("content-type", ct))
    if version is not None:
        out.append(("mm-v", version))
    return out


def _seg(ts: int, **over: object) -> bytes:
    doc: dict[str, object] = {"text": "malformed on purpose", "start_ns": ts, "end_ns": ts + 200_000_000,
                              "final": True}
    doc.update(over)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header declares ``width`` x ``height`` (caught before decoding)."""
    sof = b"\xff\xc0\x00\x11\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big") + b"\x03" + b"\x01\x22\x00" * 3
    return b"\xff\xd8" + sof + b"\x00" * 64 + b"\xff\xd9"


def _png_declaring(width: int, height: int) -> bytes:
    ihdr = _PNG[8:33]
    ihdr = ihdr[:8] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + ihdr[16:]
    return _PNG[:8] + ihdr + _PNG[33:]


KINDS: tuple[Kind, ...] = (
    # key
    Kind("key_missing", "video", "bad_key", lambda k, t: (None, _JPEG, _h(t, b"image/jpeg"))),
    Kind("key_bad_chars", "video", "bad_key", lambda k, t: (b"bad key!", _JPEG, _h(t, b"image/jpeg"))),
    Kind("key_too_long", "audio", "bad_key", lambda k, t: (b"k" * 200, b"\x00" * 640, _h(t, _PCM_CT))),
    Kind("key_not_utf8", "text", "bad_key", lambda k, t: (b"\xff\xfe\xfd", _seg(t), _h(t, b"application/json"))),
    # version
    Kind("version_2", "video", "bad_version", lambda k, t: (k, _JPEG, _h(t, b"image/jpeg", b"2"))),
    # time
    Kind("ts_missing", "video", "missing_ts", lambda k, t: (k, _JPEG, _h(None, b"image/jpeg"))),
    Kind("ts_not_number", "audio", "bad_ts", lambda k, t: (k, b"\x00" * 640, _h("soon", _PCM_CT))),
    Kind("ts_negative", "video", "bad_ts", lambda k, t: (k, _JPEG, _h(-5, b"image/jpeg"))),
    Kind("ts_over_2_63", "video", "bad_ts", lambda k, t: (k, _JPEG, _h(2**63, b"image/jpeg"))),
    Kind("ts_float", "audio", "bad_ts", lambda k, t: (k, b"\x00" * 640, _h(f"{t / 1e9:.3f}", _PCM_CT))),
    Kind("ts_start_ns_differs", "text", "bad_ts",
         lambda k, t: (k, _seg(t + 1_000_000), _h(t, b"application/json"))),
    # content type
    Kind("ct_missing", "video", "bad_content_type", lambda k, t: (k, _JPEG, _h(t, None))),
    Kind("ct_gif", "video", "bad_content_type", lambda k, t: (k, _JPEG, _h(t, b"image/gif"))),
    Kind("ct_audio_on_video_topic", "video", "bad_content_type", lambda k, t: (k, _JPEG, _h(t, _PCM_CT))),
    Kind("ct_json_on_audio_topic", "audio", "bad_content_type",
         lambda k, t: (k, _seg(t), _h(t, b"application/json"))),
    Kind("ct_jpeg_on_text_topic", "text", "bad_content_type", lambda k, t: (k, _JPEG, _h(t, b"image/jpeg"))),
    Kind("ct_raw_zero_width", "video", "bad_content_type",
         lambda k, t: (k, b"\x00" * 48, _h(t, b"image/x-raw;format=bgr24;width=0;height=4"))),
    Kind("ct_pcm_rate_10", "audio", "bad_content_type",
         lambda k, t: (k, b"\x00" * 640, _h(t, b"audio/pcm;format=s16le;rate=10;channels=1"))),
    Kind("ct_pcm_no_channels", "audio", "bad_content_type",
         lambda k, t: (k, b"\x00" * 640, _h(t, b"audio/pcm;format=s16le;rate=16000"))),
    Kind("ct_pcm_audio_bomb", "audio", "bad_content_type",  # one sample: a 47 MiB window once assembled
         lambda k, t: (k, b"\x00" * 64, _h(t, b"audio/pcm;format=s16le;rate=384000;channels=32"))),
    Kind("ct_not_ascii", "text", "bad_content_type",
         lambda k, t: (k, _seg(t), _h(t, "application/jsön".encode()))),
    # sizes
    Kind("empty_frame", "video", "payload_size", lambda k, t: (k, b"", _h(t, b"image/jpeg"))),
    Kind("raw_wrong_size", "video", "payload_size",
         lambda k, t: (k, b"\x00" * 47, _h(t, b"image/x-raw;format=bgr24;width=4;height=4"))),
    Kind("pcm_odd_bytes", "audio", "payload_size", lambda k, t: (k, b"\x00" * 641, _h(t, _PCM_CT))),
    Kind("pcm_stereo_half_frame", "audio", "payload_size",
         lambda k, t: (k, b"\x00" * 642, _h(t, b"audio/pcm;format=s16le;rate=16000;channels=2"))),
    Kind("pcm_f32_partial", "audio", "payload_size",
         lambda k, t: (k, b"\x00" * 6, _h(t, b"audio/pcm;format=f32le;rate=16000;channels=1"))),
    Kind("text_oversized", "text", "payload_size",
         lambda k, t: (k, _seg(t, text="x" * 70_000), _h(t, b"application/json")), weight=0.3),
    Kind("audio_oversized", "audio", "payload_size",
         lambda k, t: (k, b"\x00" * (2**20 + 2), _h(t, _PCM_CT)), weight=0.05),
    # images
    Kind("jpeg_truncated", "video", "bad_image", lambda k, t: (k, _JPEG[: len(_JPEG) // 2], _h(t, b"image/jpeg"))),
    Kind("jpeg_no_start", "video", "bad_image", lambda k, t: (k, b"GIF89a" + _JPEG[6:], _h(t, b"image/jpeg"))),
    Kind("png_truncated", "video", "bad_image", lambda k, t: (k, _PNG[:-20], _h(t, b"image/png"))),
    Kind("png_bad_signature", "video", "bad_image", lambda k, t: (k, b"\x89PNX" + _PNG[4:], _h(t, b"image/png"))),
    Kind("jpeg_declares_16000px", "video", "bad_image",
         lambda k, t: (k, _jpeg_declaring(16000, 16000), _h(t, b"image/jpeg"))),
    Kind("png_declares_9000px", "video", "bad_image",
         lambda k, t: (k, _png_declaring(9000, 9000), _h(t, b"image/png"))),
    Kind("jpeg_garbage_inside", "video", "decode_failed",
         lambda k, t: (k, _JPEG_UNDECODABLE, _h(t, b"image/jpeg"))),
    # transcripts
    Kind("json_syntax", "text", "bad_json", lambda k, t: (k, b'{"text": "unclosed', _h(t, b"application/json"))),
    Kind("json_array", "text", "bad_json", lambda k, t: (k, b"[1, 2, 3]", _h(t, b"application/json"))),
    Kind("json_no_text", "text", "bad_json", lambda k, t: (k, _seg(t, text=None), _h(t, b"application/json"))),
    Kind("json_end_before_start", "text", "bad_json",
         lambda k, t: (k, _seg(t, end_ns=t - 1), _h(t, b"application/json"))),
    Kind("json_confidence_2", "text", "bad_json",
         lambda k, t: (k, _seg(t, confidence=2.0), _h(t, b"application/json"))),
    Kind("json_not_utf8", "text", "bad_json",
         lambda k, t: (k, _seg(t).replace(b"malformed", b"\xff\xfe"), _h(t, b"application/json"))),
    Kind("json_string_numbers", "text", "bad_json",
         lambda k, t: (k, _seg(t, start_ns=str(t), end_ns=str(t + 1000)), _h(t, b"application/json"))),
    Kind("json_final_yes", "text", "bad_json",
         lambda k, t: (k, _seg(t, final="yes"), _h(t, b"application/json"))),
    Kind("json_text_too_long", "text", "bad_json",
         lambda k, t: (k, _seg(t, text="y" * 20_000), _h(t, b"application/json"))),
)


def kind_counts(total: int) -> dict[str, int]:
    """How many of each kind make ``total`` (by weight; the rounding remainder goes to the first kinds)."""
    weights = sum(k.weight for k in KINDS)
    counts = {k.name: max(1, int(total * k.weight / weights)) for k in KINDS}
    spare = total - sum(counts.values())
    names = [k.name for k in KINDS if k.weight >= 1]
    i = 0
    while spare != 0:
        step = 1 if spare > 0 else -1
        if counts[names[i % len(names)]] + step >= 1:
            counts[names[i % len(names)]] += step
            spare -= step
        i += 1
    return counts


def malformed_records(total: int, source_ids: list[str], t0_ns: int, t1_ns: int, seed: int = 7,
                      ) -> Iterator[tuple[Kind, int, FaultRecord]]:
    """``total`` malformed records, kinds shuffled, event times uniform in ``[t0_ns, t1_ns)``."""
    rng = random.Random(seed)
    by_name = {k.name: k for k in KINDS}
    plan = [name for name, n in kind_counts(total).items() for _ in range(n)]
    rng.shuffle(plan)
    for seq, name in enumerate(plan):
        kind = by_name[name]
        ts = rng.randrange(t0_ns, t1_ns)
        source = f"{JUNK_PREFIX}-{seq % 4}" if kind.reason == "decode_failed" else rng.choice(source_ids)
        key, value, headers = kind.build(source.encode(), ts)
        headers = [*headers, (H_KIND, name.encode()), (H_SEQ, str(seq).encode())]
        yield kind, seq, FaultRecord(kind.modality, key, value, headers)
