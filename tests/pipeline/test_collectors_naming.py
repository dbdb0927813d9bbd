"""Collectors against a local HTTP source and Azurite; naming rules; API body parsing."""
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.api import ApiError, parse_json_body, public_reason
from shared.collectors import CollectError, collect, fetch_items
from shared.naming import (
    BlobNameError,
    InstanceIdError,
    check_blob_name,
    check_instance_id,
    check_prefix,
    check_source_blob_name,
    file_instance_id,
    max_source_name,
    result_blob_name,
    run_instance_id,
)
from shared.settings import Settings
from shared.storage import StorageConnection, ensure_resources


class _Source(BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/flaky" and self.hits[self.path] == 1:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        bodies = {"/list": b'[{"a": 1}, {"a": 2}]', "/flaky": b'{"items": [1, 2, 3]}',
                  "/html": b"<html></html>", "/one": b'{"x": 1}'}
        body = bodies.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def source() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Source)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_http_source_shapes_and_retry(source: str) -> None:
    assert fetch_items(f"{source}/list", "r") == [{"a": 1}, {"a": 2}]
    assert fetch_items(f"{source}/one", "r") == [{"x": 1}]
    assert fetch_items(f"{source}/flaky", "r") == [1, 2, 3]
    assert _Source.hits["/flaky"] == 2
    with pytest.raises(CollectError, match="not return JSON"):
        fetch_items(f"{source}/html", "r")
    with pytest.raises(CollectError, match="HTTP 404"):
        fetch_items(f"{source}/missing", "r")
    with pytest.raises(CollectError, match="unknown source"):
        fetch_items("ftp://x", "r")


def test_collect_writes_tagged_blobs_once_per_name(settings: Settings,
                                                   connection: StorageConnection) -> None:
    ensure_resources(settings, connection)
    blobs = connection.blob_service()
    when = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
    run_id = run_instance_id(when)
    first = collect("sample", run_id, when, blobs, settings.data_container)
    second = collect("sample", run_id, when, blobs, settings.data_container)
    assert first == second and len(first) == 5
    listed = list(blobs.get_container_client(settings.data_container)
                  .list_blobs(include=["metadata"]))
    assert len(listed) == 5 and all(b.metadata == {"run_id": run_id} for b in listed)
    body = json.loads(blobs.get_blob_client(settings.data_container, first[0].name)
                      .download_blob().readall())
    assert body["runId"] == run_id and body["source"] == "sample" and body["data"]["values"]


def test_naming_rules() -> None:
    assert run_instance_id(datetime(2026, 1, 2, 3, 4, 5, 999, tzinfo=timezone.utc)) == \
        "run-20260102T030405Z"
    a = file_instance_id("data", "x.json", '"0x1"')
    assert a == file_instance_id("data", "x.json", "0x1")
    assert a != file_instance_id("data", "x.json", "0x2")
    assert result_blob_name("dir/x.json", "process") == "dir/x.json.process.out"
    for bad in ("", "../x", "/abs", "a//b", "a/./b", "a\\b", "a\x00b", "x" * 1025):
        with pytest.raises(BlobNameError):
            check_blob_name(bad)
    assert check_blob_name("ok/名前 (1).json") == "ok/名前 (1).json"
    for bad in ("lone-\ud800", "/".join(["s"] * 255)):
        with pytest.raises(BlobNameError):
            check_blob_name(bad)


def test_source_names_leave_room_for_derived_names() -> None:
    assert max_source_name(["process"]) == 1024 - len(".process.out")
    assert max_source_name(["extract", "transform"]) == 1024 - len(".extract.out.transform.out")
    assert max_source_name(["a"]) == 1024 - len(".error.json")  # the failure record is longer
    fits = "n" * max_source_name(["process"])
    assert len(result_blob_name(fits, "process")) == 1024
    assert check_source_blob_name(fits, ["process"]) == fits
    with pytest.raises(BlobNameError, match="output and failure names"):
        check_source_blob_name(fits + "n", ["process"])


def test_prefixes_and_instance_ids() -> None:
    assert check_prefix("") == "" and check_prefix("2026/12/") == "2026/12/"
    for bad in ("\x00", "p" * 1025, "/abs", "../x", "a/../b", "\ud800"):
        with pytest.raises(BlobNameError):
            check_prefix(bad)
    assert check_instance_id("file-" + "0" * 40) and check_instance_id("run-api-1_a")
    for bad in ("", "a/b", "a%2Fb", "a b", "x" * 121, "é"):
        with pytest.raises(InstanceIdError):
            check_instance_id(bad)


def test_public_reason_drops_traceback_and_paths() -> None:
    text = ("Orchestrator function 'process_run' failed: KeyError: 'x' in /srv/app/shared/x.py "
            "for data/a/b.json\n Traceback (most recent call last):\n  File \"/srv/app/y.py\"")
    assert public_reason(text) == ("Orchestrator function 'process_run' failed: KeyError: 'x' "
                                   "in <path> for data/a/b.json")


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"x" * 300_001, 413, "PayloadTooLarge"),
    (b"", 400, "InvalidJson"),
    (b"{oops", 400, "InvalidJson"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "InvalidJson"),  # RecursionError inside json
    (b'{"n": NaN}', 400, "InvalidJson"),
    (b'{"n": -Infinity}', 400, "InvalidJson"),
    (b'{"n": 1e999}', 400, "InvalidJson"),  # parses to inf
    (b'{"s": "\\ud800"}', 400, "InvalidJson"),  # a lone surrogate no storage call encodes
])
def test_body_parsing_errors(body: bytes, status: int, code: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_json_body(body, max_bytes=300_000)
    assert (err.value.status, err.value.code) == (status, code)
    assert err.value.body()["error"]["code"] == code
