"""The agent ScaledJob scales to the visible backlog, by KEDA's own formulas.

The model below restates what KEDA does each polling interval for a ScaledJob (read from
kedacore/keda: `pkg/scalers/azure_queue_scaler.go` for the queue length,
`pkg/scaling/scaledjob/metrics.go` for maxScale/scaleTo, `pkg/scaling/executor/scale_jobs.go` for
the strategies and the Job counts), and is fed the settings of `infra/k8s/agent-scaledjob.yaml`
as a user deploys them. "Running" Jobs are, as in KEDA, every Job not finished (pending ones
included); "pending" Jobs are those whose pod is not running yet.

What must hold: KEDA never creates a Job that would make the Jobs not yet working (pending ones
plus the ones created now) outnumber what the visible messages need, `ceil(visible /
queueLength)`, and the total never passes maxReplicaCount. (Pending Jobs created earlier may
outlast the messages they were made for, when idle pods took those; KEDA then creates none.)
The same checks fail for the configuration the manifest had before (`accurate` with the
scaler's default `queueLengthStrategy: all`), which counts the messages pods already hold.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml

MAX_PEEK_MESSAGES = 32  # azure_queue_scaler.go: maxPeekMessages
ROOT = Path(__file__).resolve().parents[2]


def _scaled_job() -> dict[str, Any]:
    docs = yaml.safe_load_all((ROOT / "infra" / "k8s" / "agent-scaledjob.yaml").read_text())
    (job,) = [d for d in docs if d and d["kind"] == "ScaledJob"]
    return job


def queue_length(trigger: dict[str, Any], visible: int, in_flight: int) -> int:
    """azure-queue scaler: a peek of up to 32 messages with `visibleonly` (falling back to the
    approximate count when the peek is full), else ApproximateMessagesCount, which also counts
    invisible (in-flight) messages."""
    strategy = trigger["metadata"].get("queueLengthStrategy", "all").lower()
    if strategy == "visibleonly":
        peeked = min(visible, MAX_PEEK_MESSAGES)
        if peeked < MAX_PEEK_MESSAGES:
            return peeked
    return visible + in_flight


def jobs_to_create(spec: dict[str, Any], visible: int, in_flight: int, running: int,
                   pending: int) -> int:
    """New Jobs KEDA creates in one polling interval."""
    (trigger,) = spec["triggers"]
    metric = queue_length(trigger, visible, in_flight)
    target = float(trigger["metadata"].get("queueLength", "5"))
    activation = float(trigger["metadata"].get("activationQueueLength", "0"))
    max_replicas = int(spec.get("maxReplicaCount", 100))
    min_replicas = int(spec.get("minReplicaCount", 0))
    active = metric > activation or min_replicas > 0
    max_scale = math.ceil(min(metric / target, max_replicas))  # IsScaledJobActive
    scale_to = math.ceil(metric)
    strategy = spec.get("scalingStrategy", {})
    kind = strategy.get("strategy", "default")
    if running < min_replicas:
        effective = scale_to = min_replicas - running
    else:
        run = running - min_replicas
        if kind == "accurate":
            effective = (max_replicas - run if max_scale + run - pending > max_replicas
                         else max_scale - pending)
        elif kind == "eager":
            effective, scale_to = min(max_replicas - run - pending, max_scale), max_replicas
        elif kind == "custom":
            deduction = int(strategy.get("customScalingQueueLengthDeduction", 0))
            share = float(strategy.get("customScalingRunningJobPercentage", 0))
            effective = min(max_scale - deduction - int(run * share), max_replicas)
        else:
            effective = max_scale - run
    effective = max(effective, 0)
    if not active or effective <= 0:
        return 0
    return min(scale_to, effective)


def _states(max_replicas: int) -> list[tuple[int, int, int, int]]:
    """(visible, in flight, running, pending) with every in-flight message held by a working
    pod, a few pods idle before they exit, and some Jobs still pending."""
    states = []
    for visible in (0, 1, 2, 5, 17, 31, 32, 33, 60, 500):
        for in_flight in (0, 1, 4, 12, 19):
            for pending in (0, 1, 3, 8):
                for idle in (0, 2):
                    running = in_flight + idle + pending
                    if running <= max_replicas:
                        states.append((visible, in_flight, running, pending))
    return states


def _violations(spec: dict[str, Any]) -> list[str]:
    (trigger,) = spec["triggers"]
    target = float(trigger["metadata"].get("queueLength", "5"))
    max_replicas = int(spec.get("maxReplicaCount", 100))
    bad = []
    for visible, in_flight, running, pending in _states(max_replicas):
        new = jobs_to_create(spec, visible, in_flight, running, pending)
        needed = math.ceil(visible / target)
        if new > max(0, needed - pending) or running + new > max_replicas:
            bad.append(f"visible={visible} inFlight={in_flight} running={running} "
                       f"pending={pending}: {new} new Jobs, {needed} needed")
    return bad


def test_manifest_uses_the_visible_backlog() -> None:
    spec = _scaled_job()["spec"]
    (trigger,) = spec["triggers"]
    assert trigger["metadata"]["queueLengthStrategy"] == "visibleonly"
    assert spec["scalingStrategy"]["strategy"] == "accurate"
    # The fallback to the approximate count at a full peek must not over-ask.
    assert int(spec["maxReplicaCount"]) <= MAX_PEEK_MESSAGES * float(
        trigger["metadata"]["queueLength"])


def test_jobs_never_exceed_what_the_visible_backlog_needs() -> None:
    spec = _scaled_job()["spec"]
    assert _violations(spec) == []


def test_the_old_configuration_over_scales() -> None:
    """Counting in-flight messages (the scaler's default) piles Jobs up: the check can fail."""
    spec = _scaled_job()["spec"]
    (trigger,) = spec["triggers"]
    old = {**spec, "triggers": [{**trigger, "metadata": {
        k: v for k, v in trigger["metadata"].items() if k != "queueLengthStrategy"}}]}
    assert _violations(old)
    # e.g. 2 waiting, 12 being worked on by 12 pods: 8 more (up to maxReplicaCount) for 2
    assert jobs_to_create(old, 2, 12, 12, 0) == 8
    assert jobs_to_create(spec, 2, 12, 12, 0) == 2


@pytest.mark.parametrize("arrivals", [[50], [5, 0, 0, 20, 0, 3, 0, 0, 40]])
def test_a_simulated_backlog_drains_without_surplus_jobs(arrivals: list[int]) -> None:
    """Polling interval by interval: a Job is pending for one interval, then its pod takes one
    visible message per interval, works on it for three, and exits after two idle intervals
    (AGENT_EXIT_WHEN_IDLE). The backlog drains and no surplus Job is ever created."""
    spec = _scaled_job()["spec"]
    (trigger,) = spec["triggers"]
    target = float(trigger["metadata"]["queueLength"])
    max_replicas = int(spec["maxReplicaCount"])
    visible, done, total = 0, 0, sum(arrivals)
    pods: list[dict[str, int]] = []  # {"phase": 0 pending / 1 running, "work": left, "idle": n}
    for tick in range(400):
        visible += arrivals[tick] if tick < len(arrivals) else 0
        in_flight = sum(1 for p in pods if p["work"] > 0)
        pending = sum(1 for p in pods if p["phase"] == 0)
        new = jobs_to_create(spec, visible, in_flight, len(pods), pending)
        assert new <= max(0, math.ceil(visible / target) - pending), (tick, visible, pods)
        assert len(pods) + new <= max_replicas
        pods += [{"phase": 0, "work": 0, "idle": 0} for _ in range(new)]
        for pod in list(pods):
            if pod["phase"] == 0:
                pod["phase"] = 1
                continue
            if pod["work"] > 0:
                pod["work"] -= 1
                done += pod["work"] == 0
            elif visible:
                visible -= 1
                pod["work"], pod["idle"] = 3, 0
            else:
                pod["idle"] += 1
                if pod["idle"] >= 2:
                    pods.remove(pod)
        if tick >= len(arrivals) and done == total and not pods:
            break
    assert done == total and visible == 0 and not pods
