"""Blob trigger and table binding conformance: what the real host and worker hand the function.

Upstream behaviour pinned here:
- Functions docs, "Azure Blob storage trigger" (blob name patterns, metadata): in
  `container/reports/{name}.csv` the literal text filters blobs and `{name}` binds the rest of
  the name for other bindings; the trigger metadata are `BlobTrigger`, `Uri`, `Properties`,
  `Metadata`, which azure-functions `blob.py` `BlobConverter.decode` turns into
  `InputStream.name`, `.uri`, `.length` (`Properties.ContentLength`/`Length`),
  `.blob_properties` and `.metadata`.
- azure-sdk-for-net `Microsoft.Azure.WebJobs.Extensions.Tables`
  `TablesExtensionConfigProvider.cs`: table input as a JSON array queries
  `PartitionKey eq '<partitionKey>' and <filter>` (the filter not parenthesised) and stops after
  `take` entities; table output takes the entity's own `PartitionKey`/`RowKey` in any letter
  case over the binding's (`CreateTableEntityFromJObject`), and `TableEntityWriter.cs` adds
  new entities (`TableTransactionActionType.Add`), so an existing row fails the invocation.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, TableServiceClient
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings

from devhost.testing import ThreadedHost, running_host


@pytest.fixture()
def storage_env(host_env: dict[str, str], suffix: str) -> dict[str, str]:
    conn = host_env["AzureWebJobsStorage"]
    service = BlobServiceClient.from_connection_string(conn)
    for name in (f"in-{suffix}", f"out-{suffix}"):
        service.create_container(name)
    table = TableServiceClient.from_connection_string(conn).create_table(f"conf{suffix}")
    for part, row, n in [("p", "r1", 1), ("p", "r2", 2), ("p", "r3", 3), ("p", "r4", 4),
                         ("q", "r9", 9)]:
        table.create_entity({"PartitionKey": part, "RowKey": row, "n": n})
    return {**host_env, "IN_CONTAINER": f"in-{suffix}", "OUT_CONTAINER": f"out-{suffix}",
            "TABLE": f"conf{suffix}"}


@pytest.fixture()
def storage_host(apps: Path, storage_env: dict[str, str]) -> Iterator[ThreadedHost]:
    with running_host(apps / "storage_app", storage_env) as threaded:
        yield threaded


def container(env: dict[str, str], key: str) -> ContainerClient:
    return BlobServiceClient.from_connection_string(
        env["AzureWebJobsStorage"]).get_container_client(env[key])


def table(env: dict[str, str]) -> TableClient:
    return TableClient.from_connection_string(env["AzureWebJobsStorage"], env["TABLE"])


def test_blob_trigger_pattern_binds_name_and_hands_over_metadata(
        apps: Path, storage_env: dict[str, str], eventually: Callable[..., Any],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="devhost")
    incoming = container(storage_env, "IN_CONTAINER")
    incoming.upload_blob("reports/q1.txt", b"not a csv")  # the pattern's `.csv` filters it out
    incoming.upload_blob("reports/q1.csv", b"a,b\n1,2\n", metadata={"owner": "ana"},
                         content_settings=ContentSettings(content_type="text/csv"))
    out = container(storage_env, "OUT_CONTAINER")

    def copy() -> dict[str, Any] | None:
        try:
            return json.loads(out.download_blob("q1.json").readall())
        except ResourceNotFoundError:
            return None

    with running_host(apps / "storage_app", storage_env):
        got = eventually(copy, what="the csv blob handled")
    assert got == {"name": f"{storage_env['IN_CONTAINER']}/reports/q1.csv",
                   "uri": incoming.get_blob_client("reports/q1.csv").url, "length": 8,
                   "metadata": {"owner": "ana"}, "content_type": "text/csv",
                   "data": "a,b\n1,2\n"}
    # The scans handle blobs oldest first, so q1.txt was seen before q1.csv fired; only the
    # blob matching the pattern ran the function.
    assert caplog.text.count("Executing 'Functions.report'") == 1
    assert [b.name for b in out.list_blobs()] == ["q1.json"]


def test_table_input_filters_within_the_partition_and_takes(storage_host: ThreadedHost) -> None:
    rows = requests.get(f"{storage_host.host.base_url}/api/rows/p", timeout=30).json()
    assert [(r["PartitionKey"], r["RowKey"], r["n"]) for r in rows] == [("p", "r2", 2),
                                                                        ("p", "r3", 3)]


def test_table_input_filter_is_not_parenthesised(storage_host: ThreadedHost) -> None:
    # `PartitionKey eq 'p' and n eq 2 or n eq 9` reads as `(... and n eq 2) or n eq 9`.
    rows = requests.get(f"{storage_host.host.base_url}/api/either/p", timeout=30).json()
    assert sorted((r["PartitionKey"], r["RowKey"]) for r in rows) == [("p", "r2"), ("q", "r9")]


def test_table_output_keys_and_conflicts(storage_host: ThreadedHost,
                                         storage_env: dict[str, str]) -> None:
    base = f"{storage_host.host.base_url}/api/rows"
    assert requests.post(f"{base}/new/a", data='{"n": 7}', timeout=30).text == "stored"
    assert requests.post(f"{base}/new/b", timeout=30,
                         data='{"partitionKey": "own", "ROWKEY": "k", "n": 8}').text == "stored"
    several = '[{"RowKey": "l1", "n": 1}, {"RowKey": "l2", "n": 2}]'
    assert requests.post(f"{base}/new/c", data=several, timeout=30).text == "stored"
    rows = table(storage_env)
    assert dict(rows.get_entity("new", "a")) == {"PartitionKey": "new", "RowKey": "a", "n": 7}
    assert dict(rows.get_entity("own", "k")) == {"PartitionKey": "own", "RowKey": "k", "n": 8}
    assert [e["RowKey"] for e in rows.query_entities("PartitionKey eq 'new'")] == [
        "a", "l1", "l2"]
    # An existing row: the host's insert conflicts, the invocation fails, the row stays.
    assert requests.post(f"{base}/new/a", data='{"n": 70}', timeout=30).status_code == 500
    assert rows.get_entity("new", "a")["n"] == 7
