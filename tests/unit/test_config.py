"""Settings (stream/config.py): YAML, MMSTREAM_* environment, overrides, errors that name the field, secrets."""

from __future__ import annotations

import logging
import re
import traceback
from pathlib import Path

import pytest
from pydantic import BaseModel

from stream.config import KafkaConfig, Settings, load_settings
from stream.errors import ConfigError, TopicLayoutError
from stream.kafka import check_copartitioned, client_options

DOCS = Path(__file__).resolve().parents[2] / "docs"
SECRET = "hunter2-s3cr3t"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the process environment: start every test without MMSTREAM_* variables."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("MMSTREAM_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mmstream.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- loading


def test_defaults_without_file() -> None:
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert (s.topics.video, s.topics.audio, s.topics.text, s.topics.results, s.topics.dead_letter) == (
        "mm.video", "mm.audio", "mm.text", "mm.results", "mm.dlq")
    assert s.window.window_ms == 1000 and s.kafka.acks == "all" and s.kafka.security_protocol == "PLAINTEXT"


def test_yaml_file_sets_nested_values(tmp_path: Path) -> None:
    path = write(tmp_path, """
kafka:
  bootstrap_servers: kafka-1:9092,kafka-2:9092
  compression_type: lz4
topics:
  video: cams
window:
  window_ms: 2000
  hop_ms: 500
limits:
  max_frame_bytes: 1048576
model:
  preset: tiny
  labels: [a, b]
""")
    s = load_settings(path)
    assert s.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.kafka.compression_type == "lz4"
    assert s.topics.video == "cams" and s.topics.audio == "mm.audio"  # untouched keys keep defaults
    assert (s.window.window_ms, s.window.hop_ms) == (2000, 500)
    assert s.limits.max_frame_bytes == 1 << 20
    assert s.model.preset == "tiny" and s.model.labels == ["a", "b"]


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == load_settings()


def test_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "kafka:\n  bootstrap_servers: from-file:9092\n  linger_ms: 7\n")
    monkeypatch.setenv("MMSTREAM_KAFKA__BOOTSTRAP_SERVERS", "from-env:9092")
    monkeypatch.setenv("MMSTREAM_WINDOW__WINDOW_MS", "500")
    monkeypatch.setenv("MMSTREAM_MODEL__LABELS", '["x", "y"]')
    s = load_settings(path)
    assert s.kafka.bootstrap_servers == "from-env:9092"
    assert s.kafka.linger_ms == 7  # the file still sets what the environment does not
    assert s.window.window_ms == 500
    assert s.model.labels == ["x", "y"]


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "kafka:\n  bootstrap_servers: from-file:9092\n  linger_ms: 7\n")
    s = load_settings(path, overrides={"kafka": {"bootstrap_servers": "cli:1"}})
    assert s.kafka.bootstrap_servers == "cli:1" and s.kafka.linger_ms == 7


def test_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSTREAM_KAFKA__BOOTSTRAP_SERVERS", "from-env:9092")
    assert load_settings(overrides={"kafka": {"bootstrap_servers": "cli:1"}}).kafka.bootstrap_servers == "cli:1"


# --------------------------------------------------------------------------- invalid values name the field


@pytest.mark.parametrize(
    "yaml_text, field",
    [
        ("kafka:\n  acks: 2\n", "kafka.acks"),
        ("kafka:\n  security_protocol: TLS\n", "kafka.security_protocol"),
        ("kafka:\n  session_timeout_ms: 3000\n", "kafka.session_timeout_ms"),
        ("kafka:\n  bootstrap: x:1\n", "kafka.bootstrap"),  # unknown keys are refused, not ignored
        ("window:\n  window_ms: 0\n", "window.window_ms"),
        ("window:\n  window_ms: 1000\n  hop_ms: 300\n", "hop_ms"),
        ("batching:\n  max_batch: 0\n", "batching.max_batch"),
        ("metrics:\n  port: 70000\n", "metrics.port"),
        ("limits:\n  max_frame_bytes: -1\n", "limits.max_frame_bytes"),
        ("limits:\n  max_rss_byte: 100\n", "limits.max_rss_byte"),  # silently ignored before
        ("model:\n  preset: huge\n", "model.preset"),
        ("topic:\n  video: x\n", "topic"),
        ("kafka:\n  security_protocol: SASL_SSL\n", "sasl_mechanism"),
        ("kafka:\n  heartbeat_interval_ms: 20000\n", "heartbeat_interval_ms"),
    ],
)
def test_invalid_file_value_raises_config_error_naming_the_field(tmp_path: Path, yaml_text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, yaml_text))
    assert field in str(info.value)
    assert str(info.value).startswith("invalid config: ")


