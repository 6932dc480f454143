"""Real S3 on loopback for the tests: a moto server, and a proxy in front of it that can fail requests.

The proxy is a plain ThreadingHTTPServer that forwards each request to moto
and, by a deterministic rule on the request path and the attempt number,
answers instead with 503 SlowDown, 500 InternalError, a connection reset, a
body cut short, or a permanent 403. It counts what it sees (object GETs,
listing pages), so tests can check how many downloads really happened.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import unquote, urlsplit

import pytest

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}


def error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()


class FaultProxy:
    """Forward to ``target`` (host, port); ``rule(method, path, attempt)`` may name a fault."""

    def __init__(self, target: tuple[str, int], rule: Callable[[str, str, int], str | None] | None = None,
                 delay_s: float = 0.0):
        self.target = target
        self.delay_s = delay_s  # added to every request: a remote region's latency
        self.rule = rule or (lambda method, path, attempt: None)
        self.lock = threading.Lock()
        self.attempts: Counter = Counter()
        self.object_gets: Counter = Counter()  # key path -> successful (forwarded) object GETs
        self.list_pages = 0
        self.faults: Counter = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                proxy._handle(self, "GET")

            def do_HEAD(self):
                proxy._handle(self, "HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FaultProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def gets_total(self) -> int:
        with self.lock:
            return sum(self.object_gets.values())

    def reset_counts(self) -> None:
        with self.lock:
            self.attempts.clear()
            self.object_gets.clear()
            self.faults.clear()
            self.list_pages = 0

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        parts = urlsplit(h.path)
        is_listing = "list-type=" in parts.query
        with self.lock:
            self.attempts[(method, h.path)] += 1
            attempt = self.attempts[(method, h.path)]
        fault = self.rule(method, h.path, attempt)
        if fault:
            with self.lock:
                self.faults[fault] += 1
        if fault in ("503", "500", "403"):
            code = {"503": "SlowDown", "500": "InternalError", "403": "AccessDenied"}[fault]
            body = error_xml(code, "injected by the test proxy")
            h.send_response(int(fault))
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if method != "HEAD":
                h.wfile.write(body)
            return
        if fault == "reset":  # RST before any response
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True
            return
        status, headers, body = self._forward(h, method)
        if method == "GET" and status == 200 and not is_listing:
            with self.lock:
                self.object_gets[unquote(parts.path)] += 1
        if is_listing:
            with self.lock:
                self.list_pages += 1
        h.send_response(status)
        for k, v in headers:
            if k.lower() not in HOP_HEADERS and k.lower() != "content-length":
                h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if method == "HEAD":
            return
        if fault == "truncate" and len(body) > 1:  # the headers promise more than comes: reset mid-body
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
            h.close_connection = True
            return
        h.wfile.write(body)

    def _forward(self, h: BaseHTTPRequestHandler, method: str):
        conn = http.client.HTTPConnection(*self.target, timeout=30)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_HEADERS}
            conn.request(method, h.path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, resp.getheaders(), body
        finally:
            conn.close()


def default_faults(method: str, path: str, attempt: int) -> str | None:
    """A deterministic share of requests fails on its first try(s): about 40% of objects, some list pages."""
    h = zlib.crc32(path.encode()) % 10
    if h == 0 and attempt <= 2:
        return "503"
    if h == 1 and attempt == 1:
        return "500"
    if h == 2 and attempt == 1:
        return "reset"
    if h == 3 and attempt == 1 and method == "GET" and "list-type=" not in path:
        return "truncate"
    return None


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield host, port
    server.stop()


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Dummy credentials from the environment (the standard chain); nothing from the user's ~/.aws."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-never-logged")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def proxy(moto_server):
    p = FaultProxy(moto_server).start()
    yield p
    p.stop()


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))


def jpeg(i: int, size: int = 16) -> bytes:
    """A small JPEG whose pixels depend on ``i`` (distinct bytes for distinct i)."""
    from PIL import Image

    im = Image.new("RGB", (size, size), ((i * 37) % 256, (i * 91) % 256, (i // 256 * 53) % 256))
    im.putpixel((i % size, (i // size) % size), (255 - (i % 256), i % 7, 255))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def put_many(client, bucket: str, objects: dict[str, bytes], workers: int = 8) -> dict[str, dict]:
    """Upload concurrently; return each key's put response (ETag, VersionId)."""
    def put(item):
        key, data = item
        return key, client.put_object(Bucket=bucket, Key=key, Body=data)

    with ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(put, objects.items()))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()
