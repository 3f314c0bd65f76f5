"""Why Kafka cannot be reached, in plain words, and what to do about it.

One diagnosis for every command: ``doctor`` reports it as its kafka row, and ``run`` (any command
that starts a processor) ends with the same words when the cluster is not there at start, so a
user who tried one is never told something different by the other.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

__all__ = ["KAFKA_FIX", "Diagnosis", "diagnose_kafka", "explained", "tcp_problem"]

KAFKA_FIX = ("start a broker (`mmstream broker` runs a local one) or point --bootstrap / kafka.bootstrap_servers "
             "at yours; check security_protocol and credentials")


@dataclass(frozen=True)
class Diagnosis:
    """What is wrong (``detail``), what to do (``fix``), and whether a plain TCP connection to the
    first bootstrap server worked (then the Kafka handshake, or what came after it, failed)."""

    detail: str
    fix: str
    connects: bool


async def diagnose_kafka(bootstrap: str, error: BaseException, timeout_s: float = 3.0) -> Diagnosis:
    """The diagnosis of a failure to use the cluster at ``bootstrap``, ``error`` being what the
    client raised. Never raises; bounded by ``timeout_s``."""
    why = await tcp_problem(bootstrap, timeout_s)
    connects = why is None
    if why is None:
        why = (f"it accepts connections but the Kafka handshake failed ({type(error).__name__}: {error}); "
               "is it a Kafka broker, and are security_protocol and the credentials right?")
    return Diagnosis(f"cannot reach Kafka at {bootstrap}: {why}", KAFKA_FIX, connects)


async def explained(bootstrap: str, error: BaseException, timeout_s: float = 3.0) -> Exception:
    """The error a command ends with when it cannot use the cluster at start: doctor's words and
    fix when nothing answers; the client's own words and a pointer to ``doctor`` when TCP works
    (what failed came later). Returned, for the caller to raise ``from`` the original."""
    from stream.errors import ClusterError

    diagnosis = await diagnose_kafka(bootstrap, error, timeout_s)
    if diagnosis.connects:
        return ClusterError(f"{error}; to find which step fails, run `mmstream doctor`")
    return ClusterError(f"{diagnosis.detail}; to fix: {diagnosis.fix}")


async def tcp_problem(bootstrap: str, timeout_s: float) -> str | None:
    """A plain reason from a bare TCP connect to the first bootstrap server; None when it connects."""
    from stream.config import split_host_port

    host, port = split_host_port(bootstrap.split(",")[0].strip())
    port = port or "9092"  # aiokafka's default when the address has none
    host = host or "localhost"
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
    except ValueError:
        return f"{bootstrap!r} is not HOST:PORT"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:g} s (wrong address or a firewall?)"
    except socket.gaierror:
        return f"unknown host {host!r}"
    except ConnectionRefusedError:
        return f"connection refused: nothing listens on {host}:{port}"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"
    writer.close()
    return None  # TCP works: the Kafka handshake (TLS, SASL, protocol) is what failed
