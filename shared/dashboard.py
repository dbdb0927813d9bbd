"""The operators' dashboard: the static page and its assets, shipped in `dashboard/`.

The page is plain HTML, CSS and JavaScript modules (no build step, nothing from a CDN). It is
served anonymously, like any login page: it holds no data, asks the operator for the function
key and calls the keyed API with it. Only files that exist in `dashboard/` with a known type are
served, so no request name can reach anything else.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
INDEX = "index.html"
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml"}
_ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,60}\.(js|css|svg)$")
# The page talks only to its own origin; no inline script or style, no framing.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    mimetype: str


def _read(name: str) -> Asset:
    path = DASHBOARD_DIR / name
    return Asset(path.read_bytes(), _TYPES[path.suffix])


def page() -> Asset:
    return _read(INDEX)


def asset(name: str) -> Asset | None:
    """The named asset, or None for anything that is not a shipped asset file."""
    if not _ASSET_NAME.fullmatch(name) or not (DASHBOARD_DIR / name).is_file():
        return None
    return _read(name)
