"""``operators.dataset.split_examples`` on recorded windows: neighbouring windows of one source are
near copies, so validation takes whole sources (5 or more) or one stretch in time of each source,
never windows one by one; the ``split`` field still overrides."""

from __future__ import annotations

import random

import pytest

from operators.dataset import Example, seeded_fraction, split_examples

NS = 1_000_000_000


def _windows(sources: int, per_source: int, shuffle: int = 0) -> list[Example]:
    out = [Example(labels=[], id=f"s{s}:{k * NS}", record={"source_id": f"s{s}", "window_start_ns": k * NS})
           for s in range(sources) for k in range(per_source)]
    random.Random(shuffle).shuffle(out)  # the manifest's order is not time order
    return out


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_five_or_more_sources_validate_whole_sources(seed: int) -> None:
    examples = _windows(10, 30, shuffle=seed)
    split = split_examples(examples, 0.2, seed)
    val_sources = {examples[i].record["source_id"] for i in split.val}
    train_sources = {examples[i].record["source_id"] for i in split.train}
    assert len(val_sources) == 2 and not val_sources & train_sources
    assert sorted(split.train + split.val) == list(range(len(examples)))


@pytest.mark.parametrize("seed", [0, 3])
def test_fewer_sources_validate_one_stretch_of_each(seed: int) -> None:
    examples = _windows(2, 50, shuffle=seed)
    split = split_examples(examples, 0.2, seed)
    for sid in ("s0", "s1"):
        ks = sorted(examples[i].record["window_start_ns"] // NS for i in split.val
                    if examples[i].record["source_id"] == sid)
        assert len(ks) == 10 and ks == list(range(ks[0], ks[0] + 10))  # contiguous in time


def test_the_split_field_still_wins_and_lines_without_a_source_split_one_by_one() -> None:
    tagged = _windows(6, 4)
    for n, ex in enumerate(tagged):
        ex.split = "val" if n % 4 == 0 else "train"
    s = split_examples(tagged, 0.5, seed=0)
    assert s.val == [n for n in range(len(tagged)) if n % 4 == 0]
    loose = [Example(labels=[], id=f"w{i}") for i in range(100)]
    s = split_examples(loose, 0.3, seed=2)
    assert s.val == [i for i in range(100) if seeded_fraction(2, f"w{i}") < 0.3]
