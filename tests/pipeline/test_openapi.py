"""The OpenAPI document describes every HTTP function, and the committed file is current."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from shared import contracts
from shared.api import ApiError
from shared.callback import DONE_BODY, IDLE_BODY, check_done, check_idle
from shared.jobs import Job
from shared.services import Services
from shared.settings import Settings
from tools.make_openapi import render

ROOT = Path(__file__).resolve().parent.parent.parent


_LIST = """
import json, function_app
out = {}
for fn in function_app.app.get_functions():
    t = fn.get_trigger()
    if t.type == "httpTrigger":
        out[fn.get_function_name()] = t.get_dict_repr()
print(json.dumps(out, default=str))
"""


def _http_functions() -> dict[str, dict]:
    """HTTP trigger specs, indexed in a fresh process (an app object indexes only once)."""
    proc = subprocess.run([sys.executable, "-c", _LIST], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_committed_document_is_current() -> None:
    assert (ROOT / "openapi.json").read_text() == render(), "run: python -m tools.make_openapi"


def test_every_http_function_is_described_with_its_route_and_method() -> None:
    doc = json.loads((ROOT / "openapi.json").read_text())
    operations = {op["operationId"]: (path, method)
                  for path, item in doc["paths"].items() for method, op in item.items()}
    functions = _http_functions()
    assert set(functions) == set(operations)
    for name, spec in functions.items():
        path, method = operations[name]
        route = re.sub(r"\{(\w+)(:[^}]*)?\??\}", r"{\1}", spec["route"])
        assert path == "/api/" + route, name
        assert method.upper() in [m.upper() for m in spec["methods"]], name


def test_anonymous_only_where_documented_without_security() -> None:
    doc = json.loads((ROOT / "openapi.json").read_text())
    for name, spec in _http_functions().items():
        op = next(op for item in doc["paths"].values() for op in item.values()
                  if op["operationId"] == name)
        assert (spec.get("authLevel") == "ANONYMOUS") == (op.get("security") == []), name


def test_document_is_a_valid_openapi_3_document() -> None:
    validate(json.loads((ROOT / "openapi.json").read_text()))


# --- field by field: the document says what the handlers check ---------------------------------

def _schema(doc: dict, path: str, method: str = "post") -> dict:
    return doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]


def _services() -> Services:
    # Validation reads only the settings; nothing here reaches storage.
    return Services(Settings.from_env({"CALLBACK_SIGNING_KEY": "k"}), connection=None)


_SAMPLES = {"string": "x", "integer": 1, "number": 1.5, "boolean": True}
_WRONG = {"string": 1, "integer": "1", "number": "1", "boolean": "yes"}


def test_the_done_callback_refuses_what_the_document_does_not_allow() -> None:
    schema = _schema(json.loads((ROOT / "openapi.json").read_text()),
                     "/api/vms/{vm}/jobs/{job_id}/done")
    assert set(schema["properties"]) == {f.name for f in DONE_BODY}
    valid = {name: prop.get("enum", [_SAMPLES[prop["type"]]])[0]
             for name, prop in schema["properties"].items()}
    for name in schema["required"]:
        body = {k: v for k, v in valid.items() if k != name}
        with pytest.raises(ApiError, match=f"field '{name}' is required"):
            check_done(_services(), "vm01", "job-1", json.dumps(body).encode(), {})
    for name, prop in schema["properties"].items():
        body = {**valid, name: _WRONG[prop["type"]]}
        with pytest.raises(ApiError, match=f"field '{name}'"):
            check_done(_services(), "vm01", "job-1", json.dumps(body).encode(), {})
        if prop.get("enum"):
            with pytest.raises(ApiError, match=f"field '{name}' must be"):
                check_done(_services(), "vm01", "job-1",
                           json.dumps({**valid, name: "other"}).encode(), {})
        if "minimum" in prop:
            with pytest.raises(ApiError, match=f"field '{name}' must be a number"):
                check_done(_services(), "vm01", "job-1",
                           json.dumps({**valid, name: prop["minimum"] - 1}).encode(), {})


def test_the_idle_callback_schema_is_what_the_handler_reads() -> None:
    schema = _schema(json.loads((ROOT / "openapi.json").read_text()), "/api/vms/{vm}/idle")
    assert set(schema["properties"]) == {f.name for f in IDLE_BODY} == {"idleSeconds"}
    prop = schema["properties"]["idleSeconds"]
    with pytest.raises(ApiError, match="field 'idleSeconds' has the wrong type"):
        check_idle(_services(), "vm01", b'{"idleSeconds": "soon"}', {})
    for refused in (prop["minimum"] - 1, prop["maximum"]):  # the maximum is exclusive
        with pytest.raises(ApiError, match="field 'idleSeconds' must be a number from"):
            check_idle(_services(), "vm01", json.dumps({"idleSeconds": refused}).encode(), {})


def test_enums_and_the_job_schema_follow_the_code() -> None:
    doc = json.loads((ROOT / "openapi.json").read_text())

    def query_enum(path: str, name: str) -> list[str]:
        params = doc["paths"][path]["get"]["parameters"]
        enum = next(p["schema"]["enum"] for p in params if p["name"] == name)
        assert enum[0] == ""  # an empty filter is no filter, as choice_param reads it
        return enum[1:]

    assert query_enum("/api/jobs", "status") == list(contracts.JOB_STATUSES)
    assert query_enum("/api/runs", "status") == list(contracts.RUN_STATUSES)
    assert query_enum("/api/changes", "status") == list(contracts.CHANGE_STATUSES)
    assert query_enum("/api/changes", "changeType") == list(contracts.CHANGE_TYPES)
    change = _schema(doc, "/api/changes")["properties"]["changeType"]
    assert change["enum"] == list(contracts.CHANGE_TYPES)
    job = Job(job_id="j", instance_id="j", container="data", blob="b", status="queued")
    assert set(doc["components"]["schemas"]["Job"]["properties"]) == set(job.to_api())
