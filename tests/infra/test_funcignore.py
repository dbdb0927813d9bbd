"""`.funcignore` ships what runs and nothing else (gitignore syntax, matched by pathspec-like
rules: a name matches at any depth, a trailing slash matches folders only)."""
from __future__ import annotations

import fnmatch
from pathlib import Path

KEEP = ["function_app.py", "host.json", "requirements.txt", "openapi.json", "blueprints/jobs.py",
        "shared/settings.py", "shared/pool/__init__.py", "dashboard/index.html",
        "dashboard/app.js", "dashboard/style.css"]
DROP = ["tests/conftest.py", "node_modules/x/y.js", ".venv/bin/python", ".venv-worker/x",
        ".venv-infra/bin/checkov", ".azurite/x", "bench/policy.py", "docs/deployment.md",
        "infra/main.bicep", "agent/config.py", "tools/azurite.py", "scripts/azd_hooks.py",
        ".git/config", ".gitignore", "local.settings.json", "devhost/host.py",
        "shared/__pycache__/x.pyc", "azure.yaml", "Makefile", "README.md",
        "package.json", "pyproject.toml", "requirements-dev.txt", "requirements-infra.txt",
        ".funcignore", "blueprints/__pycache__/api.cpython-311.pyc"]


def _patterns(root: Path) -> list[str]:
    lines = (root / ".funcignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    for pattern in patterns:
        directory_only = pattern.endswith("/")
        body = pattern.strip("/")
        anchored = pattern.startswith("/") or "/" in body
        candidates = parts[:-1] if directory_only else parts
        if anchored:
            if fnmatch.fnmatch(path, body) or fnmatch.fnmatch(path, body + "/*"):
                return True
        elif any(fnmatch.fnmatch(part, body) for part in candidates):
            return True
    return False


def test_funcignore_keeps_the_app_and_drops_the_rest(root: Path) -> None:
    patterns = _patterns(root)
    kept_wrongly = [p for p in DROP if not _ignored(p, patterns)]
    dropped_wrongly = [p for p in KEEP if _ignored(p, patterns)]
    assert not kept_wrongly, f"would be published: {kept_wrongly}"
    assert not dropped_wrongly, f"would be left out: {dropped_wrongly}"


def test_every_top_level_entry_is_decided(root: Path) -> None:
    """A new top-level folder must be either shipped on purpose or ignored."""
    patterns = _patterns(root)
    shipped = {"function_app.py", "host.json", "requirements.txt", "openapi.json", "blueprints",
               "shared", "dashboard"}
    for entry in root.iterdir():
        name = entry.name + ("/x" if entry.is_dir() else "")
        if entry.name in shipped:
            assert not _ignored(name, patterns), entry.name
        else:
            assert _ignored(name, patterns), f"{entry.name} would be published"
