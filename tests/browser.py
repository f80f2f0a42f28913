"""Headless Chromium driven over the DevTools protocol, with the standard library only.

Used to check and to photograph what a person sees in the MLflow UI: the browser test
(``tests/tracking/test_ui.py``) and the documentation's screenshots (``experiments/mlflow_screenshots.sh``)
go through the same :class:`HeadlessChromium`, so the pictures in ``docs/img`` show what the
test checked.

The browser is Debian's ``chromium`` package (``apt-get install chromium``), found on the
``PATH`` (or given). The DevTools protocol is JSON over a WebSocket; the few frames it needs
(text, unfragmented or fragmented, masked client frames, ping/close) are written here rather
than adding a WebSocket dependency for one test.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

#: Executable names of Chromium, most likely first (Debian: ``chromium``).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium executable (``$CHUCK_CHROMIUM`` first), or None."""
    wanted = os.environ.get("CHUCK_CHROMIUM")
    if wanted:
        return shutil.which(wanted) or (wanted if Path(wanted).exists() else None)
    return next((p for p in (shutil.which(n) for n in CHROMIUM_NAMES) if p), None)


class _WebSocket:
    """The client side of RFC 6455, enough for the DevTools protocol."""

    def __init__(self, url: str, timeout: float) -> None:
        assert url.startswith("ws://"), url
        hostport, _, path = url[len("ws://") :].partition("/")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host, int(port or 80)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(f"DevTools refused the WebSocket: {status.decode(errors='replace')}")
        self._buf = head.split(b"\r\n\r\n", 1)[1]

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def send(self, text: str) -> None:
        payload = text.encode()
        n = len(payload)
        head = bytes([0x81])  # FIN + text
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)  # servers never mask
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode == 0x9:  # ping: answer with a pong
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class HeadlessChromium:
    """One headless Chromium with one page, driven over the DevTools protocol.

    Use as a context manager; everything it started (the browser and its profile directory)
    is gone afterwards::

        with HeadlessChromium() as browser:
            browser.goto("http://127.0.0.1:5000/#/experiments/1")
            browser.wait_for_text("train_loss")
            browser.screenshot("page.png")

    Args:
        executable: the browser (default :func:`find_chromium`).
        width, height: the window, in CSS pixels.
        timeout: seconds any single wait may take.
    """

    def __init__(self, executable: str | None = None, width: int = 1600, height: int = 1000, timeout: float = 120.0) -> None:
        exe = executable or find_chromium()
        if exe is None:
            raise FileNotFoundError("no Chromium found (Debian: apt-get install chromium; or set CHUCK_CHROMIUM)")
        self.timeout = timeout
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="chuck-chromium-")
        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--mute-audio",
                f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._id = 0
        self._ws: _WebSocket | None = None
        try:
            self._ws = _WebSocket(self._page_url(), timeout)
            self.call("Page.enable")
            self.call("Runtime.enable")
        except Exception:
            self.close()
            raise

    def _page_url(self) -> str:
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.proc.returncode}")
            if port_file.exists() and port_file.read_text().strip():
                port = port_file.read_text().split()[0]
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                        pages = [t for t in json.load(r) if t.get("type") == "page"]
                    if pages:
                        return pages[0]["webSocketDebuggerUrl"]
                except OSError:
                    pass
            time.sleep(0.2)
        raise TimeoutError("chromium did not open its DevTools port")

    # -- the protocol -------------------------------------------------------
    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are dropped)."""
        assert self._ws is not None
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JavaScript failed: {res['exceptionDetails'].get('text')}: {expression[:200]}")
        return res.get("result", {}).get("value")

    # -- what a test or a screenshot needs -----------------------------------
    def goto(self, url: str, fresh: bool = False) -> None:
        """Open ``url``; ``fresh`` reloads it too (a single-page app may ignore a change of the #fragment alone)."""
        if fresh:  # leave the document, so that the next one loads from scratch
            self.call("Page.navigate", url="about:blank")
            self.wait_for("location.href === 'about:blank' && document.readyState === 'complete'")
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        """The page's visible text."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout: float | None = None) -> str:
        """Wait until every one of ``needles`` is in the page's visible text; return that text."""
        deadline = time.monotonic() + (timeout or self.timeout)
        text = ""
        while time.monotonic() < deadline:
            try:
                text = self.text()
            except RuntimeError:  # navigating: no document to ask yet
                text = ""
            if all(n in text for n in needles):
                return text
            time.sleep(0.5)
        missing = [n for n in needles if n not in text]
        raise TimeoutError(f"the page never showed {missing}; it shows: {text[:1500]!r}")

    def wait_for(self, expression: str, timeout: float | None = None) -> Any:
        """Wait until a JavaScript expression is truthy in the page; return its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"the page never satisfied {expression!r}")

    def click_text(self, text: str, selector: str = "button, [role=tab], a, [role=button], span") -> bool:
        """Click the first element matching ``selector`` whose own text is ``text``; whether one was found."""
        return bool(
            self.evaluate(
                f"(() => {{ const el = [...document.querySelectorAll({json.dumps(selector)})]"
                f".find(e => e.innerText && e.innerText.trim() === {json.dumps(text)});"
                " if (!el) return false; el.scrollIntoView({block: 'center'}); el.click(); return true; })()"
            )
        )

    def screenshot(self, path: str | Path, full_height: int | None = None) -> Path:
        """Save a PNG of the viewport (or of the top ``full_height`` pixels of the page)."""
        height = full_height or self.height
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=height, deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        out = Path(path)
        out.write_bytes(base64.b64decode(data))
        return out

    def close(self) -> None:
        """Stop the browser (and everything it started) and remove its profile."""
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
            except OSError:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> HeadlessChromium:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
