"""devhost stands alone: it imports nothing of the app it runs (shared/, blueprints/, tools/,
function_app) and its modules import each other without cycles."""
from __future__ import annotations

import ast
from pathlib import Path

DEVHOST = Path(__file__).resolve().parents[2] / "devhost"
APP_PACKAGES = ("shared", "blueprints", "tools", "function_app", "agent", "bench")


def _module_name(path: Path) -> str:
    parts = path.relative_to(DEVHOST.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """Modules a file imports anywhere (late imports and `if TYPE_CHECKING:` included);
    `from pkg import sub` counts as importing `pkg.sub` when that is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{alias.name}" for alias in node.names}
            found.update(subs & known or {node.module})
    return found


def test_devhost_imports_nothing_of_the_app() -> None:
    offending = []
    for path in DEVHOST.rglob("*.py"):
        for name in _imports(path, set()):
            if name.split(".")[0] in APP_PACKAGES:
                offending.append(f"{path.relative_to(DEVHOST.parent)}: {name}")
    assert offending == []


def test_devhost_has_no_import_cycle() -> None:
    files = {_module_name(p): p for p in DEVHOST.rglob("*.py")}
    graph = {name: {m for m in _imports(path, set(files)) if m in files and m != name}
             for name, path in files.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append(trail[trail.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
