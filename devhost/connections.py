"""Storage connections, resolved from app settings the way the Functions host resolves them.

A binding's `connection` (default `AzureWebJobsStorage`) names either a setting holding a
connection string (`UseDevelopmentStorage=true` is Azurite on its default ports), or a
prefix for identity-based settings (Functions docs, "Connecting to host storage with an
identity" / "Identity-based connections"): `PREFIX__blobServiceUri` (or `PREFIX__serviceUri`
for blobs), `PREFIX__queueServiceUri`, `PREFIX__tableServiceUri`, or `PREFIX__accountName`
for the public-cloud endpoints, with `PREFIX__credential=managedidentity` and an optional
`PREFIX__clientId`. Without `__credential` the developer's own sign-in is used
(`DefaultAzureCredential`), as Core Tools does.

devhost keeps its own copy of these rules so it depends on nothing of the app it runs.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import (
    QueueClient,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from devhost.errors import ConfigError

_DEV_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (published in the Azurite and Azure docs).
_DEV_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
            "KBHBeksoGMGw==")
_SERVICES = ("blob", "queue", "table")


# The real host's storage clients (.NET) read proxy and CA settings once; requests and aiohttp
# read them from the environment on every request (a sixth of devhost's CPU when busy). A CA
# bundle is read here once; a proxy or netrc setting keeps the SDK's default transport.
_PER_REQUEST_SETTINGS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "NETRC")
_CA_BUNDLE_SETTINGS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")  # requests' order


def transport_options(aio: bool = False, environ: Mapping[str, str] | None = None
                      ) -> dict[str, Any]:
    """Keyword arguments for an SDK client (sync, or `aio`) whose transport skips the
    per-request environment lookups, unless a proxy or netrc setting needs them."""
    source = os.environ if environ is None else environ
    values = {name.upper(): value for name, value in source.items() if value}
    if set(values) & set(_PER_REQUEST_SETTINGS):
        return {}
    if aio:  # aiohttp reads no CA bundle setting: only proxies and netrc are at stake
        from azure.core.pipeline.transport import AioHttpTransport  # noqa: PLC0415

        return {"transport": AioHttpTransport(use_env_settings=False)}
    bundle = next((values[name] for name in _CA_BUNDLE_SETTINGS if name in values), None)
    from azure.core.pipeline.transport import RequestsTransport  # noqa: PLC0415

    return {"transport": RequestsTransport(use_env_settings=False,
                                           connection_verify=bundle or True)}


class ConnectionSettingError(ConfigError):
    """A storage connection's settings are missing or malformed."""


def development_storage() -> str:
    """What `UseDevelopmentStorage=true` stands for: Azurite on 10000-10002."""
    endpoints = "".join(f"{kind.title()}Endpoint=http://127.0.0.1:{port}/{_DEV_ACCOUNT};"
                        for kind, port in zip(_SERVICES, (10000, 10001, 10002), strict=True))
    return (f"DefaultEndpointsProtocol=http;AccountName={_DEV_ACCOUNT};AccountKey={_DEV_KEY};"
            f"{endpoints}")


def _identity_endpoints(name: str, settings: Mapping[str, str]) -> dict[str, str]:
    def setting(suffix: str) -> str:
        return (settings.get(f"{name}__{suffix}") or "").strip()

    account = setting("accountName")
    found: dict[str, str] = {}
    for service in _SERVICES:
        uri = setting(f"{service}ServiceUri") or (setting("serviceUri") if service == "blob"
                                                  else "")
        if not uri and account:
            uri = f"https://{account}.{service}.core.windows.net"
        if not uri:
            raise ConnectionSettingError(
                f"storage connection {name!r}: no setting {name} (a connection string) and no"
                f" {name}__{service}ServiceUri or {name}__accountName")
        if not uri.lower().startswith(("http://", "https://")):
            raise ConnectionSettingError(
                f"setting {name}__{service}ServiceUri: expected an http(s) URI, got {uri!r}")
        found[service] = uri.rstrip("/")
    return found


@dataclass(frozen=True)
class HostConnection:
    """One resolved connection: a connection string, or service URIs with a credential."""

    name: str
    connection_string: str | None = None
    endpoints: Mapping[str, str] | None = None
    managed_identity: bool = False
    client_id: str | None = None

    @classmethod
    def resolve(cls, name: str, settings: Mapping[str, str]) -> HostConnection:
        raw = (settings.get(name) or "").strip()
        if raw:
            if raw.lower() == "usedevelopmentstorage=true":
                raw = development_storage()
            if "=" not in raw:
                raise ConnectionSettingError(
                    f"setting {name}: expected a storage connection string")
            return cls(name, connection_string=raw)
        credential = (settings.get(f"{name}__credential") or "").strip().lower()
        if credential not in ("", "managedidentity"):
            raise ConnectionSettingError(
                f"setting {name}__credential: only 'managedidentity' is understood,"
                f" got {credential!r}")
        return cls(name, endpoints=_identity_endpoints(name, settings),
                   managed_identity=credential == "managedidentity",
                   client_id=(settings.get(f"{name}__clientId") or "").strip() or None)

    def _credential(self) -> Any:
        from azure.identity import (  # noqa: PLC0415 - only identity connections need it
            DefaultAzureCredential,
            ManagedIdentityCredential,
        )

        if self.managed_identity:
            return ManagedIdentityCredential(client_id=self.client_id)
        return DefaultAzureCredential(managed_identity_client_id=self.client_id)

    def _client(self, cls: Any, service: str, **kwargs: Any) -> Any:
        kwargs.update(transport_options())
        if self.connection_string:
            return cls.from_connection_string(self.connection_string, **kwargs)
        assert self.endpoints is not None
        return cls(self.endpoints[service], credential=self._credential(), **kwargs)

    def blob_service(self) -> BlobServiceClient:
        return self._client(BlobServiceClient, "blob")

    def queue_service(self) -> QueueServiceClient:
        return self._client(QueueServiceClient, "queue")

    def table_service(self) -> TableServiceClient:
        return self._client(TableServiceClient, "table")

    def queue(self, queue_name: str) -> QueueClient:
        """A client for one queue whose messages are base64 text, as the queue trigger
        reads and the queue output binding writes them."""
        return self._client(QueueClient, "queue", queue_name=queue_name,
                            message_encode_policy=TextBase64EncodePolicy(),
                            message_decode_policy=TextBase64DecodePolicy())
