"""Writes `openapi.json`, the API description the app serves at /api/openapi.json.

Kept as code so the schemas stay consistent, and built from what the handlers validate with:
statuses and change types from `shared.contracts`, the VM callback bodies from the `BodyField`s
`shared.callback` reads. `tests/pipeline/test_openapi.py` checks that every HTTP function of the
app is described, field by field where a schema mirrors a handler, and that the committed file
is current.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shared.api import BodyField  # noqa: E402
from shared.callback import DONE_BODY, IDLE_BODY  # noqa: E402
from shared.changes import MAX_SLOTS, MAX_SPEC_TEXT, MAX_VMS_PER_CHANGE  # noqa: E402
from shared.contracts import (  # noqa: E402
    CHANGE_STATUSES,
    CHANGE_TYPES,
    JOB_STATUSES,
    RUN_STATUSES,
)
from shared.naming import MAX_BLOB_NAME, MAX_INSTANCE_ID, max_source_name  # noqa: E402
from shared.settings import parse_actions  # noqa: E402

ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid input", 401: "Missing or wrong function key", 403: "Refused",
            404: "Not found", 409: "Conflict", 410: "Gone", 413: "Body too large",
            500: "Internal error"}
    return {str(c): _resp(text[c], ERROR) for c in codes}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
ANY = {"type": "object", "additionalProperties": True}
NULLABLE_STR = {"type": "string", "nullable": True}  # null is the same as leaving it out
SPEC_TEXT = {"type": "string", "maxLength": MAX_SPEC_TEXT, "nullable": True}
# What the server checks, stated so a client (or a fuzzer) knows it before sending.
_NAME_CHARS = r"[^\u0000-\u001f\u007f\\\\]"
_SEGMENT = r"[^/\u0000-\u001f\u007f\\\\]"
DEFAULT_ACTIONS = parse_actions("process")
SOURCE_NAME = {
    "type": "string", "minLength": 1, "maxLength": max_source_name(DEFAULT_ACTIONS),
    "pattern": f"^{_SEGMENT}({_NAME_CHARS}*{_SEGMENT})?$",
    "description": "A blob name of the data container: no control characters or backslashes, "
                   "not absolute, no empty, '.' or '..' segments, at most 254 segments, and "
                   "short enough that every derived name fits in 1024 characters (1024 less "
                   "the longest of '.error.json' and the chained '.ACTION.out' suffixes of "
                   "PIPELINE_ACTIONS; the maximum shown is for the default 'process')."}
PREFIX = {"type": "string", "maxLength": MAX_BLOB_NAME, "pattern": f"^({_SEGMENT}{_NAME_CHARS}*)?$",
          "description": "Names starting with this; no control characters or backslashes, not "
                         "absolute, no '.' or '..' segments."}
INSTANCE_ID = {"type": "string", "minLength": 1, "maxLength": MAX_INSTANCE_ID,
               "pattern": "^[A-Za-z0-9_-]+$"}
RUN_ID = {"type": "string", "minLength": 1, "maxLength": 80, "pattern": "^[A-Za-z0-9_-]+$",
          "not": {"pattern": "^[Rr][Uu][Nn]-"},
          "description": "Caller-chosen run id; 'run-' is reserved for the app's own runs (the "
                         "timer's run-<scheduled time> and generated run-api-<hex>)."}
VM_NAME = {"type": "string", "minLength": 1, "maxLength": 64,
           "pattern": "^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])?$"}
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
               dict: "object"}


def _field_schema(f: BodyField) -> dict[str, Any]:
    kinds = f.kind if isinstance(f.kind, tuple) else (f.kind,)
    names = {_JSON_TYPES[k] for k in kinds}
    schema: dict[str, Any] = {"type": "number" if names == {"integer", "number"}
                              else names.pop()}
    if f.choices:
        schema["enum"] = list(f.choices)
    if f.nullable:
        schema["nullable"] = True
    if f.minimum is not None:
        schema["minimum"] = f.minimum
    if f.maximum is not None:
        schema["maximum"] = f.maximum
        if f.exclusive_maximum:
            schema["exclusiveMaximum"] = True
    return schema


def _body_schema(spec: tuple[BodyField, ...], **described: dict[str, Any]) -> dict[str, Any]:
    """A request body's schema from the fields its handler reads; `described` adds what the
    handler checks in code of its own (a name's pattern) to a field's schema."""
    return _obj({f.name: {**_field_schema(f), **described.get(f.name, {})} for f in spec},
                [f.name for f in spec if f.required] or None)


IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "description": "Same key and body within the retention window: the first "
                                  "answer again (header Idempotent-Replayed: true), nothing new "
                                  "started; same key, other body: 409 IdempotencyKeyReused. "
                                  "May be sent as `requestId` in the body instead.",
                   "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:~-]{1,200}$"}}
REQUEST_ID = {"type": "string", "pattern": "^[A-Za-z0-9._:~-]{1,200}$", "nullable": True,
              "description": "idempotency key (alternative to the Idempotency-Key header)"}
CALLBACK_URL = {"type": "string", "format": "uri", "maxLength": 2000, "nullable": True,
                "description": "https URL to POST a signed summary to on the final state "
                               "(see docs/webhooks.md); private and loopback addresses are "
                               "refused"}
DELIVERIES = {"type": "array", "description": "webhook attempts, oldest first",
              "items": {"$ref": "#/components/schemas/Delivery"}}
COST = {"$ref": "#/components/schemas/Cost"}
TOKEN = {"type": "string", "nullable": True,
         "description": "pass as `continuationToken` for the next page; null on the last"}


def _list_params(*filters: dict[str, Any]) -> list[dict[str, Any]]:
    return [*filters,
            {"name": "limit", "in": "query",
             "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            {"name": "continuationToken", "in": "query", "schema": STR}]


def _list(name: str, item: dict[str, Any]) -> dict[str, Any]:
    return _obj({name: {"type": "array", "items": item}, "count": INT,
                 "continuationToken": TOKEN}, [name, "count", "continuationToken"])


def _query(name: str, values: list[str] | None = None) -> dict[str, Any]:
    # An empty filter is no filter, as the server reads it.
    schema = {"type": "string", "enum": ["", *values]} if values else STR
    return {"name": name, "in": "query", "schema": schema}


def document() -> dict[str, Any]:
    job = {"$ref": "#/components/schemas/Job"}
    cancel_body = {"required": False, "content": {"application/json": {"schema": _obj({
        "reason": {"type": "string", "maxLength": 500, "nullable": True},
        "requestedBy": {"type": "string", "maxLength": 200, "nullable": True,
                        "description": "who cancels (the signed-in principal wins if any)"}})}}}
    path_param = lambda name, schema=INSTANCE_ID: {  # noqa: E731
        "name": name, "in": "path", "required": True, "schema": schema}
    paths: dict[str, Any] = {
        "/api/health": {"get": {"operationId": "health_http", "security": [],
                                "summary": "Settings valid and storage reachable",
                                "responses": {"200": _resp("Healthy", ANY),
                                              "503": _resp("Unhealthy", ANY)}}},
        "/api/openapi.json": {"get": {"operationId": "openapi_http", "security": [],
                                      "summary": "This document",
                                      "responses": {"200": _resp("OpenAPI document", ANY)}}},
        "/api/jobs": {
            "post": {"operationId": "submit_job_http",
                     "summary": "Process a blob of the data container (uploading it if content "
                                "is given)",
                     "parameters": [IDEMPOTENCY_KEY],
                     "requestBody": _body({
                         **_obj({"blob": SOURCE_NAME, "content": NULLABLE_STR,
                                 "contentBase64": {"type": "string", "format": "byte",
                                                   "nullable": True},
                                 "requestId": REQUEST_ID, "callbackUrl": CALLBACK_URL},
                                ["blob"]),
                         # not both given (null counts as not given)
                         "not": {"required": ["content", "contentBase64"],
                                 "properties": {"content": STR, "contentBase64": STR}}}),
                     "responses": {"202": _resp("Job accepted", _obj(
                         {"jobId": STR, "blob": STR, "created": BOOL, "statusUrl": STR})),
                                   **_errors(400, 401, 404, 409, 413)}},
            "get": {"operationId": "list_jobs_http", "summary": "Jobs, newest first",
                    "parameters": _list_params(
                        _query("status", list(JOB_STATUSES)), _query("runId")),
                    "responses": {"200": _resp("Jobs", _list("jobs", job)),
                                  **_errors(400, 401)}}},
        "/api/jobs/{job_id}": {"get": {
            "operationId": "get_job_http", "summary": "One job with its orchestration status",
            "parameters": [path_param("job_id")],
            "responses": {"200": _resp("Job", {"allOf": [job, _obj({
                "orchestration": {"type": "object", "nullable": True,
                                  "additionalProperties": True},
                "deliveries": DELIVERIES})]}), **_errors(400, 401, 404)}}},
        "/api/runs": {"post": {
            "operationId": "start_run_http",
            "summary": "Run over existing blobs: exactly one of prefix or blobs",
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": _body({
                **_obj({"prefix": PREFIX,
                        "blobs": {"type": "array", "items": SOURCE_NAME, "minItems": 1,
                                  "maxItems": 10_000},
                        "runId": {**RUN_ID, "nullable": True}, "requestId": REQUEST_ID,
                        "callbackUrl": CALLBACK_URL}),
                "oneOf": [{"required": ["prefix"]}, {"required": ["blobs"]}]}),
            "responses": {"202": _resp("Run started", _obj({"runId": STR, "statusUrl": STR})),
                          **_errors(400, 401, 409, 413)}},
            "get": {"operationId": "list_runs_http", "summary": "Runs, newest first",
                    "parameters": _list_params(_query("status", list(RUN_STATUSES))),
                    "responses": {"200": _resp("Runs", _list("runs", ANY)),
                                  **_errors(400, 401)}}},
        "/api/runs/{run_id}": {"get": {
            "operationId": "get_run_http", "summary": "Run progress and summary",
            "parameters": [path_param("run_id")],
            "responses": {"200": _resp("Run", _obj({
                "runId": STR, "orchestration": {"type": "object", "nullable": True,
                                                "additionalProperties": True},
                "summary": {"type": "object", "nullable": True, "additionalProperties": True,
                            "description": "files, succeeded, failed, cancelled, bytesIn, "
                                           "bytesOut, status, startedAt, finishedAt, "
                                           "cancelledBy, retryOf, retriedBy"},
                "deliveries": DELIVERIES})), **_errors(400, 401, 404)}}},
        "/api/pool": {"get": {
            "operationId": "pool_status_http",
            "summary": "VMs, their states, ephemeral workers (pods) and the backlog",
            "responses": {"200": _resp("Pool", ANY), **_errors(401)}}},
        "/api/changes": {"post": {
            "operationId": "submit_change_http",
            "summary": "Change the pool: pool.add, pool.remove, pool.start, pool.stop",
            "parameters": [IDEMPOTENCY_KEY],
            "requestBody": _body(_obj({"changeType": {"type": "string",
                                                      "enum": list(CHANGE_TYPES)},
                "vms": {"type": "array", "items": VM_NAME, "minItems": 1,
                        "maxItems": MAX_VMS_PER_CHANGE, "uniqueItems": True},
                "spec": _obj({"size": SPEC_TEXT, "image": SPEC_TEXT, "subnetId": SPEC_TEXT,
                              "publicIp": {"type": "boolean", "nullable": True},
                              "adminUsername": SPEC_TEXT, "sshPublicKey": SPEC_TEXT,
                              "slots": {"type": "integer", "minimum": 1,
                                        "maximum": MAX_SLOTS, "nullable": True}})
                | {"additionalProperties": False, "nullable": True},
                "requestId": REQUEST_ID, "callbackUrl": CALLBACK_URL}, ["changeType", "vms"])),
            "responses": {"202": _resp("Change accepted", _obj({"changeId": STR,
                                                                 "statusUrl": STR})),
                          **_errors(400, 401, 404, 409, 413)}},
            "get": {"operationId": "list_changes_http", "summary": "Pool changes, newest first",
                    "parameters": _list_params(_query("status", list(CHANGE_STATUSES)),
                                               _query("changeType", list(CHANGE_TYPES))),
                    "responses": {"200": _resp("Changes", _list("changes", ANY)),
                                  **_errors(400, 401)}}},
        "/api/changes/{change_id}": {"get": {
            "operationId": "get_change_http", "summary": "Steps and progress of a change",
            "parameters": [path_param("change_id", {"type": "string",
                                                    "pattern": "^change-[0-9a-f]{16}$"})],
            "responses": {"200": _resp("Change", {"type": "object",
                                               "additionalProperties": True,
                                               "properties": {"deliveries": DELIVERIES}}),
                          **_errors(401, 404)}}},
        "/api/jobs/{job_id}/cancel": {"post": {
            "operationId": "cancel_job_http",
            "summary": "Cancel a queued or running job: its work item is withdrawn and a running "
                       "action is stopped at the agent's next heartbeat",
            "parameters": [path_param("job_id")], "requestBody": cancel_body,
            "responses": {"202": _resp("Cancelled (the job as it reads now)", job),
                          **_errors(400, 401, 404, 409, 413)}}},
        "/api/jobs/{job_id}/retry": {"post": {
            "operationId": "retry_job_http",
            "summary": "Run a failed or cancelled job again from its original (in failed/ or "
                       "archive/); a repeat returns the same new job",
            "parameters": [path_param("job_id")],
            "responses": {"202": _resp("Retry started", _obj({
                "jobId": STR, "retryOf": STR, "blob": STR, "created": BOOL, "statusUrl": STR})),
                **_errors(401, 404, 409)}}},
        "/api/runs/{run_id}/cancel": {"post": {
            "operationId": "cancel_run_http",
            "summary": "Cancel a run: unfinished files are cancelled, no more start; the run "
                       "records a partial summary (status cancelled)",
            "parameters": [path_param("run_id")], "requestBody": cancel_body,
            "responses": {"202": _resp("Cancelling", _obj({
                "runId": STR, "status": STR, "cancelledBy": STR, "cancelledAt": STR,
                "jobsCancelled": INT, "statusUrl": STR})), **_errors(400, 401, 404, 409, 413)}}},
        "/api/runs/{run_id}/retry-failed": {"post": {
            "operationId": "retry_failed_run_http",
            "summary": "A new run over exactly the failed files of a finished run (summary "
                       "field retryOf links it; the first run gets retriedBy)",
            "parameters": [path_param("run_id")],
            "responses": {"202": _resp("Retry run started", _obj({
                "runId": STR, "retryOf": STR, "files": INT, "created": BOOL,
                "statusUrl": STR})), **_errors(401, 404, 409)}}},
        "/api/cost": {"get": {
            "operationId": "cost_http",
            "summary": "Billed VM-seconds split into boot, processing and idle (money with "
                       "VM_PRICES), per UTC day and per run; default the last 7 days",
            "parameters": [{"name": "from", "in": "query",
                            "schema": {"type": "string", "format": "date-time"}},
                           {"name": "to", "in": "query",
                            "schema": {"type": "string", "format": "date-time"}}],
            "responses": {"200": _resp("Cost", _obj({
                "from": STR, "to": STR, "currency": {"type": "string", "nullable": True},
                "total": COST,
                "byPriority": {"type": "object", "description": "regular and spot members apart",
                               "additionalProperties": COST},
                "days": {"type": "array", "items": {"allOf": [COST, _obj({"day": STR})]}},
                "runs": {"type": "array", "items": {"allOf": [COST, _obj({"runId": STR})]}},
                "unattributed": COST})), **_errors(400, 401)}}},
        "/api/changes/{change_id}/cancel": {"post": {
            "operationId": "cancel_change_http",
            "summary": "Stop a pool change before its next step (steps done stay done)",
            "parameters": [path_param("change_id")], "requestBody": cancel_body,
            "responses": {"202": _resp("Cancelling", _obj({
                "changeId": STR, "status": STR, "cancelledBy": STR, "statusUrl": STR})),
                **_errors(400, 401, 404, 409, 413)}}},
        "/api/vms/{vm}/jobs/{job_id}/done": {"post": {
            "operationId": "vm_done_http",
            "summary": "A VM reports a finished step (token-checked; a repeat is a no-op)",
            "parameters": [path_param("vm", VM_NAME), path_param("job_id")],
            "requestBody": _body(_body_schema(DONE_BODY, output={
                "maxLength": 1032,
                "pattern": f"^(results/{_SEGMENT}({_NAME_CHARS}*{_SEGMENT})?)?$",
                "description": "An output blob in the results container "
                               "(RESULTS_CONTAINER; 'results' by default)."})),
            "responses": {"200": _resp("Accepted", _obj({"accepted": BOOL, "repeat": BOOL})),
                          **_errors(400, 401, 403, 404, 409, 410, 413)}}},
        "/api/vms/{vm}/idle": {"post": {
            "operationId": "vm_idle_http", "summary": "A VM has nothing to do",
            "parameters": [path_param("vm", VM_NAME)],
            "requestBody": _body(_body_schema(IDLE_BODY)),
            "responses": {"200": _resp("Noted", _obj({"vm": STR, "deallocate": BOOL})),
                          **_errors(400, 401, 403, 404, 413)}}},
        "/api/vms/{vm}/evicted": {"post": {
            "operationId": "vm_evicted_http",
            "summary": "A spot VM got Azure's Preempt notice and handed its work back",
            "parameters": [path_param("vm")],
            "requestBody": _body(_obj({"eventId": {"type": "string", "maxLength": 100}})),
            "responses": {"200": _resp("Recorded", _obj({
                "vm": STR, "state": {"type": "string", "enum": ["evicted"]},
                "start": {"type": "array", "items": STR}})),
                          **_errors(400, 401, 403, 404, 409, 413)}}},
        "/api/dashboard": {"get": {
            "operationId": "dashboard_http", "security": [],
            "summary": "The operators' dashboard page (asks for the function key itself)",
            "responses": {"200": {"description": "HTML page",
                                  "content": {"text/html": {"schema": STR}}}}}},
        "/api/dashboard/{asset}": {"get": {
            "operationId": "dashboard_asset_http", "security": [],
            "summary": "A static asset of the dashboard (script, style sheet)",
            "parameters": [path_param("asset")],
            "responses": {"200": {"description": "The asset", "content": {
                kind: {"schema": STR} for kind in ("text/javascript", "text/css",
                                                   "image/svg+xml")}},
                          **_errors(404)}}},
        "/api/deployment/status": {"get": {
            "operationId": "deployment_status_http",
            "summary": "Pending and running orchestrations, for a deployment gate",
            "responses": {"200": _resp("Status", _obj({"hasRunning": BOOL, "active": INT})),
                          **_errors(401)}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "VM pool orchestrator", "version": "1.0.0",
                 "description": "Submit work, change the VM pool and follow progress."},
        "servers": [{"url": "/"}],
        "security": [{"functionKey": []}, {"functionKeyQuery": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
                "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"}},
            "schemas": {
                "Cost": _obj({"billedVmSeconds": {"type": "number"},
                              "bootVmSeconds": {"type": "number"},
                              "processingVmSeconds": {"type": "number"},
                              "idleVmSeconds": {"type": "number"},
                              "money": {"type": "number", "description": "only with VM_PRICES"}},
                             ["billedVmSeconds", "bootVmSeconds", "processingVmSeconds",
                              "idleVmSeconds"]),
                "Delivery": _obj({
                    "deliveryId": STR, "attempt": INT, "event": STR, "url": STR, "at": STR,
                    "status": {"type": "integer", "nullable": True},
                    "error": {"type": "string", "nullable": True}, "delivered": BOOL,
                    "durationMs": INT}),
                "Error": _obj({"error": _obj({"code": STR, "message": STR}, ["code", "message"])},
                              ["error"]),
                "Job": _obj({"jobId": STR, "instanceId": STR, "blob": STR, "status": STR,
                             "runId": {"type": "string", "nullable": True},
                             "actions": {"type": "array", "items": STR}, "step": INT,
                             "attempts": INT, "vm": {"type": "string", "nullable": True},
                             "bytesIn": INT, "bytesOut": INT,
                             "output": {"type": "string", "nullable": True},
                             "error": {"type": "string", "nullable": True},
                             "createdAt": STR, "startedAt": {"type": "string", "nullable": True},
                             "finishedAt": {"type": "string", "nullable": True},
                             "durationMs": INT,
                             "cancelled": {"type": "object", "nullable": True, "properties": {
                                 "by": STR, "at": STR,
                                 "reason": {"type": "string", "nullable": True}}},
                             "retryOf": {"type": "string", "nullable": True},
                             "retriedBy": {"type": "string", "nullable": True}})}},
    }


def render() -> str:
    return json.dumps(document(), indent=2) + "\n"


if __name__ == "__main__":
    (ROOT / "openapi.json").write_text(render())
    sys.exit(0)
