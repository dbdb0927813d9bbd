"""Run an orchestrator body the way Durable replays it, without a host, a task hub or storage.

The orchestrator gets a real `DurableOrchestrationContext` (built from a history that holds only
its start) and runs inside the SDK's own replay helper,
`azure.durable_functions.testing.orchestrator_generator_wrapper`: each task the orchestrator
yields comes out here, and the test plays the Durable runtime: it looks at the task's action
(what the extension would be asked to do), then completes it with a result, a failure or a
fired timer, and the helper hands that back to the orchestrator, as replay does.

Actions are described as plain tuples (see `activity`, `timer`, ...) built from the SDK's own
action objects, so a test states the exact sequence of actions the orchestrator asks for.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Generator
from datetime import datetime, timezone
from typing import Any

from azure.durable_functions import DurableOrchestrationContext
from azure.durable_functions.models.actions import (
    Action,
    CallActivityAction,
    CallActivityWithRetryAction,
    CallSubOrchestratorAction,
    CreateTimerAction,
    WaitForExternalEventAction,
)
from azure.durable_functions.models.actions.ContinueAsNewAction import ContinueAsNewAction
from azure.durable_functions.models.history import HistoryEventType
from azure.durable_functions.models.ReplaySchema import ReplaySchema
from azure.durable_functions.models.Task import (
    RetryAbleTask,
    TaskBase,
    TimerTask,
    WhenAllTask,
    WhenAnyTask,
)
from azure.durable_functions.testing import orchestrator_generator_wrapper

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


# --- actions, as tests write them --------------------------------------------------------------

def activity(name: str, input_: Any) -> tuple:
    return ("activity", name, input_)


def activity_with_retry(name: str, input_: Any) -> tuple:
    return ("activity_with_retry", name, input_)


def timer(fire_at: datetime) -> tuple:
    return ("timer", fire_at)


def event(name: str) -> tuple:
    return ("event", name)


def sub_orchestrator(name: str, input_: Any, instance_id: str) -> tuple:
    return ("sub_orchestrator", name, input_, instance_id)


def continue_as_new(input_: Any) -> tuple:
    return ("continue_as_new", input_)


def any_of(*actions: tuple) -> tuple:
    return ("any", *actions)


def all_of(*actions: tuple) -> tuple:
    return ("all", *actions)


def describe_action(action: Action) -> tuple:
    if isinstance(action, CallActivityWithRetryAction):
        return activity_with_retry(action.function_name, json.loads(action.input_))
    if isinstance(action, CallActivityAction):
        return activity(action.function_name, json.loads(action.input_))
    if isinstance(action, CreateTimerAction):
        return timer(action.fire_at)
    if isinstance(action, WaitForExternalEventAction):
        return event(action.external_event_name)
    if isinstance(action, CallSubOrchestratorAction):
        return sub_orchestrator(action.function_name, json.loads(action._input),
                                action.instance_id)
    if isinstance(action, ContinueAsNewAction):
        return continue_as_new(json.loads(action.input_))
    raise AssertionError(f"no description for {type(action).__name__}")


def describe(task: TaskBase) -> tuple:
    """What a yielded task asks the extension to do."""
    if isinstance(task, RetryAbleTask):
        return describe_action(task.actions)
    if isinstance(task, WhenAnyTask):
        return any_of(*(describe(child) for child in task.children))
    if isinstance(task, WhenAllTask):
        return all_of(*(describe(child) for child in task.children))
    return describe_action(task.action_repr)


# --- the runtime's side ------------------------------------------------------------------------

def _failed(task: TaskBase, error: Exception) -> None:
    """Complete `task` as failed. Replay throws a failed task's error into the orchestrator;
    the helper does so when reading `.result` raises, so the failed task's class gets a
    `result` that raises the error."""
    task.set_value(True, error)
    cls = type(task)

    def _raise(self: Any) -> Any:
        raise self.__dict__["result"]

    task.__class__ = type(f"Failed{cls.__name__}", (cls,), {"result": property(_raise)})


class Replay:
    """One orchestrator run: `expect` the next action, then `complete`/`fail`/`fire` it."""

    def __init__(self, orchestrator: Callable[[DurableOrchestrationContext], Generator],
                 input_: Any, *, instance_id: str = "instance-1", version: str | None = "1.0",
                 now: datetime = T0) -> None:
        started = {"EventId": -1, "IsPlayed": False, "Timestamp": now.isoformat()}
        history = [{**started, "EventType": HistoryEventType.ORCHESTRATOR_STARTED},
                   {**started, "EventType": HistoryEventType.EXECUTION_STARTED,
                    "Version": version, "Input": json.dumps(input_)}]
        self.context = DurableOrchestrationContext(
            history=history, instanceId=instance_id, isReplaying=False, parentInstanceId=None,
            input=json.dumps(input_), upperSchemaVersion=ReplaySchema.V2.value)
        self._steps = orchestrator_generator_wrapper(orchestrator(self.context))
        self.statuses: list[Any] = []
        self._pending: Any = self._advance(lambda: next(self._steps))

    # where the run stands

    @property
    def done(self) -> bool:
        return not isinstance(self._pending, TaskBase)

    @property
    def output(self) -> Any:
        assert self.done, f"still waiting on {describe(self._pending)}"
        return self._pending

    @property
    def task(self) -> TaskBase:
        assert not self.done, f"the orchestrator returned {self._pending!r}"
        return self._pending

    def recorded(self) -> list[tuple]:
        """Actions sent without a task to wait on (`continue_as_new`)."""
        return [describe_action(a) for a in self.context._actions[0]]

    def expect(self, action: tuple) -> TaskBase:
        """Assert that the orchestrator's next action is exactly `action`."""
        actual = describe(self.task)
        assert actual == action, f"the orchestrator asked for\n  {actual}\nnot\n  {action}"
        return self.task

    # answering it

    def complete(self, value: Any = None, task: TaskBase | None = None) -> None:
        """The task (or, for `any`/`all`, its child `task`) succeeded with `value`."""
        target = task or self.task
        target.set_value(False, value)
        self._next()

    def complete_all(self, values: list[Any]) -> None:
        for child, value in zip(self.task.children, values, strict=True):
            child.set_value(False, value)
        self._next()

    def fail(self, error: Exception) -> None:
        _failed(self.task, error)
        self._next()

    def fire(self, timer_task: TimerTask | None = None) -> None:
        """A timer fired: the orchestration's clock is now its time, as in replay."""
        target = timer_task or self.task
        self.context.current_utc_datetime = target.action_repr.fire_at
        target.set_value(False, None)
        self._next()

    def _next(self) -> None:
        self._pending = self._advance(lambda: next(self._steps))

    def _advance(self, step: Callable[[], Any]) -> Any:
        value = step()
        self.statuses.append(self.context.custom_status)
        return value
