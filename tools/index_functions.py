"""Index a Python v2 function app with the real Azure Functions Python worker.

Run with a Python >= 3.13 interpreter that has `azure-functions-runtime` and the
app's requirements installed:

    python tools/index_functions.py SCRIPT_ROOT

The worker's handlers are driven directly (``worker_init_request`` then
``functions_metadata_request``) with small stand-ins for the protobuf message
classes, so no gRPC host is needed. Prints one JSON object:
``{"ok": bool, "functions": [{"name", "bindings"}], "error": str|null}``.
The worker keeps a module-global registry, so use one process per check.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from types import SimpleNamespace
from typing import Any

# Enum values of the worker protocol (FunctionRpc.proto) the worker compares against.
_ENUMS: dict[str, dict[str, int]] = {
    "BindingInfo": {"in": 0, "out": 1, "inout": 2,
                    "undefined": 0, "string": 1, "binary": 2, "stream": 3},
    "StatusResult": {"Failure": 0, "Success": 1, "Cancelled": 2},
}


class _MessageMeta(type):
    """Enum-like attribute access on a message class (``StatusResult.Success``)."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        values = _ENUMS.get(cls.__name__, {})
        if name in values:
            return values[name]
        return f"{cls.__name__}.{name}"


class _Message(metaclass=_MessageMeta):
    """A protobuf message stand-in that keeps its keyword fields."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return None


class _Protos:
    """Hands out a message class for any protobuf name the worker asks for."""

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._classes:
            self._classes[name] = _MessageMeta(name, (_Message,), {})
        return self._classes[name]


def _plain(value: Any) -> Any:
    if isinstance(value, _Message):
        return {k: _plain(v) for k, v in value.__dict__.items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


async def _index(script_root: str) -> dict[str, Any]:
    import azure_functions_runtime as worker  # noqa: PLC0415 - only inside the 3.13 venv

    protos = _Protos()
    init = SimpleNamespace(
        request=SimpleNamespace(worker_init_request=SimpleNamespace(
            capabilities={}, function_app_directory=script_root)),
        properties={"host": "127.0.0.1", "protos": protos},
    )
    init_response = await worker.worker_init_request(init)
    status = init_response.result
    if status.status != _ENUMS["StatusResult"]["Success"]:
        exc = _plain(status.exception) or {}
        return {"ok": False, "functions": [], "error": exc.get("message") or str(exc)}
    meta = await worker.functions_metadata_request(
        SimpleNamespace(request=SimpleNamespace(), properties={}))
    functions = []
    for fn in meta.function_metadata_results or []:
        functions.append({
            "name": fn.name,
            "bindings": [json.loads(raw) for raw in fn.raw_bindings],
        })
    return {"ok": True, "functions": functions, "error": None}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: index_functions.py SCRIPT_ROOT", file=sys.stderr)
        return 2
    script_root = os.path.abspath(argv[1])
    sys.path.insert(0, script_root)
    os.chdir(script_root)
    try:
        result = asyncio.run(_index(script_root))
    except Exception as exc:  # noqa: BLE001 - report any failure as JSON
        result = {"ok": False, "functions": [], "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
