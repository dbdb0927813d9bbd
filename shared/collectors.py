"""Data collection for scheduled runs: pull items from a source, tag them, write them as blobs.

Sources (`COLLECT_SOURCE`): `sample` generates a few deterministic records per run (local runs
and demos); an `http(s)://` URL is fetched as JSON — a list becomes one file per element, an
object with an `items` list likewise, anything else one file. Every blob carries `run_id`
metadata so the blob trigger leaves it to the run that owns it.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
from azure.storage.blob import BlobServiceClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

MAX_SOURCE_BYTES = 50 * 1024 * 1024
MAX_ITEMS = 10_000


class CollectError(RuntimeError):
    """The source could not be read or returned something unusable."""


@dataclass(frozen=True)
class CollectedFile:
    name: str
    size: int


def _sample_items(run_id: str, count: int = 5) -> list[Any]:
    rng = random.Random(hashlib.sha256(run_id.encode()).digest())
    return [{"sensor": f"s{i:02d}", "values": [round(rng.uniform(0, 100), 3) for _ in range(50)]}
            for i in range(count)]


def _http_items(url: str, timeout: float = 30.0) -> list[Any]:
    session = requests.Session()
    retry = Retry(total=3, backoff_factor=0.5, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=("GET",), respect_retry_after_header=True)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    try:
        with session.get(url, timeout=timeout, stream=True) as response:
            if response.status_code != 200:
                raise CollectError(f"source answered HTTP {response.status_code}")
            chunks, size = [], 0
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > MAX_SOURCE_BYTES:
                    raise CollectError(f"source returned more than {MAX_SOURCE_BYTES} bytes")
                chunks.append(chunk)
    except requests.RequestException as exc:
        raise CollectError(f"source unreachable: {type(exc).__name__}") from None
    try:
        document = json.loads(b"".join(chunks))
    except ValueError:
        raise CollectError("source did not return JSON") from None
    if isinstance(document, dict) and isinstance(document.get("items"), list):
        document = document["items"]
    items = document if isinstance(document, list) else [document]
    if len(items) > MAX_ITEMS:
        raise CollectError(f"source returned {len(items)} items; at most {MAX_ITEMS} per run")
    return items


def fetch_items(source: str, run_id: str) -> list[Any]:
    if source == "sample":
        return _sample_items(run_id)
    if source.startswith(("http://", "https://")):
        return _http_items(source)
    raise CollectError(f"unknown source {source!r}: use 'sample' or an http(s) URL")


def collect(source: str, run_id: str, collected_at: datetime, blobs: BlobServiceClient,
            container: str) -> list[CollectedFile]:
    """Fetch, tag and write one blob per item under `{run_id}/`. Safe to repeat for a run."""
    items = fetch_items(source, run_id)
    container_client = blobs.get_container_client(container)
    written = []
    for index, item in enumerate(items):
        name = f"{run_id}/item-{index:05d}.json"
        body = json.dumps({"runId": run_id, "collectedAt": collected_at.isoformat(),
                           "source": "sample" if source == "sample" else "http",
                           "data": item}).encode()
        container_client.upload_blob(name, body, overwrite=True,
                                     metadata={"run_id": run_id})
        written.append(CollectedFile(name, len(body)))
    return written
