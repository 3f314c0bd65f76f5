"""One settings model for the whole pipeline, loaded from YAML and ``MMSTREAM_*`` variables.

Each component owns a small config object; ``Settings`` only gathers them, so a component can be
built and tested from its own config alone. Precedence, highest first: explicit overrides (CLI
flags such as ``--bootstrap``), environment (``MMSTREAM_KAFKA__BOOTSTRAP_SERVERS=...``), the YAML
file, the defaults. An invalid value fails at start with ``ConfigError`` naming the field.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from operators.config import ModelConfig
from stream.alerts.rules import Rule, RulesFile
from stream.config_hints import describe_env_error, describe_validation_error
from stream.config_kafka import KafkaConfig, split_host_port
from stream.contract import ContractLimits, Modality
from stream.errors import ConfigError

__all__ = [
    "BatchConfig",
    "KafkaConfig",
    "LimitsConfig",
    "MetricsConfig",
    "ModalitiesConfig",
    "ModelConfig",
    "Settings",
    "TopicsConfig",
    "ViewConfig",
    "WindowConfig",
    "load_settings",
    "split_host_port",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TopicsConfig(_Section):
    """Topic names. The three inputs must be co-partitioned (same partition count)."""

    video: str = "mm.video"
    audio: str = "mm.audio"
    text: str = "mm.text"
    results: str = "mm.results"
    dead_letter: str = "mm.dlq"
    alerts: str = Field("mm.alerts", description="where alert records go, from `mmstream alerts` or `rules:` (docs/alerts.md)")
    late: str | None = Field(None, description="where late records go; None = count them only")
    state: str | None = Field(
        None, description="published horizons per input partition (compacted); None = '<results>.state.<group_id>'"
    )

    def state_topic(self, group_id: str) -> str:
        """The state topic of one consumer group: groups must not share it."""
        return self.state or f"{self.results}.state.{group_id}"

    def input(self, modality: Modality) -> str:
        return getattr(self, modality.value)

    @property
    def inputs(self) -> dict[str, Modality]:
        """Input topic name -> modality."""
        return {self.input(m): m for m in Modality}


class ModalitiesConfig(_Section):
    """Which modalities each source sends, so a window waits only for those; see docs/time.md.

    A camera with a microphone and no transcription never sends text: expecting it would hold
    every window until the idle timeout and call it partial. ``sources`` maps source-id glob
    patterns (``fnmatch``, case-sensitive) to modalities; the first pattern that matches a source
    wins, ``default`` applies to the rest. A plain list is shorthand for ``default``.
    """

    default: list[Modality] = Field(default_factory=lambda: list(Modality),
                                    description="modalities of a source no pattern matches")
    sources: dict[str, list[Modality]] = Field(
        default_factory=dict, description="source-id glob pattern -> its modalities; the first match wins")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"default": value} if isinstance(value, list) else value

    @field_validator("default")
    @classmethod
    def _some(cls, modalities: list[Modality]) -> list[Modality]:
        if not modalities:
            raise ValueError("a source must send at least one of video, audio, text")
        return list(dict.fromkeys(modalities))

    @field_validator("sources")
    @classmethod
    def _patterns(cls, sources: dict[str, list[Modality]]) -> dict[str, list[Modality]]:
        for pattern, modalities in sources.items():
            if not pattern:
                raise ValueError("an empty source-id pattern matches nothing; use default for every source")
            if not modalities:
                raise ValueError(f"{pattern!r}: a source must send at least one of video, audio, text")
        return {pattern: list(dict.fromkeys(m)) for pattern, m in sources.items()}

    def expected(self, source_id: str) -> frozenset[Modality]:
        """The modalities ``source_id`` sends. Resolved once per source, when it is first seen."""
        for pattern, modalities in self.sources.items():
            if fnmatch.fnmatchcase(source_id, pattern):
                return frozenset(modalities)
        return frozenset(self.default)


class WindowConfig(_Section):
    """Event-time windows per source; see docs/time.md."""

    window_ms: int = Field(1000, gt=0, description="window length")
    hop_ms: int | None = Field(None, gt=0, description="slide; None = tumbling (hop = window)")
    allowed_lateness_ms: int = Field(200, ge=0, description="how far behind the max a record may arrive")
    idle_timeout_ms: int = Field(3000, gt=0, description="processing time after which a silent modality stops holding windows")
    max_open_windows_per_source: int = Field(64, gt=0, description="a source's share: past it, its oldest windows are the first shed "
                                                                    "when memory is short (soft); and the most windows one record may span")
    max_buffered_bytes: int = Field(256 * 2**20, gt=0, description="what all open windows hold: payloads (with the audio arrays "
                                                                   "they become at close) and 1 KiB of bookkeeping per record "
                                                                   "and per window")
    max_future_ms: int = Field(60_000, gt=0, description="a record further ahead of the processor's wall clock is rejected")
    max_ahead_ms: int = Field(5000, gt=0, description="watermark alignment: pause a partition this far ahead of the slowest modality")
    source_ttl_ms: int = Field(
        600_000, gt=0, description="a source silent this long (processing time) with no open window is retired: its state freed"
    )
    modalities: ModalitiesConfig = Field(
        default_factory=ModalitiesConfig,
        description="which modalities to wait for, per source-id pattern; a modality not expected never holds a window",
    )

    @model_validator(mode="after")
    def _hop_divides(self) -> WindowConfig:
        if self.hop_ms is not None and (self.hop_ms > self.window_ms or self.window_ms % self.hop_ms):
            raise ValueError(f"hop_ms {self.hop_ms} must divide window_ms {self.window_ms}")
        return self


class BatchConfig(_Section):
    """Dynamic batching of closed windows for inference."""

    max_batch: int = Field(16, ge=1, description="a batch closes at this many windows...")
    max_delay_ms: int = Field(50, ge=0, description="...or this long after its first window")
    max_in_flight: int = Field(2, ge=1, description="batches being preprocessed or inferred at once "
                               "(as many more may wait for their results to be acknowledged)")
    max_queued_windows: int = Field(256, ge=1, description="closed windows waiting; beyond it the source pauses")
    worker: Literal["process", "thread"] = Field(
        "process", description="run the model in a child process (overlaps with the consume loop) or a thread"
    )
    worker_threads: int | None = Field(
        None, ge=1, description="torch threads of the model worker process; None = the CPUs less one (at least 1)"
    )
    target_latency_ms: int | None = Field(
        None, gt=0, description="grow a batch only while its oldest window still publishes within this "
        "(stream.inference.sizing); None = max_batch/max_delay_ms alone")


class MetricsConfig(_Section):
    host: str = "0.0.0.0"
    port: int | None = Field(9464, ge=0, le=65535, description="None = no server; 0 = any free port")


class ViewConfig(_Section):
    """``mmstream view`` (docs/view.md): where it listens and how much it sends a browser."""

    host: str = Field("127.0.0.1", description="address to listen on; the page shows camera pictures, so local by default")
    port: int = Field(8765, ge=0, le=65535, description="0 = any free port")
    thumbnail_rate: float = Field(5.0, gt=0, le=30, description="most thumbnails per second per source")
    thumbnail_width: int = Field(192, ge=16, le=1280, description="thumbnail width, pixels (height keeps the aspect)")
    thumbnail_quality: int = Field(60, ge=10, le=95, description="thumbnail JPEG quality")
    history_s: int = Field(180, gt=0, le=3600, description="label timeline per source, seconds of event time")
    inspect_results: int = Field(200, ge=1, le=10_000, description="newest results kept per source for click-to-inspect")
    read_back: int = Field(2000, ge=0, description="results and alerts read back per partition at start")
    client_queue: int = Field(512, ge=8, description="events queued per browser; beyond it the oldest go and it resyncs")
    max_sources: int = Field(1024, ge=1, description="sources tracked; more are counted and ignored")
    inspect_bytes: int = Field(512 * 2**10, ge=4096, description="bytes of kept results per source for "
                               "click-to-inspect (embeddings left out); beyond it the oldest go")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host header names the page answers besides "
                                     "localhost, 127.0.0.1, [::1] and host (DNS rebinding); others get 403")


class LimitsConfig(ContractLimits):
    """Contract size bounds plus the process memory budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")  # a mistyped max_rss_bytes must not pass

    max_rss_bytes: int = Field(
        4 * 2**30, gt=0,
        description="resident memory of the processor and its model worker; above it all input pauses until it falls",
    )


