"""Seeded scenarios: adversarial but valid input streams, and the faults they meet.

``generate(seed, scale)`` is a pure function of its arguments (one ``random.Random(seed)``, no
other source of chance), so a seed names a scenario for good. A scenario is a list of ``Input``
records in the order producers hand them to the broker, each with the processing time it is
produced at in a live run, the windows it belongs to and its ``Fate``: what the processor may do
with it under the documented rules (docs/time.md). The generators (``stream.sim._streams``) make
sources that appear late and vanish early, modalities that fall silent and resume, frame rates,
chunk sizes and segment lengths that vary, records stamped in the future (within
``max_future_ms``), gaps of minutes inside a source, bursts, records late beyond the lateness
bound, clocks near zero and near the top of the contract's range, and malformed records;
``Faults`` adds broker freezes, stale high watermarks, small fetches, slow and failed
acknowledgements, failed commits, rebalances, a killed processor and slow inference; some
seeds get memory so short that windows are shed (``tight-memory``), and some a model that fails
on a few frames (``poison``) or whose worker dies now and then (``worker-deaths``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from stream.contract import Modality
from stream.sim._records import Fate, Input, Share
from stream.sim._streams import FRAME_ID, SourcePlan, make_records, plan_source

__all__ = ["Fate", "Faults", "Freeze", "Input", "Scale", "Scenario", "Share", "generate"]

MS = 1_000_000
S = 1_000_000_000

Scale = Literal["small", "large"]


@dataclass(frozen=True)
class Freeze:
    """The broker answers nothing (fetches, produces, acks, commits) in [start_ms, end_ms); the
    input records produced meanwhile land ``resend_ms`` after the thaw (the producers' retry
    backoff), so the first fetches after it may find nothing new."""

    start_ms: int
    end_ms: int
    resend_ms: int = 0


@dataclass(frozen=True)
class Faults:
    """What the simulated broker and model do wrong, and how they perform."""

    freezes: tuple[Freeze, ...] = ()
    rebalances_ms: tuple[int, ...] = ()
    kills_ms: tuple[int, ...] = ()
    """The processor is killed (SIGKILL: no drain, no commit) and a new one takes over."""
    ack_ms: tuple[int, int] = (1, 5)
    slow_ack_ms: int = 0
    """Extra acknowledgement delay, for a fraction ``slow_ack_share`` of sends."""
    slow_ack_share: float = 0.0
    failed_result_acks: float = 0.0
    """Share of result sends whose acknowledgement fails (retriable), so the processor retries."""
    failed_aside_acks: float = 0.0
    """Share of dead-letter and late-copy sends whose acknowledgement fails (retriable)."""
    failed_commits: float = 0.0
    hw_lag_ms: int = 0
    """Fetch responses report the high watermark as it was this long ago."""
    fetch_bytes: dict[Modality, int] = field(default_factory=dict)
    fetch_ms: int = 2
    inflight_after_pause: float = 0.0
    """Chance that a partition paused by the processor still delivers one fetch already in flight."""
    work_ms: tuple[int, int] = (1, 10)
    """Simulated time of each preprocess or inference call."""
    deaths_every: int = 0
    """The model's worker dies under every so many inference calls (never twice under one window)."""
    poison: frozenset[bytes] = frozenset()
    """Frames the model fails on (the id each carries, ``FRAME_ID``): a batch holding one fails,
    and its window, inferred alone, is published with the error (docs/processor.md)."""


@dataclass(frozen=True)
class Scenario:
    seed: int
    scale: Scale
    partitions: int
    settings: dict[str, Any]
    """Overrides for ``load_settings`` (window, batching); the runner adds the fixed ones."""
    inputs: tuple[Input, ...]
    faults: Faults
    wall0_ns: int
    """The wall clock at the start of the live run."""
    features: tuple[str, ...]
    sources: tuple[SourcePlan, ...] = ()

    @property
    def last_produce_ms(self) -> int:
        return max((i.produce_ms for i in self.inputs), default=0)


