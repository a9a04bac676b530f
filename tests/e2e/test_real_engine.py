"""Applies against a real Docker engine: the real worker process and Temporal
dev server, a real OpenSSH sshd whose deploy key is gated by
host/platform-gate, and Debian's dockerd with compose v2 behind it
(tests/docker_engine.py). No stand-in docker: compose really creates,
recreates and health-checks the containers.

The images: local/app:1 passes the compose healthcheck (`test -f /healthy`),
local/app:2 fails it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

from platformctl import commands
from platformctl.cli.apply import summary_line
from platformctl.models import Action
from platformctl.transport.fake import runless
from platformctl.transport.ssh import SshTransport
from tests.docker_engine import APP_V1, APP_V2, DockerEngine
from tests.e2e.conftest import (
    ENGINE_HEALTH,
    ENGINE_HOST,
    VENV_BIN,
    engine_service,
    json_text,
    write_engine_compose,
    write_engine_module,
)
from tests.platform_files import SHA, apply_input, change, plan
from tests.sshd import SshHost

SERVICE = "app"
# ENGINE_HEALTH with a short timeout, for an apply that cannot become healthy.
UNHEALTHY_WINDOW = {**ENGINE_HEALTH, "timeout_seconds": 8}


def request(module: str, service: str = SERVICE) -> dict:
    return apply_input(plan(module=module, changes=[change(service)]))


def workflow_id(tag: str) -> str:
    return f"apply-engine-{tag}-{uuid.uuid4().hex[:8]}"


def container_image_id(engine: DockerEngine, container: str) -> str:
    return engine.docker("inspect", "--format", "{{.Image}}", container).stdout.strip()


def health_events(engine: DockerEngine, since: float, image: str) -> list[str]:
    """The health_status events ("health_status: healthy", ...) of containers of `image` since `since`."""
    out = engine.docker(
        "events", "--since", f"{since:.3f}", "--until", f"{time.time():.3f}",
        "--filter", "type=container", "--filter", "event=health_status", "--filter", f"image={image}",
        "--format", "{{.Status}}",
    ).stdout
    return out.splitlines()


async def test_apply_on_a_real_engine_ends_applied_and_the_service_is_healthy(
    engine_e2e, engine_host: SshHost, docker_engine: DockerEngine
):
    e2e = engine_e2e
    compose = write_engine_module(e2e.root, engine_host, "rt-ok", APP_V1)
    worker = await e2e.start_worker()
    assert "EXECUTING remote commands" in worker.log()
    wid = workflow_id("ok")

    out = await e2e.outcome(await e2e.start(request("rt-ok"), workflow_id=wid), timeout_s=60)

    assert out.status == "applied", out.result
    r = out.result
    assert (r["exitCode"], out.error_type, r["error"], r["rollback"]) == (9, None, None, None)
    assert (r["module"], r["host"], r["compose_service"]) == ("rt-ok", ENGINE_HOST, SERVICE)
    assert runless(r["command"]) == f"platform-agent apply RUN 300 {compose} {SERVICE} {SHA} --lease"
    assert r["remote"]["returncode"] == 0
    assert "Container rt-ok-app-1 Started" in r["remote"]["progress"], r["remote"]
    assert (r["health"]["state"], r["health"]["health"]) == ("running", "healthy")
    assert r["health"]["observed_s"] >= ENGINE_HEALTH["stable_seconds"]

    # The engine itself, asked as root: the service runs v1 and is healthy.
    row = engine_service(docker_engine, compose, SERVICE)
    assert (row["Project"], row["State"], row["Health"], row["Image"]) == ("rt-ok", "running", "healthy", APP_V1), row
    assert container_image_id(docker_engine, row["ID"]) == docker_engine.image_ids[APP_V1]
    assert docker_engine.docker("exec", row["ID"], "cat", "/version").stdout == "1\n"
    # The snapshot: nothing ran before; the images it left running are the module's last good ones.
    assert r["snapshot"] == {"images": []}
    assert [i["image_id"] for i in r["images"]["images"]] == [docker_engine.image_ids[APP_V1]]
    # Only the checkout checks went to a stand-in (the worker's, then the agent's HEAD and
    # local edits); one pooled connection carried everything.
    head = ["git", "-C", engine_host.remote_root, "rev-parse", "HEAD"]
    edits = ["git", "-C", engine_host.remote_root, "status", "--porcelain", "--untracked-files=no"]
    assert engine_host.calls() == [head, head, edits]
    assert engine_host.connection_count() == 1

    status = json.loads(e2e.status_file("rt-ok").read_text())
    assert (status["status"], status["host"], status["last_apply_sha"]) == ("applied", ENGINE_HOST, SHA)
    assert [(a["workflow_id"], a["status"], a["exitCode"]) for a in e2e.audit()] == [(wid, "applied", 9)]


async def test_changing_the_image_to_an_unhealthy_one_ends_unhealthy(
    engine_e2e, engine_host: SshHost, docker_engine: DockerEngine
):
    e2e = engine_e2e
    compose = write_engine_module(e2e.root, engine_host, "rt-bad", APP_V1)
    await e2e.start_worker()
    first = await e2e.apply(request("rt-bad"), timeout_s=60)
    assert first.status == "applied", (first.result, e2e.all_logs()[-3000:])
    v1_container = engine_service(docker_engine, compose, SERVICE)["ID"]

    # The next commit points the service at v2, whose healthcheck fails. v2 is
    # never healthy, so a shorter window only saves waiting for a recovery.
    assert write_engine_module(e2e.root, engine_host, "rt-bad", APP_V2, health=UNHEALTHY_WINDOW) == compose
    since = time.time()
    wid = workflow_id("unhealthy")
    out = await e2e.outcome(await e2e.start(request("rt-bad"), workflow_id=wid), timeout_s=90)

    assert (out.status, out.error_type, out.result["exitCode"]) == ("unhealthy", "Unhealthy", 4), out.result
    r = out.result
    assert r["remote"]["returncode"] == 0
    assert "Container rt-bad-app-1 Recreated" in r["remote"]["progress"], r["remote"]
    # What the workflow saw through the gate, from the real healthcheck.
    assert (r["health"]["state"], r["health"]["health"]) == ("running", "unhealthy")
    assert "did not stay healthy" in r["error"], r["error"]
    # The image rollback: back on the exact image v1's container ran, watched until healthy.
    v1 = docker_engine.image_ids[APP_V1]
    assert [i["image_id"] for i in r["snapshot"]["images"]] == [v1]
    image = r["rollback"]["image"]
    assert (r["rollback"]["action"], image["outcome"], image["image_id"], image["healthy"]) == (
        "image", "restored", v1, True
    ), r["rollback"]
    assert image["health"]["health"] == "healthy"
    # It waited the whole window for a recovery, then rolled back, not much longer.
    assert UNHEALTHY_WINDOW["timeout_seconds"] <= out.seconds < UNHEALTHY_WINDOW["timeout_seconds"] + 40, out.seconds
    # The engine ran v2 in a new container, found it unhealthy, and now runs v1 again, healthy.
    assert "health_status: unhealthy" in health_events(docker_engine, since, APP_V2)
    assert not any(c.startswith(v1_container) for c in docker_engine.container_ids())
    row = engine_service(docker_engine, compose, SERVICE)
    assert (row["State"], row["Health"]) == ("running", "healthy"), row
    assert container_image_id(docker_engine, row["ID"]) == v1
    assert docker_engine.docker("exec", row["ID"], "cat", "/version").stdout == "1\n"
    # The compose file on the host was not touched: it still names v2.
    assert APP_V2 in Path(compose).read_text()

    status = json.loads(e2e.status_file("rt-bad").read_text())
    assert status["status"] == "unhealthy" and status["last_failure"]["workflow_id"] == wid
    assert status["last_failure"]["rollback"]["image"]["outcome"] == "restored"
    assert [a["status"] for a in e2e.audit()] == ["applied", "unhealthy"]


async def test_a_container_that_exits_fails_its_apply_at_the_first_poll_with_its_exit_code(
    engine_e2e, engine_host: SshHost, docker_engine: DockerEngine
):
    """Compose lists no stopped container without --all: the apply used to wait its whole
    health timeout and end `state=absent`, with no hint why."""
    e2e = engine_e2e
    command = ["sh", "-c", "echo 'cannot reach db: giving up' >&2; exit 3"]
    compose = write_engine_module(e2e.root, engine_host, "rt-exit", APP_V1, command=command)
    await e2e.start_worker()

    out = await e2e.outcome(await e2e.start(request("rt-exit"), workflow_id=workflow_id("exit")), timeout_s=60)

    assert (out.status, out.result["exitCode"]) == ("unhealthy", 4), out.result
    assert out.result["remote"]["returncode"] == 0
    assert out.result["health"] == {"state": "exited", "health": "none", "observed_s": 0.0, "exit_code": 3}
    assert "state=exited, health=none, exit code 3" in summary_line(out.result, SHA)
    # Compose up takes a second or two, then one poll: far from the health timeout.
    assert out.seconds < ENGINE_HEALTH["timeout_seconds"] / 2, out.seconds
    assert engine_service(docker_engine, compose, SERVICE)["State"] == "exited"
    # Why is on the host, where only `platform-apply logs` reads it; the error says so.
    assert out.result["error"].endswith(f"kept on the host: platform-apply logs {out.handle.id}")
    run = (await out.handle.describe()).run_id
    kept = Path(engine_host.base_dir, "agent-state", "output")
    assert "cannot reach db" in "".join(p.read_text() for p in kept.glob(f"{run}.health.*.stderr.log"))
    assert "cannot reach db" not in json.dumps(out.result)


async def test_a_dollar_in_an_env_password_reaches_no_sink_on_a_successful_apply(
    engine_e2e, engine_host: SshHost, docker_engine: DockerEngine
):
    """Compose reads `$rest` in an .env value as a variable and warns, on every up, that
    "rest" is not set: the tail of the password, on stderr. The red team found it in
    history, the UI, the status file, the audit and the worker's log."""
    e2e = engine_e2e
    compose = write_engine_module(e2e.root, engine_host, "rt-env", APP_V1)
    tail = "Tail0fThePassw0rd"
    Path(compose).write_text(Path(compose).read_text() + "    environment:\n      DB_PASSWORD: ${DB_PASSWORD}\n")
    env_file = Path(compose).parent / ".env"
    env_file.write_text(f"DB_PASSWORD=s3cret${tail}\n")
    owner = Path(compose).stat()
    os.chown(env_file, owner.st_uid, owner.st_gid)
    worker = await e2e.start_worker()

    out = await e2e.outcome(await e2e.start(request("rt-env"), workflow_id=workflow_id("env")), timeout_s=60)

    assert out.status == "applied", out.result
    # Compose did print it, and it stays in the agent's private folder on the host.
    kept = "".join(p.read_text() for p in Path(engine_host.base_dir, "agent-state", "output").iterdir())
    assert tail in kept and "variable is not set" in kept
    shown = subprocess.run(
        [str(VENV_BIN / "temporal"), "workflow", "show", "-w", out.handle.id, "-o", "json",
         "--address", e2e.server.address],
        capture_output=True, text=True, timeout=30,
    )
    assert shown.returncode == 0, shown.stderr
    sinks = {
        "the history": json_text(shown.stdout),
        "the worker's log": worker.log(),
        "the state files": "".join(p.read_text() for p in e2e.state_dir.rglob("*") if p.is_file()),
        "the description": str(await out.handle.describe()),
    }
    assert [where for where, text in sinks.items() if tail in text] == []


