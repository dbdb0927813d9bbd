"""Blob, queue and table input/output bindings, and binding expressions like `out/{name}`.

All calls here block (the sync Azure SDK); the host runs them on its I/O thread pool.
Connections resolve through `devhost.connections.HostConnection`, as the host resolves them
(connection strings and identity-based settings).
"""
from __future__ import annotations

import base64
import json
import os
import re
import threading
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, QueueServiceClient

from devhost.connections import ConnectionSettingError, HostConnection
from devhost.errors import BindingError

_EXPR = re.compile(r"\{([^{}]+)\}")


def resolve_expression(template: str, metadata: Mapping[str, Any]) -> str:
    """Fill `{name}` from trigger metadata (case-insensitive), plus `{rand-guid}`,
    `{sys.randguid}`, `{DateTime}` and `{sys.utcnow}`; JSON paths like `{a.b}` too."""
    lowered = {k.lower(): v for k, v in metadata.items()}

    def repl(match: re.Match[str]) -> str:
        key = match.group(1).strip()
        low = key.lower()
        if low in ("rand-guid", "sys.randguid"):
            return str(uuid.uuid4())
        if low in ("datetime", "sys.utcnow"):
            return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ")
        if low in lowered:
            return _text(lowered[low], key)
        head, _, rest = low.partition(".")
        value: Any = lowered.get(head)
        for part in rest.split(".") if rest else ():
            value = {k.lower(): v for k, v in value.items()}.get(part) if isinstance(
                value, dict) else None
        if rest and value is not None:
            return _text(value, key)
        raise BindingError(f"binding expression {{{key}}} has no value in this invocation")

    return _EXPR.sub(repl, template)


def _text(value: Any, key: str) -> str:
    if isinstance(value, (dict, list)):
        raise BindingError(f"binding expression {{{key}}} is not a single value")
    return str(value)


def split_blob_path(path: str) -> tuple[str, str]:
    """`container/name/with/slashes` -> (container, name)."""
    container, _, name = path.strip("/").partition("/")
    if not container or not name:
        raise BindingError(f"blob path {path!r} must be container/blob")
    return container, name


