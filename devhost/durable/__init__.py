"""Durable Functions for devhost: orchestrations, activities and the durable client HTTP API.

`DurableEngine` (engine.py) replays orchestrator functions over their history the way the
Durable Task extension does, keeps state in Azure Storage (Azurite locally) and serves the
`/runtime/webhooks/durabletask/` API the durable client SDK calls. See docs/devhost-durable.md.
"""
from devhost.durable.engine import DurableEngine
from devhost.durable.errors import (
    DurableError,
    InstanceConflictError,
    InstanceGoneError,
    InstanceNotFoundError,
    InvalidRequestError,
    UnknownFunctionError,
)

__all__ = ["DurableEngine", "DurableError", "InstanceConflictError", "InstanceGoneError",
           "InstanceNotFoundError", "InvalidRequestError", "UnknownFunctionError"]
