"""Calling the app's durable functions: an orchestrator over a history, an activity.

The orchestrator function registered with `@app.orchestration_trigger` takes the context JSON
and returns the state JSON, or raises an exception whose message carries
`$OutOfProcData$:` and the state JSON with `error` set. An activity takes its decoded input
(inputs travel as JSON text) and its result is sent back as JSON text; sync activities run in
the host's executor, async ones on the event loop.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import json
import os
import re
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.durable_functions.models.utils.df_serialization import df_dumps, df_loads

_MARKER = "$OutOfProcData$:"


def run_orchestrator(handle: Callable[[Any], str] | None, name: str,
                     context: str) -> tuple[dict[str, Any], str | None]:
    """Replay an orchestrator over a context: (state, error or None). Runs in a thread."""
    if handle is None:
        return {}, f"the orchestrator function '{name}' is not registered in this app"
    try:
        state = json.loads(handle(func.OrchestrationContext(context)))
    except Exception as exc:  # noqa: BLE001 - the user's failure becomes the instance's
        message = str(exc)
        marker = message.find(_MARKER)
        if marker < 0:
            return {}, f"{type(exc).__name__}: {message}"
        try:
            state = json.loads(message[marker + len(_MARKER):])
        except ValueError:
            state = {}
        return state, state.get("error") or message[:marker].strip()
    return state, state.get("error")


async def run_activity(entry: tuple[Callable[..., Any], str] | None, name: str,
                       input_text: str | None, loop: asyncio.AbstractEventLoop,
                       executor: concurrent.futures.Executor) -> tuple[Any, ...]:
    """Run an activity: (True, result JSON) or (False, reason, details)."""
    if entry is None:
        return (False, f"The activity function '{name}' does not exist or is not an"
                " activity function", "")
    fn, param = entry
    try:
        value = None if input_text is None else df_loads(input_text)
    except ValueError:
        value = input_text
    try:
        if inspect.iscoroutinefunction(fn):
            out = await fn(**{param: value})
        else:
            out = await loop.run_in_executor(executor, functools.partial(fn, **{param: value}))
        return True, df_dumps(out)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the orchestrator as TaskFailed
        return (False, f"Activity function '{name}' failed: {type(exc).__name__}: {exc}",
                user_traceback(exc))


def user_traceback(exc: BaseException) -> str:
    """The traceback of an activity failure without the engine's and executor's frames."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if "concurrent/futures" not in frame.filename
              and not frame.filename.startswith(str(Path(__file__).parent))]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames),
             *traceback.format_exception_only(type(exc), exc)]
    return "".join(lines)


def discover_default_version(functions: Iterable[Any]) -> str | None:
    """`extensions.durableTask.defaultVersion` from the app's host.json, if there is one.

    The app folder is the nearest folder holding host.json or function_app.py, going up from
    the module that defines an orchestrator.
    """
    for function in functions:
        trigger = function.get_trigger()
        if getattr(trigger, "type", None) != "orchestrationTrigger":
            continue
        user = function.get_user_function()
        user = getattr(user, "orchestrator_function", user)
        try:
            folder = Path(inspect.getsourcefile(user) or "").resolve().parent
        except TypeError:
            return None
        for candidate in (folder, *folder.parents[:2]):
            host_json = candidate / "host.json"
            if host_json.is_file():
                try:
                    data = json.loads(host_json.read_text())
                except ValueError:
                    return None
                version = ((data.get("extensions") or {}).get("durableTask") or {}).get(
                    "defaultVersion")
                return None if version is None else _resolve_setting(str(version))
            if (candidate / "function_app.py").is_file():
                return None
        return None
    return None


def _resolve_setting(value: str) -> str:
    """`%NAME%` from the app settings (environment), as the host resolves host.json values."""
    return re.sub(r"%([A-Za-z0-9_.:-]+)%", lambda m: os.environ.get(m.group(1), m.group(0)),
                  value)
