"""Blob, queue and table clients built the way the Functions host reads a connection.

A connection named `CONN` (default `AzureWebJobsStorage`) is either
- a connection string in the setting `CONN` (Azurite locally: `UseDevelopmentStorage=true`), or
- identity-based: `CONN__blobServiceUri`, `CONN__queueServiceUri`, `CONN__tableServiceUri`
  (or `CONN__accountName`, from which the public-cloud URIs are derived), with
  `CONN__credential=managedidentity` and an optional `CONN__clientId` for a user-assigned
  identity. Without `__credential`, `DefaultAzureCredential` is used (developer sign-in).

Queue messages are base64 text, as the Functions queue trigger expects.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import (
    QueueClient,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from shared.settings import Settings

# Azurite's published development account; the key is public and the same everywhere.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")


class StorageConfigError(ValueError):
    """The storage connection settings are missing or inconsistent; names the setting."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"setting {name}: {message}")
        self.name = name


def azurite_connection_string(host: str = "127.0.0.1", blob_port: int = 10000,
                              queue_port: int = 10001, table_port: int = 10002) -> str:
    """The connection string of an Azurite instance on the given ports."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://{host}:{blob_port}/{AZURITE_ACCOUNT};"
        f"QueueEndpoint=http://{host}:{queue_port}/{AZURITE_ACCOUNT};"
        f"TableEndpoint=http://{host}:{table_port}/{AZURITE_ACCOUNT};"
    )


# Environment settings requests reads on every request when allowed to (proxies, ~/.netrc, CA
# bundles): a sixth of the SDK pipeline's CPU in a busy app. A CA bundle is read once here and
# given to the transport; where a proxy or netrc setting exists the clients keep the SDK's
# default transport, which honours it per request.
_PER_REQUEST_SETTINGS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "NETRC")
_CA_BUNDLE_SETTINGS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")  # requests' order of precedence


def client_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments for an SDK client: a transport that skips the per-request
    environment lookups, verifying with the environment's CA bundle if it names one, unless
    the environment sets a proxy or netrc for them to find."""
    source = os.environ if environ is None else environ
    values = {name.upper(): value for name, value in source.items() if value}
    if set(values) & set(_PER_REQUEST_SETTINGS):
        return {}
    bundle = next((values[name] for name in _CA_BUNDLE_SETTINGS if name in values), None)
    return {"transport": RequestsTransport(use_env_settings=False,
                                           connection_verify=bundle or True)}


def _credential(kind: str | None, client_id: str | None) -> Any:
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential  # noqa: PLC0415

    if kind == "managedidentity":
        return ManagedIdentityCredential(client_id=client_id)
    if client_id:
        return DefaultAzureCredential(managed_identity_client_id=client_id)
    return DefaultAzureCredential()


@dataclass(frozen=True)
class StorageConnection:
    """A resolved connection: either a connection string or three service URIs + credential."""

    name: str
    connection_string: str | None = None
    blob_uri: str | None = None
    queue_uri: str | None = None
    table_uri: str | None = None
    credential_kind: str | None = None
    client_id: str | None = None

    @classmethod
    def from_env(cls, name: str = "AzureWebJobsStorage",
                 env: Mapping[str, str] | None = None) -> StorageConnection:
        source = os.environ if env is None else env
        conn = (source.get(name) or "").strip()
        if conn:
            if conn == "UseDevelopmentStorage=true":
                conn = azurite_connection_string()
            if "=" not in conn:
                raise StorageConfigError(name, "is not a storage connection string")
            return cls(name=name, connection_string=conn)
        account = (source.get(f"{name}__accountName") or "").strip()
        uris = {}
        for service in ("blob", "queue", "table"):
            key = f"{name}__{service}ServiceUri"
            value = (source.get(key) or "").strip()
            if not value and account:
                value = f"https://{account}.{service}.core.windows.net"
            if not value:
                raise StorageConfigError(
                    key if not account else f"{name}__accountName",
                    f"is required: set {name} to a connection string, or {name}__accountName,"
                    f" or {name}__blobServiceUri/__queueServiceUri/__tableServiceUri")
            if not value.startswith(("https://", "http://")):
                raise StorageConfigError(key, f"must be an http(s) URI, got {value!r}")
            uris[service] = value.rstrip("/")
        credential = (source.get(f"{name}__credential") or "").strip().lower() or None
        if credential not in (None, "managedidentity"):
            raise StorageConfigError(f"{name}__credential",
                                     f"only 'managedidentity' is supported, got {credential!r}")
        return cls(name=name, blob_uri=uris["blob"], queue_uri=uris["queue"],
                   table_uri=uris["table"], credential_kind=credential,
                   client_id=(source.get(f"{name}__clientId") or "").strip() or None)

    def credential(self) -> Any:
        """The azure-identity credential for identity-based connections."""
        return _credential(self.credential_kind, self.client_id)

    def _options(self) -> dict[str, Any]:
        return client_options()

    def blob_service(self) -> BlobServiceClient:
        if self.connection_string:
            return BlobServiceClient.from_connection_string(self.connection_string,
                                                            **self._options())
        return BlobServiceClient(self.blob_uri, credential=self.credential(), **self._options())

    def queue_service(self) -> QueueServiceClient:
        if self.connection_string:
            return QueueServiceClient.from_connection_string(self.connection_string,
                                                             **self._options())
        return QueueServiceClient(self.queue_uri, credential=self.credential(),
                                  **self._options())

    def table_service(self) -> TableServiceClient:
        if self.connection_string:
            return TableServiceClient.from_connection_string(self.connection_string,
                                                             **self._options())
        return TableServiceClient(self.table_uri, credential=self.credential(),
                                  **self._options())

    def queue(self, queue_name: str) -> QueueClient:
        """A queue client that reads and writes base64 text, like the Functions host."""
        policies = {"message_encode_policy": TextBase64EncodePolicy(),
                    "message_decode_policy": TextBase64DecodePolicy()}
        if self.connection_string:
            return QueueClient.from_connection_string(self.connection_string, queue_name,
                                                      **policies, **self._options())
        return QueueClient(self.queue_uri, queue_name, credential=self.credential(), **policies,
                           **self._options())


def ensure_resources(settings: Settings, conn: StorageConnection) -> dict[str, list[str]]:
    """Create the containers, queues and tables the app needs; safe to call any number of times.

    Returns what was newly created, so callers can log it.
    """
    queues = conn.queue_service()
    # An existing queue answers 204 rather than 409, so look before creating.
    existing = {q.name for q in queues.list_queues()}
    return {"containers": _create_missing(conn.blob_service().create_container,
                                          settings.containers()),
            "queues": _create_missing(queues.create_queue,
                                      [n for n in settings.queues() if n not in existing]),
            "tables": _create_missing(conn.table_service().create_table, settings.tables())}


def _create_missing(create: Callable[[str], Any], names: Iterable[str]) -> list[str]:
    """Create each of `names`; returns the ones that did not exist yet."""
    created = []
    for name in names:
        try:
            create(name)
            created.append(name)
        except ResourceExistsError:
            pass
    return created
