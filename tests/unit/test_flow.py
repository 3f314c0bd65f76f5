"""Flow control: ``decide_pauses`` (pure) and the processor's per-batch alignment bound.

The bound matters in a backfill: the three topics arrive at very different event-time rates, and
a topic fetched first must not run far ahead of the ones not read yet (memory, and windows that
cannot close until the slow topic shows up).
"""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st

from stream.config import load_settings
from stream.contract import AudioChunk, Modality, encode
from stream.flow import decide_pauses
from stream.runtime import Processor

V, A, T = Modality.VIDEO, Modality.AUDIO, Modality.TEXT
S = 1_000_000_000
MS = 1_000_000


def _decide(event_ns: dict[Any, int], unread: set[Any], **kw: Any) -> frozenset[Any]:
    slots = [(m, 0) for m in (V, A, T)]
    args = {"max_ahead_ms": 5000, "aligner_full": False, "batcher_full": False} | kw
    return decide_pauses(slots, event_ns, lambda m, p: (m, p) in unread, **args).paused


def test_the_topic_ahead_of_the_slowest_with_unread_data_pauses() -> None:
    unread = {(V, 0), (A, 0), (T, 0)}
    assert _decide({(V, 0): 0, (A, 0): 6 * S, (T, 0): 1 * S}, unread) == {(A, 0)}
    assert _decide({(V, 0): 0, (A, 0): 4 * S, (T, 0): 1 * S}, unread) == set()


def test_a_caught_up_topic_does_not_hold_the_others() -> None:
    # video is far behind but has nothing unread: it is not what keeps windows open
    assert _decide({(V, 0): 0, (A, 0): 60 * S, (T, 0): 59 * S}, {(A, 0), (T, 0)}) == set()


def test_blocked_topics_stay_paused_even_before_the_others_are_read() -> None:
    # nothing known about video and text yet: no basis for alignment, but audio holds a record
    # past its bound, so fetching more of it would only pile up behind that record
    assert _decide({(A, 0): 6 * S}, {(V, 0), (A, 0), (T, 0)}, blocked={(A, 0)}) == {(A, 0)}
    assert _decide({(A, 0): 6 * S}, {(V, 0), (A, 0), (T, 0)}) == set()


def test_a_full_batcher_pauses_everything() -> None:
    assert _decide({}, set(), batcher_full=True) == {(V, 0), (A, 0), (T, 0)}


@given(st.dictionaries(st.sampled_from([V, A, T]), st.integers(0, 100 * S), min_size=3),
       st.sets(st.sampled_from([V, A, T])), st.booleans())
def test_the_slowest_topic_with_unread_data_is_never_paused(times: dict[Modality, int], unread: set[Modality],
                                                             aligner_full: bool) -> None:
    """Whatever the state, the topic whose records let windows close keeps being fetched:
    pausing it too would deadlock the partition."""
    event_ns = {(m, 0): t for m, t in times.items()}
    paused = _decide(event_ns, {(m, 0) for m in unread}, aligner_full=aligner_full)
    if unread:
        slowest = min(unread, key=lambda m: times[m])
        assert (slowest, 0) not in paused


# --------------------------------------------------------------------------- the processor's bound


def _audio_records(topic: str, seconds: int) -> list[ConsumerRecord]:
    out = []
    for i in range(seconds * 50):  # 20 ms chunks
        chunk = AudioChunk(source_id="cam-1", ts_ns=1_700_000_000 * S + i * 20 * MS, sample_format="s16le",
                           sample_rate=16_000, channels=1, data=bytes(640))
        key, value, headers = encode(chunk)
        out.append(ConsumerRecord(topic, 0, i, 0, 0, key, value, None, len(key), len(value), headers))
    return out


def test_a_topic_read_first_gets_at_most_max_ahead_past_its_first_record() -> None:
    settings = load_settings(overrides={"metrics": {"port": None}, "window": {"max_ahead_ms": 3000}})
    processor = Processor(settings, model=object())
    tps = {m: TopicPartition(settings.topics.input(m), 0) for m in Modality}
    processor._assigned = set(tps.values())  # video and text assigned, nothing read from them yet
    audio = tps[A]
    processor._held[audio] = []
    records = _audio_records(audio.topic, 10)
    processor._handle_batch(audio, records)
    handled = processor.stats.records
    assert handled == 3 * 50 + 1  # 0 .. 3.00 s inclusive: the bound is the first record + 3 s
    assert audio in processor._blocked
    # later steps re-offer the held records: without news from video or text nothing more passes
    # (a bound counted from the newest record would creep another 3 s ahead at every step)
    for _ in range(3):
        processor._handle_batch(audio, processor._held.pop(audio))
    assert processor.stats.records == handled
    assert len(processor._held[audio]) == len(records) - handled
