"""The web view's footprint: ``python -m bench.view --json`` (issue 15; not a timed test).

An embedded broker, ``--sources`` synthetic sources in real time (160x120 JPEG at 10 fps, audio,
transcripts), ``mmstream run`` (tiny preset) and ``mmstream view``, each its own process. Browser
clients are Server-Sent Events readers of ``/events``, reading exactly what a browser reads:
``--clients`` read everything (thumbnails of every source, the worst case), and one more opens
the stream and never reads it (a stalled browser), which must cost the others nothing.

Measured:

- the view process's resident memory, sampled every 0.5 s: ``rss_ratio`` = max RSS / 300 MB
  (target <= 1);
- thumbnails each reading client received per source: ``thumb_rate_ratio`` = the highest mean
  rate of any (client, source) / ``view.thumbnail_rate`` (target <= 1); also the most received
  in any one-second span (arrival jitter can put two releases 0.2 s apart into one second and
  a sixth at its edge), and the age of a thumbnail's frame when it arrived;
- results shown: tile events with a new window per client, against results published.

The last line (with ``--json``) is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

RSS_TARGET_MB = 300.0


async def _ready(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 180.0) -> None:
    """Wait for the processor's /readyz (its model loads first), so the input is not produced
    into a pipeline that is not there yet."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mmstream run exited: {log.read_text()[-2000:]}")
        try:
            await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz")
            return
        except OSError:
            await asyncio.sleep(0.5)
    raise SystemExit("mmstream run not ready")


def _config(bootstrap: str, group: str, rate: float, metrics_port: int) -> dict[str, Any]:
    return {"kafka": {"bootstrap_servers": bootstrap, "group_id": group, "partitions": 4, "session_timeout_ms": 6000,
                      "heartbeat_interval_ms": 2000},
            "window": {"idle_timeout_ms": 2000},
            "model": {"preset": "tiny"}, "metrics": {"host": "127.0.0.1", "port": metrics_port},
            "view": {"host": "127.0.0.1", "port": 0, "thumbnail_rate": rate}}


class Reader:
    """One browser: counts what ``/events`` sends it."""

    def __init__(self) -> None:
        self.thumbs: dict[str, list[float]] = defaultdict(list)
        self.ages_ms: list[float] = []
        self.windows = 0
        self.snapshots = 0
        self.bytes = 0

    def take(self, kind: str, data: str) -> None:
        if kind == "thumb":
            doc = json.loads(data)
            self.thumbs[doc["source"]].append(time.monotonic())
            self.ages_ms.append((time.time_ns() - doc["ts_ns"]) / 1e6)
        elif kind == "tile":
            self.windows += json.loads(data).get("added") is not None
        elif kind == "snapshot":
            self.snapshots += 1

    async def read(self, url: str, stop: asyncio.Event) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(url + "events") as resp:
            buf = b""
            reading = asyncio.create_task(stop.wait())
            while not stop.is_set():
                chunk_task = asyncio.create_task(resp.content.readany())
                done, _ = await asyncio.wait({chunk_task, reading}, return_when=asyncio.FIRST_COMPLETED)
                if chunk_task not in done:
                    chunk_task.cancel()
                    break
                chunk = chunk_task.result()
                if not chunk:
                    break
                self.bytes += len(chunk)
                buf += chunk
                while b"\n\n" in buf:
                    frame, buf = buf.split(b"\n\n", 1)
                    fields = dict(line.split(": ", 1) for line in frame.decode().splitlines() if ": " in line)
                    if "event" in fields:
                        self.take(fields["event"], fields.get("data", ""))


async def stalled(url: str, stop: asyncio.Event) -> None:
    """A browser that opens the stream and never reads a byte of it."""
    host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    await stop.wait()
    writer.close()


