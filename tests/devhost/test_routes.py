"""Route templates: constraints, optional and catch-all parameters, precedence, bad templates."""
from __future__ import annotations

import pytest

from devhost.errors import RouteTemplateError
from devhost.routes import RouteTable, RouteTemplate


@pytest.mark.parametrize(("template", "path", "expected"), [
    ("items/{id:int}", "items/42", {"id": "42"}),
    ("items/{id:int}", "items/-3", {"id": "-3"}),
    ("items/{id:int}", "items/4x", None),
    ("items/{id:int}", "items/99999999999", None),
    ("items/{id:long}", "items/99999999999", {"id": "99999999999"}),
    ("items/{id:guid}", "items/3f2504e0-4f89-11d3-9a0c-0305e82c3301",
     {"id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}),
    ("items/{id:guid}", "items/not-a-guid", None),
    ("u/{x:alpha}", "u/abc", {"x": "abc"}),
    ("u/{x:alpha}", "u/ab1", None),
    ("u/{x:bool}", "u/True", {"x": "True"}),
    ("n/{x:min(10)}", "n/9", None),
    ("n/{x:range(1,5)}", "n/5", {"x": "5"}),
    ("s/{x:length(2,3)}", "s/abcd", None),
    ("s/{x:regex(^a+$)}", "s/aaa", {"x": "aaa"}),
    ("s/{x:minlength(2):maxlength(3)}", "s/ab", {"x": "ab"}),
    ("pages/{page?}", "pages", {}),
    ("pages/{page?}", "pages/2", {"page": "2"}),
    ("pages/{page=1}", "pages", {"page": "1"}),
    ("files/{*path}", "files", {}),
    ("files/{*path}", "files/a/b%2Fc.txt", {"path": "a/b/c.txt"}),
    ("Items/List", "items/list", {}),
    ("{a}/{b}.{ext}", "x/y.tar", {"a": "x", "b": "y", "ext": "tar"}),
    ("items/{id}", "items/1/extra", None),
])
def test_template_matching(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert RouteTemplate.parse(template).match(path) == expected


@pytest.mark.parametrize("template", [
    "items/{id:nope}", "items/{id", "items/{*path}/more", "a//b", "x/{a}/{a}",
    "items/{id:min(x)}", "x-{a?}", "{1bad}",
])
def test_bad_templates_raise(template: str) -> None:
    with pytest.raises(RouteTemplateError):
        RouteTemplate.parse(template)


def test_literals_win_over_parameters_and_methods_are_checked() -> None:
    table: RouteTable[str] = RouteTable()
    table.add("items/{id}", ["GET"], "by-id")
    table.add("items/{*rest}", None, "catch-all")
    table.add("items/new", ["POST"], "create")
    assert table.find("items/new", "POST") == ("ok", "create", {})
    assert table.find("items/7", "get") == ("ok", "by-id", {"id": "7"})
    assert table.find("items/new", "GET") == ("ok", "by-id", {"id": "new"})
    assert table.find("items/7", "DELETE") == ("ok", "catch-all", {"rest": "7"})
    only_get: RouteTable[str] = RouteTable()
    only_get.add("x", ["GET"], "x")
    assert only_get.find("x", "PUT") == ("method", None, {})
    assert only_get.find("y", "GET") == ("missing", None, {})
