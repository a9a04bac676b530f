"""What a workflow's history says it cost: its steps, and where the time went."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHandle

LOCAL_MARKER = "core_local_activity"  # how the SDK records a local activity


@dataclass
class Shape:
    kinds: list[str]  # "activity" / "local", in order; the floor runs as many, all scheduled
    names: list[str]  # the activity types, same order
    workflow_tasks: int
    children: int
    signals_sent: int
    events: int

    def describe(self) -> str:
        local = self.kinds.count("local")
        return (
            f"{len(self.kinds)} activities ({len(self.kinds) - local} scheduled, {local} local), "
            f"{self.workflow_tasks} workflow tasks, {self.children} child workflows, "
            f"{self.signals_sent} signals sent, {self.events} events"
        )


def _name(event: HistoryEvent) -> str:
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")


def _local_activity_type(event: HistoryEvent) -> str:
    try:
        data = event.marker_recorded_event_attributes.details["data"].payloads[0].data
        return str(json.loads(data).get("activity_type", "?"))
    except (KeyError, IndexError, ValueError):
        return "?"


async def events(handle: WorkflowHandle) -> list[HistoryEvent]:
    return [e async for e in handle.fetch_history_events()]


def shape(history: list[HistoryEvent]) -> Shape:
    kinds, names = [], []
    tasks = children = signals = 0
    for e in history:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            kinds.append("activity")
            names.append(e.activity_task_scheduled_event_attributes.activity_type.name)
        elif e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED and (
            e.marker_recorded_event_attributes.marker_name == LOCAL_MARKER
        ):
            kinds.append("local")
            names.append(_local_activity_type(e))
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            tasks += 1
        elif e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            children += 1
        elif e.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            signals += 1
    return Shape(kinds, names, tasks, children, signals, len(history))


def _label(e: HistoryEvent, scheduled: dict[int, str]) -> str:
    if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
        scheduled[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
        return scheduled[e.event_id]
    if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
        return scheduled.get(e.activity_task_started_event_attributes.scheduled_event_id, "")
    if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
        return scheduled.get(e.activity_task_completed_event_attributes.scheduled_event_id, "")
    if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
        name = e.marker_recorded_event_attributes.marker_name
        return _local_activity_type(e) if name == LOCAL_MARKER else name
    return ""


def profile(history: list[HistoryEvent]) -> str:
    """Each event with the time since the one before it (what that step waited
    for), then those gaps summed by event type."""
    lines = ["  event                                          ms since prev   at ms"]
    by_type: dict[str, list[float]] = defaultdict(list)
    scheduled: dict[int, str] = {}
    start = prev = history[0].event_time.ToDatetime()
    for e in history:
        at = e.event_time.ToDatetime()
        gap = (at - prev).total_seconds() * 1000
        by_type[_name(e)].append(gap)
        label = _label(e, scheduled)
        since = (at - start).total_seconds() * 1000
        lines.append(f"  {e.event_id:3} {_name(e):32} {label:14.14} {gap:8.1f} {since:8.1f}")
        prev = at
    total = (prev - start).total_seconds() * 1000
    lines.append(f"  total {total:.1f} ms; by event type (count, ms waited before it, share):")
    for name, gaps in sorted(by_type.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"    {name:44} {len(gaps):3} {sum(gaps):8.1f} {sum(gaps) / total if total else 0:6.0%}")
    return "\n".join(lines)


@dataclass
class Child:
    workflow_id: str
    started_s: float  # since the parent started
    closed_s: float


def children(history: list[HistoryEvent]) -> list[Child]:
    """The parent's child workflows, with when each started and closed."""
    start = history[0].event_time.ToDatetime()
    ids: dict[int, str] = {}
    began: dict[int, float] = {}
    found = []
    for e in history:
        at = (e.event_time.ToDatetime() - start).total_seconds()
        if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            ids[e.event_id] = e.start_child_workflow_execution_initiated_event_attributes.workflow_id
        elif e.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            began[e.child_workflow_execution_started_event_attributes.initiated_event_id] = at
        elif e.event_type in (
            EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED,
            EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED,
        ):
            attrs = (
                e.child_workflow_execution_completed_event_attributes
                if e.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED
                else e.child_workflow_execution_failed_event_attributes
            )
            initiated = attrs.initiated_event_id
            found.append(Child(ids[initiated], began.get(initiated, at), at))
    return found


def activity_spans(history: list[HistoryEvent]) -> dict[str, list[tuple[float, float]]]:
    """Per scheduled activity type, (scheduled, closed) in seconds since the workflow started."""
    start = history[0].event_time.ToDatetime()
    names: dict[int, str] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    for e in history:
        at = (e.event_time.ToDatetime() - start).total_seconds()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            names[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
            spans.setdefault(names[e.event_id], []).append((at, at))
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            name = names[e.activity_task_completed_event_attributes.scheduled_event_id]
            spans[name][-1] = (spans[name][-1][0], at)
    return spans