async def test_recreate_gives_a_new_container_and_restart_keeps_it_but_starts_it_again(
    engine_host: SshHost, docker_engine: DockerEngine
):
    """The plan's action on the real engine, through sshd, the gate and the agent (no worker:
    the actions' compose argv is what is under test here, the workflow's are elsewhere)."""
    compose = write_engine_compose(engine_host, "rt-act", SERVICE, APP_V1)
    transport, host = SshTransport(), engine_host.host_config()

    async def apply(action: Action) -> dict:
        command = commands.agent_apply(str(uuid.uuid4()), 60, compose, SERVICE, SHA, action=action)
        out = await transport.run(host, command, timeout_s=90)
        answer = json.loads(out.stdout)
        assert (out.returncode, answer["answer"], answer["returncode"]) == (0, "ran", 0), answer
        await transport.run(host, commands.agent_release(command.argv[2]), timeout_s=30)
        return engine_service(docker_engine, compose, SERVICE)

    def started_at(container: str) -> str:
        return docker_engine.docker("inspect", "--format", "{{.State.StartedAt}}", container).stdout.strip()

    try:
        first = await apply("create")
        started = started_at(first["ID"])
        # Nothing changed in the file: plain `up -d` would leave the container as it is.
        recreated = await apply("recreate")
        assert recreated["ID"] != first["ID"] and recreated["State"] == "running"
        before = started_at(recreated["ID"])
        restarted = await apply("restart")
        assert restarted["ID"] == recreated["ID"] and restarted["State"] == "running"
        assert started_at(restarted["ID"]) > before > started  # RFC 3339 UTC: ordered as text
        kept = await apply("update")
        assert kept["ID"] == recreated["ID"] and started_at(kept["ID"]) == started_at(restarted["ID"])
    finally:
        await transport.close()
