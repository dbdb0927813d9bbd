"""JSON responses and the error envelope shared by the HTTP functions."""
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import azure.functions as func

from shared.api import ApiError, parse_json_body, require_object
from shared.durable_client import instance_status
from shared.idempotency import run_idempotent
from shared.services import Services

__all__ = ["api_errors", "error_response", "idempotent_submit", "instance_status", "json_body",
           "json_response", "keyed_response"]

log = logging.getLogger(__name__)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(body, default=str), status_code=status,
                             mimetype="application/json", headers=headers)


def keyed_response(body: Any, status: int, replayed: bool) -> func.HttpResponse:
    """An answer to a submit; a repeat of an earlier keyed request says so in a header."""
    return json_response(body, status, {"Idempotent-Replayed": "true"} if replayed else None)


async def idempotent_submit(req: func.HttpRequest, services: Services, scope: str,
                            data: dict, submit: Callable[[str | None], Awaitable[tuple[int, dict]]]
                            ) -> func.HttpResponse:
    """Run `submit` once per idempotency key (None without one); a repeat gets the first
    answer, marked as replayed."""
    status, answer, replayed = await run_idempotent(services.idempotency, scope,
                                                    dict(req.headers), data, submit)
    return keyed_response(answer, status, replayed)


def error_response(error: ApiError) -> func.HttpResponse:
    return json_response(error.body(), error.status)


def api_errors(handler: Callable[..., Awaitable[func.HttpResponse]]
               ) -> Callable[..., Awaitable[func.HttpResponse]]:
    """Turn `ApiError` into its JSON envelope and anything unexpected into a bare 500."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> func.HttpResponse:
        try:
            return await handler(*args, **kwargs)
        except ApiError as exc:
            return error_response(exc)
        except Exception:  # noqa: BLE001 - callers get no stack traces
            log.exception("unhandled error in %s", handler.__name__)
            return error_response(ApiError(500, "InternalError",
                                           "the request failed; see the app's logs"))

    return wrapper


def json_body(req: func.HttpRequest, max_bytes: int) -> dict:
    """The request's JSON object, refused (413/400) before anything changes."""
    return require_object(parse_json_body(req.get_body(), max_bytes))

