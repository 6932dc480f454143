"""``negset review``: a local web page to review the quarantine and audit the chosen negatives.

A standard-library HTTP server bound to 127.0.0.1 only. What it serves:

- ``/``: the page (``static/review.html``, ``review.js``, ``review.css``), with
  a random token in a ``<meta>`` tag; no other origin can read it;
- ``/api/state``, ``/api/cards?queue=Q&offset=O&limit=L``: queue counts, the
  decisions in force, pages of cards (the page loads them as it scrolls);
- ``/image/SHA256`` and ``/thumb/SHA256``: an image (or a JPEG thumbnail) named
  by its sha256 only, looked up in the ingest step's catalog: no path from a
  request ever reaches the file system;
- ``POST /api/decide``: one decision, appended at once to ``reviews.csv``
  (``negset.review.decisions.append_reviews``: locked, fsync'd) before the
  answer; it needs the page's token in ``X-Negset-Token``.

Requests naming ``..``, a backslash, an empty path segment (``//``, an absolute
path after a route), a ``Host`` other than this server (DNS rebinding) or, for
writes, another ``Origin`` are refused.
"""

from __future__ import annotations

import getpass
import hmac
import html
import io
import json
import logging
import re
import secrets
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from negset.core.errors import NegsetError
from negset.core.layout import Layout
from negset.review import audit as audit_
from negset.review.decisions import (
    CLEARED,
    DECISIONS,
    Review,
    append_reviews,
    clean_reviewer,
    ensure_file,
    read_reviews,
    reviews_path,
    utc_now,
)
from negset.review.queues import Project

