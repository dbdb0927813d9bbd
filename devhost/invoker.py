"""Calling one function: build its arguments, run it, and write its output bindings.

Async functions run on the host's single event loop; sync functions run on the thread pool,
as in the Python worker. Input bindings are read before the call and `func.Out` values and
`$return` are written after it, so a failed invocation writes nothing.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import io
import json
import logging
import threading
import time
import typing
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from azure.functions import _abc as azf_abc
from azure.functions import meta
from azure.functions.blob import BlobConverter
from azure.functions.http import HttpResponseConverter

from devhost.errors import BindingError, InvocationError
from devhost.loader import FunctionSpec
from devhost.storage_bindings import StorageBindings, resolve_expression

log = logging.getLogger("devhost")


class Out(func.Out):
    """The value holder passed for `func.Out[...]` parameters."""

    def __init__(self) -> None:
        self._value: Any = None
        self.was_set = False

    def set(self, val: Any) -> None:
        self._value = val
        self.was_set = True

    def get(self) -> Any:
        return self._value


class _TraceContext(azf_abc.TraceContext):
    def __init__(self, invocation_id: str) -> None:
        self._parent = f"00-{uuid.uuid4().hex}-{invocation_id.replace('-', '')[:16]}-01"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}

    # The worker's TraceContext also answers to these (deprecated) names
    # (azure-functions-python-worker azure_functions_worker/bindings/tracecontext.py).
    @property
    def Traceparent(self) -> str:  # noqa: N802 - the worker's public name
        return self.trace_parent

    @property
    def Tracestate(self) -> str:  # noqa: N802 - the worker's public name
        return self.trace_state

    @property
    def Attributes(self) -> dict[str, str]:  # noqa: N802 - the worker's public name
        return self.attributes


class _RetryContext(azf_abc.RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> Any:
        return None


class Context(func.Context):
    """The `context` parameter: invocation id, function name and directory."""

    def __init__(self, invocation_id: str, function_name: str, directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._directory = directory
        self._local = threading.local()
        self._trace = _TraceContext(invocation_id)
        self._retry = _RetryContext()

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._directory

    @property
    def trace_context(self) -> Any:
        return self._trace

    @property
    def retry_context(self) -> Any:
        return self._retry


def base_type(annotation: Any) -> Any:
    """`func.Out[str]` -> str, `typing.Optional[bytes]` -> bytes; plain types unchanged."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is func.Out and args:
        return base_type(args[0])
    if typing.get_origin(annotation) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else None
    return annotation


def to_datum(value: Any) -> meta.Datum:
    if isinstance(value, (dict, list)):
        return meta.Datum(value=json.dumps(value), type="json")
    return meta.Datum(value=value, type="string")


def blob_argument(data: bytes, annotation: Any, metadata: Mapping[str, Any] | None) -> Any:
    """A blob as the parameter type asks: bytes, str, or `func.InputStream` (default)."""
    kind = base_type(annotation)
    if kind is bytes:
        return data
    if kind is str:
        return data.decode("utf-8")
    datums = None
    if metadata:
        datums = {key: to_datum(value) for key, value in metadata.items()
                  if key in ("BlobTrigger", "Uri", "Properties", "Metadata")}
    return BlobConverter.decode(meta.Datum(value=data, type="bytes"), trigger_metadata=datums)


def blob_bytes(value: Any, name: str) -> bytes:
    if callable(getattr(value, "read", None)):
        value = value.read()
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode("utf-8")
    raise BindingError(f"blob output {name!r}: cannot write a {type(value).__name__}")


