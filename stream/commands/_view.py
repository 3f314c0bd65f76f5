"""What ``mmstream demo`` and ``mmstream tail`` draw on a terminal, fitted to its size.

Both were laid out for a wide terminal: at 80 columns a demo row wrapped onto three lines, the
table ran off a 24-line screen, and a ``tail`` result line ran on past the edge. Here every
line is built for the width it gets: parts that matter least are dropped first (counts, then why a
window closed, then where a record lies), what is left is cut with an ellipsis, and the demo
shows as many sources as the height allows with a "+ N more" line for the rest. Nothing is shown
that is not known yet: no latency before the first result.

Rendering happens in the refresh thread of rich's ``Live``; it reads only a ``ViewSnapshot`` copied
in the event loop, never the processor itself.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

__all__ = ["DemoView", "Labels", "ViewSnapshot", "demo_labels", "demo_title", "iso_time", "live_view",
           "record_line", "score_bar", "snapshot"]

_BAR_CELLS = 8


class Labels(NamedTuple):
    """The labels a demo scores and why those: the view says both, so no score is a riddle."""

    names: tuple[str, ...]  # empty: not known before the first result (a checkpoint's own)
    why: str


@dataclass(frozen=True)
class ViewSnapshot:
    """What the demo view shows, copied from the processor in the event loop."""

    title: str
    labels: Labels
    elapsed_s: float
    records: int
    windows: int
    windows_complete: int
    latency_p50_s: float | None  # None until the first result
    latency_p99_s: float | None
    lag: int
    late: int
    dead_letters: int
    open_windows: int
    results: tuple[Any, ...]  # the newest WindowResult per source, by source id


def snapshot(processor: Any, title: str, labels: Labels, started: float) -> ViewSnapshot:
    st = processor.stats
    latencies = sorted(st.latencies_s)
    results = tuple(r for _, r in sorted(st.last_results.items()))
    if not labels.names and results:  # a checkpoint's labels: known from its first result
        labels = labels._replace(names=tuple(results[0].scores))
    return ViewSnapshot(
        title=title, labels=labels, elapsed_s=time.monotonic() - started, records=st.records,
        windows=st.windows, windows_complete=st.windows_complete,
        latency_p50_s=quantile(latencies, 0.50), latency_p99_s=quantile(latencies, 0.99),
        lag=processor.lag, late=st.late, dead_letters=st.dead_letters, open_windows=processor.open_windows,
        results=results,
    )


def quantile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile of values already sorted (nearest rank); None when there are none."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def demo_labels(args: Any, settings: Any) -> Labels:
    """Which labels ``demo`` scores and why: the model settings it builds from its arguments
    (``demo._demo_until``) put the synthetic scene's labels in for synthetic input only."""
    from operators.config import ModelConfig

    if args.model:
        return Labels((), "the checkpoint's own")
    names = tuple(settings.model.labels)
    if not (args.camera or args.mic or args.video):
        return Labels(names, "matched to the synthetic scene")
    return Labels(names, "model.labels, the defaults" if list(names) == ModelConfig().labels else "model.labels")


def demo_title(args: Any, model_name: str) -> str:
    if args.video:
        source = f"video {args.video}" + (f" + mic {args.mic}" if args.mic else "")
    elif args.camera or args.mic:
        source = " + ".join(f"{kind} {dev}" for kind, dev in (("camera", args.camera), ("mic", args.mic)) if dev)
    else:
        source = f"{args.sources} synthetic source{'s' if args.sources != 1 else ''}"
    return f"{source}, model {model_name}"


async def live_view(processor: Any, stop: asyncio.Event, args: Any) -> None:
    """Redraw the demo view twice a second until ``stop`` (or cancelled); log lines go above it."""
    from rich.live import Live

    from stream.logs import above

    title = demo_title(args, processor.model_info.name)
    labels = demo_labels(args, processor.settings)
    started = time.monotonic()
    with Live(DemoView(snapshot(processor, title, labels, started)), refresh_per_second=2,
              vertical_overflow="crop") as live, above(live.console):
        while not stop.is_set():
            await asyncio.sleep(0.5)
            live.update(DemoView(snapshot(processor, title, labels, started)))


