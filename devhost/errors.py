"""Exception types of the local host, so callers can tell configuration from runtime faults."""
from __future__ import annotations


class DevHostError(Exception):
    """Base class of every error the local host raises on purpose."""


class ConfigError(DevHostError):
    """host.json, local.settings.json or an app setting is missing or malformed."""


class IndexingError(DevHostError):
    """The function app could not be imported or its functions are inconsistent."""


class RouteTemplateError(DevHostError):
    """An HTTP route template cannot be parsed."""


class BindingError(DevHostError):
    """A binding expression or binding value cannot be resolved for one invocation."""


class InvocationError(DevHostError):
    """A function invocation failed (the user code raised or timed out)."""
