"""Kafka I/O: topic admin, client factories, the dead-letter sink.

Everything that builds an aiokafka client goes through here, so the settings production needs
(security, sizes derived from the frame limit, the range assignor for co-partitioning) are applied
once. aiokafka errors are translated into ``ClusterError``/``TopicLayoutError`` at this edge.

Facts this module relies on, valid on Apache Kafka, Redpanda and the embedded tansu broker:
- topics are created explicitly (tansu auto-creates on metadata requests with 4 partitions, and
  producing to a missing topic corrupts its offsets there);
- the range assignor keeps co-partitioned topics together (aiokafka's default is round robin);
- lag is ``highwater - position`` (tansu's ``end_offsets`` is wrong for multi-record batches).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError as AIOKafkaError
from aiokafka.errors import TopicAlreadyExistsError, for_code

from stream.config import KafkaConfig, LimitsConfig, TopicsConfig
from stream.errors import ClusterError, TopicLayoutError
from stream.oauth import TokenProvider

__all__ = [
    "max_request_bytes",
    "check_copartitioned",
    "check_created",
    "client_options",
    "consumer_options",
    "ensure_topics",
    "make_consumer",
    "make_producer",
    "producer_options",
    "stop_bounded",
    "topic_partitions",
]

log = logging.getLogger(__name__)

_STATE_RECORD_BYTES = 4 * 2**20
_MARGIN = 64 * 1024  # headers and batch overhead on top of the largest value


def client_options(kafka: KafkaConfig) -> dict[str, Any]:
    """Connection and security options common to every aiokafka client."""
    opts: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
        if kafka.ssl_certfile:
            ctx.load_cert_chain(str(kafka.ssl_certfile), str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None)
        opts["ssl_context"] = ctx
    if kafka.sasl_mechanism == "OAUTHBEARER":
        opts["sasl_mechanism"] = kafka.sasl_mechanism
        token = kafka.sasl_oauth_token.get_secret_value() if kafka.sasl_oauth_token else None
        opts["sasl_oauth_token_provider"] = TokenProvider(token=token, path=kafka.sasl_oauth_token_file)
    elif kafka.sasl_mechanism:
        opts["sasl_mechanism"] = kafka.sasl_mechanism
        opts["sasl_plain_username"] = kafka.sasl_username
        opts["sasl_plain_password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return opts


def make_consumer(
    kafka: KafkaConfig, limits: LimitsConfig, *, group: bool = True, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer with manual commits, the range assignor and fetch sizes that fit the largest frame
    (``consumer_options``); ``overrides`` replace options."""
    return AIOKafkaConsumer(**{**consumer_options(kafka, limits, group=group), **overrides})


def consumer_options(kafka: KafkaConfig, limits: LimitsConfig, *, group: bool = True) -> dict[str, Any]:
    """The options ``make_consumer`` gives aiokafka, apart so they can be read (aiokafka's client
    keeps them private).

    ``group=False`` gives a consumer for ``assign()`` without group membership (tools, tests); it
    always resets to "earliest", since its users seek explicitly and rely on a seek below the log
    start landing on the first record kept. ``kafka.auto_offset_reset`` is the group's policy.
    """
    largest = _largest_record(limits)
    opts: dict[str, Any] = {
        **client_options(kafka),
        "group_id": kafka.group_id if group else None,
        "enable_auto_commit": False,
        # "latest" misplaces consumers on tansu (its end offsets are wrong for multi-record batches)
        "auto_offset_reset": kafka.auto_offset_reset if group else "earliest",
        "partition_assignment_strategy": (RangePartitionAssignor,),
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "fetch_max_wait_ms": kafka.fetch_max_wait_ms,
        # small per-partition fetches keep a fast topic from dumping minutes of event time into
        # memory at once; a record larger than this still comes whole
        "max_partition_fetch_bytes": kafka.max_partition_fetch_bytes,
        "fetch_max_bytes": max(4 * largest, 52_428_800),
    }
    return opts


def _largest_record(limits: LimitsConfig) -> int:
    """The largest record the contract admits, with room for its key, headers and batch framing."""
    return max(limits.max_frame_bytes, limits.max_audio_bytes, limits.max_text_bytes) + _MARGIN


def max_request_bytes(limits: LimitsConfig) -> int:
    """The producer's request limit: the largest record the contract admits, plus headers."""
    return max(_largest_record(limits), 1 << 20)


