"""The inference benchmarks' CPU paths run and end with their JSON line (the figures themselves
are the benchmarks' business: no speed is asserted here)."""

from __future__ import annotations

import json

import pytest

from bench import gpu, overlap


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_the_overlap_bench_reports_both_variants_against_the_same_bound(capsys: pytest.CaptureFixture[str]) -> None:
    assert overlap.main(["--batch", "2", "--batches", "4", "--repeat", "1", "--worker", "thread", "--json"]) == 0
    out = _last_json(capsys.readouterr().out)
    rates = out["windows_per_s"]
    bound = min(rates["preprocess_only"], rates["accelerator_only"])
    assert out["overlap_efficiency"] == pytest.approx(rates["executor"] / bound, rel=0.02)
    assert out["sequential_efficiency"] == pytest.approx(rates["sequential"] / bound, rel=0.02)
    assert out["met"] == (out["overlap_efficiency"] >= overlap.TARGET)
    assert out["accelerator"]["fixed_ms"] > 0 and out["batch_timing_mean_s"]["inference"] > 0


def test_the_gpu_bench_runs_its_executor_path_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--device", "cpu", "--preset", "tiny", "--batch-sizes", "2", "--seconds", "0", "--preprocess-workers",
            "1", "--json"]
    assert gpu.main(argv) == 0
    out = _last_json(capsys.readouterr().out)
    assert out["errors"] == {} and set(out["executor_windows_per_s"]) == {"2"}
    assert 0 <= out["executor_busy_ratio"]["2"] <= 1
