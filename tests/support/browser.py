"""A real headless Chromium driven over the Chrome DevTools protocol (tests only).

``Browser().open(url)`` loads a page and returns what a reviewer checks:
every network request the page made, console errors, exceptions and log
errors (CSP violations and failed loads land there), facts read from the
DOM, and a full-page PNG screenshot.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium() -> tuple[str | None, str]:
    """Debian's Chromium, installed with apt-get when missing; (path, why not) otherwise."""
    path = find_chromium()
    if path:
        return path, ""
    apt = shutil.which("apt-get")
    if not apt:
        return None, "chromium is not installed and apt-get is not available"
    if os.geteuid() != 0:
        return None, "chromium is not installed and apt-get needs root (run: apt-get install -y chromium)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = [apt, "install", "-y", "-q", "chromium"]  # with its recommended fonts, for readable screenshots
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run([apt, "update", "-q"], capture_output=True, text=True, env=env, timeout=600)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    path = find_chromium()
    if not path:
        return None, f"apt-get could not install chromium: {proc.stderr.strip()[-400:]}"
    return path, ""


@dataclass
class PageResult:
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dom: dict = field(default_factory=dict)
    screenshot: bytes = b""

    @property
    def errors(self) -> list[str]:
        return self.console_errors + self.exceptions + self.log_errors + self.failed


DOM_FACTS = """(() => {
  const imgs = [...document.images];
  return {
    title: document.title,
    images: imgs.length,
    images_loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    image_srcs: [...new Set(imgs.map(i => i.src.slice(0, 23)))],
    svgs: document.querySelectorAll('svg').length,
    svg_bars: document.querySelectorAll('svg rect').length,
    sections: [...document.querySelectorAll('h2')].map(h => h.id),
    height: document.documentElement.scrollHeight,
  };
})()"""


