"""The OpenAPI document describes every HTTP function, and the committed file is current."""
import json
import re
import subprocess
import sys
from pathlib import Path

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
    from openapi_spec_validator import validate  # noqa: PLC0415

    validate(json.loads((ROOT / "openapi.json").read_text()))