def test_invalid_env_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSTREAM_WINDOW__WINDOW_MS", "soon")
    with pytest.raises(ConfigError, match=r"window\.window_ms"):
        load_settings()


def test_unknown_nested_env_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSTREAM_KAFKA__BOOTSTRAP", "x:1")  # the field is bootstrap_servers
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap"):
        load_settings()


def test_invalid_override_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.linger_ms"):
        load_settings(overrides={"kafka": {"linger_ms": -1}})


def test_every_error_is_listed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "kafka:\n  acks: 2\nwindow:\n  window_ms: 0\n"))
    assert "kafka.acks" in str(info.value) and "window.window_ms" in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "kafka: [\n"])
def test_file_that_is_not_a_mapping_is_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="mmstream.yaml"):
        load_settings(write(tmp_path, text))


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- secrets


def sasl_settings(tmp_path: Path) -> Settings:
    return load_settings(write(tmp_path, f"""
kafka:
  bootstrap_servers: broker.example.com:9093
  security_protocol: SASL_SSL
  sasl_mechanism: SCRAM-SHA-512
  sasl_username: mmstream
  sasl_password: {SECRET}
"""))


def test_secret_is_not_shown_in_repr_str_or_dumps(tmp_path: Path) -> None:
    s = sasl_settings(tmp_path)
    assert s.kafka.sasl_password is not None and s.kafka.sasl_password.get_secret_value() == SECRET
    for text in (repr(s), str(s), repr(s.kafka), s.model_dump_json(), str(s.model_dump())):
        assert SECRET not in text
    assert "**********" in repr(s.kafka)


def test_secret_is_not_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = sasl_settings(tmp_path)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("mmstream.test").info("settings: %s / %r", s, s.kafka)
    assert caplog.records and SECRET not in caplog.text


def test_secret_from_env_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSTREAM_KAFKA__SASL_PASSWORD", SECRET)
    s = load_settings()
    assert s.kafka.sasl_password.get_secret_value() == SECRET  # type: ignore[union-attr]
    assert SECRET not in repr(s)


