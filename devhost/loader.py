"""Import a v2 function app from its script root and index its functions once.

Like the host's worker indexing: `function_app.py` is imported with the script root on
`sys.path`, the module-level `FunctionApp` (or `DFApp`) is found, and `get_functions()` is
called exactly once (a second call raises in azure-functions).
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func

from devhost.config import resolve_binding
from devhost.errors import ConfigError, IndexingError

DURABLE_TRIGGERS = frozenset({"orchestrationTrigger", "activityTrigger", "entityTrigger"})


@dataclass
class FunctionSpec:
    """One indexed function: its trigger, bindings (with `%NAME%` resolved) and callable."""

    name: str
    trigger: dict[str, Any]
    bindings: list[dict[str, Any]]
    user_function: Callable[..., Any]
    function: Any = field(repr=False)

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)

    @property
    def parameters(self) -> Mapping[str, inspect.Parameter]:
        return inspect.signature(self.user_function).parameters

    def annotation(self, name: str) -> Any:
        param = self.parameters.get(name)
        if param is None or param.annotation is inspect.Parameter.empty:
            return None
        return param.annotation

    def inputs(self) -> list[dict[str, Any]]:
        """Non-trigger input bindings."""
        return [b for b in self.bindings
                if b.get("direction", "").upper() == "IN" and b is not self.trigger]

    def outputs(self) -> list[dict[str, Any]]:
        return [b for b in self.bindings if b.get("direction", "").upper() == "OUT"]

    @property
    def uses_durable(self) -> bool:
        return self.trigger_type in DURABLE_TRIGGERS or any(
            b.get("type") in ("durableClient", "orchestrationClient")
            for b in self.bindings)


@dataclass
class LoadedApp:
    """The imported app and its functions; `module` and `app` are None for an app that
    failed to index (the host then runs with no functions)."""

    module: ModuleType | None
    app: Any
    functions: list[Any]
    specs: list[FunctionSpec]


def import_app_module(script_root: Path) -> ModuleType:
    """Import `function_app.py` as module `function_app` (replacing an earlier one)."""
    path = script_root / "function_app.py"
    if not path.is_file():
        raise IndexingError(f"{path} does not exist")
    root = str(script_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    sys.modules.pop("function_app", None)
    spec = importlib.util.spec_from_file_location("function_app", path)
    if spec is None or spec.loader is None:
        raise IndexingError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["function_app"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop("function_app", None)
        raise IndexingError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def find_app(module: ModuleType) -> Any:
    """The single FunctionRegister instance at module level (usually `app`)."""
    apps = [value for value in vars(module).values()
            if isinstance(value, func.FunctionRegister)]
    unique = list({id(a): a for a in apps}.values())
    if not unique:
        raise IndexingError(
            "function_app.py defines no FunctionApp (e.g. `app = func.FunctionApp()`)")
    if len(unique) > 1:
        raise IndexingError("function_app.py defines more than one FunctionApp")
    return unique[0]


def _check_parameters(spec: FunctionSpec) -> None:
    """Each binding except `$return` must name a parameter, and the reverse (like the worker)."""
    names = {b["name"] for b in spec.bindings if b.get("name") != "$return"}
    params = set(spec.parameters)
    extra = params - names - {"context"}
    missing = names - params
    if missing:
        raise IndexingError(f"function {spec.name}: binding(s) {sorted(missing)} have no"
                            f" matching parameter")
    if extra:
        raise IndexingError(f"function {spec.name}: parameter(s) {sorted(extra)} have no"
                            f" binding")
    for binding in spec.outputs():
        if binding["name"] == "$return" or binding.get("type") == "http":
            continue
        annotation = spec.annotation(binding["name"])
        origin = getattr(annotation, "__origin__", annotation)
        if annotation is not None and origin is not func.Out:
            raise IndexingError(f"function {spec.name}: output binding {binding['name']!r}"
                                f" must be annotated func.Out[...]")


def index_functions(functions: list[Any], settings: Mapping[str, str],
                    errors: dict[str, list[str]] | None = None) -> list[FunctionSpec]:
    """FunctionSpecs for indexed functions, with app settings resolved in binding fields.

    A `%NAME%` that resolves to nothing is the host's error, not the worker's: with an
    `errors` dict it puts that one function in error (name -> messages, left out of the
    result) and the others go on, as the host's `FunctionErrors`; without one it raises.
    Everything else here is checked by the worker, whose whole metadata answer fails."""
    specs: list[FunctionSpec] = []
    seen: set[str] = set()
    for function in functions:
        name = function.get_function_name()
        if name.lower() in seen:
            raise IndexingError(f"function name {name!r} is used twice")
        seen.add(name.lower())
        raw = [json.loads(b) if isinstance(b, str) else dict(b)
               for b in function.get_raw_bindings()]
        trigger_type = function.get_trigger().type
        triggers = [b for b in raw if b.get("type") == trigger_type
                    and b.get("direction", "").upper() == "IN"]
        if len(triggers) != 1:
            raise IndexingError(f"function {name}: expected one {trigger_type} binding")
        _check_parameters(FunctionSpec(name=name, trigger=triggers[0], bindings=raw,
                                       user_function=function.get_user_function(),
                                       function=function))
        try:
            bindings = [resolve_binding(b, settings, f"function {name}") for b in raw]
        except ConfigError as exc:
            if errors is None:
                raise IndexingError(str(exc)) from None
            errors.setdefault(name, []).append(str(exc))
            continue
        trigger = bindings[raw.index(triggers[0])]
        specs.append(FunctionSpec(name=name, trigger=trigger, bindings=bindings,
                                  user_function=function.get_user_function(),
                                  function=function))
    return specs


def load_app(script_root: Path, settings: Mapping[str, str],
             errors: dict[str, list[str]] | None = None) -> LoadedApp:
    """Import and index the app; IndexingError when the worker would fail the whole app
    (import error, no FunctionApp, inconsistent function). `errors`: see index_functions."""
    module = import_app_module(script_root)
    try:
        app = find_app(module)
        try:
            functions = list(app.get_functions())
        except Exception as exc:
            raise IndexingError(f"indexing failed: {type(exc).__name__}: {exc}") from exc
        return LoadedApp(module, app, functions, index_functions(functions, settings, errors))
    except IndexingError:
        if sys.modules.get("function_app") is module:
            del sys.modules["function_app"]
        raise
