"""The error tree and the dead-letter reason codes (stream/errors.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stream.errors import (
    BrokerError,
    CaptureError,
    ClusterError,
    ConfigError,
    ContractError,
    MmstreamError,
    ModelError,
    Reason,
    TopicLayoutError,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"

# The codes are a public interface (mm-error header, metric label): changing one is a contract change.
DOCUMENTED_CODES = {
    "bad_key", "missing_ts", "bad_ts", "bad_version", "bad_content_type", "payload_size",
    "bad_image", "bad_json", "ts_out_of_range", "decode_failed",
}


def test_reason_codes_are_the_stable_documented_set() -> None:
    assert {r.value for r in Reason} == DOCUMENTED_CODES


@pytest.mark.parametrize("reason", list(Reason))
def test_reason_codes_are_snake_case_and_equal_their_string(reason: Reason) -> None:
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", reason.value)
    assert reason == reason.value and str(reason) == reason.value
    assert Reason(reason.value) is reason


@pytest.mark.parametrize("reason", list(Reason))
def test_docs_contract_describes_every_reason_code(reason: Reason) -> None:
    text = (DOCS / "contract.md").read_text()
    assert f"`{reason.value}`" in text, f"docs/contract.md does not document reason {reason.value!r}"


@pytest.mark.parametrize(
    "cls", [ConfigError, ContractError, BrokerError, ClusterError, TopicLayoutError, ModelError, CaptureError]
)
def test_every_error_is_an_mmstream_error(cls: type[Exception]) -> None:
    assert issubclass(cls, MmstreamError)
    assert issubclass(MmstreamError, Exception)


def test_topic_layout_error_is_a_kafka_error_but_not_retriable() -> None:
    assert issubclass(TopicLayoutError, ClusterError)
    assert ClusterError.retriable is True
    assert TopicLayoutError.retriable is False
    assert TopicLayoutError("x").retriable is False


@pytest.mark.parametrize("cls", [MmstreamError, ConfigError, ContractError, BrokerError, ModelError, CaptureError])
def test_non_kafka_errors_are_not_retriable(cls: type[MmstreamError]) -> None:
    assert cls.retriable is False


def test_contract_error_carries_reason_and_detail() -> None:
    err = ContractError(Reason.BAD_KEY, "record has no key")
    assert err.reason is Reason.BAD_KEY
    assert err.detail == "record has no key"
    assert str(err) == "bad_key: record has no key"
    with pytest.raises(MmstreamError):
        raise err
