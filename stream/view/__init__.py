"""``mmstream view``: a live web page of every source (docs/view.md).

``View`` ties the parts together: the ``Feed`` consumes Kafka into the ``Hub``, the aiohttp app
serves the page and streams the hub's updates to each browser. ``mmstream demo`` runs one in its
own event loop; ``mmstream view`` runs one alone.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from stream.config import Settings
from stream.view.app import make_app
from stream.view.feed import Feed
from stream.view.hub import Hub

__all__ = ["Feed", "Hub", "View"]


class View:
    """The web view of one pipeline's topics, served on ``settings.view.host:port``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = Hub(settings.view, window_ms=settings.window.window_ms,
                       idle_timeout_ms=settings.window.idle_timeout_ms, limits=settings.limits)
        self.feed = Feed(settings, self.hub)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        host = self.settings.view.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
        return f"http://{shown}:{self.port}/"

    async def start(self) -> str:
        """Listen; returns the page's URL (port 0 picks a free one). A failure to listen (the port
        taken, the address not this machine's) leaves nothing behind: the caller may go on without
        the view (the demo does)."""
        runner = web.AppRunner(make_app(self.hub), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.settings.view.host, self.settings.view.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.url

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop``."""
        await self.feed.run(stop)

    async def stop(self) -> None:
        self.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
