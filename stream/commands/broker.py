"""``mmstream broker``: run the embedded Kafka-protocol broker in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys

from stream.commands._common import ensure_port_free, port_number


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (tansu, memory only) until stopped")
    p.add_argument("--port", type=port_number(minimum=1), default=None, help="port on 127.0.0.1 (default: a free one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream.broker import EmbeddedBroker

    # tansu answers a busy port with a multi-line panic (and its exit code says 0); say it in one line
    ensure_port_free("127.0.0.1", args.port, "the embedded broker", "choose another --port, or omit it for a free one")
    broker = EmbeddedBroker(args.port)
    print(broker.start(), flush=True)
    print("memory storage: everything is lost when it stops (Ctrl-C)", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _leave_wait)
    try:
        code = broker.wait()
    except KeyboardInterrupt:
        code = 0
    finally:
        broker.stop()
    return 0 if code in (0, -signal.SIGTERM) else code


def _leave_wait(*_: object) -> None:
    # Only leave broker.wait(); the finally clause stops the child. Stopping inside the handler would
    # call Popen.wait() while the interrupted Popen.wait() holds its non-reentrant lock: a deadlock.
    raise KeyboardInterrupt
