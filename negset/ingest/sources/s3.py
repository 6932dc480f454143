"""An S3 (or S3-compatible: MinIO, Ceph, R2...) bucket as a source, through boto3.

- Credentials come only from the standard AWS chain (environment, shared
  config/profile, container or instance role); params.yaml can name a
  ``profile`` but never hold a secret, and nothing here logs one.
- Listing is paginated (ListObjectsV2, 1,000 keys a page, continuation
  tokens), each page retried on its own; keys are filtered by suffix, size and
  last-modified before anything is downloaded.
- Downloads run ``workers`` at a time (one boto3 client, thread-safe, with a
  connection pool that size). Every request, body read included, is retried
  with exponential backoff and full jitter on throttling (503 SlowDown, 429),
  5xx, connection resets and timeouts; each retry is logged. Botocore's own
  retries are switched off so that every retry is counted and visible.
  Permanent errors (403, 404, ...) end that object only: the ingest reports
  it by key in ``rejected.parquet``.
- Each object is pinned: key, ETag, VersionId (versioned buckets), size,
  last-modified; the ingest adds the sha256 of the bytes.
- Unchanged objects (same key and ETag as in the previous ingest's pins) are
  not downloaded again: their stored bytes are reused.
"""

from __future__ import annotations

import http.client
import logging
from datetime import timezone
from functools import partial
from typing import Iterator

from negset.core.errors import NegsetError
from negset.ingest.sources import FetchError, FetchStats, Pin, Previous, SourceObject, retrying

log = logging.getLogger("negset.sources.s3")

THROTTLING = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
              "RequestThrottled", "RequestTimeout", "InternalError", "ServiceUnavailable"}
PERMANENT_RULES = {403: "access_denied", 404: "not_found", 412: "changed_during_ingest"}


class _ShortBody(Exception):
    pass


def _client_error_parts(exc) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def transient_reason(exc: Exception) -> str | None:
    """Why a failure may pass on retry (throttling, 5xx, reset, timeout), or None when it will not."""
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, ClientError):
        code, status = _client_error_parts(exc)
        if code in THROTTLING or status == 429 or status >= 500:
            return f"{code or 'HTTP error'} (HTTP {status})"
        return None
    if isinstance(exc, (HTTPClientError, IncompleteReadError, _ShortBody, Urllib3Error, http.client.HTTPException,
                        ConnectionError, TimeoutError)):
        return f"{type(exc).__name__}: {exc}"
    return None


def _iso(value) -> str:
    if value is None:
        return ""
    return value.astimezone(timezone.utc).isoformat()


