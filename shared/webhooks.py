"""Webhooks: on a final state, POST a signed JSON summary to the caller's `callbackUrl`.

Safety first, because the app sends requests to addresses callers choose (SSRF):
- only `https` URLs, without user info, at most 2000 characters;
- the host is resolved and every address it resolves to must be public: loopback, private,
  link-local (the cloud metadata endpoint), multicast, reserved and unspecified addresses are
  refused. `WEBHOOK_ALLOW_HOSTS` (host names, addresses or CIDR ranges) lifts both rules for
  the hosts it names, for local use;
- the URL is checked when the work is submitted (a clear 400, nothing started) and again just
  before each attempt (DNS may have changed), and the attempt connects to the address that
  check approved (TLS still verified against the host name), so a name that re-resolves to a
  private address between the check and the connection (DNS rebinding) gains nothing;
  redirects are never followed.

Each delivery carries `X-VmPool-Signature: t=<unix seconds>,v1=<hex>`, where v1 is
HMAC-SHA256 with `WEBHOOK_SIGNING_KEY` over `<t>.<body>`; `verify_signature` is the recipe
that docs/webhooks.md documents for receivers. Deliveries are made by an activity that an
orchestration calls with durable backoff between attempts; every attempt is a row in
`tblhook` (PartitionKey = the job, run or change id), shown on the resource.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from azure.data.tables import TableClient
from requests.adapters import HTTPAdapter

from shared.api import bad_request

SIGNATURE_HEADER = "X-VmPool-Signature"
EVENT_HEADER = "X-VmPool-Event"
DELIVERY_HEADER = "X-VmPool-Delivery"
MAX_URL = 2000
TIMEOUT_S = 10.0
SIGNATURE_TOLERANCE_S = 300


class UnsafeUrl(ValueError):
    """A callback URL the app will not call."""


@dataclass(frozen=True)
class WebhookPolicy:
    """What the settings allow."""

    signing_key: str
    allow_hosts: tuple[str, ...] = ()
    max_attempts: int = 5
    backoff_s: float = 10.0
    # host, port -> addresses; the system resolver unless a test gives its own
    resolve: Callable[[str, int], list[str]] | None = None

    def _allowed(self, host: str, addresses: list[str]) -> bool:
        for entry in self.allow_hosts:
            if entry.lower() == host.lower():
                return True
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                continue
            if addresses and all(ipaddress.ip_address(a) in network for a in addresses):
                return True
        return False

    def check(self, url: str) -> str:
        """The URL if the app may call it; `UnsafeUrl` naming the reason otherwise."""
        return self.target(url)[0]

    def target(self, url: str) -> tuple[str, list[str]]:
        """The URL and the addresses it was approved for; `UnsafeUrl` otherwise."""
        if not isinstance(url, str) or not url or len(url) > MAX_URL:
            raise UnsafeUrl(f"must be a URL of at most {MAX_URL} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UnsafeUrl(f"is not a valid URL: {exc}") from None
        host = parts.hostname or ""
        if parts.scheme not in ("https", "http") or not host:
            raise UnsafeUrl("must be an https URL with a host")
        if parts.username or parts.password:
            raise UnsafeUrl("must not carry user name or password")
        addresses = _literal(host) or (self.resolve or _resolve)(
            host, port or (443 if parts.scheme == "https" else 80))
        if not addresses:
            raise UnsafeUrl(f"host {host!r} does not resolve")
        allowed = self._allowed(host, addresses)
        if parts.scheme != "https" and not allowed:
            raise UnsafeUrl("must use https (http only for hosts in WEBHOOK_ALLOW_HOSTS)")
        if not allowed:
            for address in addresses:
                if not _public(ipaddress.ip_address(address)):
                    raise UnsafeUrl(f"resolves to {address}, a private, loopback or reserved "
                                    "address")
        return url, addresses


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # `is_global` alone lets multicast through on some Python versions.
    return address.is_global and not (address.is_multicast or address.is_reserved
                                      or address.is_unspecified or address.is_loopback
                                      or address.is_link_local)


def _literal(host: str) -> list[str]:
    """[the address] when the host is an IP literal (an IPv4-mapped one as its IPv4)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return []
    return [str(getattr(address, "ipv4_mapped", None) or address)]


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"host {host!r} does not resolve: {exc}") from None
    # An IPv4-mapped IPv6 address is judged as the IPv4 address it carries.
    out = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        mapped = getattr(address, "ipv4_mapped", None)
        out.append(str(mapped or address))
    return sorted(set(out))


def callback_url(policy: WebhookPolicy, data: dict[str, Any]) -> str | None:
    """The request's `callbackUrl`, checked; a clear 400 before anything starts."""
    url = data.get("callbackUrl")
    if url is None:
        return None
    if not policy.signing_key:
        raise bad_request("field 'callbackUrl': webhooks are off (WEBHOOK_SIGNING_KEY is not "
                          "set)", "InvalidCallbackUrl")
    try:
        return policy.check(url)
    except UnsafeUrl as exc:
        raise bad_request(f"field 'callbackUrl' {exc}", "InvalidCallbackUrl") from None


