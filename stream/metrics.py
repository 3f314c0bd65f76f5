"""Prometheus metrics and the ``/metrics`` ``/healthz`` ``/readyz`` HTTP server.

Each processor owns a ``Metrics`` with its own registry, so several processors can live in one
test process; the server exposes exactly that registry. Metric names are public (the Grafana
dashboard and alert rules in deploy/ query them; a test checks that they exist), so rename only
with those files.
"""

from __future__ import annotations

import importlib.metadata
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from stream.errors import ConfigError

if TYPE_CHECKING:
    from operators.config import ModelConfig
    from stream.contract import Latency, WindowResult
    from stream.health import HealthStatus
    from stream.windows import CloseCause

__all__ = ["Metrics", "MetricsServer", "ProcessorStats"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
_INFER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SKEW_BUCKETS = (-0.5, -0.185, -0.125, -0.09, -0.045, -0.02, 0.0, 0.02, 0.045, 0.09, 0.125, 0.185, 0.5)


class Metrics:
    """Every metric a processor exports. Labels: topic, outcome (ok|partly_late|dead_letter|late|replayed)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.records = Counter("mmstream_records", "Input records by topic and outcome", ["topic", "outcome"], registry=r)
        self.dead_letters = Counter("mmstream_dead_letters", "Dead letters by reason code", ["reason"], registry=r)
        self.windows = Counter("mmstream_windows", "Windows published, complete = every expected modality present",
                               ["complete"], registry=r)
        self.batch_size = Histogram("mmstream_batch_size", "Windows per inference batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.inference_seconds = Histogram("mmstream_inference_seconds", "Model time per batch (preprocess excluded)",
                                           buckets=_INFER_BUCKETS, registry=r)
        self.preprocess_seconds = Histogram("mmstream_preprocess_seconds", "Preprocess time per batch",
                                            buckets=_INFER_BUCKETS, registry=r)
        self.processing_latency_seconds = Histogram(
            "mmstream_processing_latency_seconds", "Window closed to its result acknowledged: what the processor "
            "adds (batching, inference, publishing), apart from waiting for event time", buckets=_LATENCY_BUCKETS,
            registry=r)
        self.e2e_latency_seconds = Histogram("mmstream_e2e_latency_seconds",
                                             "Event time: capture (newest record in the window) to result acknowledged; after a "
                                             "backfill this is the data's age (see mmstream_processing_latency_seconds)",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.latency_part_seconds = Histogram(
            "mmstream_latency_part_seconds", "Window end to publish, by part (the results' latency.breakdown: "
            "watermark, batch_wait, preprocess, inference, publish) and the broker's acknowledgement (ack)",
            ["part"], buckets=_LATENCY_BUCKETS, registry=r)
        self.watermark_lag_seconds = Gauge("mmstream_watermark_lag_seconds",
                                           "Event-time lag: wall clock minus the slowest source watermark, per modality",
                                           ["modality"], registry=r)
        self.av_skew_seconds = Histogram("mmstream_av_skew_seconds",
                                         "Per window: first audio sample minus first video frame instant",
                                         buckets=_SKEW_BUCKETS, registry=r)
        self.consumer_lag = Gauge("mmstream_consumer_lag", "Records behind the high watermark",
                                  ["topic", "partition"], registry=r)
        self.queue_depth = Gauge("mmstream_queue_depth", "Items waiting per stage", ["stage"], registry=r)
        self.paused = Gauge("mmstream_paused", "1 while input partitions are paused (backpressure or alignment)",
                            registry=r)
        self.pauses = Counter("mmstream_pauses", "Times input partitions were paused, by reason "
                              "(alignment|aligner_full|batcher_full|memory|loading)", ["reason"], registry=r)
        self.partition_stalled = Gauge("mmstream_partition_stalled", "1 while an input partition has records "
                                       "waiting and its position has not moved for a minute",
                                       ["topic", "partition"], registry=r)
        self.rss_bytes = Gauge("mmstream_rss_bytes", "Resident memory of the processor and its model worker, "
                               "as the memory guard measured it (limits.max_rss_bytes)", registry=r)
        self.open_windows = Gauge("mmstream_open_windows", "Windows still collecting records", registry=r)
        self.commits = Counter("mmstream_commits", "Offset commits", ["outcome"], registry=r)
        self.inference_errors = Counter("mmstream_inference_errors", "Inference failures: a batch (retried window "
                                        "by window) or a window (published with its error)", ["scope"], registry=r)
        self.model_busy_ratio = Gauge("mmstream_model_busy_ratio", "Fraction of wall time the model's replicas "
                                      "computed since the previous scrape (near 1: the device never waits for input); "
                                      "a worker that preprocesses counts its preprocessing",
                                      registry=r)
        self.model_version_info = Gauge("mmstream_model_version_info", "1, labelled with the name and version of "
                                        "the model serving now (changes when a new checkpoint is swapped in)",
                                        ["model", "version"], registry=r)
        self.gpu_memory_bytes = Gauge("mmstream_gpu_memory_bytes", "CUDA memory allocated by the model",
                                      registry=r)
        self.ready = Gauge("mmstream_ready", "1 when partitions are assigned and the model is loaded", registry=r)
        self.healthy = Gauge("mmstream_healthy", "1 while the event loop ticks and the model makes progress "
                             "(what /healthz reports)", registry=r)
        self.results = Counter("mmstream_results", "Results acknowledged, by top label ((none): no modality "
                               "present; (error): inference failed)", ["label"], registry=r)
        self.build_info = Gauge("mmstream_build_info", "1, labelled with the mmstream version, the model's name "
                                "and the preset it was built from (checkpoint: model.path)",
                                ["version", "model", "preset"], registry=r)
        # `mmstream alerts` (stream/commands/alerts.py): its own process, the same metric names
        self.alerts = Counter("mmstream_alerts", "Alert records acknowledged on the alerts topic, by rule and "
                              "state (firing|resolved)", ["rule", "state"], registry=r)
        self.alerts_firing = Gauge("mmstream_alerts_firing", "Alert episodes open now (fired, not yet resolved), "
                                   "by rule", ["rule"], registry=r)

    def count_result(self, result: WindowResult) -> None:
        """One acknowledged result under its top label. Labels come from the model's fixed list,
        so the series stay few; results without a label are counted too (in parentheses, unlike
        a label's text) so the panel's total is every result."""
        label = result.label if result.label is not None else "(error)" if result.error else "(none)"
        self.results.labels(label).inc()

    def set_build_info(self, model: str, config: ModelConfig) -> None:
        """What runs here, for dashboards that compare replicas after a rollout."""
        preset = "factory" if config.factory else "checkpoint" if config.path else config.preset
        self.build_info.clear()  # one series per process, even if started twice in a test
        self.build_info.labels(_package_version(), model, preset).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _package_version() -> str:
    try:
        return importlib.metadata.version("mmstream")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class MetricsServer:
    """A small threaded HTTP server: /metrics, /healthz (``health()`` is healthy; 503 with its
    one-line reason otherwise), /readyz (``ready()`` is true and healthy: ready to serve).

    It runs in a daemon thread so a busy event loop or a long inference never makes the probes
    time out; what the loop and the model do, ``health`` judges (``stream.health``) from here, so
    a loop that stopped ticking still gets its 503.
    """

    def __init__(self, metrics: Metrics, host: str, port: int, ready: Callable[[], bool],
                 health: Callable[[], HealthStatus] | None = None) -> None:
        self._metrics, self._ready, self._health = metrics, ready, health
        self._host, self._port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._port

    def start(self) -> None:
        metrics, ready, health = self._metrics, self._ready, self._health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    status = health() if health is not None else None
                    if status is None or status.healthy:
                        self._reply(200, b"ok\n")
                    else:
                        self._reply(503, f"unhealthy: {status.reason}\n".encode())
                elif path == "/readyz":
                    ok = ready() and (health is None or health().healthy)
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        try:
            self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        except (OSError, UnicodeError, ValueError) as exc:  # taken, not ours, or a name IDNA cannot encode
            problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            if isinstance(exc, socket.gaierror) or not isinstance(exc, OSError):
                problem = f"bad host name ({problem})"
            raise ConfigError(f"cannot listen on {self._host}:{self._port} for metrics: {problem}; "
                              "set metrics.port (MMSTREAM_METRICS__PORT) to a free port, 0 for any") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="mmstream-metrics", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self._host, self.port)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


class Timed(NamedTuple):
    """A published window's latency and why it closed: a window closed by an idle timeout (a
    source that stopped) waited for silence, not for data, and summaries tell the two apart."""

    latency: Latency
    closed_by: CloseCause


class ProcessorStats:
    """Counters the demo and tests read without scraping Prometheus."""

    def __init__(self) -> None:
        self.records = 0
        self.windows = 0
        self.windows_complete = 0
        self.dead_letters = 0
        self.late = 0
        self.partly_late = 0  # accepted, but part of the interval fell in closed windows
        self.replayed = 0
        self.latencies_s: list[float] = []
        self.breakdowns: list[Timed] = []  # the latency of results that carry a breakdown (bounded)
        self.last_results: dict[str, WindowResult] = {}  # the newest published result per source

    def observe(self, metrics: Metrics, result: WindowResult, av_skew_ns: int | None,
                processing_s: float | None) -> None:
        """One acknowledged result, counted here and in ``metrics``."""
        if processing_s is not None:
            metrics.processing_latency_seconds.observe(processing_s)
        self.windows += 1
        self.windows_complete += int(result.complete)
        metrics.windows.labels(str(result.complete).lower()).inc()
        metrics.count_result(result)
        latency_s = result.latency.capture_to_publish_ms / 1000
        metrics.e2e_latency_seconds.observe(max(latency_s, 0.0))
        self.latencies_s.append(latency_s)
        if len(self.latencies_s) > 10_000:
            del self.latencies_s[:5000]
        if av_skew_ns is not None:
            metrics.av_skew_seconds.observe(av_skew_ns / 1e9)
        self.last_results[result.source_id] = result
        parts = result.latency.breakdown
        # a window published with its error carries a breakdown too, but its batch wait holds its
        # failed batch's model time: left out here, so the parts keep meaning what they name
        if parts is not None and result.error is None:
            hist = metrics.latency_part_seconds
            for part, ms in (("watermark", parts.watermark_ms), ("batch_wait", parts.batch_wait_ms),
                             ("preprocess", parts.preprocess_ms), ("inference", parts.inference_ms),
                             ("publish", parts.publish_ms)):
                hist.labels(part).observe(max(ms, 0.0) / 1000)
            self.breakdowns.append(Timed(result.latency, result.closed_by))
            if len(self.breakdowns) > 10_000:
                del self.breakdowns[:5000]
