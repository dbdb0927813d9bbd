"""Binding expressions, output value conversion and HTTP return values, without a host."""
from __future__ import annotations

import json
import uuid

import azure.functions as func
import pytest

from devhost.errors import BindingError
from devhost.http_front import to_web_response
from devhost.invoker import blob_argument, blob_bytes, queue_bodies
from devhost.keys import HostKeys
from devhost.storage_bindings import resolve_expression, split_blob_path


def test_expressions_resolve_from_metadata() -> None:
    metadata = {"name": "a/b.txt", "Query": {"Lang": "en"}, "order": {"id": 7}}
    assert resolve_expression("out/{NAME}.copy", metadata) == "out/a/b.txt.copy"
    assert resolve_expression("q-{query.lang}-{order.id}", metadata) == "q-en-7"
    uuid.UUID(resolve_expression("{rand-guid}", {}))
    assert resolve_expression("plain", {}) == "plain"
    with pytest.raises(BindingError, match="missing"):
        resolve_expression("x/{missing}", metadata)
    with pytest.raises(BindingError):
        resolve_expression("x/{order}", metadata)  # an object is not a single value


def test_blob_paths_and_values() -> None:
    assert split_blob_path("c/dir/file.txt") == ("c", "dir/file.txt")
    with pytest.raises(BindingError):
        split_blob_path("only-container")
    assert blob_bytes("é", "out") == "é".encode()
    assert blob_bytes({"a": 1}, "out") == b'{"a": 1}'
    with pytest.raises(BindingError):
        blob_bytes(3.5, "out")
    stream = blob_argument(b"data", None, {"BlobTrigger": "c/x", "Uri": "http://u/c/x",
                                           "Properties": {"Length": 4}, "Metadata": {}})
    assert isinstance(stream, func.InputStream)
    assert (stream.name, stream.length, stream.read()) == ("c/x", 4, b"data")
    assert blob_argument(b"data", str, None) == "data"
    assert blob_argument(b"data", func.Out[bytes], None) == b"data"


def test_queue_output_values() -> None:
    assert queue_bodies("one", "q") == ["one"]
    assert queue_bodies(["a", b"b", {"c": 1}], "q") == ["a", "b", '{"c": 1}']
    with pytest.raises(BindingError):
        queue_bodies([object()], "q")


def test_http_return_values() -> None:
    text = to_web_response("hi")
    assert (text.status, text.content_type, text.body) == (200, "text/plain", b"hi")
    data = to_web_response({"a": [1]})
    assert data.content_type == "application/json" and json.loads(data.body) == {"a": [1]}
    assert to_web_response(None).status == 204
    custom = to_web_response(func.HttpResponse(b"<b/>", status_code=418, mimetype="text/html",
                                               headers={"X-A": "1"}))
    assert custom.status == 418
    assert custom.headers["Content-Type"] == "text/html; charset=utf-8"
    assert custom.headers["X-A"] == "1"


def test_keys_and_levels() -> None:
    keys = HostKeys.from_settings({"DEVHOST_MASTER_KEY": "m", "DEVHOST_FUNCTION_KEY": "f",
                                   "DEVHOST_ENABLE_AUTH": "true"})
    assert keys.enforce
    assert keys.generated == ("DEVHOST_BLOBS_EXTENSION_KEY", "DEVHOST_DURABLETASK_EXTENSION_KEY")
    assert keys.allows("anonymous", None)
    assert keys.allows("function", "f") and keys.allows("function", "m")
    assert not keys.allows("function", "x") and not keys.allows("function", None)
    assert keys.allows("admin", "m") and not keys.allows("admin", "f")
    assert not keys.allows("function", "ünïcode")
    assert HostKeys.presented({"code": "q"}, {"x-functions-key": "h"}) == "h"
    assert keys.allows_extension("durabletask", keys.durable_extension)
    assert keys.allows_extension("durabletask", "m")
    assert not keys.allows_extension("durabletask", "f")
    assert not keys.allows_extension("durabletask", keys.blobs_extension)
    other = HostKeys.from_settings({})
    assert len(other.generated) == 4 and other.master != other.function
    # like `func start`: no key checks unless enforcement is switched on
    assert not other.enforce and other.allows("admin", None)
    assert other.allows_extension("durabletask", None)
