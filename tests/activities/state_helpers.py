"""Shared builders for the persist_state and rollback activity tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from platformctl.config import Settings
from platformctl.models import PersistStateInput, RecordedResult, RollbackInput

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER_SHA = "fedcba9876543210fedcba9876543210fedcba98"
DIGEST = "sha256:" + "ab" * 32
COMMAND = "docker compose -f /opt/platform/compose/core/compose.yaml up -d honcho-redis"


class RecordingClient:
    """Stands in for the Temporal client: records what persist_state reports to the module's state."""

    def __init__(self) -> None:
        self.started: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def start_workflow(self, *args: Any, **kwargs: Any) -> None:
        self.started.append((args, kwargs))


class StubDeps:
    """What the state activities use of Deps: settings, and a client that only records."""

    def __init__(self, settings: Settings, transport: Any = None) -> None:
        self.settings = settings
        self.transport = transport
        self.client = RecordingClient()

    async def authorize(self) -> None:  # these tests call the activity directly
        return None


def settings_for(root: Path, state_dir: Path | None = None) -> Settings:
    return Settings(
        temporal_address="",
        namespace="default",
        task_queue="tq",
        platform_root=root,
        state_dir=state_dir or root / ".platform" / "state",
        phase="05",
    )


def result(status: str = "applied", **over: Any) -> RecordedResult:
    fields: dict[str, Any] = {
        "status": status,
        "exitCode": {"applied": 9, "remote_failed": 4, "unhealthy": 4, "blocked": 3, "cancelled": 5}.get(status, 2),
        "module": "honcho-redis",
        "host": "rs2000",
        "compose_service": "honcho-redis",
        "command": COMMAND,
        "checkout_verified": False,
    }
    if status != "applied":
        fields["error"] = f"{status}: pull access denied"
    return RecordedResult(**{**fields, **over})


def persist_input(res: RecordedResult | None = None, **over: Any) -> PersistStateInput:
    fields: dict[str, Any] = {
        "result": res or result(),
        "source_sha": SHA,
        "approved_pr": 165,
        "plan_digest": DIGEST,
        "workflow_id": "apply-1",
        "run_id": "run-1",
        "approved_by": "alice",
    }
    return PersistStateInput(**{**fields, **over})


def rollback_input(res: RecordedResult | None = None, **over: Any) -> RollbackInput:
    fields: dict[str, Any] = {
        "result": res or result("remote_failed"),
        "source_sha": OTHER_SHA,
        "workflow_id": "apply-2",
        "run_id": "run-2",
        "approved_pr": 170,
        "approved_by": "bob",
        "plan_digest": "sha256:" + "cd" * 32,
    }
    return RollbackInput(**{**fields, **over})


async def run(method: Any, inp: Any) -> Any:
    return await ActivityEnvironment().run(method, inp)


async def failure_of(method: Any, inp: Any) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        await run(method, inp)
    return caught.value


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}