def test_secret_is_not_in_config_error_message(tmp_path: Path) -> None:
    path = write(tmp_path, f"kafka:\n  security_protocol: SASL_SSL\n  sasl_password: {SECRET}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert SECRET not in str(info.value)


def test_secret_is_not_in_config_error_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, f"kafka:\n  security_protocol: SASL_SSL\n  sasl_password: {SECRET}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert SECRET not in "".join(traceback.format_exception(info.value))


def test_client_options_pass_production_security_to_aiokafka(tmp_path: Path) -> None:
    opts = client_options(sasl_settings(tmp_path).kafka)
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("mmstream", SECRET)
    assert opts["ssl_context"] is not None  # SASL_SSL gets a TLS context (system CAs unless ssl_cafile)


def test_plaintext_client_options_have_no_security() -> None:
    opts = client_options(KafkaConfig(bootstrap_servers="h:1"))
    assert opts["bootstrap_servers"] == "h:1" and "ssl_context" not in opts and "sasl_mechanism" not in opts


def oauth_kafka(**fields: object) -> KafkaConfig:
    return KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", **fields)  # type: ignore[arg-type]


async def test_oauthbearer_gets_a_token_provider_that_aiokafka_sends(tmp_path: Path) -> None:
    """Before: OAUTHBEARER was accepted but no provider passed, so aiokafka could not authenticate."""
    from aiokafka.abc import AbstractTokenProvider
    from aiokafka.conn import OAuthAuthenticator

    token_file = tmp_path / "token"
    token_file.write_text("abc.def-ghi\n")
    opts = client_options(oauth_kafka(sasl_oauth_token_file=token_file))
    assert opts["sasl_mechanism"] == "OAUTHBEARER"
    provider = opts["sasl_oauth_token_provider"]
    assert isinstance(provider, AbstractTokenProvider)  # what aiokafka's connection insists on
    message, _ = await OAuthAuthenticator(sasl_oauth_token_provider=provider).step(None)
    assert message == b"n,,\x01auth=Bearer abc.def-ghi\x01\x01"
    fixed = client_options(oauth_kafka(sasl_oauth_token=SECRET))["sasl_oauth_token_provider"]
    assert await fixed.token() == SECRET


@pytest.mark.parametrize(("fields", "message"), [
    ({}, "needs exactly one of sasl_oauth_token, sasl_oauth_token_file"),
    ({"sasl_oauth_token": "a", "sasl_oauth_token_file": "/t"}, "(both are set)"),
])
def test_oauthbearer_without_exactly_one_token_source_is_a_config_error(fields: dict[str, str], message: str) -> None:
    kafka = {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER", **fields}
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(overrides={"kafka": kafka})


def test_oauth_token_without_oauthbearer_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sasl_oauth_token_file is set but sasl_mechanism is PLAIN"):
        load_settings(overrides={"kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                                           "sasl_oauth_token_file": "/t"}})


def test_fixed_oauth_token_that_is_no_bearer_token_is_refused_without_showing_it() -> None:
    bad = f"{SECRET} with spaces"
    with pytest.raises(ConfigError, match="kafka.sasl_oauth_token: .*characters a bearer token cannot hold") as info:
        load_settings(overrides={"kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER",
                                           "sasl_oauth_token": bad}})
    assert SECRET not in str(info.value)


def test_fixed_oauth_token_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSTREAM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MMSTREAM_KAFKA__SASL_MECHANISM", "OAUTHBEARER")
    monkeypatch.setenv("MMSTREAM_KAFKA__SASL_OAUTH_TOKEN", SECRET)
    s = load_settings()
    assert SECRET not in repr(s) and SECRET not in s.model_dump_json()


# --------------------------------------------------------------------------- auto_offset_reset


@pytest.mark.parametrize("reset", ["earliest", "latest", "none"])
async def test_auto_offset_reset_is_the_group_consumers_policy(reset: str) -> None:
    """Before: hard-coded "earliest". Non-group consumers (tools seeking explicitly) keep "earliest"."""
    from stream.config import LimitsConfig
    from stream.kafka import make_consumer

    s = load_settings(overrides={"kafka": {"auto_offset_reset": reset}})
    assert make_consumer(s.kafka, LimitsConfig())._auto_offset_reset == reset  # noqa: SLF001
    assert make_consumer(s.kafka, LimitsConfig(), group=False)._auto_offset_reset == "earliest"  # noqa: SLF001


def test_auto_offset_reset_defaults_to_earliest_and_refuses_others() -> None:
    assert load_settings().kafka.auto_offset_reset == "earliest"
    with pytest.raises(ConfigError, match="kafka.auto_offset_reset"):
        load_settings(overrides={"kafka": {"auto_offset_reset": "smallest"}})


# --------------------------------------------------------------------------- check_copartitioned


def test_copartitioned_inputs_return_the_common_count() -> None:
    assert check_copartitioned({"v": 4, "a": 4, "t": 4, "results": 1}, ["v", "a", "t"]) == 4


def test_different_counts_are_refused_naming_topics_and_counts() -> None:
    with pytest.raises(TopicLayoutError) as info:
        check_copartitioned({"mm.video": 4, "mm.audio": 2, "mm.text": 4}, ["mm.video", "mm.audio", "mm.text"])
    msg = str(info.value)
    assert "not co-partitioned" in msg
    assert "mm.video=4" in msg and "mm.audio=2" in msg and "mm.text=4" in msg
    assert info.value.retriable is False


@pytest.mark.parametrize("counts", [{"v": 4, "a": 4}, {"v": 4, "a": 4, "t": 0}])
def test_missing_inputs_are_refused_naming_them(counts: dict[str, int]) -> None:
    with pytest.raises(TopicLayoutError, match=r"input topics missing: t$"):
        check_copartitioned(counts, ["v", "a", "t"])


# --------------------------------------------------------------------------- docs/config.md stays complete


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _keys(ann, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


@pytest.mark.parametrize("key", _keys(Settings))
def test_docs_config_describes_every_setting(key: str) -> None:
    text = (DOCS / "config.md").read_text()
    section, _, name = key.rpartition(".")
    assert re.search(rf"`{re.escape(name)}`", text), f"docs/config.md does not describe {key}"
    if section:
        assert re.search(rf"^#+ .*`{re.escape(section)}`", text, re.M), f"docs/config.md has no section {section}"


def test_docs_config_shows_the_env_var_form() -> None:
    assert "MMSTREAM_KAFKA__BOOTSTRAP_SERVERS" in (DOCS / "config.md").read_text()


def test_fetches_must_be_answered_faster_than_silence_is_judged() -> None:
    """After review: with fetch_max_wait_ms at or above the freshness bound of the caught-up
    judgement, no partition would ever count as caught up and silent modalities never as idle."""
    from stream.config import load_settings
    from stream.errors import ConfigError

    load_settings(overrides={"kafka": {"fetch_max_wait_ms": 750}, "window": {"idle_timeout_ms": 3000}})
    with pytest.raises(ConfigError, match="fetch_max_wait_ms=800 must be at most 750 ms"):
        load_settings(overrides={"kafka": {"fetch_max_wait_ms": 800}, "window": {"idle_timeout_ms": 3000}})
