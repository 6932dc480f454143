"""A list of http(s) URLs as a source (a text file, one URL a line, or a CSV).

- Only ``http`` and ``https``: any other scheme in the list (file, ftp, s3,
  data...) is refused with the list's file and line; redirects to another
  scheme are refused too; URLs with ``user:password@`` are refused (no
  credentials in files negset tracks).
- Downloads run ``workers`` at a time, each retried with exponential backoff
  and full jitter on 429, 5xx, connection resets and timeouts (logged);
  other 4xx end that URL only (reported in ``rejected.parquet``).
- ``max_size`` bounds every object: a larger Content-Length is refused before
  the body is read, and a body is never read past the limit.
- Pinned by ETag and Last-Modified; a refresh sends ``If-None-Match`` /
  ``If-Modified-Since`` for URLs it already holds, and a 304 reuses the
  stored bytes.
"""

from __future__ import annotations

import email.utils
import http.client
import logging
import urllib.error
import urllib.request
from datetime import timezone
from functools import partial
from pathlib import Path
from typing import Iterator
from urllib.parse import urljoin, urlsplit

from negset import __version__
from negset.core.errors import NegsetError
from negset.core.listfile import read_list_entries
from negset.ingest.sources import FetchError, FetchStats, Pin, Previous, SourceObject, retrying

log = logging.getLogger("negset.sources.http")

SCHEMES = ("http", "https")


class _ShortBody(Exception):
    pass


class _SchemeSafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib alone would follow ftp:)."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("Location") or headers.get("URI") or ""
        newurl = urljoin(req.full_url, target)
        if urlsplit(newurl).scheme.lower() not in SCHEMES:
            fp.close()
            raise FetchError("bad_redirect", f"redirect to a non-http(s) URL refused: {newurl[:200]}")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener() -> urllib.request.OpenerDirector:
    """http and https only (no file:, ftp:, data: handlers); proxies from the environment."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    _SchemeSafeRedirects(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def transient_reason(exc: Exception) -> str | None:
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code == 429 or exc.code >= 500:
            return f"HTTP {exc.code} {exc.reason}"
        return None
    if isinstance(exc, urllib.error.URLError):
        return f"{type(exc.reason).__name__}: {exc.reason}"
    if isinstance(exc, (http.client.HTTPException, ConnectionError, TimeoutError, _ShortBody)):
        return f"{type(exc).__name__}: {exc}"
    return None


def read_url_list(path: Path) -> list[str]:
    """URLs from a text file (one a line, # comments) or a CSV (column url/uri/link/href, or the first)."""
    if not path.is_file():
        raise NegsetError(f"{path}: URL list not found", hint="check ingest.sources[].urls")
    lines = read_list_entries(path, ("url", "uri", "link", "href"))
    urls: list[str] = []
    seen: set[str] = set()
    for n, url in lines:
        parts = urlsplit(url)
        if parts.scheme.lower() not in SCHEMES or not parts.hostname:
            raise NegsetError(f"{path}:{n}: {url[:200]!r}: only http:// and https:// URLs are accepted",
                              hint="list local files with a 'local' source and S3 objects with an 's3' source")
        if parts.username or parts.password:
            raise NegsetError(f"{path}:{n}: a URL with user:password@ is refused (no credentials in URL lists)")
        if url not in seen:
            seen.add(url)
            urls.append(url)
    return urls


def _iso_http_date(value: str | None) -> str:
    if not value:
        return ""
    try:
        return email.utils.parsedate_to_datetime(value).astimezone(timezone.utc).isoformat()
    except (TypeError, ValueError):
        return ""


class HttpSource:
    def __init__(self, spec, root: Path, previous: Previous | None = None):
        self.spec = spec
        self.path = (Path(root) / spec.urls).resolve()
        self.name = spec.urls
        self.workers = spec.workers
        self.previous = previous
        self.stats = FetchStats()
        self._opener = _opener()

    def list(self) -> Iterator[SourceObject]:
        for url in read_url_list(self.path):
            self.stats.add("listed")
            prev = self._stored(url)
            pin = Pin(key=url)
            yield SourceObject(uri=url, source=self.name, size=0, version="", read=partial(self._get, url, pin, prev),
                               pin=pin)

    def _stored(self, url: str) -> dict | None:
        """The previous pin of this URL when it can be revalidated (ETag or Last-Modified) and its bytes are here."""
        row = self.previous.by_uri.get(url) if self.previous is not None else None
        if row is None or row["status"] != "image" or not (row["etag"] or row["last_modified"]):
            return None
        return row if self.previous.layout.object_path(row["sha256"]).is_file() else None

    def _get(self, url: str, pin: Pin, prev: dict | None) -> bytes:
        spec = self.spec
        headers = {"User-Agent": f"negset/{__version__}"}
        if prev is not None:
            if prev["etag"]:
                headers["If-None-Match"] = prev["etag"]
            if prev["last_modified"]:
                from datetime import datetime

                when = datetime.fromisoformat(prev["last_modified"])
                headers["If-Modified-Since"] = email.utils.format_datetime(when.astimezone(timezone.utc), usegmt=True)

        def once():
            self.stats.add("requests")
            request = urllib.request.Request(url, headers=headers)
            try:
                with self._opener.open(request, timeout=spec.timeout) as resp:
                    length = resp.headers.get("Content-Length")
                    if spec.max_size is not None and length is not None and int(length) > spec.max_size:
                        raise FetchError("too_large", f"Content-Length {length} is over max_size={spec.max_size}")
                    data = resp.read(spec.max_size + 1) if spec.max_size is not None else resp.read()
                    if spec.max_size is not None and len(data) > spec.max_size:
                        raise FetchError("too_large", f"body is over max_size={spec.max_size}")
                    if length is not None and len(data) != int(length):
                        raise _ShortBody(f"body ended after {len(data)} of {length} bytes")
                    return resp.status, resp.headers, data
            except urllib.error.HTTPError as exc:
                if exc.code == 304:
                    return 304, exc.headers, None
                raise

        try:
            status, resp_headers, data = retrying(once, url, spec.max_attempts, transient_reason, self.stats, log)
        except FetchError as exc:
            self.stats.add("failed")
            log.warning("%s: %s", url, exc.reason)
            raise
        except urllib.error.HTTPError as exc:
            self.stats.add("failed")
            rule = {403: "access_denied", 401: "access_denied", 404: "not_found", 410: "not_found"}.get(
                exc.code, "fetch_failed")
            log.warning("%s: HTTP %d, not retried", url, exc.code)
            raise FetchError(rule, f"HTTP {exc.code} {exc.reason}") from None
        if status == 304 and prev is not None:
            pin.etag, pin.last_modified = prev["etag"], prev["last_modified"]
            data = self.previous.read_stored(prev)
            self.stats.add("reused")
            return data
        pin.etag = (resp_headers.get("ETag") or "").strip()
        pin.last_modified = _iso_http_date(resp_headers.get("Last-Modified"))
        self.stats.add("downloaded")
        self.stats.add("bytes", len(data))
        return data
