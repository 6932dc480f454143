"""Helpers for the review tests: a real `negset review` process and raw HTTP requests to it."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit


@contextlib.contextmanager
def review_server(root: Path, *args: str, timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start ``negset --params ROOT/params.yaml review ARGS`` and yield (its URL, the process)."""
    cmd = [sys.executable, "-m", "negset", "--params", str(root / "params.yaml"), "review", *args]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    found: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
            if m and not found:
                found.append(m.group(1))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while not found:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"negset review did not start ({proc.poll()}):\n{''.join(lines)}\n{proc.stderr.read()[-3000:]}")
            time.sleep(0.05)
        yield found[0], proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def request(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One raw HTTP request (the path is sent exactly as given, ``..`` included): (status, headers, body)."""
    parts = urlsplit(url)
    con = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        con.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        hdrs = {"Host": parts.netloc, **(headers or {})}
        if body is not None:
            hdrs["Content-Length"] = str(len(body))
        for k, v in hdrs.items():
            con.putheader(k, v)
        con.endheaders(body)
        res = con.getresponse()
        return res.status, dict(res.getheaders()), res.read()
    finally:
        con.close()


def page_token(url: str) -> str:
    status, _, body = request(url, "GET", "/")
    assert status == 200
    return re.search(rb'name="negset-token" content="([^"]+)"', body).group(1).decode()


def decide(url: str, token: str | None, sha: str, decision: str, queue: str, origin: str | None = None):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Negset-Token"] = token
    if origin is not None:
        headers["Origin"] = origin
    body = json.dumps(dict(sha256=sha, decision=decision, queue=queue)).encode()
    return request(url, "POST", "/api/decide", body, headers)


def get_json(url: str, path: str) -> dict:
    status, _, body = request(url, "GET", path)
    assert status == 200, body
    return json.loads(body)
