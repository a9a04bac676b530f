"""The plan's action through the gate to the agent (protocol v5): `--action recreate|restart`
accepted only in its shapes, mapped by the agent to compose's argv from a fixed table."""

from __future__ import annotations

import json

import pytest

from platformctl import commands
from tests.host.test_platform_agent import SHA, host, release, run_id  # noqa: F401  (host: a fixture)
from tests.sshd import COMPOSE_FILE
from tests.transport.test_gate import recorded, run_gate

# What the host runs per plan action: `docker compose -f FILE` then these, then SERVICE.
ARGV = {
    "create": ["up", "-d"],
    "update": ["up", "-d"],
    "recreate": ["up", "-d", "--force-recreate", "--no-deps"],
    "restart": ["restart"],
}


def apply(host, run: str, action: str, sha: str | None = SHA) -> dict:  # noqa: F811
    root, state, agent = host
    command = commands.agent_apply(run, 30, f"{root}/{COMPOSE_FILE}", "redis", sha, action=action)
    result = run_gate(root, state, command.render(), "--state", str(agent))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def composed(state) -> list[list[str]]:
    """The compose calls that change the service (not the agent's reads: images)."""
    return [argv for argv in recorded(state) if argv[4:5] in (["up"], ["restart"])]


@pytest.mark.parametrize("action", list(ARGV))
@pytest.mark.parametrize("sha", [SHA, None], ids=["verified", "opted-out"])
def test_each_action_runs_its_own_compose_argv_once_per_run(host, action, sha):  # noqa: F811
    root, state, agent = host
    run = run_id()
    first = apply(host, run, action, sha)
    recorded_as = "up" if action in ("create", "update") else action  # the agent's table's name
    assert (first["answer"], first["returncode"], first["action"]) == ("ran", 0, recorded_as)
    assert composed(state) == [["docker", "compose", "-f", f"{root}/{COMPOSE_FILE}", *ARGV[action], "redis"]]
    assert apply(host, run, action, sha) == {**first, "replayed": True}  # the record answers: never twice
    assert len(composed(state)) == 1
    record = json.loads((agent / "runs" / f"{run}.up.json").read_text())
    assert record["action"] == first["action"]


def test_the_same_run_asking_another_action_is_a_conflict(host):  # noqa: F811
    _, state, _ = host
    run = run_id()
    apply(host, run, "update")
    assert apply(host, run, "recreate")["answer"] == "run_conflict"
    assert apply(host, run, "restart")["answer"] == "run_conflict"
    assert len(composed(state)) == 1
    release(host, run)


def test_an_action_with_sync_is_a_shape_the_gate_takes(host):  # noqa: F811
    """`--sync --action X` reaches the agent (which refuses the sync here: not allowed)."""
    root, state, agent = host
    command = commands.agent_apply(run_id(), 30, f"{root}/{COMPOSE_FILE}", "redis", SHA, sync=True, action="restart")
    assert command.argv[-4:] == ("--lease", "--sync", "--action", "restart")
    result = run_gate(root, state, command.render(), "--state", str(agent))
    assert result.returncode == 0 and json.loads(result.stdout)["reason"] == "sync_not_allowed"
    assert composed(state) == []


def test_the_gate_takes_the_action_only_in_its_shapes(host):  # noqa: F811
    root, state, agent = host
    apply_ = f"platform-agent apply {run_id()} 30 {root}/{COMPOSE_FILE} redis {SHA}"
    for tail in (
        "--lease --action remove",
        "--lease --action up",
        "--lease --action create",
        "--lease --action Recreate",
        "--lease --action",
        "--lease --action=recreate",
        "--lease --action recreate --action restart",
        "--lease --action recreate --force-recreate",
        "--lease --action restart --sync",  # --sync comes first
        "--action recreate --lease",
        "--action recreate",  # no lease
        "--lease --action 'recreate;id'",
        "--lease --action 'recreate '",
        "--lease recreate",
    ):
        result = run_gate(root, state, f"{apply_} {tail}", "--state", str(agent))
        assert result.returncode == commands.GATE_REFUSED, tail
    read_only = run_gate(root, state, f"{apply_} --lease --action restart", "--state", str(agent), "--read-only")
    assert read_only.returncode == commands.GATE_REFUSED and "read-only" in read_only.stderr
    assert not (state / "calls.jsonl").exists() or recorded(state) == []


@pytest.mark.parametrize("action", ["remove", "up", "Recreate", "recreate; id", ""])
def test_no_other_action_can_be_built(action):
    with pytest.raises(commands.UnsafeCommand, match="no host agent shape"):
        commands.agent_apply(run_id(), 30, "/opt/platform/compose/core/compose.yaml", "redis", SHA, action=action)
