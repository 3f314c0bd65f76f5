"""``mmstream demo``: the whole product on one machine, in one command.

Starts the embedded broker, creates the topics, starts the input (synthetic sources by default;
a camera, microphone or video file when asked), runs the processor with the offline preset and
shows a live view of the results. ``--duration`` ends it with a summary (``--json``: the last line
is a JSON summary). Ctrl-C drains and stops everything it started; a second Ctrl-C exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import Counter
from typing import Any

from stream.commands._common import ensure_port_free, number, port_number, stop_on_signals

log = logging.getLogger(__name__)

# Labels that match what the synthetic scene scripts, so the zero-shot scores mean something; a
# camera, microphone or video file is scored on the documented defaults (model.labels). The live
# view says which (stream.commands._view.demo_labels).
DEMO_LABELS = ["a red ball", "a blue square", "someone speaking", "a quiet room", "static noise", "a beep"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run broker + sources + processor locally with a live view",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--duration", type=number(float, minimum=0, inclusive=False), default=None, metavar="S",
                   help="seconds of input, then a summary (default: until Ctrl-C)")
    p.add_argument("--sources", type=number(int, minimum=1), default=4, metavar="N",
                   help="synthetic sources (default 4)")
    p.add_argument("--fps", type=number(float, minimum=0, inclusive=False, maximum=1000), default=10.0,
                   metavar="FPS", help="synthetic frames per second per source")
    p.add_argument("--preset", choices=["tiny", "offline"], default="offline", help="model preset (default offline)")
    p.add_argument("--model", metavar="PATH", help="a checkpoint from `mmstream train` instead of a preset")
    p.add_argument("--port", type=port_number(minimum=1), default=None, help="broker port on 127.0.0.1 (default: a free one)")
    p.add_argument("--metrics-port", type=port_number(minimum=0), default=9464, metavar="PORT",
                   help="Prometheus /metrics port; 0 = any free port")
    p.add_argument("--camera", metavar="DEV",
                   help="capture a camera (index, file or URL) instead of synthetic sources; not with --video")
    p.add_argument("--mic", metavar="DEV", help="capture a microphone (name, index or `default`)")
    p.add_argument("--video", metavar="FILE", help="replay a video file instead of synthetic sources; not with --camera")
    p.add_argument("--json", action="store_true", help="no live view; the last line is a JSON summary")
    p.add_argument("--view-port", type=port_number(minimum=0), default=None, metavar="PORT",
                   help="port of the web view on 127.0.0.1 (default: 8765, or any free port when 8765 is taken)")
    p.add_argument("--no-view", action="store_true", help="do not serve the web view (docs/view.md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream.commands._demo_checks import check_demo_args

    check_demo_args(args)  # files, devices, combinations: refused before anything starts
    # Both ports are bound only after the broker started and the model loaded (seconds); a busy one
    # then failed with tansu's multi-line panic or an OSError traceback. Check first, in one line.
    ensure_port_free("127.0.0.1", args.port, "the embedded broker", "choose another --port, or omit it for a free one")
    ensure_port_free("127.0.0.1", args.metrics_port, "metrics",
                     "stop what listens there (another demo or `mmstream run`?) or pass --metrics-port 0 for any free port")
    if args.view_port is not None and not args.no_view:
        ensure_port_free("127.0.0.1", args.view_port, "the web view", "choose another --view-port, or pass 0 for any free port")
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    with stop_on_signals(stop, "stopping the demo"):
        return await _demo_until(args, stop)


async def _demo_until(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from stream.broker import EmbeddedBroker
    from stream.commands._demo_checks import expected_modalities
    from stream.commands._view import live_view
    from stream.config import load_settings
    from stream.runtime import Processor

    broker = EmbeddedBroker(args.port)
    t0 = time.monotonic()
    bootstrap = await asyncio.to_thread(broker.start)
    try:
        model: dict[str, Any] = {"path": args.model} if args.model else {"preset": args.preset}
        if not (args.model or args.camera or args.mic or args.video):
            model["labels"] = DEMO_LABELS
        settings = load_settings(overrides={
            "kafka": {"bootstrap_servers": bootstrap, "group_id": "mmstream-demo", "session_timeout_ms": 6000,
                      "heartbeat_interval_ms": 2000, "partitions": 4},
            # live inputs send no transcript: their windows close on picture and sound, complete
            "window": {"idle_timeout_ms": 2000, **({"modalities": m} if (m := expected_modalities(args)) else {})},
            "metrics": {"port": args.metrics_port, "host": "127.0.0.1"},
            "model": model,
        })
        processor = Processor(settings)
        await processor.start()
        _say(args, f"broker {bootstrap}, model {processor.model_info.name} loaded in {time.monotonic() - t0:.1f} s, "
             f"metrics on http://127.0.0.1:{processor.metrics_port or '-'}/metrics")
        run_task = asyncio.create_task(processor.run(stop), name="processor")
        web: Any = None
        inputs: asyncio.Task[None] | None = None
        view: asyncio.Task[None] | None = None
        t_start = time.monotonic()
        try:
            await _until_ready(processor, run_task, stop)
            inputs = asyncio.create_task(_inputs(args, settings, stop), name="inputs")
            web = None if args.no_view else await _start_web_view(args, settings, stop)
            view = asyncio.create_task(live_view(processor, stop, args), name="view") if not args.json else None
            t_start = time.monotonic()
            await asyncio.wait({inputs, run_task}, return_when=asyncio.FIRST_COMPLETED)
            if run_task.done():  # the processor stopped on its own (its fatal error): so do the sources
                stop.set()
            await inputs
            if args.duration is not None and not stop.is_set():
                # input ended: sources fall silent, the processor closes their last windows after the idle timeout
                await _settle(processor, settings.window.idle_timeout_ms / 1000 + 3.0, stop)
                stop.set()
            await run_task
        finally:
            stop.set()
            for task in (view, inputs):
                if task is not None and not task.done():
                    task.cancel()
            if web is not None:
                await _stop_web_view(*web)
            await processor.stop()
        summary = _summary(processor, time.monotonic() - t_start)
        if args.json:
            print(json.dumps(summary))
        else:
            _print_summary(summary)
        return 0
    finally:
        broker.stop()


async def _until_ready(processor: Any, run_task: asyncio.Task[None], stop: asyncio.Event,
                       max_wait_s: float = 60.0) -> None:
    """Start the sources once the processor holds its partitions, as cameras already running
    meet a processor already up. Started earlier, the first windows of every source wait out
    the group join (seconds on tansu, ``session_timeout_ms / 2``) and the summary's p99 latency
    measures the start-up, not the steady state (docs/benchmarks.md)."""
    deadline = time.monotonic() + max_wait_s
    while not processor.ready and not stop.is_set() and time.monotonic() < deadline:
        if run_task.done():
            run_task.result()  # the processor failed before it was ready: say why
            return
        await asyncio.sleep(0.05)
    if not processor.ready and not stop.is_set():
        log.warning("processor not ready after %.0f s; starting the sources anyway", max_wait_s)


async def _start_web_view(args: argparse.Namespace, settings: Any, stop: asyncio.Event) -> tuple[Any, Any] | None:
    """Serve the web view (docs/view.md) in this loop; say its URL."""
    from stream.commands._common import bind_problem
    from stream.view import View

    port = args.view_port
    if port is None:  # the documented port when free, else any: two demos side by side both get a view
        port = 8765 if bind_problem("127.0.0.1", 8765) is None else 0
    web = View(settings.model_copy(update={"view": settings.view.model_copy(update={"host": "127.0.0.1", "port": port})}))
    try:
        _say(args, f"view on {await web.start()}")
    except OSError as exc:  # the port was taken since it was checked: the demo runs on without its view
        log.warning("web view not served: %s", exc)
        return None
    return web, asyncio.create_task(web.run(stop), name="web-view")


async def _stop_web_view(web: Any, task: asyncio.Task[None]) -> None:
    try:
        await asyncio.wait_for(task, 15)
    except (TimeoutError, Exception) as exc:  # the view is a window on the demo: its failure never fails the demo
        log.warning("web view: %s", exc or type(exc).__name__)
    await web.stop()


async def _inputs(args: argparse.Namespace, settings: Any, stop: asyncio.Event) -> None:
    """Run the chosen input until its duration ends or ``stop``."""
    duration = args.duration if args.duration is not None else 365 * 24 * 3600.0
    if args.camera or args.mic or args.video:
        from stream.sources import live

        await live.run_demo_inputs(settings, camera=args.camera, mic=args.mic, video=args.video,
                                   duration_s=duration, stop=stop)
        return
    from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce

    scene = SyntheticScene(SyntheticConfig(sources=args.sources, fps=args.fps), start_ns=time.time_ns())
    await produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=duration, realtime=True, stop=stop)


async def _settle(processor: Any, max_wait_s: float, stop: asyncio.Event) -> None:
    """Wait until no window is open any more (or the bound), so the summary covers the whole input."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline and not stop.is_set():
        # records > 0: a short input may end before the consumer group even joined (no windows yet)
        if processor.stats.records > 0 and processor.open_windows == 0 and processor.queued_windows == 0:
            await asyncio.sleep(0.5)  # the last batch may still be publishing
            return
        await asyncio.sleep(0.2)


