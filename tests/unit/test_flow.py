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
from stream.contract import AudioChunk, Modality, VideoFrame
from stream.flow import decide_pauses, running_ahead
from stream.runtime import Processor
from tests.unit._fakes import JPEG, FakeConsumer, consumer_record

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


def test_running_ahead_compares_each_topic_with_the_slowest_other_of_its_partition() -> None:
    progress = {(V, 0): 10 * S, (A, 0): 0, (T, 0): 3 * S, (V, 1): 100 * S, (A, 1): 96 * S, (T, 2): 50 * S}
    # partition 1 is within 5 s, and a topic alone on its partition is ahead of nothing
    assert running_ahead(progress, max_ahead_ms=5000) == {(V, 0)}
    assert running_ahead(progress, max_ahead_ms=2000) == {(V, 0), (T, 0), (V, 1)}


def test_a_caught_up_topic_does_not_hold_the_others() -> None:
    # video is far behind but has nothing unread: it is not what keeps windows open
    assert _decide({(V, 0): 0, (A, 0): 60 * S, (T, 0): 59 * S}, {(A, 0), (T, 0)}) == set()


def test_blocked_topics_stay_paused_even_before_the_others_are_read() -> None:
    # nothing known about video and text yet: no basis for alignment, but audio holds a record
    # past its bound, so fetching more of it would only pile up behind that record
    assert _decide({(A, 0): 6 * S}, {(V, 0), (A, 0), (T, 0)}, blocked={(A, 0)}) == {(A, 0)}
    assert _decide({(A, 0): 6 * S}, {(V, 0), (A, 0), (T, 0)}) == set()


def test_memory_above_its_bound_pauses_everything() -> None:
    """limits.max_rss_bytes was documented as a bound the runtime keeps, and nothing read it."""
    decision = decide_pauses([(m, 0) for m in (V, A, T)], {(V, 0): 0, (A, 0): 0}, lambda m, p: True,
                             max_ahead_ms=5000, aligner_full=False, batcher_full=False, memory_over=True)
    assert decision.paused == {(m, 0) for m in (V, A, T)} and decision.reason == "memory"


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
        oldest = min(times[m] for m in unread)
        assert any((m, 0) not in paused for m in unread if times[m] == oldest)  # ties: one of them


# --------------------------------------------------------------------------- the processor's bound


def _audio_records(tp: TopicPartition, seconds: int) -> list[ConsumerRecord]:
    return [consumer_record(tp, i, AudioChunk(source_id="cam-1", ts_ns=1_700_000_000 * S + i * 20 * MS,
                                              sample_format="s16le", sample_rate=16_000, channels=1,
                                              data=bytes(640)))
            for i in range(seconds * 50)]  # 20 ms chunks


def test_a_topic_read_first_gets_at_most_max_ahead_past_its_firstconsumer_record() -> None:
    settings = load_settings(overrides={"metrics": {"port": None}, "window": {"max_ahead_ms": 3000}})
    processor = Processor(settings, model=object())
    tps = {m: TopicPartition(settings.topics.input(m), 0) for m in Modality}
    processor.assignment.assigned = set(tps.values())  # video and text assigned, nothing read from them yet
    audio = tps[A]
    intake = processor.stages.intake
    records = _audio_records(audio, 10)
    intake.take({audio: records})
    handled = processor.stats.records
    assert handled == 3 * 50 + 1  # 0 .. 3.00 s inclusive: the bound is the first record + 3 s
    assert audio in intake.blocked
    # later steps re-offer the held records: without news from video or text nothing more passes
    # (a bound counted from the newest record would creep another 3 s ahead at every step)
    for _ in range(3):
        intake.take({})
    assert processor.stats.records == handled
    assert intake.held(audio) == len(records) - handled


def _drive(processor: Processor, fetched: dict[TopicPartition, list[ConsumerRecord]], steps: int = 40) -> None:
    """The consume loop's record path without a broker: each step every partition not paused
    delivers its next 50 records, then every partition's held records are handled, then flow."""
    processor.connection.consumer = FakeConsumer(fetched)
    processor.assignment.assigned = set(fetched)
    intake = processor.stages.intake
    pos = dict.fromkeys(fetched, 0)
    for _ in range(steps):
        batch = {}
        for tp, recs in fetched.items():
            if tp not in processor.assignment.paused and pos[tp] < len(recs):
                batch[tp] = recs[pos[tp]:pos[tp] + 50]
                pos[tp] += 50
        intake.take(batch)
        intake.flow()


def _two_topics(frame_value: bytes | None = None, frames: int = 300) -> tuple[Processor, dict[TopicPartition, list[ConsumerRecord]]]:
    settings = load_settings(overrides={"metrics": {"port": None}})
    processor = Processor(settings, model=object())
    video = TopicPartition(settings.topics.video, 0)
    audio = TopicPartition(settings.topics.audio, 0)
    t0 = 1_700_000_000 * S
    video_records = [consumer_record(video, i, VideoFrame(source_id="cam", ts_ns=t0 + i * 100 * MS, encoding="jpeg", data=JPEG),
                      frame_value) for i in range(frames)]
    chunks = [consumer_record(audio, i, AudioChunk(source_id="cam", ts_ns=t0 + i * 100 * MS, sample_format="s16le",
                                           sample_rate=16_000, channels=1, data=bytes(3200))) for i in range(300)]
    return processor, {video: video_records, audio: chunks}


def test_a_replay_longer_than_max_ahead_does_not_pause_both_topics_for_ever() -> None:
    """After a restart the first 20 s were published already (horizon): every record there is
    replayed. Replayed records are read progress, so neither topic waits on the other for ever."""
    processor, fetched = _two_topics()
    processor.stages.align.set_horizon("cam", 1_700_000_000 * S + 20 * S, partition=0)
    _drive(processor, fetched)
    assert processor.stats.records == 600 and processor.stats.replayed == 400
    assert not processor.assignment.paused and not processor.stages.intake.blocked


def test_a_topic_of_dead_letters_does_not_hold_the_others_back() -> None:
    """Video holds nothing but corrupt frames (no event time at all) and is far from read: audio
    keeps going meanwhile (a topic with no time cannot be the one windows wait for)."""
    processor, fetched = _two_topics(frame_value=b"not a jpeg", frames=3000)
    _drive(processor, fetched, steps=20)
    video, audio = fetched
    assert processor.assignment.position[video] < 3000  # still unread video...
    assert processor.assignment.position[audio] == 300  # ...and audio all read, not stuck at 5 s


def test_a_far_future_timestamp_is_not_held_back_as_if_it_were_progress() -> None:
    """A frame stamped an hour ahead at the head of the video topic: it goes to the aligner (which
    rejects it) instead of pausing video until audio reaches it."""
    processor, fetched = _two_topics()
    video, audio = fetched
    t0 = 1_700_000_000 * S
    frames = [VideoFrame(source_id="cam", ts_ns=t0 + 3600 * S, encoding="jpeg", data=JPEG)]
    frames += [VideoFrame(source_id="cam", ts_ns=t0 + i * 100 * MS, encoding="jpeg", data=JPEG) for i in range(300)]
    fetched[video] = [consumer_record(video, i, frame) for i, frame in enumerate(frames)]
    _drive(processor, fetched, steps=20)
    assert processor.assignment.position[video] == 301 and processor.assignment.position[audio] == 300