class S3Source:
    def __init__(self, spec, previous: Previous | None = None, client=None):
        self.spec = spec
        self.previous = previous
        self.workers = spec.workers
        self.name = ", ".join(f"s3://{spec.bucket}/{p}" for p in spec.prefixes)
        self.stats = FetchStats()
        self._client = client

    # -- the client ----------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self):
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config
        from botocore.exceptions import ProfileNotFound

        spec = self.spec
        try:
            session = boto3.session.Session(profile_name=spec.profile, region_name=spec.region)
        except ProfileNotFound:
            raise NegsetError(
                f"ingest.sources: s3://{spec.bucket}: AWS profile '{spec.profile}' not found",
                hint="define it in ~/.aws/config (or AWS_CONFIG_FILE), or remove 'profile' to use the default chain",
            ) from None
        config = Config(
            retries={"total_max_attempts": 1},  # negset retries itself, visibly (see retrying)
            connect_timeout=spec.timeout,
            read_timeout=spec.timeout,
            max_pool_connections=max(10, spec.workers),
            s3={"addressing_style": spec.addressing_style},
            **({"signature_version": UNSIGNED} if spec.anonymous else {}),
        )
        return session.client("s3", endpoint_url=spec.endpoint_url, config=config)

    # -- listing -------------------------------------------------------------
    def _wanted(self, key: str, size: int, modified) -> bool:
        spec = self.spec
        if key.endswith("/"):
            return False
        if spec.suffixes and not key.lower().endswith(tuple(spec.suffixes)):
            return False
        if size < spec.min_size or (spec.max_size is not None and size > spec.max_size):
            return False
        if spec.modified_after is not None and modified is not None and modified <= spec.modified_after:
            return False
        return True

    def _list_page(self, prefix: str, token: str | None) -> dict:
        kwargs = {"Bucket": self.spec.bucket, "Prefix": prefix}
        if not self.spec.recursive:
            kwargs["Delimiter"] = "/"
        if token:
            kwargs["ContinuationToken"] = token

        def call():
            self.stats.add("requests")
            return self.client.list_objects_v2(**kwargs)

        where = f"s3://{self.spec.bucket}/{prefix}"
        try:
            return retrying(call, f"{where} (listing)", self.spec.max_attempts, transient_reason, self.stats, log)
        except FetchError as exc:
            raise NegsetError(f"ingest.sources: {where}: listing failed: {exc.reason}",
                              hint="check endpoint_url and the network; negset retried with backoff") from None
        except Exception as exc:
            raise self._listing_error(where, exc) from None

    def _listing_error(self, where: str, exc: Exception) -> NegsetError:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return NegsetError(
                f"ingest.sources: {where}: no AWS credentials found",
                hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a role; "
                "params.yaml never holds credentials (set anonymous: true for public buckets)",
            )
        if isinstance(exc, ClientError):
            code, status = _client_error_parts(exc)
            hints = {
                "NoSuchBucket": "check the bucket name (and endpoint_url/region)",
                "AccessDenied": "the credentials in use may not list this bucket (s3:ListBucket)",
            }
            return NegsetError(f"ingest.sources: {where}: listing failed: {code} (HTTP {status})",
                               hint=hints.get(code, "check bucket, prefixes, endpoint_url and region"))
        if isinstance(exc, BotoCoreError):
            return NegsetError(f"ingest.sources: {where}: listing failed: {exc}",
                               hint="check endpoint_url and region")
        return exc  # type: ignore[return-value] - not ours to explain

    def list(self) -> Iterator[SourceObject]:
        seen: set[str] = set()
        bucket = self.spec.bucket
        for prefix in self.spec.prefixes:
            source = f"s3://{bucket}/{prefix}"
            token = None
            while True:
                page = self._list_page(prefix, token)
                for item in page.get("Contents", ()):
                    key, size, modified = item["Key"], int(item.get("Size", 0)), item.get("LastModified")
                    self.stats.add("listed")
                    uri = f"s3://{bucket}/{key}"
                    if uri in seen:  # overlapping prefixes
                        continue
                    seen.add(uri)
                    if not self._wanted(key, size, modified):
                        self.stats.add("filtered")
                        continue
                    etag = str(item.get("ETag", "")).strip('"')
                    pin = Pin(key=key, etag=etag, last_modified=_iso(modified))
                    prev = self.previous.match(uri, etag) if self.previous is not None else None
                    refused = self.previous.match_rejected(uri, etag) if self.previous is not None else None
                    if prev is not None:
                        pin.version_id = prev["version_id"] or ""
                        read = partial(self._reuse, prev)
                    elif refused is not None:  # not an image last time, same bytes now: no download
                        read = partial(self._refuse_again, refused)
                    else:
                        read = partial(self._get, key, uri, pin)
                    yield SourceObject(uri=uri, source=source, size=size, version=etag, read=read, pin=pin,
                                       reused=prev is not None)
                if not page.get("IsTruncated"):
                    break
                token = page.get("NextContinuationToken")
                if not token:
                    break

    def objects_for(self, keys) -> Iterator[SourceObject]:
        """Named objects of this bucket (positives outside the listed prefixes), pinned by a HEAD request."""
        from botocore.exceptions import ClientError

        bucket = self.spec.bucket
        for key in keys:
            uri = f"s3://{bucket}/{key}"

            def head(key=key):
                self.stats.add("requests")
                return self.client.head_object(Bucket=bucket, Key=key)

            try:
                meta = retrying(head, f"{uri} (head)", self.spec.max_attempts, transient_reason, self.stats, log)
            except FetchError as exc:
                raise NegsetError(f"ingest.positives: {uri}: {exc.reason}") from None
            except ClientError as exc:
                code, status = _client_error_parts(exc)
                raise NegsetError(f"ingest.positives: {uri}: {code or 'error'} (HTTP {status})",
                                  hint="check the positives list and the credentials in use") from None
            except Exception as exc:
                raise self._listing_error(uri, exc) from None
            etag = str(meta.get("ETag", "")).strip('"')
            version_id = meta.get("VersionId") or ""
            pin = Pin(key=key, etag=etag, version_id="" if version_id == "null" else version_id,
                      last_modified=_iso(meta.get("LastModified")))
            prev = self.previous.match(uri, etag) if self.previous is not None else None
            read = partial(self._reuse, prev) if prev is not None else partial(self._get, key, uri, pin)
            source = f"s3://{bucket}/{key.rpartition('/')[0]}/" if "/" in key else f"s3://{bucket}/"
            yield SourceObject(uri=uri, source=source, size=int(meta.get("ContentLength", 0)), version=etag,
                               read=read, pin=pin, reused=prev is not None)

    # -- reading -------------------------------------------------------------
    def _refuse_again(self, error: FetchError) -> bytes:
        self.stats.add("reused")
        raise error

    def _reuse(self, row: dict) -> bytes:
        data = self.previous.read_stored(row)
        self.stats.add("reused")
        return data

    def _get(self, key: str, uri: str, pin: Pin) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        def once():
            self.stats.add("requests")
            response = self.client.get_object(Bucket=self.spec.bucket, Key=key)
            body = response["Body"]
            try:
                data = body.read()
            finally:
                body.close()
            expected = response.get("ContentLength")
            if expected is not None and len(data) != int(expected):
                raise _ShortBody(f"body ended after {len(data)} of {expected} bytes")
            return response, data

        try:
            response, data = retrying(once, uri, self.spec.max_attempts, transient_reason, self.stats, log)
        except FetchError as exc:
            self.stats.add("failed")
            log.warning("%s: %s", uri, exc.reason)
            raise
        except ClientError as exc:
            self.stats.add("failed")
            code, status = _client_error_parts(exc)
            rule = PERMANENT_RULES.get(status, "fetch_failed")
            log.warning("%s: %s (HTTP %d), not retried", uri, code, status)
            raise FetchError(rule, f"{code or 'error'} (HTTP {status})") from None
        except BotoCoreError as exc:
            self.stats.add("failed")
            raise FetchError("fetch_failed", str(exc)) from None
        pin.etag = str(response.get("ETag", pin.etag)).strip('"')
        version_id = response.get("VersionId") or ""
        pin.version_id = "" if version_id == "null" else version_id
        pin.last_modified = _iso(response.get("LastModified")) or pin.last_modified
        self.stats.add("downloaded")
        self.stats.add("bytes", len(data))
        return data
