"""check_created (stream/kafka.py): reading the per-topic errors of a CreateTopics response.

Before: the response was never read, so a topic refused by an ACL or a creation policy was logged
as "created" and the processor failed later, at its first result or commit. The responses here are
aiokafka's own protocol classes, as the broker's answer decodes into them.
"""

from __future__ import annotations

import pytest
from aiokafka.protocol.admin import CreateTopicsResponse_v0, CreateTopicsResponse_v3

from stream.errors import ClusterError
from stream.kafka import check_created


def response(*errors: tuple[str, int, str | None]) -> CreateTopicsResponse_v3:
    return CreateTopicsResponse_v3(throttle_time_ms=0, topic_errors=list(errors))


def test_created_and_already_existing_topics_are_fine() -> None:
    answer = response(("mm.results", 0, None), ("mm.dlq", 36, "Topic with this name already exists."))
    assert check_created(answer, ["mm.results", "mm.dlq"]) == ["mm.results"]


def test_authorization_failure_names_the_topic_and_error_and_is_not_retriable() -> None:
    answer = response(("mm.results", 0, None), ("mm.dlq", 29, "Authorization failed."))
    with pytest.raises(ClusterError) as info:
        check_created(answer, ["mm.results", "mm.dlq"])
    msg = str(info.value)
    assert "mm.dlq: TopicAuthorizationFailedError (error 29): Authorization failed." in msg
    assert "mm.results" not in msg
    assert info.value.retriable is False


def test_every_refusal_is_listed_and_the_description_stands_in_for_a_missing_message() -> None:
    answer = response(("a", 44, "Topic replication factor must be 3"), ("b", 40, None))
    with pytest.raises(ClusterError) as info:
        check_created(answer, ["a", "b"])
    msg = str(info.value)
    assert "a: PolicyViolationError (error 44): Topic replication factor must be 3" in msg
    assert "b: InvalidConfigurationError (error 40): Configuration is invalid." in msg


def test_only_transient_refusals_are_retriable() -> None:
    with pytest.raises(ClusterError) as info:
        check_created(response(("a", 7, None)), ["a"])  # REQUEST_TIMED_OUT
    assert info.value.retriable is True


def test_a_topic_missing_from_the_answer_is_refused() -> None:
    with pytest.raises(ClusterError, match="mm.state: no answer from the broker"):
        check_created(response(("mm.results", 0, None)), ["mm.results", "mm.state"])


def test_version_0_answers_carry_no_message() -> None:
    answer = CreateTopicsResponse_v0(topic_errors=[("a", 0), ("b", 37)])
    with pytest.raises(ClusterError, match=r"b: InvalidPartitionsError \(error 37\): Number of partitions is invalid"):
        check_created(answer, ["a", "b"])