log = logging.getLogger("negset.review")

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
THUMB_PX = 360
THUMB_CACHE = 3000  # thumbnails kept in memory (about 25 KB each)
MAX_PAGE = 200
MAX_BODY = 4096
SHA = re.compile(r"^[0-9a-f]{64}$")
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp"}
CSP = ("default-src 'none'; img-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class Refused(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ReviewApp:
    """The server's state: the project's queues, the token, the reviews file and a thumbnail cache."""

    def __init__(self, layout: Layout, target: str, reviewer: str | None = None, audit: int = audit_.AUDIT_SIZE,
                 hardest: int = 0):
        self.layout = layout
        self.target = target
        self.reviewer = clean_reviewer(reviewer or _user_name())
        self.audit_size = audit
        self.path = reviews_path(layout)
        read_reviews(self.path)  # a bad file stops here, naming its line
        self.project = Project(layout, audit=audit, hardest=hardest)
        if ensure_file(self.path):
            log.info("review: created %s (header only); commit it with your decisions", self.path)
        self.token = secrets.token_urlsafe(32)
        self.port = 0
        self._lock = threading.Lock()
        self._reviews_key = None
        self._reviews: dict[str, Review] = {}
        self._thumbs: OrderedDict[str, bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()

    # ------------------------------------------------------------ reviews

    def reviews(self) -> dict[str, Review]:
        """The decisions in force, re-read whenever reviews.csv changed (another tab or server wrote)."""
        with self._lock:
            try:
                st = self.path.stat()
                key = (st.st_ino, st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                key = None
            if key != self._reviews_key:
                self._reviews = read_reviews(self.path)
                self._reviews_key = key
            return self._reviews

    def decide(self, sha256: str, decision: str, queue: str) -> Review:
        card = self.project.cards.get(sha256)
        if card is None:
            raise Refused(HTTPStatus.NOT_FOUND, "no such card: the image is in no review queue")
        if decision not in DECISIONS:
            raise Refused(HTTPStatus.BAD_REQUEST, f"decision must be one of {', '.join(DECISIONS)}")
        if queue != card.queue:
            raise Refused(HTTPStatus.BAD_REQUEST, f"the image is in the {card.queue} queue, not {queue!r}")
        row = Review(sha256, card.uri, decision, card.queue, self.reviewer, utc_now())
        append_reviews(self.path, [row])
        log.info("review: %s %s (%s) by %s", decision, card.uri, card.queue, self.reviewer)
        return row

    def state(self) -> dict:
        reviews = self.reviews()
        queues = {}
        for name, cards in self.project.queues.items():
            counts = {d: 0 for d in DECISIONS if d != CLEARED}
            for c in cards:
                r = reviews.get(c.sha256)
                if r is not None:
                    counts[r.decision] += 1
            queues[name] = dict(total=len(cards), decided=sum(counts.values()), **counts)
        audit = audit_.contamination(self.project.negatives, reviews, self.audit_size)
        return dict(
            queues=queues,
            decisions={s: r.decision for s, r in reviews.items() if s in self.project.cards},
            audit=audit,
            audit_statement=audit_.statement(audit),
            reviewer=self.reviewer,
            reviews_file=self.path.name,
        )

    def cards(self, queue: str, offset: int, limit: int) -> dict:
        if queue not in self.project.queues:
            raise Refused(HTTPStatus.NOT_FOUND, f"no queue {queue!r} (queues: {', '.join(self.project.queues)})")
        reviews = self.reviews()
        page = self.project.page(queue, offset, limit)
        for c in page:
            r = reviews.get(c["sha256"])
            c["decision"] = r.decision if r else None
        return dict(queue=queue, offset=offset, total=len(self.project.queues[queue]), cards=page)

    # ------------------------------------------------------------ images

    def thumbnail(self, sha256: str) -> bytes | None:
        with self._thumb_lock:
            if sha256 in self._thumbs:
                self._thumbs.move_to_end(sha256)
                return self._thumbs[sha256]
        path = self.project.image_file(sha256)
        if path is None:
            return None
        from negset.core.imageio import load_rgb

        try:
            im = load_rgb(path, reduce_to=THUMB_PX)
        except Exception as exc:  # an undecodable file shows as a missing image, not a dead server
            log.warning("review: cannot decode %s: %s", path, exc)
            return None
        im.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=82)
        data = buf.getvalue()
        with self._thumb_lock:
            self._thumbs[sha256] = data
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return data

    def page_html(self) -> str:
        template = (STATIC / "review.html").read_text(encoding="utf-8")
        values = dict(token=self.token, target=self.target, reviewer=self.reviewer, reviews_file=self.path.name)
        return re.sub(r"\{\{(\w+)\}\}", lambda m: html.escape(str(values[m.group(1)]), quote=True), template)


def _user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment or passwd (a container)
        return "unknown"


def check_path(raw: str) -> tuple[str, dict[str, list[str]]]:
    """The request's path and query, or ``Refused`` for ``..``, backslashes, empty segments, NULs."""
    parts = urlsplit(raw)
    path = unquote(parts.path)
    query = parse_qs(parts.query, keep_blank_values=True)
    values = [unquote(v) for vs in query.values() for v in vs]
    for text in [path, *values]:
        if ".." in text or "\\" in text or "\x00" in text:
            raise Refused(HTTPStatus.BAD_REQUEST, "refused: the page serves no paths (.. or \\ in the request)")
    if not path.startswith("/") or "//" in path or any(v.startswith("/") for v in values):
        raise Refused(HTTPStatus.BAD_REQUEST, "refused: absolute paths are not served; images are named by sha256")
    return path, query


class Handler(BaseHTTPRequestHandler):
    server_version = "negset-review"
    sys_version = ""
    app: ReviewApp  # set on the subclass made by make_server

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        log.debug("review: %s %s", self.address_string(), format % args)

    # ------------------------------------------------------------ plumbing

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json; charset=utf-8")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json({"ok": False, "error": message}, status)

    def _check_host(self) -> None:
        host = self.headers.get("Host", "")
        allowed = {f"127.0.0.1:{self.app.port}", f"localhost:{self.app.port}"}
        if host not in allowed:
            raise Refused(HTTPStatus.FORBIDDEN, f"refused: Host {host[:60]!r} is not this server")

    def _handle(self, method: str) -> None:
        try:
            self._check_host()
            path, query = check_path(self.path)
            if method == "POST":
                self._post(path)
            else:
                self._get(path, query)
        except Refused as exc:
            self._error(exc.status, exc.message)
        except NegsetError as exc:  # reviews.csv turned bad while serving: say which line
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):  # noqa: N802 (http.server's names)
        self._handle("GET")

    def do_HEAD(self):  # noqa: N802
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")

    def do_PUT(self):  # noqa: N802
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and POST /api/decide")

    do_DELETE = do_PATCH = do_OPTIONS = do_PUT

    # ------------------------------------------------------------ routes

    def _get(self, path: str, query: dict) -> None:
        app = self.app
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, app.page_html().encode("utf-8"), "text/html; charset=utf-8")
        elif path.startswith("/static/") and path[len("/static/"):] in STATIC_FILES:
            name = path[len("/static/"):]
            self._send(HTTPStatus.OK, (STATIC / name).read_bytes(), STATIC_FILES[name])
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon", "private, max-age=86400")
        elif path == "/api/state":
            self._json(app.state())
        elif path == "/api/cards":
            queue = (query.get("queue") or [""])[0]
            offset = _int(query, "offset", 0, 0, 10**9)
            limit = _int(query, "limit", 60, 1, MAX_PAGE)
            self._json(app.cards(queue, offset, limit))
        elif path.startswith("/image/") or path.startswith("/thumb/"):
            kind, sha = path[1:].split("/", 1)
            if not SHA.match(sha):
                raise Refused(HTTPStatus.NOT_FOUND, "images are named by their sha256 (64 hex digits)")
            self._image(kind, sha)
        else:
            raise Refused(HTTPStatus.NOT_FOUND, "not found")

    def _image(self, kind: str, sha: str) -> None:
        app = self.app
        cache = "private, max-age=86400, immutable"  # named by content: never changes
        if kind == "thumb":
            data = app.thumbnail(sha)
            if data is None:
                raise Refused(HTTPStatus.NOT_FOUND, "no such image in this project's catalog")
            self._send(HTTPStatus.OK, data, "image/jpeg", cache)
            return
        path = app.project.image_file(sha)
        if path is None:
            raise Refused(HTTPStatus.NOT_FOUND, "no such image in this project's catalog")
        fmt = str(app.project.images[sha].get("format") or "").upper()
        if fmt not in MIME:  # a format browsers do not show (TIFF, ...): the JPEG preview instead
            data = app.thumbnail(sha)
            if data is None:
                raise Refused(HTTPStatus.NOT_FOUND, "the image cannot be decoded")
            self._send(HTTPStatus.OK, data, "image/jpeg", cache)
            return
        self._send(HTTPStatus.OK, path.read_bytes(), MIME[fmt], cache)

    def _post(self, path: str) -> None:
        app = self.app
        if path != "/api/decide":
            raise Refused(HTTPStatus.NOT_FOUND, "not found")
        origin = self.headers.get("Origin")
        if origin is not None and origin not in (f"http://127.0.0.1:{app.port}", f"http://localhost:{app.port}"):
            raise Refused(HTTPStatus.FORBIDDEN, "refused: a write from another origin")
        token = self.headers.get("X-Negset-Token", "")
        if not hmac.compare_digest(token.encode(), app.token.encode()):
            raise Refused(HTTPStatus.FORBIDDEN, "refused: a write needs the page's token")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            raise Refused(HTTPStatus.BAD_REQUEST, f"a decision is a JSON body of at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
            sha, decision, queue = str(body["sha256"]), str(body["decision"]), str(body["queue"])
        except (ValueError, KeyError, TypeError):
            raise Refused(HTTPStatus.BAD_REQUEST, "expected JSON {sha256, decision, queue}") from None
        row = app.decide(sha, decision, queue)
        state = app.state()
        self._json(dict(ok=True, row=dict(zip(("sha256", "uri", "decision", "queue", "reviewer", "time"), row.row())),
                        queues=state["queues"], audit_statement=state["audit_statement"]))


def _int(query: dict, name: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int((query.get(name) or [default])[0])
    except ValueError:
        raise Refused(HTTPStatus.BAD_REQUEST, f"{name} must be a number") from None
    return min(hi, max(lo, value))


def make_server(app: ReviewApp, port: int = 0) -> ThreadingHTTPServer:
    """Bind 127.0.0.1:port (0 = a free port); ``app.port`` is set to the bound port."""
    handler = type("ReviewHandler", (Handler,), {"app": app})
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise NegsetError(f"127.0.0.1:{port}: cannot listen ({exc.strerror})",
                          hint="choose another --port, or leave it out for a free one") from None
    server.daemon_threads = True
    app.port = server.server_address[1]
    return server


def serve(layout: Layout, target: str, port: int = 0, audit: int = audit_.AUDIT_SIZE, hardest: int = 0,
          reviewer: str | None = None) -> dict:
    """Run the review page until interrupted (Ctrl-C); return what was reviewed."""
    app = ReviewApp(layout, target, reviewer=reviewer, audit=audit, hardest=hardest)
    server = make_server(app, port)
    counts = ", ".join(f"{n} {q}" for q, n in ((q, len(c)) for q, c in app.project.queues.items()))
    print(f"negset review: http://127.0.0.1:{app.port}/  ({counts}; decisions go to {app.path}; Ctrl-C to stop)",
          flush=True)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    state = app.state()
    return dict(url=f"http://127.0.0.1:{app.port}/", reviews=str(app.path), queues=state["queues"],
                audit=state["audit"], audit_statement=state["audit_statement"])
