"""Open a page in real headless Chromium and check it, over the DevTools protocol on a pipe.

Standard library only: Chromium is started with `--remote-debugging-pipe`, which speaks the
DevTools protocol as NUL-terminated JSON messages on file descriptors 3 (commands in) and 4
(responses and events out), so no port is opened and no websocket client is needed.

`check_page(path, screenshot)` loads the file, collects console errors, uncaught exceptions and
any request that is not to a file: or data: URL (the report must not touch the network), measures
every `figure.fig` (its SVG's rendered width and height and how many shapes it drew) and writes
a full-page PNG screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from moola_core.errors import MoolaError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")

_MEASURE = """
JSON.stringify(Array.from(document.querySelectorAll('figure.fig')).map(f => {
  const svg = f.querySelector('svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {id: f.id, width: box.width, height: box.height,
          shapes: svg ? svg.querySelectorAll('path, rect, line, polyline, use, text').length : 0};
}))
"""


@dataclass
class PageCheck:
    """What the browser saw."""

    console_errors: list[str] = field(default_factory=list)
    network: list[str] = field(default_factory=list)  # requests other than file: and data:
    figures: list[dict] = field(default_factory=list)  # id, width, height, shapes
    screenshot: Path | None = None
    page_height: float = 0.0
    title: str = ""


def find_browser() -> str:
    """The Chromium executable, or MoolaError saying how to install it."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise MoolaError(
        "no Chromium found (looked for chromium, chromium-browser, google-chrome); install "
        "Debian's package with `apt-get install -y chromium` (scripts/setup.sh does it)"
    )


class _Pipe:
    def __init__(self, proc, write_fd: int, read_fd: int):
        self.proc, self.write_fd, self.read_fd = proc, write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            raise MoolaError(
                f"Chromium exited before {method}; run it by hand to see why"
            ) from None
        while True:
            reply = self.receive(timeout)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise MoolaError(f"Chromium refused {method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def receive(self, timeout: float) -> dict:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MoolaError(f"Chromium did not answer within {timeout:g} s")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                if not chunk:
                    raise MoolaError("Chromium exited while the page was being checked")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def wait_event(self, method: str, timeout: float) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            e = self.receive(max(0.1, deadline - time.monotonic()))
            if e.get("method") == method:
                return e
            self.events.append(e)


@contextlib.contextmanager
def open_page(url: str, *, width: int = 1280, height: int = 900, timeout: float = 60.0):
    """Headless Chromium showing `url` (waited until loaded) -> (pipe, session) for
    `pipe.send(method, params, session=session)`; the browser is closed on exit."""
    browser = find_browser()
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="moola-chromium-")
    args = [
        browser,
        "--headless=new",
        "--remote-debugging-pipe",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--mute-audio",
        f"--window-size={width},{height}",
        "about:blank",
    ]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox

    def wire():  # in the child: our pipe ends become fds 3 and 4, inheritable
        import fcntl

        # copies numbered 10 and up first, so neither target (3, 4) is a source we still need
        a = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        b = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.dup2(a, 3)
        os.dup2(b, 4)

    # close_fds=False: the fds 3 and 4 that `wire` makes must survive into Chromium; our other
    # descriptors are close-on-exec (Python's default), so nothing else leaks
    proc = subprocess.Popen(
        args, close_fds=False, preexec_fn=wire, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    os.close(to_browser_r)
    os.close(from_browser_w)
    pipe = _Pipe(proc, to_browser_w, from_browser_r)
    try:
        targets = pipe.send("Target.getTargets", timeout=timeout)["targetInfos"]
        page = next((t for t in targets if t["type"] == "page"), None)
        if page is None:
            page = {
                "targetId": pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            }
        session = pipe.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}
        )["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        pipe.send("Page.navigate", {"url": url}, session=session)
        pipe.wait_event("Page.loadEventFired", timeout)
        yield pipe, session
        with contextlib.suppress(MoolaError):
            pipe.send("Browser.close", timeout=5)
    finally:
        os.close(to_browser_w)
        os.close(from_browser_r)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def check_page(
    path: str | os.PathLike,
    screenshot: str | os.PathLike | None = None,
    *,
    width: int = 1280,
    timeout: float = 60.0,
) -> PageCheck:
    """Load `path` in headless Chromium; return console errors, network use, figure sizes."""
    url = Path(path).absolute().as_uri()
    check = PageCheck()
    with open_page(url, width=width, timeout=timeout) as (pipe, session):
        value = pipe.send(
            "Runtime.evaluate", {"expression": _MEASURE, "returnByValue": True}, session=session
        )["result"]["value"]
        check.figures = json.loads(value)
        check.title = pipe.send(
            "Runtime.evaluate",
            {"expression": "document.title", "returnByValue": True},
            session=session,
        )["result"]["value"]
        metrics = pipe.send("Page.getLayoutMetrics", session=session)
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        check.page_height = float(size["height"])
        if screenshot is not None:
            shot = pipe.send(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1},
                },
                session=session,
                timeout=timeout,
            )
            target = Path(screenshot)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(shot["data"]))
            check.screenshot = target
        for e in pipe.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args_text = " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])
                )
                check.console_errors.append(args_text)
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                check.console_errors.append(details.get("text", "uncaught exception"))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                check.console_errors.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                request_url = params.get("request", {}).get("url", "")
                if not request_url.startswith(("file:", "data:", "about:")):
                    check.network.append(request_url)
    return check
