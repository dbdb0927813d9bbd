"""Durable state in Azure Storage (Azurite locally), namespaced by the task hub name.

- table `{hub}Instances`: one row per instance (name, version, status, input, output,
  custom status, created/updated times, parent) for status queries and listing;
- the state document of each instance: the history of the current execution and the
  engine's bookkeeping (the source of truth from which a restart resumes), kept in the
  instance's row beside its summary (one write per episode, row and document together), or,
  when too big for a row, in container `{hub}-durable` under `state/` (which also holds the
  documents of entities and large inbox payloads under `inbox/`);
- table `{hub}Inbox`: messages for an instance not yet applied to its history (external
  events, terminate/suspend/resume, sub-orchestration outcomes). A message is deleted only
  after the history that applied it has been saved.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any
from urllib.parse import quote

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableServiceClient
from azure.storage.blob.aio import BlobServiceClient

from devhost.connections import transport_options
from devhost.durable.errors import HubNameError

_HUB_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,44}$")
# Table string properties hold at most 64 KiB (32K UTF-16 units); larger values live in blobs.
_MAX_CELL = 30_000
ROW_KEY = "state"
# Entities are at most 1 MiB (strings count two bytes a character): a document up to this size
# goes in the row, in cells of `_MAX_CELL`, beside summary cells of up to 3 x `_MAX_CELL`.
_DOC_IN_ROW = 10 * _MAX_CELL
_SUMMARY = ("PartitionKey", "RowKey", "Name", "Version", "RuntimeStatus", "ExecutionId",
            "CreatedTime", "LastUpdatedTime", "ParentInstanceId",
            *(f"{field}{suffix}" for field in ("Input", "Output", "CustomStatus")
              for suffix in ("", "InDoc", "IsNull")))


def check_hub_name(hub: str) -> str:
    if not isinstance(hub, str) or not _HUB_RE.match(hub):
        raise HubNameError(
            f"task hub name {hub!r} is invalid: 3-45 letters and digits, starting with a letter")
    return hub


def _blob_key(instance_id: str) -> str:
    return quote(instance_id, safe="")


class DurableStore:
    """Async access to the instances table, the state documents and the inbox."""

    def __init__(self, connection_string: str, hub_name: str) -> None:
        self.hub = check_hub_name(hub_name)
        self._connection_string = connection_string
        # Validate the connection string now; clients are (re)made by open().
        TableServiceClient.from_connection_string(connection_string)

    async def open(self) -> None:
        """Make the clients; create the tables and the container if they are missing."""
        self._tables = TableServiceClient.from_connection_string(
            self._connection_string, **transport_options(aio=True))
        self._blobs = BlobServiceClient.from_connection_string(
            self._connection_string, **transport_options(aio=True))
        self.instances = self._tables.get_table_client(f"{self.hub}Instances")
        self.inbox = self._tables.get_table_client(f"{self.hub}Inbox")
        self.container = self._blobs.get_container_client(f"{self.hub.lower()}-durable")
        for table in (self.instances, self.inbox):
            try:
                await table.create_table()
            except ResourceExistsError:
                pass
        try:
            await self.container.create_container()
        except ResourceExistsError:
            pass

    async def close(self) -> None:
        for client in (self.instances, self.inbox, self.container, self._tables, self._blobs):
            await client.close()

    # --- state documents ------------------------------------------------------------------

    async def load_doc(self, instance_id: str) -> dict[str, Any] | None:
        if instance_id.startswith("@"):  # an entity: its document is a blob, it has no row
            return await self._load_blob_doc(instance_id)
        return await self.doc_of_row(await self.get_row(instance_id), instance_id)

    async def doc_of_row(self, row: dict[str, Any] | None, instance_id: str
                         ) -> dict[str, Any] | None:
        """The state document of an instance whose row was just read (None: no row)."""
        if row is not None and row.get("DocCells"):
            return json.loads("".join(row[f"Doc{i}"] for i in range(int(row["DocCells"]))))
        return await self._load_blob_doc(instance_id)  # too big for the row, or no row

    async def _load_blob_doc(self, instance_id: str) -> dict[str, Any] | None:
        try:
            stream = await self.container.download_blob(f"state/{_blob_key(instance_id)}.json")
        except ResourceNotFoundError:
            return None
        return json.loads(await stream.readall())

    async def save(self, doc: dict[str, Any]) -> None:
        """Write an instance's state document and its summary row, in one write when the
        document fits in the row (a bigger one goes to its blob first)."""
        text = json.dumps(doc, separators=(",", ":"))
        cells: dict[str, Any] = {}
        if len(text) <= _DOC_IN_ROW:
            chunks = [text[i:i + _MAX_CELL] for i in range(0, len(text), _MAX_CELL)]
            cells = {"DocCells": len(chunks), **{f"Doc{i}": c for i, c in enumerate(chunks)}}
        else:
            await self.save_doc(doc)
            cells = {"DocCells": 0}
        await self.save_row(doc, cells)

    async def save_doc(self, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, separators=(",", ":")).encode()
        await self.container.upload_blob(f"state/{_blob_key(doc['instanceId'])}.json", data,
                                         overwrite=True)

    async def delete_doc(self, instance_id: str) -> None:
        try:
            await self.container.delete_blob(f"state/{_blob_key(instance_id)}.json")
        except ResourceNotFoundError:
            pass

    # --- instance rows --------------------------------------------------------------------

    async def save_row(self, doc: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        """Write the queryable summary of an instance from its state document (`save`
        writes the document with it)."""
        row: dict[str, Any] = {
            "PartitionKey": doc["instanceId"], "RowKey": ROW_KEY,
            "Name": doc["name"], "Version": doc.get("version") or "",
            "RuntimeStatus": doc["status"], "ExecutionId": doc["executionId"],
            "CreatedTime": doc["createdTime"], "LastUpdatedTime": doc["lastUpdatedTime"],
            "ParentInstanceId": (doc.get("parent") or {}).get("instanceId") or "",
        }
        for field in ("input", "output", "customStatus"):
            value = doc.get(field)
            text = "" if value is None else value
            key = field[0].upper() + field[1:]
            if len(text) > _MAX_CELL:
                row[key], row[f"{key}InDoc"] = "", True
            else:
                row[key], row[f"{key}InDoc"] = text, False
            row[f"{key}IsNull"] = value is None
        row.update(extra or {})
        await self.instances.upsert_entity(row, mode=UpdateMode.REPLACE)

    async def get_row(self, instance_id: str) -> dict[str, Any] | None:
        try:
            return dict(await self.instances.get_entity(instance_id, ROW_KEY))
        except ResourceNotFoundError:
            return None

    async def list_rows(self) -> list[dict[str, Any]]:
        """Every instance's summary (without the state documents rows may hold)."""
        return [dict(row) async for row in self.instances.list_entities(select=list(_SUMMARY))]

    async def delete_row(self, instance_id: str) -> None:
        try:
            await self.instances.delete_entity(instance_id, ROW_KEY)
        except ResourceNotFoundError:
            pass

    async def row_value(self, row: dict[str, Any], field: str) -> str | None:
        """A JSON-text field of a row (`Input`, `Output`, `CustomStatus`), from the doc if big."""
        if row.get(f"{field}IsNull"):
            return None
        if row.get(f"{field}InDoc"):
            doc = await self.load_doc(row["PartitionKey"])
            return None if doc is None else doc.get(field[0].lower() + field[1:])
        return row.get(field)

    # --- inbox ----------------------------------------------------------------------------

    async def post(self, instance_id: str, message: dict[str, Any]) -> str:
        """Store a message for an instance; returns its id (sortable by arrival)."""
        body = json.dumps(message, separators=(",", ":"))
        big = len(body) > _MAX_CELL
        # A trailing "b" marks a message whose body lives in a blob.
        msg_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{'b' if big else ''}"
        entity: dict[str, Any] = {"PartitionKey": instance_id, "RowKey": msg_id}
        if big:
            name = f"inbox/{_blob_key(instance_id)}/{msg_id}.json"
            await self.container.upload_blob(name, body.encode(), overwrite=True)
            entity["BlobName"] = name
        else:
            entity["Body"] = body
        await self.inbox.create_entity(entity)
        return msg_id

    async def messages(self, instance_id: str | None = None) -> list[tuple[str, str, dict]]:
        """Pending messages as (instance id, message id, message), oldest first."""
        if instance_id is None:
            rows = self.inbox.list_entities()
        else:
            rows = self.inbox.query_entities("PartitionKey eq @pk",
                                             parameters={"pk": instance_id})
        out = []
        async for row in rows:
            if row.get("BlobName"):
                try:
                    stream = await self.container.download_blob(row["BlobName"])
                    body = (await stream.readall()).decode()
                except ResourceNotFoundError:
                    continue
            else:
                body = row["Body"]
            out.append((row["PartitionKey"], row["RowKey"], json.loads(body)))
        out.sort(key=lambda item: item[1])
        return out

    async def delete_messages(self, instance_id: str, msg_ids: list[str]) -> None:
        for msg_id in msg_ids:
            try:
                await self.inbox.delete_entity(instance_id, msg_id)
            except ResourceNotFoundError:
                pass
            if msg_id.endswith("b"):
                try:
                    await self.container.delete_blob(
                        f"inbox/{_blob_key(instance_id)}/{msg_id}.json")
                except ResourceNotFoundError:
                    pass

    async def purge(self, instance_id: str) -> None:
        """Remove every trace of an instance: row, state document and inbox."""
        pending = [msg_id for _, msg_id, _ in await self.messages(instance_id)]
        await self.delete_messages(instance_id, pending)
        await self.delete_doc(instance_id)
        await self.delete_row(instance_id)
