"""SASL/OAUTHBEARER: the token provider aiokafka needs for ``kafka.sasl_mechanism: OAUTHBEARER``.

aiokafka asks its ``sasl_oauth_token_provider`` for a token at every new connection and refuses
OAUTHBEARER without one. mmstream does not talk to an identity provider itself: obtaining and
refreshing tokens is the job of the platform (a Kubernetes projected service-account token, a
Vault agent, an OIDC sidecar), which writes the current token to a file. ``TokenProvider`` reads
that file at every connection, so a rotated token is used from the next connection on; a fixed
token from a secret setting is the other, simpler source.

A token that is already expired (a JWT whose ``exp`` has passed) is refused here with a message
naming the file, instead of the broker's bare authentication failure: it means whatever keeps the
file fresh has stopped.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka.abc import AbstractTokenProvider

from stream.errors import ClusterError

__all__ = ["TokenProvider", "bearer_token_problem", "jwt_expiry"]

# RFC 6750 section 2.1 b64token: what may follow "Bearer " (the SASL message has no room for more)
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# Kafka's default sasl.oauthbearer.clock.skew.seconds: the broker accepts tokens this far past exp
_SKEW_S = 30.0


def bearer_token_problem(token: str) -> str | None:
    """Why ``token`` cannot be sent as an OAUTHBEARER token, or None when it can."""
    if not token:
        return "the token is empty"
    if not _B64TOKEN.fullmatch(token):
        return "the token has characters a bearer token cannot hold (whitespace, quotes, JSON?)"
    return None


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (Unix seconds) of a JWT, or None for an opaque token or one without ``exp``."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class TokenProvider(AbstractTokenProvider):
    """Hands aiokafka a bearer token from a fixed value or from a file (exactly one of them).

    Args:
        token: a fixed token (``kafka.sasl_oauth_token``).
        path: a file holding the token (``kafka.sasl_oauth_token_file``); surrounding whitespace
            is ignored.
        clock: Unix time in seconds, for the expiry check.
    """

    def __init__(self, *, token: str | None = None, path: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if (token is None) == (path is None):
            raise ValueError("give exactly one of token, path")
        self._fixed = token
        self._path = path
        self._clock = clock

    async def token(self) -> str:
        """The current token.

        Raises:
            ClusterError: the file cannot be read, holds no usable token, or the token has expired.
        """
        # A small local file read at connection time only: not worth a thread hop.
        token = self._fixed if self._fixed is not None else self._from_file()
        where = f"{self._path}" if self._path is not None else "kafka.sasl_oauth_token"
        problem = bearer_token_problem(token)
        if problem is not None:
            raise ClusterError(f"OAUTHBEARER token from {where}: {problem}")
        exp = jwt_expiry(token)
        if exp is not None and exp + _SKEW_S < self._clock():
            raise ClusterError(
                f"OAUTHBEARER token from {where} expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(exp))}"
                + ("; whatever refreshes the file has stopped" if self._path is not None else "")
            )
        return token

    def _from_file(self) -> str:
        """Read on every call: a rotated token is used from the next connection, and a file read
        once per connection costs nothing next to the TLS handshake."""
        assert self._path is not None
        try:
            return self._path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ClusterError(f"cannot read the OAUTHBEARER token file {self._path}: {exc}") from exc