def signature(key: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify_signature(header: str, body: bytes, key: str,
                     tolerance_s: int = SIGNATURE_TOLERANCE_S, now: float | None = None) -> bool:
    """The receiver's check, as docs/webhooks.md gives it: the HMAC matches and is recent."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > tolerance_s:
        return False
    expected = hmac.new(key.encode(), f"{timestamp}.".encode() + body,
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


def webhook_input(policy: WebhookPolicy, url: str | None) -> dict[str, Any] | None:
    """What an orchestration needs to deliver, fixed when it starts."""
    if not url:
        return None
    return {"url": url, "maxAttempts": policy.max_attempts, "backoffS": policy.backoff_s}


class Deliveries:
    """Attempts (`tblhook`): one row per attempt, under the resource's id."""

    def __init__(self, table: TableClient) -> None:
        self.table = table

    def record(self, resource_id: str, delivery_id: str, attempt: int,
               row: dict[str, Any]) -> None:
        self.table.upsert_entity({"PartitionKey": resource_id,
                                  "RowKey": f"{delivery_id}-{attempt:03d}",
                                  "deliveryId": delivery_id, "attempt": attempt, **row})

    def for_resource(self, resource_id: str) -> list[dict[str, Any]]:
        rows = self.table.query_entities("PartitionKey eq @id", parameters={"id": resource_id})
        out = [{"deliveryId": r["deliveryId"], "attempt": r["attempt"], "event": r["event"],
                "url": r["url"], "at": r["at"].isoformat(), "status": r.get("status") or None,
                "error": r.get("error") or None, "delivered": bool(r.get("delivered")),
                "durationMs": r.get("durationMs", 0)} for r in rows]
        return sorted(out, key=lambda d: (d["at"], d["attempt"]))


class _PinnedAdapter(HTTPAdapter):
    """Sends to one approved address instead of resolving the host again; the Host header, SNI
    and certificate check still use the URL's host name."""

    def __init__(self, address: str) -> None:
        self.address = ipaddress.ip_address(address)
        super().__init__(max_retries=0)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        pinned = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        if parts.port:
            pinned += f":{parts.port}"
        request.headers["Host"] = parts.netloc
        request.url = urlunsplit(parts._replace(netloc=pinned))
        if parts.scheme == "https":
            self.poolmanager.connection_pool_kw.update(server_hostname=parts.hostname,
                                                      assert_hostname=parts.hostname)
        return super().send(request, **kwargs)


def _pinned_session(address: str) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment: the address is the approved one
    adapter = _PinnedAdapter(address)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def deliver(policy: WebhookPolicy, deliveries: Deliveries,
            request: dict[str, Any]) -> dict[str, Any]:
    """One attempt; recorded whatever happens. {"delivered", "retry"}: retry is False when
    another attempt cannot help (the URL became unsafe, or the receiver answered 4xx)."""
    resource_id, event, attempt = request["resourceId"], request["event"], request["attempt"]
    delivery_id = request["deliveryId"]
    body = json.dumps({"event": event, "deliveryId": delivery_id, "attempt": attempt,
                       "resource": request["resource"]}, default=str).encode()
    row: dict[str, Any] = {"event": event, "url": request["url"][:MAX_URL],
                           "at": datetime.now(timezone.utc), "delivered": False}
    started = time.monotonic()
    retry = True
    try:
        # Again: what the host resolves to may have changed; connect to what was approved.
        url, addresses = policy.target(request["url"])
        stamp = int(time.time())
        address = min(addresses, key=lambda a: (ipaddress.ip_address(a).version, a))
        with _pinned_session(address) as session:
            response = session.post(
                url, data=body, timeout=TIMEOUT_S, allow_redirects=False,
                headers={"Content-Type": "application/json", EVENT_HEADER: event,
                         DELIVERY_HEADER: delivery_id,
                         SIGNATURE_HEADER: signature(policy.signing_key, stamp, body)})
        row["status"] = response.status_code
        row["delivered"] = 200 <= response.status_code < 300
        if 300 <= response.status_code < 400:
            row["error"] = "redirects are not followed"
            retry = False
        elif 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            retry = False
    except UnsafeUrl as exc:
        row["error"] = f"refused: {exc}"
        retry = False
    except requests.RequestException as exc:
        row["error"] = f"{exc.__class__.__name__}: {str(exc)[:500]}"
    row["durationMs"] = int((time.monotonic() - started) * 1000)
    deliveries.record(resource_id, delivery_id, attempt, row)
    return {"delivered": row["delivered"], "retry": retry and not row["delivered"]}


def new_delivery_id() -> str:
    return uuid.uuid4().hex