def _percentile(values: list[float], q: float) -> float | None:
    from stream.commands._view import quantile

    found = quantile(sorted(values), q)
    return None if found is None else round(found, 4)


def _summary(processor: Any, elapsed_s: float) -> dict[str, Any]:
    st = processor.stats
    return {
        "windows": st.windows,
        "windows_complete": st.windows_complete,
        "results_per_s": round(st.windows / elapsed_s, 3) if elapsed_s > 0 else 0.0,
        "p50_latency_s": _percentile(st.latencies_s, 0.50),
        "p99_latency_s": _percentile(st.latencies_s, 0.99),
        "latency_breakdown": _breakdown(processor),
        "records": st.records,
        "dead_letters": st.dead_letters,
        "late": st.late,
        "sources": len(st.last_results),
        "elapsed_s": round(elapsed_s, 2),
    }


_PARTS = ("watermark_ms", "batch_wait_ms", "preprocess_ms", "inference_ms", "publish_ms")


def _breakdown(processor: Any) -> dict[str, Any] | None:
    """Window end to publish: p50 and p99 of the whole and of each part, which modality windows
    waited for, why they closed, and the issue's bound (allowed lateness + max_delay_ms + 2 x p99
    inference) with the parts whose p99 exceeds their share of it; the same for the windows closed
    by their watermarks alone (a source's last window before it stops closes by the idle timeout
    instead, ``idle_timeout_ms`` after its last record: silence cannot be told apart any sooner)."""
    timed = processor.stats.breakdowns
    if not timed:
        return None
    out: dict[str, Any] = {"windows": len(timed), **_parts([t.latency for t in timed], processor.settings)}
    out["closed_by"] = dict(Counter(t.closed_by for t in timed))
    by_watermark = [t.latency for t in timed if t.closed_by == "watermark"]
    if by_watermark and len(by_watermark) < len(timed):
        out["closed_by_watermark"] = {"windows": len(by_watermark), **_parts(by_watermark, processor.settings)}
    return out


