"""bench.latency's reading of Azurite's access log: what each request line is counted as."""
from __future__ import annotations

from pathlib import Path

from bench.latency import AccessLog


def test_lines_are_classified_by_the_names_azurite_holds(tmp_path: Path) -> None:
    asked: list[int] = []

    def names() -> tuple[set[str], set[str]]:
        asked.append(1)
        return {"tbllog"}, {"work"}

    log = AccessLog(tmp_path / "azurite.log", names)
    counts = log.count([
        ("POST", "/devstoreaccount1/tbllog", 201),
        ("GET", "/devstoreaccount1/tbllog(PartitionKey='a',RowKey='b')", 200),
        ("POST", "/devstoreaccount1/$batch", 202),
        ("POST", "/devstoreaccount1/work/messages?visibilitytimeout=0", 201),
        ("PUT", "/devstoreaccount1/data/a.json", 201),
        ("GET", "/devstoreaccount1/data/b.json", 200),
        ("GET", "/devstoreaccount1/data/c.json", 200),
    ])
    assert counts["service"] == {"table": 3, "queue": 1, "blob": 3}
    assert counts["resource"]["table:$batch POST"] == 1
    assert counts["resource"]["blob:data GET"] == 2
    # Once to learn the tables and queues, once more for the container's name: not per line.
    assert len(asked) == 2