class Browser:
    def __init__(self, executable: str, width: int = 1280, timeout: float = 60.0):
        self.executable = executable
        self.width = width
        self.timeout = timeout
        self._ids = itertools.count(1)

    def __enter__(self) -> "Browser":
        from websockets.sync.client import connect

        self._profile = tempfile.mkdtemp(prefix="negset-chromium-")
        args = [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", f"--window-size={self.width},900", "about:blank"]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = self._devtools_url()
        self._ws = connect(url, max_size=None, open_timeout=self.timeout)
        return self

    def _devtools_url(self) -> str:
        found: list[str] = []
        lines: list[str] = []

        def read():
            for line in self._proc.stderr:
                lines.append(line)
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                if m and not found:
                    found.append(m.group(1))
            # keep draining so chromium never blocks on a full pipe

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + self.timeout
        while not found:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start:\n" + "".join(lines[-20:]))
            time.sleep(0.05)
        return found[0]

    def __exit__(self, *exc) -> None:
        try:
            self._ws.close()
        finally:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            shutil.rmtree(self._profile, ignore_errors=True)

    # -- protocol
    def _send(self, method: str, params: dict | None = None, session: str | None = None, events: list | None = None) -> dict:
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout
        while True:
            raw = self._ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            data = json.loads(raw)
            if data.get("id") == msg_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})
            if events is not None and "method" in data:
                events.append(data)

    def _wait_for(self, method: str, events: list) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e["method"] == method for e in events):
            raw = self._ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            data = json.loads(raw)
            if "method" in data:
                events.append(data)

    def _drain(self, events: list, quiet_s: float = 0.5) -> None:
        while True:
            try:
                raw = self._ws.recv(timeout=quiet_s)
            except TimeoutError:
                return
            data = json.loads(raw)
            if "method" in data:
                events.append(data)

    def open(self, url: str, screenshot: bool = True) -> PageResult:
        events: list[dict] = []
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self._send(f"{domain}.enable", session=session, events=events)
        self._send("Emulation.setDeviceMetricsOverride",
                   {"width": self.width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session, events=events)
        events.clear()  # only what the page itself does counts
        self._send("Page.navigate", {"url": url}, session=session, events=events)
        self._wait_for("Page.loadEventFired", events)
        self._drain(events)
        res = PageResult()
        for e in events:
            if e.get("sessionId") not in (None, session):
                continue
            m, p = e["method"], e.get("params", {})
            if m == "Network.requestWillBeSent":
                res.requests.append(p["request"]["url"])
            elif m == "Network.loadingFailed":
                res.failed.append(f"{p.get('errorText')} {p.get('blockedReason') or ''}".strip())
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                res.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                res.exceptions.append(p["exceptionDetails"].get("text", "exception"))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                res.log_errors.append(f"{p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
        res.dom = self._send("Runtime.evaluate", {"expression": DOM_FACTS, "returnByValue": True}, session=session)["result"]["value"]
        if screenshot:
            shot = self._send(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": self.width, "height": min(int(res.dom["height"]), 16000), "scale": 1},
                },
                session=session,
            )
            res.screenshot = base64.b64decode(shot["data"])
        self._send("Target.closeTarget", {"targetId": target})
        return res


def file_url(path: Path) -> str:
    return Path(path).resolve().as_uri()


# ---------------------------------------------------------------- interactive tabs

KEY_CODES = {"ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40, "Enter": 13, "Escape": 27}


class Tab:
    """One open page that stays open: evaluate script, press keys, click, reload, screenshot.

    Keys and clicks go through ``Input.dispatch*Event``: the page sees real
    trusted events, as from a person at the keyboard and mouse.
    """

    def __init__(self, browser: "Browser", url: str, height: int = 900):
        self.b = browser
        self.events: list[dict] = []
        self.target = browser._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser._send("Target.attachToTarget", {"targetId": self.target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self._send(f"{domain}.enable")
        self._send("Emulation.setDeviceMetricsOverride",
                   {"width": browser.width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.events.clear()
        self._send("Page.bringToFront")
        self._send("Page.navigate", {"url": url})
        self._wait_event("Page.loadEventFired")

    def front(self) -> None:
        """Make this the visible tab (browsers throttle timers and observers in background tabs)."""
        self._send("Page.bringToFront")

    def _send(self, method: str, params: dict | None = None) -> dict:
        return self.b._send(method, params, session=self.session, events=self.events)

    def _wait_event(self, method: str) -> None:
        deadline = time.monotonic() + self.b.timeout
        while not any(e["method"] == method and e.get("sessionId") == self.session for e in self.events):
            raw = self.b._ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            data = json.loads(raw)
            if "method" in data:
                self.events.append(data)

    @property
    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            if e.get("sessionId") != self.session:
                continue
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"{p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}".strip())
        return out

    def eval(self, expression: str, await_promise: bool = False):
        res = self._send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": await_promise})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:80]}: {res['exceptionDetails'].get('exception', {}).get('description')}")
        return res["result"].get("value")

    def wait(self, expression: str, timeout: float = 30.0, interval: float = 0.05):
        """Poll ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout}s for: {expression}")
            time.sleep(interval)

    def key(self, key: str) -> None:
        if len(key) == 1:
            params = {"key": key, "code": f"Key{key.upper()}", "text": key, "unmodifiedText": key,
                      "windowsVirtualKeyCode": ord(key.upper())}
        else:
            params = {"key": key, "code": key, "windowsVirtualKeyCode": KEY_CODES[key]}
        self._send("Input.dispatchKeyEvent", {"type": "keyDown", **params})
        self._send("Input.dispatchKeyEvent", {"type": "keyUp", **{k: v for k, v in params.items() if k not in ("text", "unmodifiedText")}})

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the first element ``selector`` matches (scrolled into view)."""
        box = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if box is None:
            raise LookupError(f"no element matches {selector!r}")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self._send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def reload(self) -> None:
        self.events.clear()
        self._send("Page.reload", {"ignoreCache": True})
        self._wait_event("Page.loadEventFired")

    def screenshot(self) -> bytes:
        """The viewport as PNG."""
        return base64.b64decode(self._send("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        self.b._send("Target.closeTarget", {"targetId": self.target})


def open_tab(browser: Browser, url: str, height: int = 900) -> Tab:
    return Tab(browser, url, height)
