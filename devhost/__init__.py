"""A local stand-in for the Azure Functions host that runs Python v2 function apps.

`python -m devhost start --script-root DIR` behaves like `func start`; `DevHost` is the
programmatic form used by tests. See docs/devhost.md.
"""
from devhost.errors import (
    BindingError,
    ConfigError,
    DevHostError,
    IndexingError,
    InvocationError,
    RouteTemplateError,
)
from devhost.host import DevHost

__all__ = ["BindingError", "ConfigError", "DevHost", "DevHostError", "IndexingError",
           "InvocationError", "RouteTemplateError"]
