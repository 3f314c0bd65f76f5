"""Synthetic sources: deterministic scenes of N sources, their records, and their ground truth.

The demo's and the tests' input. A scene is cut, per source, into slots of ``segment_ms``; each
slot plays one scripted event chosen from the seed (a red ball with a beep, a blue square with
static, someone speaking, a quiet room) on all three modalities at once:

- video: JPEG frames (BGR, ``width`` x ``height``) at ``fps``; frame ``i`` of every source is at
  exactly ``start_ns + round(i * 1e9 / fps)``;
- audio: s16le mono at ``sample_rate`` in contiguous ``chunk_ms`` chunks; chunk ``j`` starts at
  ``start_ns + j * chunk_ms * 1e6`` and sample ``k`` is at ``start_ns + k * 1e9 / sample_rate``;
  speech is rendered by Debian's ``flite`` when it is installed (one rendering per text, cached),
  a voice-like buzz otherwise;
- text: one transcript segment per slot, ``[slot start, slot end]``, describing it; with
  ``partials`` a partial version (``final=False``, first half of the words, ending mid-slot) is
  emitted at mid-slot, then the final with the same ``segment_id`` at the slot's end.

Everything is a pure function of (config, start_ns, time): ``items_between`` can be called for any
range in any order and yields the same records. ``scene.truth`` holds the events and the exact
frame, sample and segment counts a window must see.

Example::

    scene = SyntheticScene(SyntheticConfig(sources=2), start_ns=time.time_ns())
    stats = await produce(scene, s.kafka, s.topics, s.limits, duration_s=5, realtime=False)
    counts = scene.truth.expected_counts("src-0", w_start_ns, w_start_ns + 1_000_000_000)

This module is the public entry point; the code lies in four modules, each read top to bottom:

- ``_synthetic_script``: ``SyntheticConfig``, the labels, and which event each slot plays;
- ``_synthetic_render``: a slot's JPEG frames, PCM sound (flite speech) and transcript segments;
- ``_synthetic_scene``: ``SyntheticScene``, every record at its exact instant, and ``GroundTruth``;
- ``_synthetic_produce``: ``produce``, the scene published to Kafka.
"""

from __future__ import annotations

from stream.sources._synthetic_produce import ProduceStats, produce
from stream.sources._synthetic_render import speech_samples
from stream.sources._synthetic_scene import GroundTruth, SyntheticScene
from stream.sources._synthetic_script import LABELS, ScriptedEvent, SyntheticConfig

__all__ = [
    "LABELS",
    "GroundTruth",
    "ProduceStats",
    "ScriptedEvent",
    "SyntheticConfig",
    "SyntheticScene",
    "produce",
    "speech_samples",
]
