"""Publishing the agent waits through role propagation: the real azure-storage-blob client talks
to Azurite through a small HTTP proxy that first refuses writes the way storage does while a new
role assignment is not in effect (403, `x-ms-error-code` AuthorizationPermissionMismatch or
AuthorizationFailure, the XML error body), then lets them through."""
from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient

from scripts.publish_agent import PublishError, build_package, publish
from shared.storage import AZURITE_ACCOUNT, AZURITE_KEY
from tests.loopback import serve

MESSAGES = {
    "AuthorizationPermissionMismatch":
        "This request is not authorized to perform this operation using this permission.",
    "AuthorizationFailure": "This request is not authorized to perform this operation.",
    "AuthenticationFailed": "Server failed to authenticate the request. Make sure the value of "
                            "Authorization header is formed correctly including the signature.",
}


@dataclass
class Gate:
    """Refuses the next `refusals` writes with `code`, then forwards everything to Azurite."""

    upstream_port: int
    port: int = 0  # where the gate listens
    code: str = "AuthorizationPermissionMismatch"
    refusals: int = 0
    refused: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(gate: Gate) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _refuse(self) -> None:
            request_id = str(uuid.uuid4())
            body = ('<?xml version="1.0" encoding="utf-8"?><Error>'
                    f"<Code>{gate.code}</Code><Message>{MESSAGES[gate.code]}\n"
                    f"RequestId:{request_id}\nTime:2026-01-01T00:00:00.0000000Z</Message>"
                    "</Error>").encode()
            self.send_response(403, MESSAGES[gate.code])
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-ms-request-id", request_id)
            self.send_header("x-ms-version", self.headers.get("x-ms-version", "2025-01-05"))
            self.send_header("x-ms-error-code", gate.code)
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with gate.lock:
                refuse = self.command == "PUT" and gate.refusals > 0
                if refuse:
                    gate.refusals -= 1
                    gate.refused.append(f"{self.command} {self.path}")
                else:
                    gate.forwarded.append(f"{self.command} {self.path}")
            if refuse:
                return self._refuse()
            upstream = http.client.HTTPConnection("127.0.0.1", gate.upstream_port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            upstream.close()

        do_GET = do_PUT = do_HEAD = do_DELETE = _handle  # noqa: N815 - http.server naming

    return Handler


@pytest.fixture()
def gate(azurite) -> Iterator[Gate]:
    state = Gate(upstream_port=azurite.blob_port)
    with serve(_handler(state)) as state.port:
        yield state


def _container(port: int, name: str):  # noqa: ANN202 - ContainerClient
    conn = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};")
    # No SDK retries of their own: each refusal reaches the code under test once.
    service = BlobServiceClient.from_connection_string(conn, retry_total=0)
    return service.get_container_client(name)


@pytest.mark.parametrize("code", ["AuthorizationPermissionMismatch", "AuthorizationFailure"])
def test_publishing_waits_until_the_role_takes_effect(gate: Gate, azurite, code: str) -> None:
    gate.code, gate.refusals = code, 3
    name = f"pkg-{uuid.uuid4().hex[:8]}"
    package, version = build_package(version="9.9.9+rbac")
    release = publish(_container(gate.port, name), package, version, rbac_wait_seconds=60,
                      first_pause=0.01)
    assert len(gate.refused) == 3 and gate.refusals == 0
    # What Azurite holds (read past the gate): both packages and the release that names one.
    direct = _container(azurite.blob_port, name)
    stored = json.loads(direct.download_blob("release.json").readall())
    assert stored == release and stored["version"] == "9.9.9+rbac"
    assert direct.download_blob(stored["blob"]).readall() == package
    assert direct.download_blob("vmpool-agent.tar.gz").readall() == package


def test_publishing_gives_up_after_the_wait_with_a_clear_message(gate: Gate) -> None:
    gate.refusals = 10_000
    package, version = build_package(version="9.9.9+never")
    with pytest.raises(PublishError) as caught:
        publish(_container(gate.port, f"pkg-{uuid.uuid4().hex[:8]}"), package, version,
                rbac_wait_seconds=0.3, first_pause=0.05)
    text = str(caught.value)
    assert "AuthorizationPermissionMismatch" in text
    assert "Storage Blob Data Contributor" in text and "after 0.3s" in text
    assert len(gate.refused) >= 2  # it did try again before giving up
    assert not any(line.startswith("PUT") for line in gate.forwarded)


def test_other_refusals_are_not_waited_on(gate: Gate) -> None:
    """A 403 for a wrong signature or key will not heal by waiting: it fails at once."""
    gate.code, gate.refusals = "AuthenticationFailed", 5
    package, version = build_package(version="9.9.9+bad")
    with pytest.raises(HttpResponseError) as caught:
        publish(_container(gate.port, f"pkg-{uuid.uuid4().hex[:8]}"), package, version,
                rbac_wait_seconds=60, first_pause=0.01)
    assert not isinstance(caught.value, PublishError)
    assert caught.value.status_code == 403
    assert len(gate.refused) == 1