# --------------------------------------------------------------------------- the demo's table


class DemoView:
    """A snapshot laid out for the console's size at the moment it is drawn (a resized terminal
    gets the next frame right)."""

    def __init__(self, snap: ViewSnapshot) -> None:
        self.snap = snap

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield demo_view(self.snap, options.max_width, options.height or console.height)


class _Column(NamedTuple):
    header: str
    keep: int  # columns with a higher number are dropped first when the width runs out
    min_width: int
    max_width: int
    justify: str = "left"


_COLUMNS = (
    _Column("source", 1, 6, 16),
    _Column("label", 2, 8, 20),
    _Column("score", 3, _BAR_CELLS + 5, _BAR_CELLS + 5),
    _Column("VAT", 4, 3, 3),
    _Column("ends", 5, 8, 8),
    _Column("fr/samples/seg", 6, 9, 18, "right"),
    _Column("runner-up", 7, 10, 24),
)
_GAP = 2  # cells between two columns


def demo_view(snap: ViewSnapshot, width: int, height: int) -> Group:
    """The demo's screen: title, labels, one row per source, status; at most ``height - 1`` lines
    (the cursor's line stays free) of at most ``width`` cells. The rows get the room first; the
    labels shrink to one line, then go, before a row is hidden (counted in "+ N more")."""
    width = max(width, 1)  # a terminal reporting 0 columns still gets a (narrow) view
    budget = max(height - 1, 1)
    title = [_fit(Text.assemble(("mmstream demo", "bold"), f"  {snap.title}  ", (_clock(snap.elapsed_s), "dim")),
                  width)]
    labels = _wrap(Text.assemble((f"labels ({snap.labels.why}): ", "dim"),
                                 ", ".join(snap.labels.names) or "from the first result"), width, 2)
    status = [_fit(Text(line), width) for line in _pack(_status(snap), width)]
    n = len(snap.results)

    def room() -> int:  # lines left for the table (its header, rows and the "+ N more" line)
        return budget - len(title) - len(labels) - len(status)

    while labels and room() < 1 + min(n, 3) + (n > 3):
        labels.pop()
    while status and room() < 1 + min(n, 1) + (n > 1):
        status.pop()  # a terminal of a few lines: the title and a first row matter more
    if not snap.results:
        waiting = Text("waiting for the first result: a window closes once every source's watermark has passed "
                       f"its end (records read so far: {snap.records})", "yellow")
        return Group(*title, *labels, *_wrap(waiting, width, max(room(), 0)), *status)
    body: list[Any] = []
    if room() >= 2:
        shown = n if n <= room() - 1 else room() - 2
        body.append(_table([_row(r) for r in snap.results[:shown]], width))
        if shown < n:
            body.append(_fit(Text(f"+ {n - shown} more sources", "dim"), width))
    elif room() == 1:
        body.append(_fit(Text(f"{n} sources: a taller terminal shows them", "dim"), width))
    return Group(*title[:budget], *labels, *body, *status)


def _row(r: Any) -> dict[str, Text]:
    ranked = sorted(((s, k) for k, s in r.scores.items() if not math.isnan(s)), reverse=True)
    if r.error:
        label, score = Text("error", "bold red"), Text(r.error, "red")
    elif r.label is None:
        label, score = Text("(nothing usable)", "dim"), Text("")
    else:
        label, score = Text(r.label, "bold yellow"), score_text(r.scores.get(r.label, math.nan))
    second = next(((s, k) for s, k in ranked if k != r.label), None)
    p, c = r.presence, r.counts
    present = "".join(m[0].upper() if getattr(p, m) else "·" for m in ("video", "audio", "text"))
    return {
        "source": Text(r.source_id, "bold"),
        "label": label,
        "score": score,
        "VAT": Text(present, "green" if r.complete else "yellow"),
        "ends": Text(time.strftime("%H:%M:%S", time.localtime(r.window_end_ns / 1e9)), "dim"),
        "fr/samples/seg": Text(f"{c.frames}/{c.audio_samples}/{c.segments}"),
        "runner-up": Text(f"{second[1]} {second[0]:.2f}" if second and not r.error else "", "dim"),
    }