def max_in_one_second(times: list[float]) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:  # (t - 1, t]: five at exactly 0.2 s apart fit, a sixth does not
            j += 1
        best = max(best, i - j + 1)
    return best


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    from stream.broker import EmbeddedBroker, free_port
    from stream.config import load_settings
    from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce

    tmp = Path(tempfile.mkdtemp(prefix="bench-view-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with EmbeddedBroker() as broker:
        metrics_port = free_port()
        doc = _config(broker.bootstrap, f"bench-view-{uuid.uuid4().hex[:6]}", args.rate, metrics_port)
        (tmp / "mm.yaml").write_text(yaml.safe_dump(doc))
        settings = load_settings(tmp / "mm.yaml")
        logs = {name: open(tmp / f"{name}.log", "wb") for name in ("run", "view")}  # noqa: SIM115
        procs = {name: subprocess.Popen([sys.executable, "-m", "stream.cli", name, "--config", str(tmp / "mm.yaml")],
                                        stdout=logs[name], stderr=subprocess.STDOUT, env=env)
                 for name in ("run", "view")}
        stop = asyncio.Event()
        try:
            url = await _url(tmp / "view.log", procs["view"])
            await _ready(metrics_port, procs["run"], tmp / "run.log")
            view = psutil.Process(procs["view"].pid)
            scene = SyntheticScene(SyntheticConfig(sources=args.sources, fps=args.fps), start_ns=time.time_ns())
            readers = [Reader() for _ in range(args.clients)]
            tasks = [asyncio.create_task(r.read(url, stop)) for r in readers]
            tasks.append(asyncio.create_task(stalled(url, stop)))
            feed = asyncio.create_task(produce(scene, settings.kafka, settings.topics, settings.limits,
                                               duration_s=args.seconds, realtime=True, stop=stop))
            rss: list[int] = []
            cpu0, t0 = view.cpu_times(), time.monotonic()
            while not feed.done():
                rss.append(view.memory_info().rss)
                await asyncio.sleep(0.5)
            cpu1, wall = view.cpu_times(), time.monotonic() - t0
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            stats = json.loads(await asyncio.to_thread(_get, url + "api/state"))["summary"]
        finally:
            stop.set()
            for p in procs.values():
                p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            for f in logs.values():
                f.close()
    rates, bursts = [], []
    for r in readers:
        for times in r.thumbs.values():
            if len(times) > 1:
                rates.append((len(times) - 1) / (times[-1] - times[0]))
            bursts.append(max_in_one_second(times))
    ages = sorted(a for r in readers for a in r.ages_ms)
    return {
        "rss_ratio": round(max(rss) / 2**20 / RSS_TARGET_MB, 3),
        "thumb_rate_ratio": round(max(rates) / args.rate, 3) if rates else None,
        "view_rss_max_mb": round(max(rss) / 2**20, 1),
        "view_rss_median_mb": round(statistics.median(rss) / 2**20, 1),
        "view_cpu_share": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall, 3),
        "thumb_rate_bound": args.rate,
        "thumb_rate_max": round(max(rates), 3) if rates else None,
        "thumb_rate_mean": round(statistics.mean(rates), 3) if rates else None,
        "thumbs_max_in_1s": max(bursts) if bursts else None,
        "thumb_age_p50_ms": round(ages[len(ages) // 2], 1) if ages else None,
        "sources_with_thumbs_per_client": [len(r.thumbs) for r in readers],
        "windows_shown_per_client": [r.windows for r in readers],
        "client_kbytes_per_s": [round(r.bytes / wall / 1024, 1) for r in readers],
        "results_consumed_by_view": stats["results"],
        "dropped_events": stats["dropped_events"],
        "slow_clients_ended": stats["slow_clients_ended"],
        "settings": {"sources": args.sources, "fps": args.fps, "seconds": args.seconds, "clients": args.clients,
                     "stalled_clients": 1},
    }


async def _url(log: Path, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mmstream view exited: {log.read_text()[-2000:]}")
        if found := re.search(r"view on (http://\S+)", log.read_text()):
            return found.group(1)
        await asyncio.sleep(0.2)
    raise SystemExit("mmstream view printed no URL")


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", type=int, default=16)
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=40.0, help="seconds of real-time input")
    p.add_argument("--clients", type=int, default=2, help="reading browser clients (plus one stalled)")
    p.add_argument("--rate", type=float, default=5.0, help="view.thumbnail_rate")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = asyncio.run(run(args))
    print(f"view RSS         max {out['view_rss_max_mb']} MB, median {out['view_rss_median_mb']} MB "
          f"(ratio to {RSS_TARGET_MB:.0f} MB: {out['rss_ratio']}; target <= 1)")
    print(f"thumbnails       per client and source: max {out['thumb_rate_max']}/s, mean {out['thumb_rate_mean']}/s, "
          f"bound {out['thumb_rate_bound']}/s (ratio {out['thumb_rate_ratio']}; target <= 1); "
          f"most in one second {out['thumbs_max_in_1s']}; frame age p50 {out['thumb_age_p50_ms']} ms")
    print(f"view CPU         {out['view_cpu_share']:.2f} of a core; per client {out['client_kbytes_per_s']} KB/s; "
          f"windows shown per client {out['windows_shown_per_client']} of {out['results_consumed_by_view']} consumed")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
