"""Binding expressions, output value conversion and HTTP return values, without a host."""
from __future__ import annotations

import uuid

import azure.functions as func
import pytest

from devhost.errors import BindingError, InvocationError
from devhost.http_front import to_web_response
from devhost.invoker import (
    HTTP_UNSET,
    blob_argument,
    blob_bytes,
    encode_http_output,
    queue_bodies,
)
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


def respond(value: object):
    return to_web_response(encode_http_output(value, "f"))


def test_http_return_values() -> None:
    """What the worker's `HttpResponseConverter.encode` (azure-functions `http.py`) accepts,
    through `bindings/meta.py get_datum` (anything else fails the call: TypeError)."""
    text = respond("hi")
    assert (text.status, text.content_type, text.body) == (200, "text/plain", b"hi")
    for refused in (None, b"bytes", {"a": [1]}, [1], 3):
        with pytest.raises(InvocationError, match="unable to encode outgoing TypedData"):
            encode_http_output(refused, "f")
    assert to_web_response(HTTP_UNSET).status == 200
    custom = respond(func.HttpResponse(b"<b/>", status_code=418, mimetype="text/html",
                                       headers={"X-A": "1"}))
    assert custom.status == 418
    assert custom.headers["Content-Type"] == "text/html; charset=utf-8"
    assert custom.headers["X-A"] == "1"


def test_each_set_cookie_is_its_own_header() -> None:
    """The worker parses every `Set-Cookie` with `SimpleCookie` into RpcHttpCookie entries
    (datumdef.py `parse_to_rpc_http_cookie_list`); the host writes one header per cookie."""
    response = func.HttpResponse("ok")
    response.headers.add("Set-Cookie", "a=1; Path=/; HttpOnly")
    response.headers.add("Set-Cookie", "b=2; Max-Age=60; Secure; SameSite=Lax")
    answer = respond(response)
    cookies = answer.headers.getall("Set-Cookie")
    assert len(cookies) == 2
    assert cookies[0].startswith("a=1") and "Path=/" in cookies[0] and "HttpOnly" in cookies[0]
    assert cookies[1].startswith("b=2") and "Max-Age=60" in cookies[1]
    assert "Secure" in cookies[1] and "SameSite=Lax" in cookies[1]


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