class Settings(BaseSettings):
    """Everything ``mmstream run`` needs."""

    model_config = SettingsConfigDict(env_prefix="MMSTREAM_", env_nested_delimiter="__", extra="forbid")

    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    window: WindowConfig = Field(default_factory=WindowConfig)
    batching: BatchConfig = Field(default_factory=BatchConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    view: ViewConfig = Field(default_factory=ViewConfig)
    rules: list[Rule] = Field(default_factory=list, description="alert rules judged in process on every published "
                              "result (docs/alerts.md); empty: none")
    drain_timeout_ms: int = Field(15_000, gt=0, description="SIGTERM: time to close, infer, publish, commit")
    include_embedding: bool = Field(False, description="put the fused embedding in each result")
    gc_threshold: int | None = Field(
        50_000, ge=700, description="first-generation threshold of Python's cyclic GC while processing; None = leave it"
    )

    _read_env: ClassVar[bool] = True

    @property
    def rules_file(self) -> RulesFile | None:
        """The ``rules`` as a rules file (what the engine takes); None without rules."""
        return RulesFile(rules=self.rules) if self.rules else None

    @model_validator(mode="after")
    def _distinct_rules(self) -> Settings:
        if self.rules:
            RulesFile(rules=self.rules)  # rule ids distinct, as in a rules file
        return self

    @model_validator(mode="after")
    def _fetches_prove_silence(self) -> Settings:
        # a partition counts as caught up only on a fetch response younger than half the idle
        # timeout (at most 2 s); fetches answered more slowly would never show one caught up,
        # and a modality a source never sends would never stop holding its windows
        fresh_ms = fresh_cap_ms(self.window.idle_timeout_ms)
        if 2 * self.kafka.fetch_max_wait_ms > fresh_ms:
            raise ValueError(
                f"kafka.fetch_max_wait_ms={self.kafka.fetch_max_wait_ms} must be at most {fresh_ms // 2} ms with "
                f"window.idle_timeout_ms={self.window.idle_timeout_ms}: silence is judged on fetch responses "
                f"at most {fresh_ms} ms old")
        return self

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file, which arrives as init kwargs.
        return (env_settings, init_settings) if cls._read_env else (init_settings,)


def fresh_cap_ms(idle_timeout_ms: int) -> int:
    """The oldest a fetch response may be to show a partition caught up: half the idle timeout, at
    most 2 s (a silence long enough to count must have been confirmed since it began)."""
    return min(2000, idle_timeout_ms // 2)


def fresh_poll_ms(window: WindowConfig, kafka: KafkaConfig) -> int:
    """How old a fetch response may be to show a partition caught up: a few fetch waits (the
    broker answers an idle partition every ``fetch_max_wait_ms``), at least 500 ms (a slow step of
    the loop delays the answer's processing), within ``fresh_cap_ms``. Records produced while the
    broker stops answering are exposed to an idle judgement for this long."""
    return min(fresh_cap_ms(window.idle_timeout_ms), max(4 * kafka.fetch_max_wait_ms, 500))


class _Resolved(Settings):
    """Settings whose values are all explicit: no environment pass (it was applied already)."""

    _read_env: ClassVar[bool] = False


def _expand_shorthands(layer: dict[str, Any]) -> dict[str, Any]:
    """``window.modalities: [video, audio]`` is short for ``{default: [video, audio]}``: expanded in
    each layer before they merge, so a list in one layer and patterns in another combine instead
    of one replacing the other."""
    window = layer.get("window")
    if isinstance(window, dict) and isinstance(window.get("modalities"), list):
        return {**layer, "window": {**window, "modalities": {"default": window["modalities"]}}}
    return layer


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line, with line and column (its own text spans several lines and
    quotes ``<unicode string>`` rather than the file)."""
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        what = "; ".join(p for p in (exc.context, exc.problem) if p)
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {what}"
    return " ".join(str(exc).split())


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from an optional YAML file, the environment and explicit overrides.

    Raises:
        ConfigError: the file is unreadable or a value is invalid; the message names the field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"cannot read config {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot read config {path}: {_yaml_problem(exc)}") from exc
        except RecursionError:
            raise ConfigError(f"cannot read config {path}: nested too deeply") from None
        if not isinstance(loaded, dict) or not all(isinstance(k, str) for k in loaded):
            raise ConfigError(f"config {path} must be a YAML mapping of setting names, got {type(loaded).__name__}"
                              + (f" with the key {next(k for k in loaded if not isinstance(k, str))!r}"
                                 if isinstance(loaded, dict) else ""))
        data = loaded
    environ = {k: v for k, v in os.environ.items() if k.upper().startswith("MMSTREAM_")}
    try:
        from_env = EnvSettingsSource(Settings)()  # MMSTREAM_* as nested values, JSON parsed
    except SettingsError as exc:  # an MMSTREAM_* variable pydantic-settings cannot parse (bad JSON)
        raise ConfigError("invalid environment variable: " + describe_env_error(exc, Settings, environ)) from None
    # one validation of the layers merged, highest last: a flag replaces what the environment set,
    # even a value the environment got wrong, and every error is named by the layer it came from
    try:
        layers = [_expand_shorthands(layer) for layer in (data, from_env, overrides or {})]
        return _Resolved(**_deep_merge(_deep_merge(layers[0], layers[1]), layers[2]))
    except ValidationError as exc:
        # ``from None``: pydantic's error text repeats the input values, secrets included
        raise ConfigError("invalid config: " + describe_validation_error(
            exc, Settings, environ=environ, flags=overrides)) from None