def _table(rows: list[dict[str, Text]], width: int) -> Table:
    natural = {c.header: min(max(c.min_width, len(c.header), *(r[c.header].cell_len for r in rows)), c.max_width)
               for c in _COLUMNS}
    columns = sorted(_COLUMNS, key=lambda c: c.keep)

    def total(widths: dict[str, int]) -> int:
        return sum(widths[c.header] for c in columns) + _GAP * (len(columns) - 1)

    while len(columns) > 3 and total(natural) > width:
        columns.pop()  # dropping a column beats squeezing source and label to a few letters
    floors = {c.header: c.min_width for c in _COLUMNS}
    while len(columns) > 1 and total(floors) > width:
        columns.pop()  # a very narrow terminal: source and label first
    widths = dict(natural)
    for name in ("label", "source"):  # the flexible ones, in this order
        widths[name] -= max(min(total(widths) - width, widths[name] - floors[name]), 0)
    order = [c for c in _COLUMNS if c in columns]
    table = Table(box=None, pad_edge=False, padding=(0, _GAP // 2), show_edge=False, header_style="bold dim",
                  collapse_padding=False)
    for c in order:
        table.add_column(c.header, width=widths[c.header], no_wrap=True, overflow="ellipsis",
                         justify=c.justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*(row[c.header] for c in order))
    return table


def _status(snap: ViewSnapshot) -> list[str]:
    rate = snap.windows / snap.elapsed_s if snap.elapsed_s > 0 else 0.0
    parts = [f"windows {snap.windows} ({snap.windows_complete} complete, {rate:.1f}/s)"]
    if snap.latency_p50_s is not None and snap.latency_p99_s is not None:
        parts.append(f"latency p50 {_seconds(snap.latency_p50_s)}, p99 {_seconds(snap.latency_p99_s)}")
    parts += [f"records {snap.records}", f"lag {snap.lag}", f"open windows {snap.open_windows}",
              f"late {snap.late}", f"dead letters {snap.dead_letters}"]
    return parts


def _pack(parts: list[str], width: int, sep: str = "  ") -> Iterator[str]:
    """Parts joined on as few lines of ``width`` as they fit, never splitting one part."""
    line = ""
    for part in parts:
        if line and len(line) + len(sep) + len(part) > width:
            yield line
            line = part
        else:
            line = f"{line}{sep}{part}" if line else part
    if line:
        yield line


def _wrap(text: Text, width: int, lines: int) -> list[Text]:
    wrapped = text.wrap(Console(width=width, color_system=None), width)
    return [_fit(t, width) for t in wrapped[:lines]]


def _fit(text: Text, width: int) -> Text:
    text = text.copy()
    text.truncate(width, overflow="ellipsis")
    text.no_wrap = True
    return text


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if abs(value) < 1 else f"{value:.1f} s" if abs(value) < 100 else f"{value:.0f} s"


def _clock(elapsed_s: float) -> str:
    minutes, seconds = divmod(int(elapsed_s), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


def score_bar(score: float, cells: int = _BAR_CELLS) -> str:
    """A score in [0, 1] as ``cells`` characters: full blocks, a half block, light shade for the rest."""
    halves = 0 if math.isnan(score) else round(min(max(score, 0.0), 1.0) * cells * 2)
    bar = "█" * (halves // 2) + "▌" * (halves % 2)
    return bar + "░" * (cells - len(bar))


def score_text(score: float) -> Text:
    if not math.isfinite(score):
        return Text.assemble(("░" * _BAR_CELLS, "dim"), "  n/a")
    return Text.assemble((score_bar(score), "green"), f" {score:.2f}")


# --------------------------------------------------------------------------- tail's lines


_STYLES = {"result": "bold green", "alert": "bold yellow", "video": "cyan", "audio": "magenta", "text": "blue",
           "dead_letter": "bold red", "undecodable": "red"}


class _Part(NamedTuple):
    text: str
    style: str = ""
    name: str = ""  # what the fitting steps refer to


def iso_time(ts_ns: int | None, *, date: bool = True) -> str:
    """An event time as ISO 8601 UTC with milliseconds; ``date=False``: the time of day only."""
    if ts_ns is None:
        return "-"
    try:
        iso = datetime.fromtimestamp(ts_ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return str(ts_ns)
    return iso if date else iso[11:]


def size_text(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


# Each step makes a line shorter, least useful first: a short time, then parts dropped.
_STEPS = ("counts", "detail", "closed_by", "date", "where", "latency", "complete")


def record_line(s: dict[str, Any], width: int | None = None) -> Text:
    """One line for a ``tail`` summary: time, kind, source, what it holds, where it is. With
    ``width``, parts are shortened or dropped (``_STEPS``) and the rest cut to fit it."""
    if width is not None:
        width = max(width, 1)
    date, dropped = True, set()
    parts = _parts(s, date)
    for step in _STEPS if width is not None else ():
        if sum(Text(p.text).cell_len for p in parts if p.name not in dropped) <= width:  # type: ignore[operator]
            break
        if step == "date":
            date = False
            parts = _parts(s, date)
        else:
            dropped.add(step)
    line = Text()
    for p in parts:
        if p.name not in dropped:
            line.append(p.text, p.style)
    return _fit(line, width) if width is not None else line


def _parts(s: dict[str, Any], date: bool) -> list[_Part]:
    kind = s["kind"]
    out = [_Part(iso_time(s.get("ts_ns"), date=date), "dim"), _Part("  "),
           _Part(f"{kind.replace('_', '-'):<11}", _STYLES.get(kind, "")), _Part(" "),
           _Part(f"{s.get('source_id') or '-'}", "bold"), _Part("  ")]
    if kind == "result":
        out += _result_parts(s["result"])
    elif kind == "video":
        out.append(_Part(f"{s['content_type']}  {size_text(s['bytes'])}"))
    elif kind == "audio":
        out.append(_Part(f"{s['content_type']}  {s['samples']} samples ({s['duration_ms']:.1f} ms)"))
    elif kind == "text":
        import json

        text = s["text"] if len(s["text"]) <= 80 else s["text"][:79] + "…"
        out += [_Part("final  " if s["final"] else "partial"), _Part(f" {json.dumps(text, ensure_ascii=False)}"),
                _Part(f" ({(s['end_ns'] - s['start_ns']) / 1e6:.0f} ms)")]
    elif kind == "alert":
        out += [_Part(f"{s['state']:<8} {s['rule']}", "bold red" if s["state"] == "firing" else "green"),
                _Part(f"  {s['message']}")]
    elif kind == "dead_letter":
        out += [_Part(f"{s['reason']}: {s['error']}", "red"), _Part(f"  from {s.get('origin') or '?'}"),
                _Part(f"  ({s.get('content_type') or 'no content-type'}, {size_text(s['bytes'])})", "dim", "detail")]
    else:
        out.append(_Part(f"undecodable {s['reason']}: {s['error']}", "red"))
    out.append(_Part(f"  {s['topic']}[{s['partition']}]@{s['offset']}", "dim", "where"))
    return out


def _result_parts(r: dict[str, Any]) -> list[_Part]:
    out = []
    if r.get("error"):
        out.append(_Part(f"error: {r['error']}", "red"))
    else:
        score = (r.get("scores") or {}).get(r.get("label"), 0.0)
        out += [_Part(f"{r.get('label') or '(no label)'}", "bold yellow"), _Part(f" {score:.2f}")]
    p = r.get("presence", {})
    mods = "".join(m[0].upper() if p.get(m) else "·" for m in ("video", "audio", "text"))
    out.append(_Part(f"  {'complete' if r.get('complete') else 'partial '} {mods}", "", "complete"))
    c = r.get("counts", {})
    out.append(_Part(f"  {c.get('frames', 0)} frames, {c.get('audio_samples', 0)} samples, "
                     f"{c.get('segments', 0)} segments", "", "counts"))
    lat = (r.get("latency") or {}).get("capture_to_publish_ms")
    if lat is not None:
        out.append(_Part(f"  latency {lat:.0f} ms" if lat < 10_000 else f"  latency {lat / 1000:.1f} s", "", "latency"))
    out.append(_Part(f"  [{r.get('closed_by', 'watermark')}]", "dim", "closed_by"))
    return out
