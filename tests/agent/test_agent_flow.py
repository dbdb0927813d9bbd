"""The agent in-process against Azurite and a stand-in for the app's API."""
from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from pathlib import Path

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from agent import __version__ as agent_version
from shared import telemetry
from shared.claims import ABANDONED, CLAIMED, DONE, FAILED, ClaimStore
from shared.pool.workers import WorkerRegistry
from shared.settings import Settings
from shared.storage import StorageConnection

KEY, VM = "test-function-key", "vm07"  # as in conftest.py


def _claims(settings: Settings, connection: StorageConnection) -> ClaimStore:
    table = connection.table_service().get_table_client(settings.claim_table)
    return ClaimStore(table, stale_after=timedelta(seconds=60))


def test_files_are_processed_and_acknowledged(wait, agent_env, run_agent, work, api, settings,
                                              connection, registry, control) -> None:
    items = [work.submit(f"batch/file{i}.json", f'{{"n": {i}}}'.encode()) for i in range(3)]
    chained = work.submit("batch/chain.json", b"step two", action="transform", step=1)
    run_agent({**agent_env, "AGENT_SLOTS": "2"})

    wait(lambda: len(api.done_calls()) >= 4 and work.messages_left() == 0, what="4 done")
    calls = {c.path: c for c in api.done_calls()}
    assert len(calls) == 4
    for i, item in enumerate(items):
        call = calls[f"/api/vms/{VM}/jobs/{item.job_id}/done"]
        assert call.key == KEY
        body = call.body
        out_name = f"batch/file{i}.json.process.out"
        assert body["output"] == f"{settings.results_container}/{out_name}"
        assert body | {"durationMs": 0} == {
            "step": 0, "attempt": 1, "token": item.token, "action": "process",
            "instanceId": item.instance_id, "blob": item.blob, "status": "succeeded",
            "exitCode": 0, "error": None, "output": body["output"],
            "bytesIn": len(f'{{"n": {i}}}'), "bytesOut": len(f'{{"n": {i}}}'),
            "durationMs": 0}
        assert isinstance(body["durationMs"], int) and body["durationMs"] >= 0
        assert work.result(out_name) == f'{{"N": {i}}}'.encode()
        claim = _claims(settings, connection).get(item.job_id, item.step_key)
        assert claim is not None and claim.state == DONE and claim.vm == VM
        assert claim.outcome["output"] == body["output"]
    step_two = calls[f"/api/vms/{VM}/jobs/{chained.job_id}/done"].body
    assert step_two["step"] == 1 and step_two["action"] == "transform"
    assert step_two["output"] == f"{settings.results_container}/batch/chain.json.transform.out"
    assert work.result("batch/chain.json.transform.out") == b"STEP TWO"
    # slots given back, the VM's heartbeat recorded, work folders cleaned up
    work_dir = Path(agent_env["AGENT_WORK_DIR"])
    wait(lambda: registry.get(VM).busy == 0 and not any(work_dir.iterdir()),
         what="slots released and job folders removed")
    assert registry.get(VM).last_heartbeat is not None
    # the action never saw the agent's secrets
    assert all(line.split("\t")[2] == "-" for line in
               (control / "calls.log").read_text().splitlines())


