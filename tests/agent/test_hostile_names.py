"""Hostile blob names never place a file outside the agent's work folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.paths import UnsafeNameError, contained, local_name, output_blob_name

LONG_UNICODE = "ü" * 300 + "/" + "名" * 200 + ".tar.gz"
STORABLE = ["/abs/path.txt", "win\\folder\\file.txt", LONG_UNICODE, "%2e%2e/%2e%2e/y.txt",
            "semi; $(touch pwned) `x`.txt", "\u202etxt.exe", "a//b.txt", "dir/", "-rf"]
REFUSED = {"../../escape.txt": "'..' segments", "dir/../../../etc/passwd": "'..' segments",
           "./x.txt": "'.' or '..'", "x\x00y.txt": "control characters",
           "line\nbreak.txt": "control characters", "..\\..\\win.txt": "'..' segments",
           "a\\..\\..\\b.txt": "'..' segments"}


def _tree(root: Path, skip: tuple[str, ...]) -> dict[str, int]:
    """Every file under `root` (outside the skipped top-level folders) with its size."""
    found = {}
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        if rel.parts and rel.parts[0] in skip:
            dirs.clear()
            continue
        for name in files:
            found[str(rel / name)] = (Path(folder) / name).stat().st_size
    return found


def test_hostile_names_are_contained(wait, agent_env, run_agent, work, api, control,
                                     tmp_path) -> None:
    work_dir = Path(agent_env["AGENT_WORK_DIR"])
    skip = ("work", "control")
    before = _tree(tmp_path, skip)
    items = {name: work.submit(name, name.encode("utf-8", "surrogatepass") + b"!")
             for name in [*STORABLE, "x\x00y.txt"]}
    items.update({name: work.submit(name, b"", upload=False)
                  for name in REFUSED if name not in items})
    run_agent(agent_env)
    wait(lambda: len(api.done_calls()) == len(items) and work.messages_left() == 0,
         what="a report for every name")

    by_token = {c.body["token"]: c.body for c in api.done_calls()}
    for name in STORABLE:
        body = by_token[items[name].token]
        assert body["status"] == "succeeded", (name, body["error"])
        out = f"{name}.process.out"
        assert body["output"].split("/", 1)[1] == out
        assert work.result(out) == (name.encode() + b"!").upper()
    for name, fragment in REFUSED.items():
        body = by_token[items[name].token]
        assert body["status"] == "failed" and fragment in body["error"], (name, body)
        assert body["output"] is None

    # nothing outside the work folder: the test's folder is unchanged, nothing at / or here
    assert _tree(tmp_path, skip) == before
    assert not Path("/abs/path.txt").exists() and not Path("pwned").exists()
    # every input the action saw lived directly inside a job folder of the work folder
    resolved_work = work_dir.resolve()
    lines = (control / "calls.log").read_text().splitlines()
    assert len(lines) == len(STORABLE)
    for line in lines:
        source, cwd, _ = line.split("\t")
        assert Path(source).resolve().parent == Path(cwd).resolve()
        assert Path(cwd).resolve().parent == resolved_work
    wait(lambda: not any(work_dir.iterdir()), what="job folders removed")


@pytest.mark.parametrize("name", [*STORABLE, *REFUSED, "..", "/", "\\", "a" * 5000])
def test_local_names_are_plain_children(tmp_path: Path, name: str) -> None:
    local = local_name(name, "in")
    path = contained(tmp_path, local)
    assert path.parent == tmp_path.resolve() and len(local) < 100
    assert local_name(name, "in") == local and local_name(name + "x", "in") != local


@given(st.text(min_size=1, max_size=300))
def test_any_name_maps_inside_the_folder(name: str) -> None:
    folder = Path("/nonexistent/work/job")
    local = local_name(name, "out")
    assert contained(folder, local).parent == folder
    try:
        out = output_blob_name(name, "process")
    except UnsafeNameError:
        return
    assert out == f"{name}.process.out"
    assert ".." not in out.replace("\\", "/").split("/")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".", "..", "x\x00", "a\\b"])
def test_contained_refuses_anything_but_a_plain_name(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UnsafeNameError):
        contained(tmp_path, bad)


def test_contained_refuses_a_symlinked_escape(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(UnsafeNameError):
        contained(tmp_path, "link")
