"""Host keys and authorization levels, as the Functions host applies them to HTTP routes.

The master key opens everything (and is the only key for ADMIN routes and `/admin/*`); the
function key opens FUNCTION routes. Keys come from app settings or are generated at start.
A key arrives as `?code=` or in the `x-functions-key` header.
"""
from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

MASTER_KEY_SETTING = "DEVHOST_MASTER_KEY"
FUNCTION_KEY_SETTING = "DEVHOST_FUNCTION_KEY"
BLOBS_EXTENSION_KEY_SETTING = "DEVHOST_BLOBS_EXTENSION_KEY"

ANONYMOUS = "ANONYMOUS"
FUNCTION = "FUNCTION"
ADMIN = "ADMIN"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True)
class HostKeys:
    """The keys of one host instance; `generated` names the ones made up at start."""

    master: str
    function: str
    blobs_extension: str
    generated: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Mapping[str, str]) -> HostKeys:
        made: list[str] = []

        def pick(name: str) -> str:
            value = (settings.get(name) or "").strip()
            if value:
                return value
            made.append(name)
            return secrets.token_urlsafe(32)

        master = pick(MASTER_KEY_SETTING)
        function = pick(FUNCTION_KEY_SETTING)
        blobs = pick(BLOBS_EXTENSION_KEY_SETTING)
        return cls(master, function, blobs, tuple(made))

    @staticmethod
    def presented(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
        """The key a caller sent: the `x-functions-key` header wins over `?code=`."""
        return headers.get("x-functions-key") or query.get("code") or None

    def allows(self, level: str, key: str | None) -> bool:
        """Whether `key` opens a route of authorization `level`."""
        level = level.upper()
        if level == ANONYMOUS:
            return True
        if not key:
            return False
        if _same(key, self.master):
            return True
        if level == FUNCTION:
            return _same(key, self.function)
        return False

    def allows_blobs_webhook(self, key: str | None) -> bool:
        return bool(key) and (_same(key, self.master) or _same(key, self.blobs_extension))
