"""A scripted transport for fast tests: records every command, runs nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from platformctl.commands import AGENT_PROTOCOL, GATE_REFUSED, RUN_ID, RemoteCommand
from platformctl.models import HostConfig
from platformctl.policy import remote_output
from platformctl.policy.health import observation
from platformctl.transport.base import RemoteOutput

Response = RemoteOutput | Exception | Callable[[float], Awaitable[RemoteOutput]]


def ok(stdout: str = "", stderr: str = "") -> RemoteOutput:
    return RemoteOutput(returncode=0, stdout=stdout, stderr=stderr, duration_s=0.01)


def failed(returncode: int = 1, stderr: str = "error") -> RemoteOutput:
    return RemoteOutput(returncode=returncode, stdout="", stderr=stderr, duration_s=0.01)


def ps(
    service: str, state: str = "running", health: str = "healthy", exit_code: int = 0, restarts: int = 0
) -> RemoteOutput:
    """What compose ps prints for one container; `restarts` is what the agent's
    `docker inspect` would add (compose ps does not show it)."""
    row = {"Name": f"core-{service}-1", "Service": service, "State": state, "Health": health, "ExitCode": exit_code,
           "RestartCount": restarts}  # fmt: skip
    return ok(json.dumps(row) + "\n")


DEFAULT_IMAGE_ID = "sha256:" + "1" * 64


def images(
    service: str, image_id: str = DEFAULT_IMAGE_ID, repository: str | None = None, tag: str = "1"
) -> RemoteOutput:
    """What `docker compose images --format json SERVICE` prints for one container
    (compose v2.40: one JSON array, then a blank line)."""
    row = {
        "ID": image_id,
        "ContainerName": f"core-{service}-1",
        "Repository": repository if repository is not None else f"local/{service}",
        "Tag": tag,
        "Platform": "linux/amd64",
        "Size": 1000,
        "LastTagTime": "0001-01-01T00:00:00Z",
    }
    return ok(json.dumps([row], separators=(",", ":")) + "\n\n")


def empty_images() -> RemoteOutput:
    """`compose images` for a service with no container (it never ran): compose
    v2.40 prints `null`, not an empty array."""
    return ok("null\n\n")


async def hang(timeout_s: float) -> RemoteOutput:
    """A command that never finishes: killed at its timeout, like the SSH transport does."""
    await asyncio.sleep(timeout_s)
    return RemoteOutput(returncode=None, stdout="", stderr="", duration_s=timeout_s, timed_out=True)


@dataclass
class FakeTransport:
    """Responses per command kind, used in order; the last one repeats.
    `calls` keeps each RemoteCommand whole, its `stdin` (the rollback's pin) included."""

    script: dict[str, list[Response]] = field(default_factory=dict)
    head: str = ""  # what an unscripted `git rev-parse HEAD` prints: the host's checkout
    calls: list[tuple[str, RemoteCommand]] = field(default_factory=list)
    running: int = 0
    max_running: int = 0

    async def run(self, host: HostConfig, command: RemoteCommand, *, timeout_s: float) -> RemoteOutput:
        self.calls.append((host.name, command))
        responses = self.script.get(command.kind) or [self._default(command, self.head)]
        response = responses.pop(0) if len(responses) > 1 else responses[0]
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if isinstance(response, Exception):
                raise response
            agent = command.argv[0] == "platform-agent" and command.kind != "agent_logs"
            if callable(response):  # the agent kills compose at the timeout it was given
                timed = agent and command.argv[1] in ("apply", "rollback")
                response = await response(float(command.argv[3]) if timed else timeout_s)
            return agent_answer(command, response) if agent else response
        finally:
            self.running -= 1

    @staticmethod
    def _default(command: RemoteCommand, head: str) -> RemoteOutput:
        """Unscripted: every command succeeds, every service is healthy and runs
        DEFAULT_IMAGE_ID, the checkout is at `head`."""
        if command.kind == "compose_ps":
            return ps(command.argv[-1])
        if command.kind == "compose_images":
            return images(command.argv[-1])
        return ok(head + "\n") if command.kind == "git_head" else ok()

    def commands(self, kind: str | None = None) -> list[str]:
        """The rendered commands sent, each run id (random per workflow run) as RUN."""
        return [runless(c.render()) for _, c in self.calls if kind is None or c.kind == kind]

    async def close(self) -> None:
        pass


def runless(text: str) -> str:
    """`text` with each workflow run id written as RUN."""
    return RUN_ID.sub("RUN", text)


def agent_answer(command: RemoteCommand, out: RemoteOutput) -> RemoteOutput:
    """What host/platform_agent.py answers to a verb when docker printed `out`:
    scripts say what compose does (`up`, `ps`, the rollback's `up`), and the
    agent's facts are made from it. A gate refusal (an agent older than the
    verb) is passed on as it is; an answer already scripted too, its run "RUN"
    made this command's."""
    if out.returncode == GATE_REFUSED:
        return out
    if out.stdout.startswith('{"agent"'):
        return dataclasses.replace(out, stdout=out.stdout.replace('"RUN"', json.dumps(command.argv[2])))
    verb = command.argv[1]
    head = {"agent": AGENT_PROTOCOL, "verb": verb, "run": command.argv[2] if len(command.argv) > 2 else None}
    if verb == "release":
        return ok(json.dumps({**head, "answer": "released", "released": 1}) + "\n")
    if verb == "check":
        return ok(json.dumps({**head, "answer": "checked", "leases": []}) + "\n")
    if verb == "health":
        return ok(json.dumps({**head, **_observed(command.argv[-1], out)}) + "\n")
    size, sha = remote_output.digest(out.stdout, out.stderr)
    answer = {
        **head,
        "answer": "ran",
        "returncode": out.returncode,
        "timed_out": out.timed_out,
        "duration_s": out.duration_s,
        "error_class": remote_output.error_class(out.returncode, out.timed_out, out.stdout, out.stderr),
        "progress": remote_output.progress(out.stdout, out.stderr),
        "output_bytes": size,
        "output_sha256": sha,
        "replayed": False,
    }
    return ok(json.dumps(answer) + "\n")


def _observed(service: str, out: RemoteOutput) -> dict[str, object]:
    """The agent's `health` answer for what `compose ps --all` printed."""
    if out.returncode != 0:
        return {"answer": "unobserved", "lease": "held"}
    try:
        rows = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        rows = [r for row in rows for r in (row if isinstance(row, list) else [row])]
        containers = [
            {**observation(r).model_dump(include={"state", "health", "exit_code"}), "restart_count": r["RestartCount"]}
            for r in rows if r.get("Service", service) == service
        ]  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError):
        return {"answer": "unobserved", "lease": "held"}
    return {"answer": "observed", "lease": "held", "containers": containers}
