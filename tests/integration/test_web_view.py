"""``mmstream view`` in a real browser (issue 15): the embedded broker, synthetic sources, a
processor and the view, each a real process; Debian's headless chromium driven by Selenium
through Debian's chromedriver (no browser download).

Every source's tile shows a label from a result and a thumbnail; a firing alert on the alerts
topic shows on its source's tile; a click on a window of the timeline shows that window's result,
equal to the record on the results topic, with its offsets. The screenshot is saved under the
test's tmp path; ``MMSTREAM_VIEW_SCREENSHOT=docs/img/view.png`` writes it there too (how
docs/img/view.png is made).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer

from stream.config import Settings
from stream.contract import Alert, AlertEvidence
from stream.sources.synthetic import SyntheticConfig, SyntheticScene, produce
from tests.integration._helpers import ProcessorProcess, read_topic

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SOURCES = 3


class ViewProcess:
    """``mmstream view`` in a child process on a free port; its URL is read from its first line."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        doc = settings.model_dump(mode="json")
        doc["view"] = {**doc["view"], "host": "127.0.0.1", "port": 0}
        doc["metrics"] = {"host": "127.0.0.1", "port": None}
        config = tmp_path / "view.yaml"
        config.write_text(yaml.safe_dump(doc))
        self.log = tmp_path / "view.log"
        self._out = open(self.log, "wb")  # noqa: SIM115 - closed in terminate()
        self.proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "view", "--config", str(config)],
                                     stdout=self._out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    async def url(self, timeout_s: float = 20.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"view exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
            if found := re.search(r"view on (http://\S+)", self.log.read_text()):
                return found.group(1)
            await asyncio.sleep(0.1)
        raise AssertionError(f"no URL from the view in {timeout_s} s: {self.log.read_text()[-2000:]}")

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self._out.close()


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def tiles_ready(driver: Any) -> dict[str, Any]:
    """Per tile: its label, whether its thumbnail is loaded, its alert rules, its timeline windows."""
    return driver.execute_script("""
        const out = {};
        for (const t of document.querySelectorAll('.tile')) {
          const img = t.querySelector('img.thumb');
          out[t.dataset.source] = {
            label: t.querySelector('.label').textContent,
            thumb: !!(img.getAttribute('src') && img.complete && img.naturalWidth > 0),
            alerts: [...t.querySelectorAll('.alert b')].map(b => b.textContent),
            windows: t.querySelectorAll('.tl-win').length};
        }
        return out;""")


async def wait_for(probe: Any, done: Any, what: str, timeout_s: float) -> Any:
    """``probe()`` (in a thread: Selenium blocks) until ``done`` holds for what it returns."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(probe)
        if done(last):
            return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"{what} within {timeout_s} s; last seen: {last}")


async def publish_alert(settings: Settings, source_id: str) -> Alert:
    """A firing alert, as ``mmstream alerts`` writes it."""
    start = time.time_ns() // 10**9 * 10**9
    alert = Alert(id=Alert.make_id("loud", source_id, start), state="firing", rule="loud", source_id=source_id,
                  window_start_ns=start, window_end_ns=start + 10**9,
                  evidence=[AlertEvidence(result_id=f"{source_id}:{start}", score=0.9)], message="static noise 0.90")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, linger_ms=0)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.alerts, key=source_id.encode(), value=alert.model_dump_json().encode())
    finally:
        await producer.stop()
    return alert


def save_screenshot(driver: Any, path: Path) -> None:
    driver.save_screenshot(str(path))
    target = os.environ.get("MMSTREAM_VIEW_SCREENSHOT")
    if target:
        from PIL import Image  # a dev dependency (scikit-image's): 256 colours keep the committed PNG small

        Image.open(path).convert("RGB").quantize(256).save(target, optimize=True)


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="Debian's chromium and chromium-driver")
async def test_every_tile_live_and_a_window_inspected(settings_for, unique: str, tmp_path: Path) -> None:
    settings = settings_for(window={"idle_timeout_ms": 1500, "allowed_lateness_ms": 100},
                            batching={"max_delay_ms": 20, "worker": "thread"}, kafka={"partitions": 2},
                            topics={"alerts": f"al-{unique}"})
    processor = ProcessorProcess(settings, tmp_path).start()
    view = ViewProcess(settings, tmp_path)
    stop_feed = asyncio.Event()
    feed: asyncio.Task[Any] | None = None
    driver = None
    try:
        await processor.wait_ready()  # the processor made the topics
        scene = SyntheticScene(SyntheticConfig(sources=SOURCES, fps=10, seed=2), start_ns=time.time_ns())
        feed = asyncio.create_task(produce(scene, settings.kafka, settings.topics, settings.limits, duration_s=40,
                                           realtime=True, stop=stop_feed))
        url = await view.url()
        alert = await publish_alert(settings, "src-0")
        driver = await asyncio.to_thread(browser)
        await asyncio.to_thread(driver.get, url)

        def live(tiles: dict[str, Any]) -> bool:
            return (len(tiles) == SOURCES and tiles["src-0"]["alerts"] == ["loud"]
                    and all(t["thumb"] and t["label"] not in ("–", "error") and t["windows"] >= 3 for t in tiles.values()))

        tiles = await wait_for(lambda: tiles_ready(driver), live,
                               f"{SOURCES} tiles with a label, a thumbnail and 3 windows, the alert on src-0", 30)
        assert all(t["alerts"] == [] for s, t in tiles.items() if s != alert.source_id), tiles

        # click the second newest window of src-1 and compare what the page shows with the topic
        target = driver.execute_script(
            "const w = document.querySelectorAll('.tile[data-source=\"src-1\"] .tl-win');"
            "const el = w[w.length - 2]; el.click(); return el.dataset.id;")
        shown = await wait_for(lambda: _inspected(driver, target), bool, f"the result of {target} in the inspector", 10)
        records = [r for r in await read_topic(settings, settings.topics.results, idle_s=1.0)
                   if json.loads(r.value)["id"] == target]
        assert records, f"{target} is not on the results topic"
        assert shown["json"] in [json.loads(r.value) for r in records], (shown["json"], records)
        record = next(r for r in records if json.loads(r.value) == shown["json"])
        assert f"{settings.topics.results} / {record.partition} / {record.offset}" in shown["offsets"], shown
        for rng in shown["json"]["offsets"]:  # the input offsets the window used are listed
            assert f"offsets {rng['first']}–{rng['last']}" in shown["offsets"], shown
        shot = tmp_path / "view.png"
        await asyncio.to_thread(save_screenshot, driver, shot)
        assert shot.stat().st_size > 10_000
    finally:
        if driver is not None:
            await asyncio.to_thread(driver.quit)
        stop_feed.set()
        if feed is not None:
            await feed
        code = view.terminate()
        processor.terminate()
    assert code == 0, view.log.read_text()[-2000:]


def _inspected(driver: Any, result_id: str) -> dict[str, Any] | None:
    got = driver.execute_script("""
        const panel = document.getElementById('inspect');
        if (panel.hidden || panel.dataset.id !== arguments[0]) return null;
        return {json: document.getElementById('inspect-json').textContent,
                offsets: document.getElementById('inspect-offsets').textContent};""", result_id)
    if not got:
        return None
    return {"json": json.loads(got["json"]), "offsets": got["offsets"]}
