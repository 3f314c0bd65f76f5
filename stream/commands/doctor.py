"""``mmstream doctor``: check that this machine and cluster can run the processor, in plain words.

Checks, in order: the settings load; Kafka answers; the topics exist; the three inputs are
co-partitioned; whether CUDA is available; the model preset or checkpoint loads; the metrics
port is free; ``HF_HUB_OFFLINE`` is set. Each check says ok, warn or problem, and how to fix it.
Exit status 1 when any check is a problem (warnings do not fail), 0 otherwise.

Kafka calls are bounded by ``--timeout`` (default 3 s), so an unreachable broker is reported in
seconds, not after aiokafka's default 40 s request timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from stream.commands._common import add_kafka_options, number, settings_from
from stream.commands._diagnose import diagnose_kafka

__all__ = ["Check", "check_cuda", "check_hub_offline", "check_kafka", "check_metrics_port", "check_model",
           "register", "run"]

Status = Literal["ok", "warn", "problem"]


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, the verdict, what was seen and how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor", help="check the cluster, topics, model, CUDA and metrics port; say what is wrong and how to fix it",
        description="Connect to the configured Kafka cluster and check that the topics exist and the three input "
        "topics are co-partitioned; check that the model loads, whether CUDA is available, that the metrics port "
        "is free and that HF_HUB_OFFLINE is set. Prints one row per check with a fix; exits 1 when something "
        "is wrong.",
    )
    add_kafka_options(p)
    p.add_argument("--model", metavar="PATH", help="check this checkpoint folder instead of the configured model")
    p.add_argument("--preset", choices=["tiny", "offline", "hf"], help="check this preset instead of the configured one")
    p.add_argument("--no-build", action="store_true",
                   help="only check that the model's files and packages are there; do not build it (faster)")
    p.add_argument("--timeout", type=number(float, minimum=0, inclusive=False), default=3.0, metavar="S",
                   help="bound on each Kafka call, seconds (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream.errors import ConfigError

    if getattr(args, "verbose", 0) < 2:
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the kafka row says it once, in plain words
    model: dict[str, object] = {}
    if args.model:
        model["path"] = args.model
    if args.preset:
        model["preset"] = args.preset
    try:
        settings = settings_from(args, model=model or None)
    except ConfigError as exc:
        checks = [Check("settings", "problem", str(exc),
                        "correct the named field in --config FILE or its MMSTREAM_* variable")]
    else:
        checks = [Check("settings", "ok", f"loaded{f' from {args.config}' if args.config else ' (defaults)'}")]
        checks += asyncio.run(check_kafka(settings, timeout_s=args.timeout))
        checks.append(check_cuda(settings))
        checks.append(check_model(settings, build=not args.no_build))
        checks.append(check_metrics_port(settings))
    checks.append(check_hub_offline())
    _report(checks, as_json=args.json)
    return 1 if any(c.status == "problem" for c in checks) else 0


# --------------------------------------------------------------------------- kafka


async def check_kafka(settings: Any, *, timeout_s: float = 3.0) -> list[Check]:
    """Connection, topic existence and co-partitioning; never raises, every call bounded by ``timeout_s``."""
    from aiokafka.admin import AIOKafkaAdminClient

    from stream.errors import TopicLayoutError
    from stream.kafka import check_copartitioned, client_options

    bootstrap, topics = settings.kafka.bootstrap_servers, settings.topics
    opts = client_options(settings.kafka)
    opts["request_timeout_ms"] = max(1, min(opts["request_timeout_ms"], int(timeout_s * 1000)))
    started = time.monotonic()
    admin = AIOKafkaAdminClient(**opts)
    try:
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            names = set(await asyncio.wait_for(admin.list_topics(), timeout_s))
        except Exception as exc:  # connection refused, DNS, TLS, SASL, timeouts: all mean "not usable"
            diagnosis = await diagnose_kafka(bootstrap, exc, timeout_s)
            return [Check("kafka", "problem", diagnosis.detail, diagnosis.fix)]
        checks = [Check("kafka", "ok", f"connected to {bootstrap} in {time.monotonic() - started:.2f} s")]
        wanted = [topics.video, topics.audio, topics.text, topics.results, topics.dead_letter]
        if topics.late:
            wanted.append(topics.late)
        wanted = list(dict.fromkeys(wanted))
        present = [t for t in wanted if t in names]  # describe only these: tansu creates what metadata names
        counts: dict[str, int] = {}
        if present:
            try:
                described = await asyncio.wait_for(admin.describe_topics(present), timeout_s)
            except Exception as exc:
                checks.append(Check("topics", "problem", f"cannot describe {', '.join(present)}: {exc}",
                                    "check that this client may describe the topics (ACLs)"))
                return checks
            counts = {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.close(), timeout_s)

    missing = [t for t in wanted if t not in counts]
    listing = ", ".join(f"{t} {counts[t]}" for t in wanted if t in counts)
    if missing:
        checks.append(Check(
            "topics", "warn", f"missing: {', '.join(missing)}" + (f"; present (partitions): {listing}" if listing else ""),
            f"`mmstream run` creates missing topics at start with kafka.partitions={settings.kafka.partitions} "
            "partitions; create them yourself where clients may not create topics",
        ))
    else:
        checks.append(Check("topics", "ok", f"all present (partitions): {listing}"))

    inputs = [topics.video, topics.audio, topics.text]
    assumed = {t: settings.kafka.partitions for t in inputs if t not in counts}
    try:
        n = check_copartitioned({**assumed, **counts}, inputs)
    except TopicLayoutError as exc:
        note = (f" (counting the missing {', '.join(assumed)} as the {settings.kafka.partitions} partitions "
                "`mmstream run` would create)") if assumed else ""
        checks.append(Check(
            "co-partitioning", "problem", f"{exc}{note}",
            "give the three input topics one partition count: recreate them, or add partitions to the smaller "
            "ones (kafka-topics --alter --partitions N) before producing; partition i of each input is read together",
        ))
    else:
        how = "will be" if assumed else "are"
        checks.append(Check("co-partitioning", "ok", f"inputs {how} co-partitioned: {n} partitions each"))
    return checks


# --------------------------------------------------------------------------- machine


def check_cuda(settings: Any) -> Check:
    """Whether torch sees a CUDA device, against what ``model.device`` asks for."""
    try:
        import torch
    except ImportError as exc:
        return Check("cuda", "problem", f"torch is not installed: {exc}", "pip install -e . (installs torch)")
    wants = settings.model.device
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        count = torch.cuda.device_count()
        detail = f"{count} device(s); cuda:0 is {props.name}, {props.total_memory / 2**30:.0f} GiB"
        if wants == "cpu":
            return Check("cuda", "warn", detail + "; but model.device is cpu", "set model.device: auto to use the GPU")
        return Check("cuda", "ok", detail + f"; torch {torch.__version__}")
    built = f"torch {torch.__version__}, " + (f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build")
    if wants == "cuda":
        return Check("cuda", "problem", f"model.device is cuda but no CUDA device is visible ({built})",
                     "install the NVIDIA driver and a CUDA build of torch, or set model.device: auto")
    if wants == "cpu":
        return Check("cuda", "ok", f"not used: model.device is cpu ({built})")
    return Check("cuda", "warn", f"no CUDA device: the model runs on the CPU ({built})",
                 "fine for the tiny preset and small loads; for more, run on a machine with an NVIDIA GPU")


def check_model(settings: Any, *, build: bool = True) -> Check:
    """Whether the configured checkpoint or preset loads here (``build=False``: files and packages only)."""
    cfg = settings.model
    started = time.monotonic()
    try:
        if cfg.path:
            from operators import build_model

            if build:
                build_model(cfg)
            elif not os.path.isdir(cfg.path):
                raise FileNotFoundError(f"checkpoint folder {cfg.path} does not exist")
            what = f"checkpoint {cfg.path}"
        else:
            from operators.presets import check_preset

            status = check_preset(cfg.preset, cfg, build=build)
            if not status.loadable:
                return Check("model", "problem", f"preset {cfg.preset} cannot load: {status.reason}",
                             "install what the message names, or choose another preset (--preset / model.preset; "
                             "`mmstream models` lists them)")
            what = f"preset {cfg.preset}"
    except Exception as exc:  # a doctor reports every failure; the class name helps when the message is terse
        return Check("model", "problem", f"{cfg.path or cfg.preset} cannot load: {type(exc).__name__}: {exc}",
                     "point model.path (--model) at a folder written by `mmstream train`, or use a preset")
    verb = "builds" if build else "has its files (not built: --no-build)"
    return Check("model", "ok", f"{what} {verb} in {time.monotonic() - started:.1f} s")


def check_metrics_port(settings: Any) -> Check:
    """Whether the metrics server could bind ``metrics.host:metrics.port`` right now."""
    host, port = settings.metrics.host, settings.metrics.port
    if port is None:
        return Check("metrics port", "ok", "metrics server disabled (metrics.port: null)")
    if port == 0:
        return Check("metrics port", "ok", f"any free port on {host} (metrics.port: 0)")
    fix = f"stop what listens on {port} (another `mmstream run`?) or set metrics.port (MMSTREAM_METRICS__PORT) " \
          "to a free port, 0 for any"
    from stream.commands._common import bind_problem

    problem = bind_problem(host, port)
    if problem is not None:
        return Check("metrics port", "problem", f"cannot listen on {host}:{port}: {problem}", fix)
    return Check("metrics port", "ok", f"{host}:{port} is free")


def check_hub_offline() -> Check:
    """Whether ``HF_HUB_OFFLINE`` makes a missing Hugging Face model fail at once."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None and value.strip().upper() in ("1", "ON", "YES", "TRUE"):
        return Check("HF_HUB_OFFLINE", "ok", f"HF_HUB_OFFLINE={value}: a missing model fails at once")
    seen = "unset" if value is None else f"HF_HUB_OFFLINE={value}"
    return Check("HF_HUB_OFFLINE", "warn", f"{seen}: a missing Hugging Face model is fetched from the hub, "
                 "and without network the load retries before it fails",
                 "export HF_HUB_OFFLINE=1 (mmstream sets it unless you set it yourself); unset it only to download models")


# --------------------------------------------------------------------------- report


_STYLE = {"ok": "green", "warn": "yellow", "problem": "bold red"}


def _report(checks: list[Check], *, as_json: bool) -> None:
    problems = sum(c.status == "problem" for c in checks)
    if as_json:
        print(json.dumps({"ok": problems == 0, "checks": [asdict(c) for c in checks]}))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="mmstream doctor", title_justify="left", show_lines=True)
    for column, style in (("check", "bold"), ("status", ""), ("detail", ""), ("fix", "dim")):
        table.add_column(column, style=style, overflow="fold")
    for c in checks:
        table.add_row(escape(c.name), f"[{_STYLE[c.status]}]{c.status}[/]", escape(c.detail), escape(c.fix))
    console = Console(highlight=False, file=sys.stdout)
    console.print(table)
    warns = sum(c.status == "warn" for c in checks)
    if problems:
        console.print(f"[bold red]{problems} problem(s)[/]: see the fix column; `mmstream run` will not work until "
                      "they are fixed")
    else:
        console.print(f"[green]ready[/]: no problems{f', {warns} warning(s)' if warns else ''}")