def test_failed_action_reports_exit_code_and_stderr_tail(wait, agent_env, run_agent, work, api,
                                                         settings, connection) -> None:
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    logging.getLogger("agent").addHandler(handler)
    item = work.submit("bad.csv", b"FAIL please")
    try:
        run_agent(agent_env)
        wait(lambda: api.done_calls() and work.messages_left() == 0, what="done call")
        wait(lambda: [r for r in exporter.get_finished_logs()
                      if r.log_record.attributes.get("step.outcome")], what="the step's record")
    finally:
        logging.getLogger("agent").removeHandler(handler)
    body = api.done_calls()[0].body
    assert body["status"] == "failed" and body["exitCode"] == 3 and body["output"] is None
    stderr_name = "bad.csv.process.1.stderr"
    assert body["error"].endswith(
        f"the last words\n(whole stderr: {settings.results_container}/{stderr_name})")
    assert "stderr line 499" in body["error"]
    assert "stderr line 0:" not in body["error"]  # only the tail travels
    assert len(body["error"]) <= 4200
    claim = _claims(settings, connection).get(item.job_id, item.step_key)
    assert claim is not None and claim.state == FAILED
    # The whole stderr is kept in a blob the error names; no output was uploaded.
    assert work.result_names() == [stderr_name]
    whole = work.result(stderr_name).decode()
    assert "stderr line 0:" in whole and "stderr line 499" in whole
    assert whole.rstrip().endswith("the last words")
    # The agent's record of the step carries the same attributes as the app's records.
    record = next(r.log_record for r in exporter.get_finished_logs()
                  if r.log_record.attributes.get("step.outcome"))
    attrs = dict(record.attributes)
    assert {k: attrs[k] for k in (telemetry.JOB_ID, telemetry.VM_NAME, telemetry.ATTEMPT,
                                  telemetry.STEP, telemetry.ACTION)} == {
        telemetry.JOB_ID: item.job_id, telemetry.VM_NAME: VM, telemetry.ATTEMPT: 1,
        telemetry.STEP: 0, telemetry.ACTION: "process"}
    assert attrs["step.outcome"] == "failed" and record.severity_text == "WARN"
    assert attrs["stderr.tail"].rstrip().endswith("the last words")
    assert attrs["stderr.blob"] == f"{settings.results_container}/{stderr_name}"


def test_oversized_output_is_refused(wait, agent_env, run_agent, work, api) -> None:
    work.submit("big.bin", b"BIG 5000")
    work.submit("small.bin", b"BIG 100")
    run_agent({**agent_env, "AGENT_MAX_OUTPUT_BYTES": "1000"})
    wait(lambda: len(api.done_calls()) == 2 and work.messages_left() == 0, what="2 done")
    bodies = {c.body["bytesIn"]: c.body for c in api.done_calls()}
    big, small = bodies[len(b"BIG 5000")], bodies[len(b"BIG 100")]
    assert big["status"] == "failed" and "AGENT_MAX_OUTPUT_BYTES=1000" in big["error"]
    assert big["output"] is None and big["bytesOut"] == 0
    assert small["status"] == "succeeded" and small["bytesOut"] == 100
    assert work.result_names() == ["small.bin.process.out"]


def test_done_is_retried_after_503(wait, agent_env, run_agent, work, api) -> None:
    api.fail_next("done", 503, 503)
    item = work.submit("retry.txt", b"abc")
    run_agent(agent_env)
    wait(lambda: work.messages_left() == 0, what="message deleted")
    calls = api.done_calls()
    assert len(calls) == 3  # two 503s, then the acknowledgement
    assert all(c.body == calls[0].body for c in calls)
    assert calls[0].body["token"] == item.token
    assert work.result("retry.txt.process.out") == b"ABC"


def test_refusals(wait, agent_env, run_agent, work, api, settings, connection) -> None:
    """409 (step finished elsewhere) spends the message; 400 leaves it."""
    api.fail_next("done", 409, 400)
    first = work.submit("one.txt", b"x")
    run_agent(agent_env)
    wait(lambda: len(api.done_calls()) == 1 and work.messages_left() == 0, what="409")
    claim = _claims(settings, connection).get(first.job_id, first.step_key)
    assert claim is not None and claim.state == ABANDONED
    second = work.submit("two.txt", b"y")
    wait(lambda: len(api.done_calls()) == 2, what="400")
    assert work.messages_left() == 1
    claim = _claims(settings, connection).get(second.job_id, second.step_key)
    assert claim is not None and claim.state == CLAIMED


