"""HTTP(S) URL-list source against a real http.server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import logging
import socket
import struct
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from negset.core.config import load_params
from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.ingest import step as ingest
from tests.conftest import write_params
from tests.support.s3server import jpeg


class Server:
    """Serves a folder; some paths fail on their first try, some always."""

    def __init__(self, folder: Path):
        self.gets: Counter = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with server.lock:
                    server.gets[self.path] += 1
                    attempt = server.gets[self.path]
                name = self.path.rsplit("/", 1)[-1]
                if name.startswith("flaky") and attempt == 1:
                    self.send_error(503, "Slow Down")
                    return
                if name.startswith("reset") and attempt == 1:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if name == "forbidden.jpg":
                    self.send_error(403, "Forbidden")
                    return
                if name == "to-file":
                    self.send_response(302)
                    self.send_header("Location", "file:///etc/passwd")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def web(tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    server = Server(folder)
    yield server, folder
    server.stop()


def test_url_list_concurrent_retried_size_limited_and_refreshed(project, web, caplog):
    server, folder = web
    names = [f"img-{i}.jpg" for i in range(20)] + ["flaky-1.jpg", "flaky-2.jpg", "reset-1.jpg"]
    payloads = {n: jpeg(i) for i, n in enumerate(names)}
    for n, data in payloads.items():
        (folder / n).write_bytes(data)
    (folder / "big.jpg").write_bytes(jpeg(99, size=256) + b"\0" * 20_000)
    (folder / "notes.txt").write_text("not an image")
    (folder / "forbidden.jpg").write_bytes(jpeg(98))
    lines = ["# candidates", *[f"{server.url}/{n}" for n in names], f"{server.url}/big.jpg",
             f"{server.url}/notes.txt", f"{server.url}/forbidden.jpg", f"{server.url}/missing.jpg",
             f"{server.url}/to-file", f"{server.url}/img-0.jpg"]  # a duplicate line
    (project / "urls.txt").write_text("\n".join(lines) + "\n")
    write_params(project, ingest={"sources": [{"type": "http", "urls": "urls.txt", "workers": 4,
                                               "max_size": 10_000, "max_attempts": 4}]})
    layout = Layout.at(project)
    with caplog.at_level(logging.INFO, logger="negset"):
        summary = ingest.run(load_params(project / "params.yaml"), layout)

    rows = {r["uri"]: r for r in pq.read_table(layout.ingest / "images.parquet").to_pylist() if r["role"] == "candidate"}
    assert set(rows) == {f"{server.url}/{n}" for n in names}
    for n, data in payloads.items():
        assert rows[f"{server.url}/{n}"]["sha256"] == hashlib.sha256(data).hexdigest()
    rejected = {r["uri"].rsplit("/", 1)[-1]: r["rule"] for r in pq.read_table(layout.ingest / "rejected.parquet").to_pylist()}
    assert rejected == {"big.jpg": "too_large", "notes.txt": "not_image", "forbidden.jpg": "access_denied",
                        "missing.jpg": "not_found", "to-file": "bad_redirect"}
    retried = "\n".join(r.getMessage() for r in caplog.records if "; retry " in r.getMessage())
    assert "flaky-1.jpg: HTTP 503" in retried and "flaky-2.jpg: HTTP 503" in retried and "reset-1.jpg" in retried
    assert server.gets["/forbidden.jpg"] == 1  # a 403 is not retried
    assert summary["fetch"]["downloaded"] == len(names) + 1  # + notes.txt (read, then rejected)
    pins = {r["uri"]: r for r in pq.read_table(layout.ingest / "pins.parquet").to_pylist()}
    assert all(pins[u]["last_modified"] for u in rows)

    # refresh: unchanged files answer 304 and are not downloaded again
    server.gets.clear()
    (folder / "img-3.jpg").write_bytes(jpeg(500))  # changed
    import os
    os.utime(folder / "img-3.jpg", (2_000_000_000, 2_000_000_000))
    summary = ingest.run(load_params(project / "params.yaml"), layout)
    assert summary["fetch"]["downloaded"] == 2  # img-3.jpg (changed) + notes.txt (never stored)
    assert summary["fetch"]["reused"] == len(names) - 1
    rows = {r["uri"]: r for r in pq.read_table(layout.ingest / "images.parquet").to_pylist() if r["role"] == "candidate"}
    assert rows[f"{server.url}/img-3.jpg"]["sha256"] == hashlib.sha256(jpeg(500)).hexdigest()
    history = pq.read_table(layout.ingest / "history.parquet").to_pylist()
    assert [(h["event"], h["uri"]) for h in history] == [("replaced", f"{server.url}/img-3.jpg")]


@pytest.mark.parametrize("entry", ["file:///etc/passwd", "ftp://example.org/a.jpg", "s3://bucket/key.jpg",
                                   "/etc/passwd", "http://user:secret@example.org/a.jpg"])
def test_url_list_refuses_other_schemes(project, entry):
    (project / "urls.csv").write_text(f"id,url\n1,http://127.0.0.1:9/a.jpg\n2,{entry}\n")
    write_params(project, ingest={"sources": [{"type": "http", "urls": "urls.csv"}]})
    with pytest.raises(NegsetError) as info:
        ingest.run(load_params(project / "params.yaml"), Layout.at(project))
    assert "urls.csv:3:" in str(info.value)
    assert "secret" not in str(info.value)