def jsonable(value: Any) -> Any:
    """Entity values and datetimes as plain JSON values."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
        return jsonable(value.value)
    return value


class StorageBindings:
    """Storage clients per connection name, created once and shared across invocations."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env
        self._lock = threading.Lock()
        self._connections: dict[str, HostConnection] = {}
        self._blob: dict[str, BlobServiceClient] = {}
        self._queue: dict[str, QueueServiceClient] = {}
        self._created_queues: set[tuple[str, str]] = set()

    def connection(self, name: str | None) -> HostConnection:
        key = name or "AzureWebJobsStorage"
        with self._lock:
            if key not in self._connections:
                try:
                    self._connections[key] = HostConnection.resolve(
                        key, os.environ if self._env is None else self._env)
                except ConnectionSettingError as exc:
                    raise BindingError(f"connection {key!r}: {exc}") from None
            return self._connections[key]

    def blob_service(self, name: str | None) -> BlobServiceClient:
        conn = self.connection(name)
        with self._lock:
            if conn.name not in self._blob:
                self._blob[conn.name] = conn.blob_service()
            return self._blob[conn.name]

    def queue_service(self, name: str | None) -> QueueServiceClient:
        conn = self.connection(name)
        with self._lock:
            if conn.name not in self._queue:
                self._queue[conn.name] = conn.queue_service()
            return self._queue[conn.name]

    def queue_account(self, connection: str | None) -> str:
        """Names the storage account behind a connection's queues (its queue endpoint), so
        two connection settings for one account name the same queues."""
        try:
            return str(self.queue_service(connection).url).rstrip("/").lower()
        except BindingError:  # the listener reports the setting when it polls
            return f"setting:{connection or 'AzureWebJobsStorage'}"

    def raw_queue(self, connection: str | None, queue: str) -> QueueClient:
        """A queue client without encode/decode policies: message text as stored."""
        return self.queue_service(connection).get_queue_client(queue)

    # --- blobs ----------------------------------------------------------------------------

    def read_blob(self, connection: str | None, path: str) -> tuple[bytes, dict[str, Any]] | None:
        """Content and properties of `container/name`, or None when it does not exist."""
        container, name = split_blob_path(path)
        client = self.blob_service(connection).get_blob_client(container, name)
        try:
            downloader = client.download_blob()
            data = downloader.readall()
        except ResourceNotFoundError:
            return None
        return data, blob_properties(downloader.properties, client.url)

    def write_blob(self, connection: str | None, path: str, data: bytes) -> None:
        container, name = split_blob_path(path)
        service = self.blob_service(connection)
        try:
            service.create_container(container)
        except ResourceExistsError:
            pass
        service.get_blob_client(container, name).upload_blob(data, overwrite=True)

    # --- queues ---------------------------------------------------------------------------

    def ensure_queue(self, connection: str | None, queue: str) -> None:
        key = (self.connection(connection).name, queue)
        if key in self._created_queues:
            return
        client = self.raw_queue(connection, queue)
        try:
            client.create_queue()
        except ResourceExistsError:
            pass
        self._created_queues.add(key)

    def send_messages(self, connection: str | None, queue: str, bodies: Iterable[str]) -> None:
        """Send base64 messages, creating the queue on first use (as the host does)."""
        self.ensure_queue(connection, queue)
        client = self.connection(connection).queue(queue)
        for body in bodies:
            client.send_message(body)

    # --- tables ---------------------------------------------------------------------------

    def read_table(self, connection: str | None, binding: Mapping[str, Any],
                   metadata: Mapping[str, Any]) -> str | None:
        """The table input binding, always a JSON array as the host gives it to
        out-of-process workers: the one entity `partitionKey` + `rowKey` name (or none), or
        the entities of a query (`partitionKey`, `filter`, `take`)."""
        table = resolve_expression(str(binding["tableName"]), metadata)
        client = self.connection(connection).table_service().get_table_client(table)
        pk = binding.get("partitionKey")
        rk = binding.get("rowKey")
        pk = resolve_expression(str(pk), metadata) if pk is not None else None
        rk = resolve_expression(str(rk), metadata) if rk is not None else None
        try:
            if pk is not None and rk is not None:
                try:
                    entity = client.get_entity(pk, rk)
                except ResourceNotFoundError:
                    return "[]"
                return json.dumps([jsonable(dict(entity))])
            # As the extension builds it (`TablesExtensionConfigProvider`, JArray input):
            # `PartitionKey eq '...' and FILTER`, the filter not parenthesised, so an `or` in
            # it binds looser than the partition key.
            filters = []
            params: dict[str, Any] = {}
            if pk is not None:
                filters.append("PartitionKey eq @pk")
                params["pk"] = pk
            if binding.get("filter"):
                filters.append(resolve_expression(str(binding["filter"]), metadata))
            take = int(binding.get("take") or 0)
            query = " and ".join(filters)
            items = (client.query_entities(query, parameters=params) if query
                     else client.list_entities())
            rows = []
            for entity in items:
                rows.append(jsonable(dict(entity)))
                if take and len(rows) >= take:
                    break
            return json.dumps(rows)
        except ResourceNotFoundError:
            return "[]"

    def write_table(self, connection: str | None, binding: Mapping[str, Any],
                    metadata: Mapping[str, Any], value: Any) -> None:
        """The table output binding: insert one entity or a list of entities."""
        table = resolve_expression(str(binding["tableName"]), metadata)
        if isinstance(value, (str, bytes)):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise BindingError(f"table output {binding['name']!r}: not JSON: {exc}") from None
        entities = value if isinstance(value, list) else [value]
        service = self.connection(connection).table_service()
        try:
            service.create_table(table)
        except ResourceExistsError:
            pass
        client = service.get_table_client(table)
        for entity in entities:
            if not isinstance(entity, dict):
                raise BindingError(f"table output {binding['name']!r}: entities must be objects")
            # The entity's own keys, in any letter case, win over the binding's and are not
            # kept as properties (the extension's `CreateTableEntityFromJObject`).
            row = {k: v for k, v in entity.items() if k.lower() not in ("partitionkey", "rowkey")}
            for field_name, key in (("PartitionKey", "partitionKey"), ("RowKey", "rowKey")):
                given = next((v for k, v in entity.items() if k.lower() == key.lower()), None)
                if given is None and binding.get(key) is not None:
                    given = resolve_expression(str(binding[key]), metadata)
                if given is None:
                    raise BindingError(f"table output {binding['name']!r}: {field_name} missing")
                row[field_name] = str(given)
            client.create_entity(row)


def blob_properties(props: Any, uri: str) -> dict[str, Any]:
    """The `Properties` trigger metadata of a blob, in the host's field names."""
    settings = getattr(props, "content_settings", None)
    last = getattr(props, "last_modified", None)
    created = getattr(props, "creation_time", None)
    return {
        "Length": props.size,
        "ContentLength": props.size,
        "ETag": props.etag,
        "LastModified": last.isoformat() if last else None,
        "Created": created.isoformat() if created else None,
        "ContentType": getattr(settings, "content_type", None),
        "ContentMD5": (base64.b64encode(bytes(settings.content_md5)).decode()
                       if settings is not None and getattr(settings, "content_md5", None)
                       else None),
        "BlobType": str(getattr(props, "blob_type", "BlockBlob")).split(".")[-1],
        "Metadata": dict(props.metadata or {}),
        "Uri": uri,
    }