def test_malformed_messages_are_left_and_do_not_stop_the_agent(wait, agent_env, run_agent, work,
                                                               api) -> None:
    work.send_raw("this is not base64 !!!")
    work.send_raw("bm90IGpzb24=")  # base64 of "not json"
    work.send_raw("eyJqb2JJZCI6ICJhIn0=")  # base64 of {"jobId": "a"}
    item = work.submit("good.txt", b"fine")
    agent = run_agent(agent_env)
    wait(api.done_calls, what="the good message")
    wait(lambda: agent.outcomes.get("malformed", 0) >= 3, what="3 malformed seen")
    assert [c.body["token"] for c in api.done_calls()] == [item.token]
    wait(lambda: agent.outcomes.get("succeeded") == 1, what="the good message finished")
    assert work.messages_left() == 3  # the malformed ones are left for the poison path


def test_malformed_messages_move_to_the_poison_queue_after_the_dequeue_limit(
        wait, agent_env, run_agent, work, api) -> None:
    work.send_raw("this is not base64 !!!")
    work.send_raw("eyJqb2JJZCI6ICJhIn0=")  # base64 of {"jobId": "a"}
    item = work.submit("good.txt", b"fine")
    agent = run_agent({**agent_env, "AGENT_VISIBILITY_TIMEOUT_SECONDS": "1",
                       "AGENT_MAX_DEQUEUE_COUNT": "2"})
    poison = work.connection.queue_service().get_queue_client(
        f"{work.settings.work_queue}-poison")
    wait(lambda: agent.outcomes.get("poisoned", 0) == 2, what="2 messages poisoned")
    moved = sorted(m.content for m in poison.peek_messages(max_messages=32))
    assert moved == sorted(["this is not base64 !!!", "eyJqb2JJZCI6ICJhIn0="])
    wait(lambda: work.messages_left() == 0, what="an empty work queue")
    assert [c.body["token"] for c in api.done_calls()] == [item.token]


def test_unknown_action_and_missing_input_are_failed_steps(wait, agent_env, run_agent, work,
                                                           api) -> None:
    work.submit("a.txt", b"x", action="nosuchaction")
    work.submit("never-uploaded.txt", b"", upload=False)
    work.submit("x.txt", b"", upload=False, container="Not_A_Container")
    run_agent(agent_env)
    wait(lambda: len(api.done_calls()) == 3 and work.messages_left() == 0, what="3 done")
    errors = sorted(c.body["error"] for c in api.done_calls())
    assert all(c.body["status"] == "failed" for c in api.done_calls())
    assert "'Not_A_Container/x.txt' cannot be read" in errors[0]
    assert "not found" in errors[1] and "never-uploaded.txt" in errors[1]
    assert "unknown action 'nosuchaction'" in errors[2]


def test_idle_endpoint_is_called_once_per_idle_period(wait, agent_env, run_agent, work,
                                                      api) -> None:
    work.submit("first.txt", b"x")
    agent = run_agent({**agent_env, "AGENT_IDLE_SECONDS": "1"})
    wait(api.idle_calls, what="an idle call")
    assert api.done_calls(), "the idle call came only after the work was done"
    first = api.idle_calls()[0]
    assert first.key == KEY and first.body["idleSeconds"] >= 1
    wait(lambda: len(api.idle_calls()) >= 2, what="a second idle call")
    agent.stop()
    calls = api.idle_calls()
    # once per idle period: the idle time reported grows between calls
    assert calls[1].body["idleSeconds"] > calls[0].body["idleSeconds"]
    assert json.dumps(calls[0].body) == json.dumps({"idleSeconds": calls[0].body["idleSeconds"]})


