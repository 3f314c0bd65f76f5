"""The view's web side: one page, its static files, the event stream and click-to-inspect.

aiohttp runs on the same asyncio loop as the Kafka consumers (no second server, no thread), and
serves Server-Sent Events with nothing else. Each browser gets a writer task that alone waits on
its socket (``clients.py``): a browser that reads slowly, or stops reading, delays only itself; a
write that does not finish in ``_WRITE_TIMEOUT_S`` ends that browser's stream (it reconnects and
gets a snapshot).

Every request must name this server in its ``Host`` header (localhost, 127.0.0.1, [::1],
``view.host`` or one of ``view.allowed_hosts``), else 403: without it, DNS rebinding lets any web
page the user opens point a name at 127.0.0.1 and read the camera pictures from the view.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from stream.view.clients import Client
from stream.view.hub import Hub

__all__ = ["make_app"]

log = logging.getLogger("stream.view")

_WRITE_TIMEOUT_S = 10.0
_KEEPALIVE_S = 15.0
_STATIC = {"view.css": "text/css", "view.js": "text/javascript", "index.html": "text/html"}
HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)


def make_app(hub: Hub) -> web.Application:
    app = web.Application(middlewares=[_only_named_hosts(hub)])
    app[HUB] = hub
    app.router.add_get("/", _index)
    app.router.add_get("/static/{name}", _static)
    app.router.add_get("/events", _events)
    app.router.add_get("/api/state", _state)
    app.router.add_get("/api/result/{id}", _result)
    return app


def _host_name(header: str) -> str:
    """The name in a Host header, without its port, brackets or trailing dot, lower case."""
    name = header.strip().lower()
    if name.startswith("["):  # [::1]:8765
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:  # name:port (an IPv6 address without brackets has several)
        name = name.split(":", 1)[0]
    return name.rstrip(".")


def _only_named_hosts(hub: Hub) -> Middleware:
    allowed = {"localhost", "127.0.0.1", "::1", *(_host_name(h) for h in [hub.config.host, *hub.config.allowed_hosts])}

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _host_name(request.headers.get("Host", "")) not in allowed:
            raise web.HTTPForbidden(text="this view answers only to localhost, its view.host and view.allowed_hosts "
                                         "(a defence against DNS rebinding); add the name you use to view.allowed_hosts")
        return await handler(request)

    return check_host


@functools.cache  # packaged files: read once per process, not on every request
def _file(name: str) -> bytes:
    return resources.files("stream.view").joinpath("static", name).read_bytes()


async def _index(request: web.Request) -> web.Response:
    return web.Response(body=_file("index.html"), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _STATIC:
        raise web.HTTPNotFound()
    return web.Response(body=_file(name), content_type=_STATIC[name], charset="utf-8",
                        headers={"Cache-Control": "no-cache"})


async def _state(request: web.Request) -> web.Response:
    """The snapshot a new browser gets, as plain JSON (scripts, the benchmark)."""
    return web.json_response(request.app[HUB].snapshot())


async def _result(request: web.Request) -> web.Response:
    found = request.app[HUB].result(request.match_info["id"])
    if found is None:
        raise web.HTTPNotFound(text="no such result kept (older than view.inspect_results, or never seen)")
    return web.json_response(_plain(found))


def _plain(value: Any) -> Any:
    """JSON a browser can parse: a NaN or infinite score (the contract allows them) as a string."""
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # as the record spells it: NaN, Infinity, -Infinity
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


async def _events(request: web.Request) -> web.StreamResponse:
    """The Server-Sent Events stream of one browser: ``snapshot``, then ``tile``, ``thumb``,
    ``stats``. Thumbnails only of the page on screen: ``?first=16&count=16`` (sources in id order)
    or ``?thumbs=a,b``; all without either."""
    hub = request.app[HUB]
    wanted, first, count = request.query.get("thumbs"), request.query.get("first"), request.query.get("count")
    thumbs = frozenset(s for s in wanted.split(",") if s) if wanted is not None else None
    page = ((int(first), int(count)) if first and count and first.isascii() and count.isascii()
            and first.isdigit() and count.isdigit() else None)  # "²".isdigit(), and int() refuses it
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    client = hub.attach(thumbs=thumbs, page=page)
    try:
        await _serve(hub, client, response)
    except TimeoutError:  # a write did not finish in time: the browser stopped reading
        hub.stats["slow_clients_ended"] += 1
        log.info("view: a browser read nothing for %.0f s; its stream ended", _WRITE_TIMEOUT_S)
    except (ConnectionError, asyncio.CancelledError):
        pass  # the browser went away
    finally:
        hub.detach(client)
    return response


async def _serve(hub: Hub, client: Client, response: web.StreamResponse) -> None:
    wait: float | None = None  # until a thumbnail held back by the rate bound may go
    while True:
        try:
            await asyncio.wait_for(client.wake.wait(), min(_KEEPALIVE_S, wait if wait is not None else _KEEPALIVE_S))
        except TimeoutError:
            if wait is None:
                await _write(response, b": keepalive\n\n")
                continue
        if hub.closing:
            return
        resync, events = client.take()
        chunks: list[bytes] = []
        if resync:
            chunks.append(_frame("snapshot", json.dumps(hub.snapshot())))
            hub.resync_thumbs(client)
        chunks.extend(_frame(e.kind, e.data) for e in events)
        now = time.monotonic()
        thumbs, wait = client.take_thumbs(now)
        for source_id in thumbs:
            found = hub.thumb_event(source_id)
            if found is not None and found[0] > client.sent_thumbs.get(source_id, 0):
                client.wrote_thumb(source_id, found[0], now)
                chunks.append(_frame("thumb", found[1]))
        if chunks:
            await _write(response, b"".join(chunks))


def _frame(kind: str, data: str) -> bytes:
    return f"event: {kind}\ndata: {data}\n\n".encode()


async def _write(response: web.StreamResponse, data: bytes) -> None:
    await asyncio.wait_for(response.write(data), _WRITE_TIMEOUT_S)
