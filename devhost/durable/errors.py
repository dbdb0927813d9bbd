"""Exception types of the durable engine; each maps to one HTTP status in the client API."""
from __future__ import annotations

from devhost.errors import DevHostError


class DurableError(DevHostError):
    """Base of every error the durable engine raises on purpose."""

    status = 500


class InvalidRequestError(DurableError):
    """Malformed input: a bad instance id, event name, query value or JSON body."""

    status = 400


class UnknownFunctionError(DurableError):
    """No orchestrator (or activity) of that name is registered in the app."""

    status = 400


class InstanceNotFoundError(DurableError):
    """No instance with that id exists in the task hub."""

    status = 404


class InstanceGoneError(DurableError):
    """The instance already finished, so it cannot take events or commands."""

    status = 410


class InstanceConflictError(DurableError):
    """The operation conflicts with the instance's state (e.g. an id that is still running)."""

    status = 409


class PayloadTooLargeError(DurableError):
    """A request body is larger than the engine accepts."""

    status = 413


class NoRouteError(DurableError):
    """No durable API route for this path and method (the real API answers a bare 404)."""

    status = 404


class NotSupportedError(DurableError):
    """A Durable Functions feature that devhost does not implement."""

    status = 501


class HubNameError(DurableError, ValueError):
    """The task hub name breaks the Durable Functions naming rule."""


class EngineStoppingError(DurableError):
    """The engine stopped before it could record the request; nothing of it was kept."""

    status = 503