def generate(seed: int, scale: Scale = "small") -> Scenario:
    """The scenario a seed names (see the module docstring)."""
    rng = random.Random(seed)
    large = scale == "large"
    partitions = rng.randint(1, 4 if large else 2)
    window_ms = rng.choice([1000, 1000, 1000, 500, 2000])
    window = {
        "window_ms": window_ms,
        "hop_ms": window_ms // 2 if rng.random() < 0.1 else None,
        "allowed_lateness_ms": rng.choice([100, 200, 200, 500]),
        "idle_timeout_ms": rng.choice([3000, 3000, 5000]),
        "max_future_ms": 60_000,
        "max_ahead_ms": rng.choice([2000, 5000, 5000, 10_000]),
    }
    batching = {
        "max_batch": rng.choice([1, 4, 16, 16]),
        "max_delay_ms": rng.choice([0, 20, 50, 50]),
        "max_in_flight": rng.randint(1, 3),
        "max_queued_windows": rng.choice([4, 16, 256, 256]),
    }
    wall0_ns = (1_700_000_000 + rng.randrange(10**7)) * S
    features: list[str] = []
    plans = [plan_source(rng, i, partitions, large, window) for i in range(rng.randint(1, 5 if large else 3))]
    for plan in plans:
        features.extend(plan.features)
    hw_lag_ms = rng.choice([0, 0, 0, 200, 1000])
    # a modality silent this long before a record may have been judged idle (its windows closed
    # without the record): the idle timeout less the fetch delay and the high watermark's staleness
    records = make_records(rng, plans, wall0_ns, window, idle_margin_ms=hw_lag_ms + 600)
    faults = _faults(rng, max((r.produce_ms for r in records), default=0), window["idle_timeout_ms"], hw_lag_ms,
                     features)
    # drawn apart, so the seeds of before name the same scenarios: memory so short that windows
    # are shed (closed_by "pressure"): a window's audio alone reserves 64 KiB a second at 16 kHz
    memory = random.Random(f"{seed}/memory")
    if memory.random() < 0.15:
        window["max_buffered_bytes"] = memory.choice([96, 256, 1024]) * 1024
        features.append("tight-memory")
    # drawn apart too: frames the model fails on, each making its windows poison windows
    poison = random.Random(f"{seed}/poison")
    frames = [i for i in records if i.modality is Modality.VIDEO and i.fate is Fate.REQUIRED]
    if frames and poison.random() < 0.1:
        chosen = poison.sample(frames, min(len(frames), poison.randint(1, 3)))
        faults = replace(faults, poison=frozenset(i.value[FRAME_ID] for i in chosen))
        features.append("poison")
    if poison.random() < 0.1:  # after the poison's draws: the poison seeds keep their frames
        faults = replace(faults, deaths_every=poison.randint(3, 12))
        features.append("worker-deaths")
    return Scenario(seed, scale, partitions, {"window": window, "batching": batching}, tuple(records), faults,
                    wall0_ns, tuple(sorted(set(features))), tuple(plans))


def _faults(rng: random.Random, span_ms: int, idle_ms: int, hw_lag: int, features: list[str]) -> Faults:
    freezes: list[Freeze] = []
    if rng.random() < 0.3 and span_ms > 1000:
        start = rng.randrange(500, max(span_ms, 501))
        length = rng.choice([1000, idle_ms // 2, idle_ms + 2000, 2 * idle_ms + 4000])
        freezes.append(Freeze(start, start + length, rng.choice([0, 100, 500])))
        features.append("freeze>idle" if length > idle_ms else "freeze")
    rebalances: tuple[int, ...] = ()
    if rng.random() < 0.2 and span_ms > 2000:
        rebalances = tuple(sorted(rng.randrange(1000, span_ms) for _ in range(rng.randint(1, 2))))
        features.append("rebalance")
    kills: tuple[int, ...] = ()
    if rng.random() < 0.15 and span_ms > 2000:
        kills = (rng.randrange(1000, span_ms),)
        features.append("kill")
    fetch = {
        Modality.VIDEO: rng.choice([4_096, 16_384, 65_536, 1_048_576]),
        Modality.AUDIO: rng.choice([1_024, 8_192, 65_536, 1_048_576]),
        Modality.TEXT: rng.choice([512, 4_096, 1_048_576]),
    }
    if min(fetch.values()) < 8_192:
        features.append("small-fetch")
    slow = rng.random() < 0.2
    failing = rng.random() < 0.15
    if hw_lag:
        features.append("stale-highwater")
    if slow:
        features.append("slow-acks")
    if failing:
        features.append("failed-acks")
    work = rng.choice([(1, 5), (1, 20), (50, 400)])
    if work[1] >= 400:
        features.append("slow-model")
    return Faults(
        freezes=tuple(freezes),
        rebalances_ms=rebalances,
        kills_ms=kills,
        ack_ms=(1, rng.choice([5, 20, 100])),
        slow_ack_ms=rng.choice([500, 2000]) if slow else 0,
        slow_ack_share=0.1 if slow else 0.0,
        failed_result_acks=0.05 if failing else 0.0,
        failed_aside_acks=0.2 if failing and rng.random() < 0.5 else 0.0,
        failed_commits=0.1 if rng.random() < 0.15 else 0.0,
        hw_lag_ms=hw_lag,
        fetch_bytes=fetch,
        fetch_ms=rng.choice([1, 2, 10]),
        inflight_after_pause=rng.choice([0.0, 0.5]),
        work_ms=work,
    )