def _parts(lats: list[Any], s: Any) -> dict[str, Any]:
    parts = [lat.breakdown for lat in lats]
    out: dict[str, Any] = {}
    for q, name in ((0.50, "p50"), (0.99, "p99")):
        out[name] = {"window_end_to_publish_ms": _percentile([lat.window_end_to_publish_ms for lat in lats], q),
                     **{p: _percentile([getattr(b, p) for b in parts], q) for p in _PARTS}}
    out["waited_for"] = dict(Counter(b.waited_for.value if b.waited_for is not None else "none" for b in parts))
    p99 = out["p99"]
    # each term of the bound is one part's share; the model's two inference times cover its batch's
    # preprocessing and inference and the publish part (mostly waiting for the batch before)
    shares = {"watermark_ms": (p99["watermark_ms"], s.window.allowed_lateness_ms),
              "batch_wait_ms": (p99["batch_wait_ms"], s.batching.max_delay_ms),
              "preprocess+inference+publish_ms": (p99["preprocess_ms"] + p99["inference_ms"] + p99["publish_ms"],
                                                  2 * p99["inference_ms"])}
    bound = sum(limit for _, limit in shares.values())
    out["bound_ms"] = round(bound, 1)
    out["within_bound"] = p99["window_end_to_publish_ms"] <= bound
    out["over_share"] = {p: round(got - limit, 1) for p, (got, limit) in shares.items() if got > limit}
    return out


def _say(args: argparse.Namespace, text: str) -> None:
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console

    # no latency before the first result: a value that is not there is left out, not printed as None
    Console().print("\nsummary: " + ", ".join(f"{k}={v}" for k, v in summary.items() if v is not None))
