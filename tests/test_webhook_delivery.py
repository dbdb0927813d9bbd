"""A webhook attempt connects to the address its URL was approved for, recorded on Azurite: a name
that resolves differently at connection time (DNS rebinding) cannot steer the request."""
import ssl
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.services import Services
from shared.storage import ensure_resources
from shared.webhooks import (
    WebhookPolicy,
    _pinned_session,
    deliver,
    new_delivery_id,
    verify_signature,
)


@pytest.fixture()
def receiver() -> Iterator[tuple[int, list[dict]]]:
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"host": self.headers["Host"], "path": self.path, "body": body,
                         "signature": self.headers["X-VmPool-Signature"]})
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def _request(url: str) -> dict:
    return {"resourceId": "job-1", "event": "job.succeeded", "attempt": 1,
            "deliveryId": new_delivery_id(), "url": url, "resource": {"jobId": "job-1"}}


def test_the_attempt_goes_to_the_approved_address_with_the_original_host(
        storage_env, receiver) -> None:
    port, seen = receiver
    services = Services.from_env(storage_env)
    ensure_resources(services.settings, services.connection)
    lookups: list[str] = []

    def resolve(host: str, _port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]  # what the check approved; the system resolver knows no such name

    policy = WebhookPolicy("key", ("127.0.0.0/8",), resolve=resolve)
    url = f"http://hooks.rebind.invalid:{port}/in?x=1"
    result = deliver(policy, services.deliveries, _request(url))
    assert result == {"delivered": True, "retry": False}
    (got,) = seen
    assert got["host"] == f"hooks.rebind.invalid:{port}" and got["path"] == "/in?x=1"
    assert verify_signature(got["signature"], got["body"], "key")
    assert lookups == ["hooks.rebind.invalid"]  # resolved once, by the check
    (row,) = services.deliveries.for_resource("job-1")
    assert row["delivered"] and row["status"] == 204


def test_a_name_that_now_resolves_to_a_private_address_is_refused_and_not_called(
        storage_env, receiver) -> None:
    port, seen = receiver
    services = Services.from_env(storage_env)
    ensure_resources(services.settings, services.connection)
    policy = WebhookPolicy("key", resolve=lambda host, _port: ["127.0.0.1"])
    result = deliver(policy, services.deliveries, _request(f"https://evil.invalid:{port}/"))
    assert result == {"delivered": False, "retry": False}
    assert seen == []
    (row,) = services.deliveries.for_resource("job-1")
    assert "refused" in row["error"] and "127.0.0.1" in row["error"]


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_to_a_pinned_address_still_checks_the_certificate_against_the_name(
        tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "hooks.rebind.invalid")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            hosts.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with _pinned_session("127.0.0.1") as session:
            session.verify = str(cert)
            ok = session.post(f"https://hooks.rebind.invalid:{port}/x", data=b"{}", timeout=10)
            assert ok.status_code == 204 and hosts == [f"hooks.rebind.invalid:{port}"]
        with _pinned_session("127.0.0.1") as session:
            session.verify = str(cert)
            with pytest.raises(requests.exceptions.SSLError):  # a name the cert does not carry
                session.post(f"https://other.invalid:{port}/x", data=b"{}", timeout=10)
        assert len(hosts) == 1
    finally:
        server.shutdown()
        server.server_close()