def make_producer(kafka: KafkaConfig, limits: LimitsConfig, **overrides: Any) -> AIOKafkaProducer:
    """A producer sized for the largest frame (``producer_options``); ``overrides`` replace options."""
    return AIOKafkaProducer(**{**producer_options(kafka, limits), **overrides})


def producer_options(kafka: KafkaConfig, limits: LimitsConfig) -> dict[str, Any]:
    """The options ``make_producer`` gives aiokafka, apart so they can be read (aiokafka's client
    keeps them private). Sized for the largest frame: brokers need ``max.message.bytes`` at least
    as big."""
    opts: dict[str, Any] = {
        **client_options(kafka),
        "acks": kafka.acks,
        "linger_ms": kafka.linger_ms,
        "compression_type": None if kafka.compression_type == "none" else kafka.compression_type,
        "max_batch_size": kafka.max_batch_size,
        "max_request_size": max_request_bytes(limits),
        "enable_idempotence": kafka.enable_idempotence,
    }
    return opts


async def stop_bounded(client: Any, timeout_ms: int, what: str) -> None:
    """``client.stop()`` within a bound; a broker that vanished must not hang shutdown."""
    try:
        await asyncio.wait_for(client.stop(), timeout_ms / 1000)
    except (TimeoutError, AIOKafkaError, OSError) as exc:
        log.warning("%s did not stop cleanly within %d ms: %s", what, timeout_ms, exc)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being cancelled: let it through
        # aiokafka's consumer.stop() re-raises the cancellation of its own fetch task when the
        # broker is gone; that is an unclean stop, not a reason to crash the shutdown
        log.warning("%s stopped uncleanly (broker unreachable?)", what)