def queue_bodies(value: Any, name: str) -> list[str]:
    """Message texts for a queue output value (str, bytes, QueueMessage, dict or a list)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, (bytes, bytearray)):
            out.append(bytes(item).decode("utf-8"))
        elif isinstance(item, func.QueueMessage):
            out.append(item.get_body().decode("utf-8"))
        elif isinstance(item, dict):
            out.append(json.dumps(item))
        else:
            raise BindingError(f"queue output {name!r}: cannot send a {type(item).__name__}")
    return out


#: An HTTP output (`func.Out[func.HttpResponse]`) the function never set.
HTTP_UNSET = object()


@dataclass
class InvocationResult:
    invocation_id: str
    #: The encoded HTTP answer (`meta.Datum` of type `http` or `string`), or HTTP_UNSET.
    http_response: Any = None


def encode_http_output(value: Any, function: str) -> Any:
    """The HTTP output as the worker encodes it (`HttpResponseConverter.encode`, through
    `bindings/meta.py get_datum`): an `HttpResponse` or a `str`; anything else (None, bytes,
    a dict) fails the invocation, as in the worker."""
    try:
        return HttpResponseConverter.encode(value, expected_type=None)
    except NotImplementedError:
        raise InvocationError(
            f"function {function}: unable to encode outgoing TypedData: unsupported type"
            f" \"http\" for Python type \"{type(value).__name__}\"") from None


class Invoker:
    """Runs functions for every trigger kind; one per host."""

    def __init__(self, loop: asyncio.AbstractEventLoop, executor: Executor,
                 io_executor: Executor, storage: StorageBindings, script_root: str,
                 timeout: float | None,
                 durable_client_json: Callable[[], str] | None = None) -> None:
        self.loop = loop
        self.executor = executor
        self.io_executor = io_executor
        self.storage = storage
        self.script_root = script_root
        self.timeout = timeout
        self.durable_client_json = durable_client_json
        #: Called on the loop after a queue output binding wrote to (connection, queue): the
        #: host wakes its own listeners of that queue (`devhost.queues.QueueWatcher`).
        self.on_queue_write: Callable[[str | None, str], None] | None = None

    async def io(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking storage call on the I/O pool."""
        return await self.loop.run_in_executor(self.io_executor, functools.partial(fn, *args))

    async def invoke(self, spec: FunctionSpec, trigger_value: Any,
                     metadata: Mapping[str, Any], reason: str) -> InvocationResult:
        """Invoke once; raise InvocationError (already logged) when it fails."""
        invocation_id = str(uuid.uuid4())
        started = time.perf_counter()
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", spec.name, reason,
                 invocation_id)
        try:
            result = await self._invoke(spec, trigger_value, metadata, invocation_id)
        except Exception as exc:
            elapsed = (time.perf_counter() - started) * 1000
            cause = exc.__cause__ if isinstance(exc, InvocationError) and exc.__cause__ else exc
            log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)", spec.name,
                      invocation_id, elapsed, exc_info=cause)
            if isinstance(exc, InvocationError):
                raise
            raise InvocationError(f"function {spec.name} failed: {exc}") from exc
        elapsed = (time.perf_counter() - started) * 1000
        log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", spec.name,
                 invocation_id, elapsed)
        return result

    async def _invoke(self, spec: FunctionSpec, trigger_value: Any,
                      metadata: Mapping[str, Any], invocation_id: str) -> InvocationResult:
        kwargs: dict[str, Any] = {spec.trigger["name"]: trigger_value}
        for binding in spec.inputs():
            kwargs[binding["name"]] = await self._input(spec, binding, metadata)
        outs: dict[str, Out] = {}
        for binding in spec.outputs():
            if binding["name"] != "$return":
                outs[binding["name"]] = kwargs[binding["name"]] = Out()
        if "context" in spec.parameters and "context" not in kwargs:
            kwargs["context"] = Context(invocation_id, spec.name, self.script_root)
        value = await self._call(spec, kwargs)
        result = InvocationResult(invocation_id)
        pending = []
        for binding in spec.outputs():
            name = binding["name"]
            if name == "$return":
                out_value, is_set = value, True
            else:
                out_value, is_set = outs[name].get(), outs[name].was_set
            if binding.get("type") == "http":
                # Encoded before any output is written: a bad value fails the whole call.
                result.http_response = (encode_http_output(out_value, spec.name) if is_set
                                        else HTTP_UNSET)
            elif is_set and out_value is not None:
                pending.append((binding, out_value))
        for binding, out_value in pending:
            await self._output(binding, metadata, out_value)
        return result

    async def _call(self, spec: FunctionSpec, kwargs: dict[str, Any]) -> Any:
        fn = spec.user_function
        if spec.is_async:
            awaitable: Any = fn(**kwargs)
        else:
            ctx = contextvars.copy_context()
            awaitable = self.loop.run_in_executor(self.executor, functools.partial(
                ctx.run, fn, **kwargs))
        try:
            return await asyncio.wait_for(awaitable, self.timeout)
        except asyncio.TimeoutError:
            raise InvocationError(
                f"function {spec.name} timed out after {self.timeout:.0f}s") from None
        except Exception as exc:
            raise InvocationError(f"function {spec.name} raised {type(exc).__name__}: {exc}"
                                  ) from exc

    async def _input(self, spec: FunctionSpec, binding: Mapping[str, Any],
                     metadata: Mapping[str, Any]) -> Any:
        kind = binding.get("type")
        annotation = spec.annotation(binding["name"])
        if kind == "blob":
            path = resolve_expression(str(binding["path"]), metadata)
            found = await self.io(self.storage.read_blob, binding.get("connection"), path)
            if found is None:
                return None
            data, props = found
            return blob_argument(data, annotation, {"BlobTrigger": path, "Uri": props["Uri"],
                                                    "Properties": props,
                                                    "Metadata": props["Metadata"]})
        if kind == "table":
            text = await self.io(self.storage.read_table, binding.get("connection"), binding,
                                 metadata)
            base = base_type(annotation)
            if text is not None and base in (dict, list):
                return json.loads(text)
            return text
        if kind in ("durableClient", "orchestrationClient"):
            if self.durable_client_json is None:
                raise BindingError(
                    f"function {spec.name}: durableClient binding needs the durable engine"
                    " (devhost/durable/engine.py), which is not available")
            return self.durable_client_json()
        raise BindingError(f"function {spec.name}: input binding type {kind!r} is not"
                           " supported by devhost")

    async def _output(self, binding: Mapping[str, Any], metadata: Mapping[str, Any],
                      value: Any) -> None:
        kind = binding.get("type")
        name = binding["name"]
        conn = binding.get("connection")
        if kind == "blob":
            path = resolve_expression(str(binding["path"]), metadata)
            await self.io(self.storage.write_blob, conn, path, blob_bytes(value, name))
        elif kind == "queue":
            queue = resolve_expression(str(binding["queueName"]), metadata).lower()
            await self.io(self.storage.send_messages, conn, queue, queue_bodies(value, name))
            if self.on_queue_write is not None:
                self.on_queue_write(conn, queue)
        elif kind == "table":
            if isinstance(value, io.IOBase):
                value = value.read()
            await self.io(self.storage.write_table, conn, binding, metadata, value)
        else:
            raise BindingError(f"output binding type {kind!r} ({name}) is not supported by"
                               " devhost")
