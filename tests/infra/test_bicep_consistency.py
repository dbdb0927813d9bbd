"""What a Bicep compiler would refuse, checked on pycep's parse of the templates: parameter
files and module calls match the templates' parameters, and every `X.outputs.Y` names an output
module X declares."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scripts import bicep as br


def _bicep_files(infra: Path) -> list[Path]:
    files = sorted(infra.rglob("*.bicep"))
    assert files, "no Bicep files"
    return files


def test_parameter_file_matches_main_bicep(infra: Path) -> None:
    params = br.parameters(br.load(infra / "main.bicep"))
    given = json.loads((infra / "main.parameters.json").read_text())["parameters"]
    unknown = set(given) - set(params)
    missing = {name for name, p in params.items() if p.required} - set(given)
    assert not unknown, f"main.parameters.json sets parameters main.bicep lacks: {unknown}"
    assert not missing, f"required parameters of main.bicep not in main.parameters.json: {missing}"
    for name, body in given.items():
        assert set(body) == {"value"}, f"{name}: expected only a value"


def test_module_calls_match_module_parameters(infra: Path) -> None:
    calls = 0
    for path in _bicep_files(infra):
        for call in br.module_calls(br.load(path)):
            calls += 1
            target = (path.parent / call.path).resolve()
            assert target.is_file(), f"{path.name}: module {call.symbol} -> missing {call.path}"
            declared = br.parameters(br.load(target))
            unknown = call.params - set(declared)
            missing = {n for n, p in declared.items() if p.required} - call.params
            assert not unknown, f"{path.name}: {call.symbol} passes unknown {sorted(unknown)}"
            assert not missing, f"{path.name}: {call.symbol} lacks required {sorted(missing)}"
    assert calls >= 9


def test_module_outputs_used_exist(infra: Path) -> None:
    for path in _bicep_files(infra):
        tree = br.load(path)
        modules = {c.symbol: (path.parent / c.path).resolve() for c in br.module_calls(tree)}
        used = "\n".join(sorted(br.references(tree)))
        for symbol, output in re.findall(r"\b(\w+)\.outputs\.(\w+)", used):
            if symbol in modules:
                declared = br.outputs(br.load(modules[symbol]))
                assert output in declared, f"{path.name}: {symbol}.outputs.{output} is not declared"


def test_loaded_files_exist(infra: Path) -> None:
    """loadTextContent/loadJsonContent paths resolve (the cloud-init template above all)."""
    loads = 0
    for path in _bicep_files(infra):
        for rel in re.findall(r"load\w+Content\('([^']+)'\)", path.read_text()):
            loads += 1
            assert (path.parent / rel).is_file(), f"{path.name}: {rel} does not exist"
    assert loads >= 2


# --- the reading: it must tell required from optional and see nested keys right ---------------

SAMPLE = """
// param commented string
@description('a {brace} in a string: \\'quoted\\'')
param required string
@secure()
param secret string
param optional int = 3
param block object = {
  a: 1
}
module m 'x.bicep' = if (true) {
  name: 'm'
  params: {
    one: 'x${required}y'
    two: {
      nested: 1
    }
    'three': [
      1
    ]
  }
}
var settings = union({
  A: '}'
  B: { C: 1 }
}, {})
output out string = 'v'
"""


def test_reader_on_a_known_sample() -> None:
    tree = br.parse(SAMPLE)
    params = br.parameters(tree)
    assert {n for n, p in params.items() if p.required} == {"required", "secret"}
    assert {n for n, p in params.items() if not p.required} == {"optional", "block"}
    (call,) = br.module_calls(tree)
    assert call.symbol == "m" and call.path == "x.bicep"
    assert call.params == {"one", "two", "three"}
    assert br.object_literal_keys(tree, "settings") == ["A", "B"]
    assert br.outputs(tree) == {"out"}
    assert "required" in br.references(tree)  # used inside 'x${required}y'
    assert not any("commented" in s for s in br.strings(tree))


def test_reader_refuses_unbalanced_text() -> None:
    with pytest.raises(br.BicepReadError):
        br.parse("var x = { a: { b: 1 }")
    with pytest.raises(br.BicepReadError):
        br.object_literal_keys(br.parse("var x = 1\n"), "missing")