def test_a_vm_without_a_free_slot_takes_no_work(wait, agent_env, run_agent, work, api,
                                                registry) -> None:
    registry.transition(VM, "draining", ["running"])
    work.submit("wait.txt", b"x")
    agent = run_agent(agent_env)
    wait(lambda: agent.outcomes.get("no-slot", 0) >= 2, what="slot refusals")
    assert api.done_calls() == []
    assert work.messages_left() == 1
    registry.transition(VM, "running", ["draining"])
    wait(lambda: api.done_calls() and work.messages_left() == 0, what="work after running")


def test_heartbeats_keep_a_long_job_to_its_agent(wait, agent_env, run_agent, work, api, registry,
                                                 control) -> None:
    """Visibility and claim outlive their 1 s limits while the action runs, so a second
    agent polling the same queue never gets the message."""
    registry.ensure_members([VM, "vm08"], slots=2)
    registry.transition("vm08", "running", ["deallocated"])
    short = {**agent_env, "AGENT_VISIBILITY_TIMEOUT_SECONDS": "1",
             "AGENT_CLAIM_STALE_SECONDS": "1"}
    (control / "hold").touch()
    item = work.submit("long.txt", b"SLOW long")
    run_agent(short)
    wait((control / "started").exists, what="the action")
    other = run_agent({**short, "AGENT_VM_NAME": "vm08"})
    hold_until = time.monotonic() + 4  # several visibility/claim periods
    while time.monotonic() < hold_until:
        time.sleep(0.1)
    (control / "hold").unlink()
    wait(lambda: api.done_calls() and work.messages_left() == 0, what="the report")
    assert [c.path for c in api.done_calls()] == [f"/api/vms/{VM}/jobs/{item.job_id}/done"]
    assert other.outcomes == {}
    assert (control / "started").read_text().count("\n") == 1  # the action ran once


def test_without_pool_and_exit_when_idle(wait, agent_env, run_agent, work, api,
                                         registry) -> None:
    """A Kubernetes pod: no pool row of its own, a worker row instead, and it ends itself once
    idle without asking the app to stop a machine it does not have."""
    item = work.submit("k8s.txt", b"pod")
    agent = run_agent({**agent_env, "AGENT_VM_NAME": "pod-abc", "AGENT_USE_POOL": "false",
                       "AGENT_EXIT_WHEN_IDLE": "true", "AGENT_IDLE_SECONDS": "2"})
    workers = WorkerRegistry(registry.table)
    seen = wait(lambda: workers.get("pod-abc"), what="the worker's heartbeat row")
    assert seen.state == "running" and seen.agent_version == agent_version
    wait(agent.stopping.is_set, what="the agent to stop itself")
    assert [c.path for c in api.done_calls()] == [f"/api/vms/pod-abc/jobs/{item.job_id}/done"]
    assert api.idle_calls() == []
    assert work.messages_left() == 0
    assert registry.get(VM).busy == 0 and registry.get(VM).last_heartbeat is None
    assert "pod-abc" not in [r.name for r in registry.list()]  # not a pool member
    wait(lambda: (workers.get("pod-abc") or seen).state == "stopped",
         what="the worker row to say stopped")


def test_claimed_elsewhere_is_left_and_finished_is_deleted(wait, agent_env, run_agent, work, api,
                                                           settings, connection) -> None:
    claims = _claims(settings, connection)
    busy = work.submit("busy.txt", b"x")
    claims.claim(busy, "vm99")  # another VM works on it, heartbeat fresh
    spent = work.submit("spent.txt", b"y")
    claims.claim(spent, "vm99")
    claims.finish(spent.job_id, spent.step_key, "vm99", DONE)
    agent = run_agent(agent_env)
    wait(lambda: agent.outcomes.get("spent") == 1 and agent.outcomes.get("claimed-elsewhere"),
         what="both messages seen")
    assert api.done_calls() == []
    assert work.messages_left() == 1  # the spent one is deleted, the busy one left alone
    claim = claims.get(busy.job_id, busy.step_key)
    assert claim is not None and claim.vm == "vm99" and claim.state == CLAIMED
    assert work.result_names() == []
