"""ingest.sources: a discriminated union (local | s3 | http) with clear errors, and no credentials."""

from __future__ import annotations

import copy
from datetime import timezone

import pytest
import yaml

from negset.core.config import parse_params
from negset.core.errors import NegsetError
from tests.conftest import REPO

BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def with_sources(*sources) -> dict:
    raw = copy.deepcopy(BASE)
    raw["ingest"]["sources"] = list(sources)
    return raw


def error(raw) -> str:
    with pytest.raises(NegsetError) as info:
        parse_params(raw)
    return str(info.value)


def test_each_type_gets_its_own_keys():
    params = parse_params(with_sources(
        {"path": "pool"},  # no type: local, as before
        {"type": "s3", "bucket": "my-bucket", "prefixes": "raw/", "modified_after": "2024-05-01"},
        {"type": "http", "urls": "urls.txt"},
    ))
    local, s3, web = params.ingest.sources
    assert (local.type, local.path, local.recursive) == ("local", "pool", True)
    assert s3.prefixes == ["raw/"] and ".jpg" in s3.suffixes
    assert s3.modified_after.tzinfo == timezone.utc and s3.modified_after.year == 2024
    assert (web.type, web.urls, web.max_size) == ("http", "urls.txt", 50_000_000)


def test_unknown_key_in_a_source_names_the_closest_key_of_that_type():
    msg = error(with_sources({"type": "s3", "bucket": "my-bucket", "prefixs": ["a/"]}))
    assert "ingest.sources.0.prefixs: unknown key; did you mean 'prefixes'?" in msg
    assert "endpoint_url" in msg  # the valid keys listed are the s3 ones
    msg = error(with_sources({"type": "http", "url": "u.txt"}))
    assert "ingest.sources.0.url: unknown key; did you mean 'urls'?" in msg


def test_unknown_type_lists_the_types():
    msg = error(with_sources({"type": "ftp", "path": "x"}))
    assert "ingest.sources.0" in msg and "'local', 's3', 'http'" in msg


def test_missing_required_key_of_a_type():
    assert "ingest.sources.0.bucket: required key is missing" in error(with_sources({"type": "s3"}))
    assert "ingest.sources.0.bucket: expected a bucket name only" in error(
        with_sources({"type": "s3", "bucket": "s3://b/raw"}))


@pytest.mark.parametrize("key", ["aws_secret_access_key", "aws_access_key_id", "session_token", "password"])
def test_credentials_are_refused_without_echoing_them(key):
    msg = error(with_sources({"type": "s3", "bucket": "my-bucket", key: "SUPERSECRET123"}))
    assert f"'{key}': credentials are not accepted in params.yaml" in msg
    assert "SUPERSECRET123" not in msg


def test_endpoint_with_user_and_password_is_refused_and_redacted():
    msg = error(with_sources({"type": "s3", "bucket": "my-bucket", "endpoint_url": "https://me:SUPERSECRET@minio:9000"}))
    assert "ingest.sources.0.endpoint_url: the URL must not contain credentials" in msg
    assert "SUPERSECRET" not in msg
    assert "expected an http:// or https:// URL" in error(
        with_sources({"type": "s3", "bucket": "my-bucket", "endpoint_url": "minio:9000"}))
