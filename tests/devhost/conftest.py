"""Fixtures for devhost tests: unique names, host settings on the session Azurite, polling."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tools.azurite import Azurite

T = TypeVar("T")
APPS = Path(__file__).resolve().parent / "apps"
MASTER_KEY = "test-master-key"
FUNCTION_KEY = "test-function-key"


@pytest.fixture()
def apps() -> Path:
    return APPS


@pytest.fixture()
def suffix() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture()
def host_env(azurite: Azurite, suffix: str) -> dict[str, str]:
    """Settings for one host: Azurite, fixed keys (enforced, as on Azure), a host id of its
    own, short poll intervals."""
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "DEVHOST_ENABLE_AUTH": "true",
        "DEVHOST_MASTER_KEY": MASTER_KEY,
        "DEVHOST_FUNCTION_KEY": FUNCTION_KEY,
        "DEVHOST_BLOBS_EXTENSION_KEY": "test-blobs-key",
        "AzureFunctionsWebHost__hostid": f"test-{suffix}",
        "DEVHOST_BLOB_POLL_SECONDS": "0.3",
        "DEVHOST_QUEUE_MAX_POLL_SECONDS": "0.3",
    }


@pytest.fixture()
def eventually() -> Callable[..., Any]:
    """`eventually(fn, timeout)`: call `fn` until it returns something truthy, or fail."""

    def wait(fn: Callable[[], T], timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = fn()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not reached within {timeout}s (last: {value!r})")
            time.sleep(interval)

    return wait
