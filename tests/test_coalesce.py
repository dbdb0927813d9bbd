"""The coalescer of scaler passes: few passes for many requests, and none lost."""
from __future__ import annotations

import threading
import time

from shared.coalesce import PassCoalescer
from tools.polling import poll


class Recorder:
    def __init__(self, seconds: float = 0.0, fail: bool = False) -> None:
        self.starts: list[float] = []
        self.reasons: list[str] = []
        self.seconds, self.fail = seconds, fail
        self.lock = threading.Lock()

    def __call__(self, reason: str) -> None:
        with self.lock:
            self.starts.append(time.monotonic())
            self.reasons.append(reason)
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("the pass failed")


def test_a_lone_request_runs_its_pass_at_once_in_the_caller() -> None:
    run = Recorder()
    coalescer = PassCoalescer(run, min_interval_s=0.0)
    mine = Recorder()
    assert coalescer.request("work issued", mine) is True
    assert mine.reasons == ["work issued"] and run.reasons == []
    assert coalescer.request("job finished", mine) is True
    assert mine.reasons == ["work issued", "job finished"]


def test_a_burst_of_requests_makes_few_passes_and_one_after_the_last() -> None:
    run = Recorder(seconds=0.05)
    coalescer = PassCoalescer(run, min_interval_s=0.2)
    asked: list[float] = []
    lock = threading.Lock()

    def ask(i: int) -> None:
        with lock:
            asked.append(time.monotonic())
        coalescer.request(f"event {i}")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every request is followed by a pass that starts after it...
    assert poll(lambda: run.starts and max(run.starts) >= max(asked), 5.0)
    time.sleep(0.5)  # ...and nothing more runs once they are served
    assert 1 <= coalescer.passes <= 4, coalescer.passes
    settled = coalescer.passes
    time.sleep(0.5)
    assert coalescer.passes == settled


def test_a_request_within_the_interval_is_deferred_not_dropped() -> None:
    run = Recorder()
    coalescer = PassCoalescer(run, min_interval_s=0.3)
    assert coalescer.request("first") is True
    asked = time.monotonic()
    assert coalescer.request("second") is False
    assert coalescer.request("third") is False
    assert poll(lambda: run.reasons == ["first", "third"], 3.0), run.reasons
    assert run.starts[-1] - asked >= 0.25  # it waited out the interval


def test_a_failing_pass_does_not_stop_the_next_ones() -> None:
    run = Recorder(fail=True)
    coalescer = PassCoalescer(run, min_interval_s=0.0)
    assert coalescer.request("one") is True
    assert coalescer.request("two") is True
    assert run.reasons == ["one", "two"] and coalescer.passes == 2
