"""What the agent asks storage for: its clients go through a recording proxy in front of Azurite.

One receiver asks for as many messages as there are free slots and backs off while the queue
is empty; a job's pool slot costs one write to take and one to give back; the rest of a job's
path makes no request it could do without.
"""
from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

from shared.clock import utcnow
from tools.storage_proxy import Seen, StorageProxy

VM = "vm07"  # as in conftest.py


def _env(agent_env: dict[str, str], proxy: StorageProxy, **extra: str) -> dict[str, str]:
    return {**agent_env, "AGENT_STORAGE_CONNECTION": proxy.connection_string, **extra}


def _is_receive(seen: Seen) -> bool:
    return seen.service == "queue" and seen.method == "GET" and seen.path.endswith("/messages")


def _received(seen: Seen) -> int:
    return seen.answer.count(b"<QueueMessage>")


def _kind(seen: Seen, settings) -> str:  # noqa: ANN001 - Settings
    """What a request was, without names: `table vm PUT 204`, `blob data GET 206`, ..."""
    resource = seen.path.split("/")[2] if seen.path.count("/") >= 2 else ""
    names = {settings.vm_table: "vm", settings.claim_table: "claim",
             settings.data_container: "data", settings.results_container: "results",
             settings.work_queue: "work"}
    name = names.get(resource.split("(")[0], resource)
    if seen.service == "table" and "(" in resource:
        name += " row"
    if seen.service == "queue" and seen.path.count("/") > 3:
        name += " message"
    return f"{seen.service} {name} {seen.method} {seen.status}"


def _backoff_allows(elapsed: float, low: float, high: float) -> int:
    """The most receives a loop pausing `low`, doubling up to `high`, makes in `elapsed` s."""
    count, waited, delay = 1, 0.0, low
    while waited + delay <= elapsed:
        waited += delay
        count += 1
        delay = min(delay * 2, high)
    return count


def test_an_idle_agent_has_one_receiver_that_backs_off(wait, agent_env, run_agent, registry,
                                                       proxy) -> None:
    registry.ensure_members([VM], slots=4)
    started = time.monotonic()
    run_agent(_env(agent_env, proxy, AGENT_SLOTS="4", AGENT_POLL_MIN_SECONDS="0.1",
                   AGENT_POLL_MAX_SECONDS="0.4"))
    wait(lambda: len(proxy.requests(_is_receive)) >= 6, what="six receives")
    receives = proxy.requests(_is_receive)
    elapsed = time.monotonic() - started
    # Four slots polling on their own would make four receives at once, and four per pause.
    assert len(receives) <= _backoff_allows(elapsed, 0.1, 0.4)
    assert {r.query["numofmessages"] for r in receives} == {"4"}  # all four slots are free
    assert all(_received(r) == 0 for r in receives)


def test_the_receiver_asks_for_the_free_slots_and_waits_while_none_is(
        wait, agent_env, run_agent, work, registry, api, control, proxy) -> None:
    registry.ensure_members([VM], slots=4)
    (control / "hold").touch()
    for i in range(6):
        work.submit(f"slow{i}.txt", b"SLOW")
    agent = run_agent(_env(agent_env, proxy, AGENT_SLOTS="4", AGENT_POLL_MIN_SECONDS="0.05",
                           AGENT_POLL_MAX_SECONDS="0.2"))
    started = control / "started"
    wait(lambda: started.exists() and started.read_text().count("\n") == 4, what="4 actions")
    first = proxy.requests(_is_receive)[0]
    assert first.query["numofmessages"] == "4" and _received(first) == 4
    time.sleep(1.0)  # twenty pauses of the backoff: a polling slot would have asked again
    assert len(proxy.requests(_is_receive)) == 1
    assert registry.get(VM).busy == 4
    (control / "hold").unlink()
    wait(lambda: agent.outcomes.get("succeeded") == 6 and work.messages_left() == 0,
         what="all six done")
    receives = proxy.requests(_is_receive)
    assert sum(_received(r) for r in receives) == 6  # no message was taken twice ...
    releases = proxy.requests(lambda s: s.service == "queue" and s.method == "PUT"
                              and s.query.get("visibilitytimeout") == "0")
    assert releases == []  # ... nor received without a slot and handed back
    assert all(1 <= int(r.query["numofmessages"]) <= 4 for r in receives)
    assert len(api.done_calls()) == 6


def test_a_job_costs_two_pool_writes_and_no_avoidable_request(
        wait, agent_env, run_agent, work, registry, settings, proxy) -> None:
    agent = run_agent(_env(agent_env, proxy, AGENT_HEARTBEAT_SECONDS="3600"))
    wait(lambda: registry.get(VM).last_heartbeat is not None, what="the first heartbeat")
    wait(lambda: [s for s in proxy.requests() if _kind(s, settings) == "table vm row PUT 204"],
         what="the heartbeat through the proxy")
    proxy.clear()

    def one_job(name: str, done: int) -> list[str]:
        work.submit(name, b"data")
        wait(lambda: agent.outcomes.get("succeeded") == done and registry.get(VM).busy == 0,
             what=f"job {done}")
        wait(lambda: len([s for s in proxy.requests() if "vm row" in _kind(s, settings)]) >= 2,
             what="the slot's release through the proxy")
        kinds = [_kind(s, settings) for s in proxy.requests() if not _is_receive(s)]
        proxy.clear()
        return kinds

    # The steady state: the kept row is current, so claim and release are one write each.
    assert Counter(one_job("one.txt", 1)) == Counter({
        "table vm row PUT 204": 2,      # slot claim and release, no read
        "table claim POST 201": 1,      # the step's claim (an insert: nobody else holds it)
        "table claim row PATCH 204": 1,  # finished on the claim's own ETag: no read
        "blob data GET 206": 1,         # the download (no properties read before it)
        "blob results PUT 201": 1,      # the output
        "queue work message DELETE 204": 1,
    })
    # Someone else writes the row between two jobs: the claim's write is refused and redone on
    # a fresh read, and what the other writer set survives.
    held = utcnow() + timedelta(minutes=5)
    registry.hold(VM, held)
    vm_row = [k for k in one_job("two.txt", 2) if "vm row" in k]
    assert vm_row == ["table vm row PUT 412", "table vm row GET 200", "table vm row PUT 204",
                      "table vm row PUT 204"]
    rec = registry.get(VM)
    assert rec.busy == 0 and rec.held_until == held
