"""Host keys and authorization levels, as the Functions host applies them to HTTP routes.

Like `func start`, devhost checks no keys by default: every route opens without one. With
enforcement on (`--enable-auth`, or setting `DEVHOST_ENABLE_AUTH=true`; `func start
--enableAuth` is the Core Tools equivalent) keys are checked as on Azure:

- the master key opens everything, and is the only key for ADMIN routes and `/admin/*`;
- the function key opens FUNCTION routes;
- `/runtime/webhooks/{extension}` needs that extension's system key (`{extension}_extension`,
  e.g. `durabletask_extension`, `blobs_extension`) or the master key
  (azure-functions-host `HostController.ExtensionWebHookHandler`, policy `SystemKeyAuthLevel`
  in `AuthorizationOptionsExtensions.cs`; key names from `DefaultScriptWebHookProvider.GetKeyName`).

A key arrives as `?code=` or in the `x-functions-key` header.
"""
from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

MASTER_KEY_SETTING = "DEVHOST_MASTER_KEY"
FUNCTION_KEY_SETTING = "DEVHOST_FUNCTION_KEY"
BLOBS_EXTENSION_KEY_SETTING = "DEVHOST_BLOBS_EXTENSION_KEY"
DURABLE_EXTENSION_KEY_SETTING = "DEVHOST_DURABLETASK_EXTENSION_KEY"
ENABLE_AUTH_SETTING = "DEVHOST_ENABLE_AUTH"

ANONYMOUS = "ANONYMOUS"
FUNCTION = "FUNCTION"
ADMIN = "ADMIN"

#: The extensions whose webhooks devhost serves, and the setting holding each system key.
SYSTEM_KEY_SETTINGS = {"blobs": BLOBS_EXTENSION_KEY_SETTING,
                       "durabletask": DURABLE_EXTENSION_KEY_SETTING}


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def truthy(raw: str | None) -> bool:
    """A boolean app setting: `true`/`1`/`yes`/`on` (any case) is on, anything else off."""
    return (raw or "").strip().lower() in ("true", "1", "yes", "on")


@dataclass(frozen=True)
class HostKeys:
    """The keys of one host instance; `generated` names the settings made up at start."""

    master: str
    function: str
    system: Mapping[str, str] = field(default_factory=dict)
    enforce: bool = False
    generated: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Mapping[str, str],
                      enforce: bool | None = None) -> HostKeys:
        """Keys from app settings (generated where unset); `enforce` None reads the setting."""
        made: list[str] = []

        def pick(name: str) -> str:
            value = (settings.get(name) or "").strip()
            if value:
                return value
            made.append(name)
            return secrets.token_urlsafe(32)

        master = pick(MASTER_KEY_SETTING)
        function = pick(FUNCTION_KEY_SETTING)
        system = {ext: pick(setting) for ext, setting in SYSTEM_KEY_SETTINGS.items()}
        on = truthy(settings.get(ENABLE_AUTH_SETTING)) if enforce is None else enforce
        return cls(master, function, system, on, tuple(made))

    @property
    def blobs_extension(self) -> str:
        return self.system["blobs"]

    @property
    def durable_extension(self) -> str:
        return self.system["durabletask"]

    def setting_values(self) -> dict[str, str]:
        """Every key by the setting that holds it."""
        out = {MASTER_KEY_SETTING: self.master, FUNCTION_KEY_SETTING: self.function}
        out.update({SYSTEM_KEY_SETTINGS[ext]: value for ext, value in self.system.items()})
        return out

    @staticmethod
    def presented(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
        """The key a caller sent: the `x-functions-key` header wins over `?code=`."""
        return headers.get("x-functions-key") or query.get("code") or None

    def allows(self, level: str, key: str | None) -> bool:
        """Whether `key` opens a route of authorization `level`."""
        level = level.upper()
        if not self.enforce or level == ANONYMOUS:
            return True
        if not key:
            return False
        if _same(key, self.master):
            return True
        if level == FUNCTION:
            return _same(key, self.function)
        return False

    def allows_extension(self, extension: str, key: str | None) -> bool:
        """Whether `key` opens `/runtime/webhooks/{extension}`: its system key or the master."""
        if not self.enforce:
            return True
        system = self.system.get(extension.lower())
        return bool(key) and (_same(key, self.master)
                              or (system is not None and _same(key, system)))

    def allows_blobs_webhook(self, key: str | None) -> bool:
        return self.allows_extension("blobs", key)
