"""Drive a headless Chromium from tests through the DevTools protocol over a pipe (stdlib only).

``chromium --remote-debugging-pipe`` reads protocol commands on file descriptor 3 and writes
answers and events on descriptor 4, each a JSON message ended by a NUL byte. Over that pipe a
test opens a page, waits for its load event, evaluates a script that returns a promise (so it
waits on the page's own events, never on a sleep) and takes a screenshot. Nothing but the
Python standard library and the browser is needed.

Each wait has a deadline: passing it is an error naming what did not arrive (a hung browser
fails the test instead of hanging it); no result depends on how fast the browser is.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = (
    "--headless", "--no-sandbox",  # tests run as root in CI, where the sandbox cannot start
    "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
    # No connections out: this machine's network is closed, and a test must not depend on one.
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
    "--disable-default-apps", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
    "--hide-scrollbars", "--remote-debugging-pipe",
)


def _high(fd: int) -> int:
    """``fd`` moved to a descriptor numbered 10 or more (close-on-exec), the original closed."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class BrowserError(RuntimeError):
    """The browser did not start, died, or did not answer before a deadline."""


def find_chromium() -> str | None:
    """The path of a Chromium-family browser on PATH (``$CHROMIUM`` first), or None."""
    given = os.environ.get("CHROMIUM")
    if given and shutil.which(given):
        return shutil.which(given)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """One headless browser with one page, driven over the DevTools pipe. Use as a context manager."""

    def __init__(self, executable: str, *, width: int = 1280, height: int = 900, deadline_s: float = 120.0) -> None:
        self.executable, self.width, self.height, self.deadline_s = executable, width, height, deadline_s
        self._profile = tempfile.mkdtemp(prefix="ccl-chromium-")
        self._next_id = 0
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self.session: str | None = None
        to_child_r, self._to_child = (_high(fd) for fd in os.pipe())
        self._from_child, from_child_w = (_high(fd) for fd in os.pipe())
        # The browser's log goes to a file: a pipe nobody reads would fill and stall it.
        self._log = tempfile.TemporaryFile(prefix="ccl-chromium-log-")
        # bash puts the pipe ends on descriptors 3 and 4, where Chromium expects them (no Python runs
        # between fork and exec, which is not safe in a process with threads); the ends passed are
        # numbered 10 and up, so the moves cannot overwrite one another.
        wire = f'exec "$0" "$@" 3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-'
        try:
            self.proc = subprocess.Popen(
                [shutil.which("bash") or "/bin/bash", "-c", wire, executable, *FLAGS, f"--user-data-dir={self._profile}",
                 f"--window-size={width},{height}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, pass_fds=(to_child_r, from_child_w),
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)

    # -- protocol -----------------------------------------------------------------------------

    def _send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _read_message(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer from {self.executable} within {self.deadline_s:.0f} s "
                                   f"while waiting for {waiting_for}")
            ready, _, _ = select.select([self._from_child], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._from_child, 1 << 16)
                if not chunk:
                    raise BrowserError(f"{self.executable} closed the DevTools pipe (exited with "
                                       f"{self.proc.poll()}) while waiting for {waiting_for}: {self._stderr()}")
                self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, *, browser: bool = False) -> dict[str, Any]:
        """Send a command (to the page's session unless ``browser``) and return its result."""
        sent = self._send(method, params, None if browser else self.session)
        deadline = time.monotonic() + self.deadline_s
        while True:
            msg = self._read_message(deadline, method)
            if msg.get("id") == sent:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self._events.append(msg)

    def wait_event(self, method: str) -> dict[str, Any]:
        """The next event ``method`` of the page's session (events that came earlier count)."""
        deadline = time.monotonic() + self.deadline_s
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("method") == method and ev.get("sessionId") == self.session:
                    return self._events.pop(i).get("params", {})
            msg = self._read_message(deadline, method)
            if "method" in msg:
                self._events.append(msg)

    def _stderr(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    # -- page -----------------------------------------------------------------------------------

    def __enter__(self) -> "Chromium":
        try:
            targets = self.call("Target.getTargets", browser=True)["targetInfos"]
            page = next((t for t in targets if t.get("type") == "page"), None)
            target = page["targetId"] if page else self.call("Target.createTarget", {"url": "about:blank"},
                                                             browser=True)["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                     browser=True)["sessionId"]
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                             "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open(self, path: str | Path) -> None:
        """Navigate to a local file and return once that document has finished loading.

        A load event alone could be the previous document's (the start page's may arrive late), so
        the page is asked which document it holds and whether it is complete, and the wait goes on
        until it is the one asked for."""
        url = Path(path).resolve().as_uri()
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot open {path}: {result['errorText']}")
        check = "JSON.stringify([location.href.split('#')[0], document.readyState])"
        while True:
            try:
                href, state = json.loads(self.evaluate(check))
            except BrowserError:  # the old document went away while asked: ask the new one
                href, state = "", ""
            if href == url and state == "complete":
                return
            self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page; a promise is awaited."""
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, full_page: bool = True) -> bytes:
        """A PNG of the page (the whole page when ``full_page``)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        return base64.b64decode(self.call("Page.captureScreenshot", params)["data"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("Browser.close")
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._to_child = self._from_child = -1
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)
