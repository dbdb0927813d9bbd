"""`python -m agent` as a real process: a killed agent's work is finished by another agent,
and SIGTERM drains (the file in hand completes, nothing new is taken, exit code 0)."""
from __future__ import annotations

import signal
from datetime import timedelta

from shared.claims import DONE, ClaimStore

VM, OTHER_VM = "vm07", "vm08"  # vm07 as in conftest.py


def test_killed_agent_leaves_work_that_another_agent_completes(
        wait, agent_env, spawn_agent, work, api, registry, settings, connection,
        control) -> None:
    registry.ensure_members([VM, OTHER_VM], slots=2)
    registry.transition(OTHER_VM, "running", ["deallocated"])
    fast = {**agent_env, "AGENT_VISIBILITY_TIMEOUT_SECONDS": "2",
            "AGENT_CLAIM_STALE_SECONDS": "2"}
    (control / "hold").touch()
    item = work.submit("long/job.dat", b"SLOW input")

    first = spawn_agent(fast, "first")
    wait((control / "started").exists, what="the first agent's action")
    claims = ClaimStore(connection.table_service().get_table_client(settings.claim_table),
                        stale_after=timedelta(seconds=2))
    claim = claims.get(item.job_id, item.step_key)
    assert claim is not None and claim.vm == VM
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    (control / "hold").unlink()  # the orphaned action may finish; its output goes nowhere

    spawn_agent({**fast, "AGENT_VM_NAME": OTHER_VM}, "second")
    wait(lambda: api.done_calls() and work.messages_left() == 0, timeout=60,
         what="the second agent's report")
    calls = api.done_calls()
    assert [c.path for c in calls] == [f"/api/vms/{OTHER_VM}/jobs/{item.job_id}/done"]
    assert calls[0].body["status"] == "succeeded"
    assert work.result("long/job.dat.process.out") == b"SLOW INPUT"
    claim = claims.get(item.job_id, item.step_key)
    assert claim is not None and claim.vm == OTHER_VM and claim.state == DONE


def test_sigterm_finishes_the_file_in_hand_and_takes_nothing_new(
        wait, agent_env, spawn_agent, work, api, settings, connection, control,
        tmp_path) -> None:
    (control / "hold").touch()
    in_hand = work.submit("drain/in-hand.txt", b"SLOW drain")
    agent = spawn_agent({**agent_env, "AGENT_SLOTS": "2"}, "drain")
    wait((control / "started").exists, what="the action in hand")

    agent.send_signal(signal.SIGTERM)
    log = tmp_path / "drain.log"
    wait(lambda: "received SIGTERM" in log.read_text(), what="the signal to be handled")
    later = [work.submit(f"drain/later{i}.txt", b"later") for i in range(2)]
    assert agent.poll() is None  # still busy with the file in hand
    (control / "hold").unlink()

    assert agent.wait(timeout=60) == 0
    calls = api.done_calls()
    assert [c.body["token"] for c in calls] == [in_hand.token]
    assert calls[0].body["status"] == "succeeded"
    assert work.result("drain/in-hand.txt.process.out") == b"SLOW DRAIN"
    # the later messages were never received: still visible, never dequeued, never claimed
    queue = connection.queue(settings.work_queue)
    peeked = queue.peek_messages(max_messages=32)
    assert sorted(m.content for m in peeked) == sorted(i.to_json() for i in later)
    assert all(m.dequeue_count == 0 for m in peeked)
    claims = ClaimStore(connection.table_service().get_table_client(settings.claim_table))
    assert all(claims.get(i.job_id, i.step_key) is None for i in later)


def test_configuration_error_exits_2_naming_the_variable(spawn_agent, agent_env,
                                                         tmp_path) -> None:
    process = spawn_agent({**agent_env, "AGENT_VISIBILITY_TIMEOUT_SECONDS": "soon"}, "bad")
    assert process.wait(timeout=60) == 2
    log = (tmp_path / "bad.log").read_text()
    assert "AGENT_VISIBILITY_TIMEOUT_SECONDS: expected an integer" in log
