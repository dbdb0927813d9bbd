"""`pool_change` replayed through the SDK's helper: steps in order, polling, failure."""
from __future__ import annotations

from datetime import timedelta

import pytest

from shared import contracts
from shared.orchestrations import CHANGE_POLL_SECONDS, UnsupportedVersion, pool_change
from tests.orchestrations.replay import (
    T0,
    Replay,
    activity,
    activity_with_retry,
    any_of,
    event,
    timer,
)

CHANGE = {"changeId": "change-0123456789abcdef", "changeType": "pool.stop", "vms": ["vm01"],
          "spec": {}, "steps": [{"vm": "vm01", "step": step, "status": "pending"}
                                for step in contracts.CHANGE_PLANS["pool.stop"]]}


def step_call(step: str, status: str = "running", operation: str | None = None) -> tuple:
    return activity(contracts.CHANGE_STEP, {"step": {"vm": "vm01", "step": step,
                                                     "status": status},
                                            "spec": {}, "operation": operation})


def steps(*statuses: str) -> list[dict]:
    return [{"vm": "vm01", "step": step, "status": status}
            for step, status in zip(contracts.CHANGE_PLANS["pool.stop"], statuses, strict=True)]


def test_steps_run_in_order_and_slow_ones_are_polled_after_durable_timers() -> None:
    run = Replay(pool_change, CHANGE, instance_id=CHANGE["changeId"])
    run.expect(step_call("drain"))
    assert run.context.custom_status == {"status": "running", "progress": "0/3",
                                         "steps": steps("running", "pending", "pending"),
                                         "error": ""}
    run.complete(contracts.step_done())
    run.expect(step_call("wait_idle"))
    run.complete(contracts.step_pending(None))  # still busy: poll after the default interval
    # each wait races the change's cancel event
    run.expect(any_of(timer(T0 + timedelta(seconds=CHANGE_POLL_SECONDS)),
                      event(contracts.CANCEL_EVENT)))
    run.fire(run.task.children[0])
    run.expect(step_call("wait_idle"))
    run.complete(contracts.step_done())
    run.expect(step_call("deallocate"))
    run.complete(contracts.step_pending(contracts.POWER_REQUESTED, retry_after=45))
    polled_at = T0 + timedelta(seconds=CHANGE_POLL_SECONDS + 45)  # a throttled step's wait
    run.expect(any_of(timer(polled_at), event(contracts.CANCEL_EVENT)))
    run.fire(run.task.children[0])
    # the poll hands back what the last answer said to hand back
    run.expect(step_call("deallocate", operation=contracts.POWER_REQUESTED))
    run.complete(contracts.step_done())
    final = {**CHANGE, "steps": steps("done", "done", "done"), "status": "succeeded",
             "error": ""}
    run.expect(activity_with_retry(contracts.RECORD_CHANGE, final))
    assert run.context.custom_status == {"status": "succeeded", "progress": "3/3",
                                         "steps": final["steps"], "error": ""}
    run.complete({"changeId": CHANGE["changeId"], "status": "succeeded"})
    assert run.output == final


def test_a_failed_step_ends_the_change_and_skips_the_rest() -> None:
    run = Replay(pool_change, CHANGE, instance_id=CHANGE["changeId"])
    run.expect(step_call("drain"))
    run.complete(contracts.step_done("VM 'vm01' is failed; cannot move to draining"))
    final = {**CHANGE, "steps": steps("failed", "pending", "pending"), "status": "failed",
             "error": "vm01 drain: VM 'vm01' is failed; cannot move to draining"}
    run.expect(activity_with_retry(contracts.RECORD_CHANGE, final))
    assert run.context.custom_status["progress"] == "0/3"
    run.complete({})
    assert run.output == final


def test_a_change_of_an_unknown_version_is_refused() -> None:
    with pytest.raises(UnsupportedVersion):
        Replay(pool_change, CHANGE, version="9.9")
