"""Open a page in real headless Chromium and ask it what a reader would see, over the DevTools
protocol (CDP): one websocket, no browser download, no driver binary. Debian's `chromium`
package provides the browser (`make test` installs it where apt is available)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-port=0")


def find_chromium() -> str | None:
    return next((p for p in CANDIDATES if os.access(p, os.X_OK)), shutil.which("chromium"))


@dataclass
class PageView:
    images: list[dict[str, Any]]          # per <img>: alt, complete, naturalWidth, naturalHeight
    errors: list[str]                      # console errors, uncaught exceptions, failed loads
    text: str                              # document.body.innerText
    screenshot: bytes = b""                # the whole page as PNG
    headings: list[str] = field(default_factory=list)


class Chromium:
    """A headless Chromium process and a CDP session on its first page."""

    def __init__(self, binary: str, timeout_s: float = 60.0) -> None:
        import websocket

        self.profile = tempfile.mkdtemp(prefix="scaletok-chromium-")
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.timeout_s = timeout_s
        port = self._devtools_port()
        targets = self._json(f"http://127.0.0.1:{port}/json/list")
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout_s,
                                              suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def _devtools_port(self) -> int:
        """--remote-debugging-port=0 lets Chromium pick a free port; it writes it to this file."""
        path = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode}")
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def _json(self, url: str) -> Any:
        deadline = time.time() + self.timeout_s
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return json.loads(r.read())
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """A CDP command's result; the events that arrive meanwhile are kept in `events`."""
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str) -> dict[str, Any]:
        for i, msg in enumerate(self.events):
            if msg.get("method") == event:
                return self.events.pop(i)
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == event:
                return msg
            self.events.append(msg)
        raise TimeoutError(f"no {event} within {self.timeout_s} s")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def view(self, url: str, width: int = 1200) -> PageView:
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        # Every image decoded (data: URLs decode asynchronously even after load).
        self.evaluate("Promise.all([...document.images].map(i => i.decode().catch(() => null)))")
        images = self.evaluate("[...document.images].map(i => ({alt: i.alt, complete: i.complete, "
                               "naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))")
        text = self.evaluate("document.body.innerText")
        headings = self.evaluate("[...document.querySelectorAll('h2')].map(h => h.textContent)")
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=min(height, 16000),
                  deviceScaleFactor=1, mobile=False)
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return PageView(images=images, errors=self._errors(), text=text, headings=headings,
                        screenshot=base64.b64decode(shot["data"]))

    def _errors(self) -> list[str]:
        errors = []
        for msg in self.events:
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append("log: " + params["entry"].get("text", ""))
        return errors

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