async def ensure_topics(kafka: KafkaConfig, topics: TopicsConfig, limits: LimitsConfig) -> dict[str, int]:
    """Create the input, result, dead-letter, state (and late) topics if missing, then check that
    every one of them is there and usable; return partition counts (the state topic's included).

    New input topics get ``kafka.partitions`` partitions each; existing ones are left as they are
    and then checked for co-partitioning. A topic the broker refuses to create (ACLs, a creation
    policy, a bad config) fails here, naming the topic and the broker's error, instead of at the
    first result or commit.

    Raises:
        TopicLayoutError: the input topics have different partition counts; a topic is missing after
            creation (or not visible to this principal); the state topic has fewer partitions than
            the inputs.
        ClusterError: the cluster cannot be reached; it refused to create or describe a topic.
    """
    names = [topics.video, topics.audio, topics.text, topics.results, topics.dead_letter]
    if topics.late:
        names.append(topics.late)
    names = list(dict.fromkeys(names))
    state = topics.state_topic(kafka.group_id)
    admin = AIOKafkaAdminClient(**client_options(kafka))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        max_bytes = str(_largest_record(limits))
        missing = [
            NewTopic(n, kafka.partitions, kafka.replication_factor, topic_configs={"max.message.bytes": max_bytes})
            for n in names if n not in existing
        ]
        if state not in existing:
            # as many partitions as the inputs (state of input partition p lives in partition p)
            # (describe only an existing topic: a metadata request for a missing one auto-creates it on tansu)
            n = kafka.partitions
            if topics.video in existing:
                (video,) = await admin.describe_topics([topics.video])
                n = len(video["partitions"]) or n
            missing.append(NewTopic(state, n, kafka.replication_factor, topic_configs={
                "cleanup.policy": "compact",
                # one record holds up to 10,000 sources' horizons (ids of up to 128 characters):
                # about 1.5 MB, over the brokers' 1 MiB default
                "max.message.bytes": str(_STATE_RECORD_BYTES)}))
        if missing:
            response = await admin.create_topics(missing)
            created = check_created(response, [t.name for t in missing])
            if created:
                log.info("created topics %s", created)
        counts = await _verify_topics(admin, [*names, state], kafka.request_timeout_ms / 1000)
    except AIOKafkaError as exc:
        raise ClusterError(f"cannot set up topics on {kafka.bootstrap_servers}: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    inputs = check_copartitioned(counts, [topics.video, topics.audio, topics.text])
    if counts[state] < inputs:
        raise TopicLayoutError(
            f"state topic {state} has {counts[state]} partitions, fewer than the {inputs} of the input topics; "
            "it needs one per input partition (recreate it with the inputs' count, cleanup.policy=compact)"
        )
    return counts


def check_created(response: Any, requested: Iterable[str]) -> list[str]:
    """The topics a CreateTopics ``response`` says were created now.

    "Already exists" (36) is success: another processor, or the topics job, was first. Any other
    per-topic error (authorization, policy, invalid config or partitions, a timeout) is raised,
    as is a requested topic the response does not mention.

    Raises:
        ClusterError: naming each refused topic with the broker's error; retriable only when every
            refusal is (a timeout, a controller move), not for ACLs or policies.
    """
    answered: dict[str, tuple[int, str | None]] = {}
    for entry in response.topic_errors:  # (topic, error_code) in v0, (topic, error_code, error_message) later
        answered[entry[0]] = (entry[1], entry[2] if len(entry) > 2 else None)
    created: list[str] = []
    refused: list[str] = []
    retriable = True
    for name in requested:
        code, message = answered.get(name, (None, None))
        if code is None:
            refused.append(f"{name}: no answer from the broker")
        elif code == 0:
            created.append(name)
        elif code != TopicAlreadyExistsError.errno:
            error = for_code(code)
            retriable = retriable and error.retriable
            refused.append(f"{name}: {error.__name__} (error {code}): {message or error.description}")
    if refused:
        exc = ClusterError("the broker refused to create topics: " + "; ".join(refused))
        exc.retriable = retriable
        raise exc
    return created


async def _verify_topics(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> dict[str, int]:
    """Partition counts of ``names``, once all of them are listed and describable.

    A topic just created may take a moment to reach every broker's metadata (or to get its
    leaders: ``LEADER_NOT_AVAILABLE``), so absence and retriable errors are retried until
    ``timeout_s``; other errors fail at once. Only listed topics are described: a metadata request
    for a missing topic would create it on brokers that auto-create (tansu always does).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        listed = set(await admin.list_topics())
        absent = [n for n in names if n not in listed]
        problems: dict[str, int] = {}
        if not absent:
            described = await admin.describe_topics(names)
            problems = {d["topic"]: d["error_code"] for d in described if d.get("error_code")}
            counts = {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}
            if not problems and all(counts.get(n) for n in names):
                return counts
            absent = [n for n in names if n not in problems and not counts.get(n)]
        final = {t: c for t, c in problems.items() if not for_code(c).retriable}
        if loop.time() >= deadline or final:
            if problems:
                exc = ClusterError("cannot use topics: " + "; ".join(
                    f"{t}: {for_code(c).__name__} (error {c})" for t, c in (final or problems).items()))
                exc.retriable = not final
                raise exc
            raise TopicLayoutError(
                f"topics missing after creating them: {', '.join(absent)} (not created, or this principal lacks "
                "Describe on them); create them first (docs/deploy.md) or grant the ACLs"
            )
        await asyncio.sleep(0.2)


def check_copartitioned(counts: dict[str, int], inputs: Iterable[str]) -> int:
    """The common partition count of the input topics.

    Raises:
        TopicLayoutError: a topic is missing or the counts differ; the message lists them.
    """
    inputs = list(inputs)
    missing = [t for t in inputs if not counts.get(t)]
    if missing:
        raise TopicLayoutError(f"input topics missing: {', '.join(missing)}")
    distinct = {counts[t] for t in inputs}
    if len(distinct) != 1:
        layout = ", ".join(f"{t}={counts[t]}" for t in inputs)
        raise TopicLayoutError(
            f"input topics are not co-partitioned ({layout}); they must have the same partition count "
            "so that one processor sees every modality of a source"
        )
    return distinct.pop()


async def topic_partitions(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> dict[str, list[int]]:
    """The partitions of each of ``topics`` as the cluster says now (an empty list: no such topic yet).

    One metadata request for every topic: ``partitions_for_topic`` answers from the consumer's own
    metadata, which does not see a topic created since it last looked (and an assigned consumer
    only refreshes the topics it holds). aiokafka has no public call for a fresh look, so its one
    private read lives here, not in each caller.

    Raises:
        ClusterError: no broker answered.
    """
    try:
        cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - aiokafka has no public call for it
    except AIOKafkaError as exc:
        raise ClusterError(f"no metadata from the cluster: {exc}") from exc
    return {t: sorted(cluster.partitions_for_topic(t) or ()) for t in topics}
