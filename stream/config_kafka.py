"""The ``kafka:`` section: how to reach and authenticate to the cluster, and the client settings
passed through to aiokafka (re-exported by ``stream.config``)."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

__all__ = ["KafkaConfig", "split_host_port"]


class KafkaConfig(BaseModel):
    """Connection and client settings, passed through to aiokafka."""

    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = Field("127.0.0.1:9092", description="HOST:PORT[,HOST:PORT...]")
    group_id: str = Field("mmstream", description="consumer group of the processors")
    client_id: str = "mmstream"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_oauth_token: SecretStr | None = Field(
        None, description="OAUTHBEARER: a fixed bearer token (for tokens that outlive the process)"
    )
    sasl_oauth_token_file: Path | None = Field(
        None, description="OAUTHBEARER: a file holding the bearer token, kept fresh by someone else; re-read when it changes"
    )
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    session_timeout_ms: int = Field(10_000, ge=6000, description="Kafka rejects < 6000 by default")
    heartbeat_interval_ms: int = Field(3000, gt=0)
    fetch_max_wait_ms: int = Field(50, ge=0, description="tansu answers fetches only at this bound")
    max_partition_fetch_bytes: int = Field(
        2**20, gt=0, description="per-partition fetch size; a larger record still arrives whole (Kafka >= 0.10.1)"
    )
    acks: Literal["all", 1, 0] = "all"
    linger_ms: int = Field(5, ge=0)
    compression_type: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "none"

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, servers: str) -> str:
        """The forms aiokafka accepts (no port means 9092; IPv6 in brackets), checked at start: a
        typo is otherwise an ``OverflowError`` or ``ValueError`` from deep inside a connect."""
        entries = [e.strip() for e in servers.split(",") if e.strip()]
        if not entries:
            raise ValueError("empty; give HOST:PORT[,HOST:PORT...]")
        for entry in entries:
            host, port = split_host_port(entry)
            if not host or (port is not None and not (port.isdigit() and 1 <= int(port) <= 65535)):
                raise ValueError(f"{entry!r} is not HOST:PORT with a port from 1 to 65535")
        return servers
    max_batch_size: int = Field(512 * 1024, gt=0, description="producer batch bytes")
    partitions: int = Field(4, ge=1, description="partitions per topic when mmstream creates topics")
    replication_factor: int = Field(1, ge=1)
    request_timeout_ms: int = Field(30_000, gt=0)
    stop_timeout_ms: int = Field(10_000, gt=0, description="bound on every client stop()")
    enable_idempotence: bool = Field(False, description="needs a broker with InitProducerId v3+ (not tansu)")
    auto_offset_reset: Literal["earliest", "latest", "none"] = Field(
        "earliest", description="where the group starts on a partition without a usable committed offset"
    )

    @field_validator("sasl_oauth_token")
    @classmethod
    def _check_token(cls, token: SecretStr | None) -> SecretStr | None:
        """A fixed token is checked at start, not at the first connection (the message never shows it)."""
        from stream.oauth import bearer_token_problem

        problem = None if token is None else bearer_token_problem(token.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return token

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL") and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_mechanism")
        oauth = [name for name in ("sasl_oauth_token", "sasl_oauth_token_file") if getattr(self, name) is not None]
        if self.sasl_mechanism == "OAUTHBEARER" and len(oauth) != 1:
            # aiokafka cannot authenticate with OAUTHBEARER without a token provider
            raise ValueError("sasl_mechanism OAUTHBEARER needs exactly one of sasl_oauth_token, sasl_oauth_token_file"
                             + (" (both are set)" if oauth else ""))
        if oauth and self.sasl_mechanism != "OAUTHBEARER":
            raise ValueError(f"{oauth[0]} is set but sasl_mechanism is {self.sasl_mechanism}, not OAUTHBEARER")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        return self


def split_host_port(entry: str) -> tuple[str, str | None]:
    """``(host, port)`` of one bootstrap entry as aiokafka reads it; port None when the entry has none."""
    if entry.startswith("["):  # [ipv6] or [ipv6]:port
        host, closed, rest = entry[1:].partition("]")
        if not closed:
            return "", None  # "[::1" : aiokafka cannot read it
        return host, rest[1:] if rest.startswith(":") else (rest or None)
    if ":" not in entry:
        return entry, None
    with contextlib.suppress(OSError, ValueError):
        socket.inet_pton(socket.AF_INET6, entry)  # a bare IPv6 literal: the default port
        return entry, None
    host, _, port = entry.rpartition(":")
    return host, port
