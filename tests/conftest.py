"""Shared fixtures: a private Azurite for the whole test session, and settings pointing at it."""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from shared.settings import Settings
from shared.storage import StorageConnection
from tools.azurite import Azurite
from tools.storage_proxy import StorageProxy, storage_proxy


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite on free ports in a temporary folder; stopped when the session ends."""
    instance = Azurite.start(tmp_path_factory.mktemp("azurite"))
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture()
def proxy(azurite: Azurite) -> Iterator[StorageProxy]:
    """A recording proxy in front of Azurite: what a client built on it asks storage for."""
    with storage_proxy(azurite.blob_port, azurite.queue_port, azurite.table_port) as instance:
        yield instance


@pytest.fixture()
def storage_env(azurite: Azurite) -> dict[str, str]:
    """App settings for one test: Azurite connection and names unique to the test."""
    suffix = uuid.uuid4().hex[:8]
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "CALLBACK_SIGNING_KEY": "test-key",
        "DATA_CONTAINER": f"data-{suffix}",
        "RESULTS_CONTAINER": f"results-{suffix}",
        "ARCHIVE_CONTAINER": f"archive-{suffix}",
        "FAILED_CONTAINER": f"failed-{suffix}",
        "WORK_QUEUE": f"work-{suffix}",
        "VM_TABLE": f"tblvm{suffix}",
        "LOG_TABLE": f"tbllog{suffix}",
        "RESULT_TABLE": f"tblresult{suffix}",
        "RUN_TABLE": f"tblrun{suffix}",
        "CHANGE_TABLE": f"tblchange{suffix}",
        "CLAIM_TABLE": f"tblclaim{suffix}",
        "IDEMPOTENCY_TABLE": f"tblidem{suffix}",
        "WEBHOOK_TABLE": f"tblhook{suffix}",
    }


@pytest.fixture()
def settings(storage_env: dict[str, str]) -> Settings:
    return Settings.from_env(storage_env)


@pytest.fixture()
def connection(storage_env: dict[str, str]) -> StorageConnection:
    return StorageConnection.from_env("AzureWebJobsStorage", storage_env)
