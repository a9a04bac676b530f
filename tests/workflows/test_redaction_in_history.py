"""No secret from a host (or from an error about one) ever lands in Temporal's history.

Payloads in `history.to_json()` are base64, so a plain text search of it would
find nothing either way. `decoded` walks the JSON and decodes every base64
string in place; text that only ever occurs inside payloads (a progress line,
the plan's target, the `[REDACTED]` marker) being found proves the decoding
works, so a secret not being found means something. Every secret value is
distinctive (`Qx7...`), so it cannot occur in a history by chance.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import pytest
from temporalio.client import WorkflowHistory

from platformctl.redact import REDACTED
from platformctl.transport import ConnectFailed
from platformctl.transport.base import RemoteOutput
from platformctl.transport.fake import failed, ok
from tests.platform_files import apply_input, change, module_doc, plan, write_platform


def leaky_output(tag: str) -> tuple[str, list[str]]:
    """Remote output holding 23 secret shapes, and the secret values in it."""
    akia = "AKIA" + f"QZ7X{tag.upper()}".ljust(16, "0")
    ghp = "ghp_" + f"Qx7gh{tag}aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0"[:36]
    pem = [f"MIIEpQIBAAKCAQEAqQx7rsa{tag}Line1x9Zb", f"Yx7Tq1wE8rF2uI9oQx7rsa{tag}Line2kQ=="]
    openssh = [f"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUQx7ossh{tag}Line1", f"AAAAMwAAAAtzc2gtZWQyNTUxOQQx7ossh{tag}Line2"]
    shapes = [
        (f"password=Qx7pw{tag}", [f"Qx7pw{tag}"]),
        (f"passwd: Qx7pd{tag}", [f"Qx7pd{tag}"]),
        (f"SECRET=Qx7se{tag}", [f"Qx7se{tag}"]),
        (f"token: Qx7tk{tag}", [f"Qx7tk{tag}"]),
        (f"api_key=Qx7ak{tag}", [f"Qx7ak{tag}"]),
        (f"X-Api-Key: Qx7ah{tag}", [f"Qx7ah{tag}"]),
        (f"client_secret: Qx7cs{tag}", [f"Qx7cs{tag}"]),
        (f"private_key=Qx7pk{tag}", [f"Qx7pk{tag}"]),
        (f"session_token: Qx7st{tag}", [f"Qx7st{tag}"]),
        (f"access_key=Qx7ac{tag}", [f"Qx7ac{tag}"]),
        (f"passphrase: Qx7pp{tag}", [f"Qx7pp{tag}"]),
        (f'{{"secret": "Qx7js{tag}", "user": "app"}}', [f"Qx7js{tag}"]),
        (f'{{"client_secret": "Qx7jc{tag}"}}', [f"Qx7jc{tag}"]),
        (f"Authorization: Bearer Qx7bearer{tag}abcdef0123", [f"Qx7bearer{tag}abcdef0123"]),
        (f"connecting to postgres://app:Qx7url{tag}@db:5432/app", [f"Qx7url{tag}"]),
        (f"GET https://hooks.example.com/x?token=Qx7qs{tag}&a=1", [f"Qx7qs{tag}"]),
        (f"using {akia} for s3", [akia[4:]]),
        (f"aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/Qx7aws{tag}EXAMPLEKEY", [f"Qx7aws{tag}"]),
        (f"pushing as {ghp}", [ghp[4:]]),
        (f"run --password Qx7cli{tag} now", [f"Qx7cli{tag}"]),
        (f"PGPASSWORD=Qx7pg{tag} psql -h db", [f"Qx7pg{tag}"]),
        ("-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(pem) + "\n-----END RSA PRIVATE KEY-----", pem),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(openssh) + "\n-----END OPENSSH PRIVATE KEY-----", openssh),
    ]
    text = "\n".join(f" Container core-honcho-redis-1  {line}" for line, _ in shapes) + "\n"
    return text, [secret for _, secrets in shapes for secret in secrets]


def decoded(node: Any) -> str:
    """Every string in a JSON tree, plus the UTF-8 text of every one that is base64."""
    if isinstance(node, dict):
        return "\n".join(decoded(v) for v in node.values())
    if isinstance(node, list):
        return "\n".join(decoded(v) for v in node)
    if not isinstance(node, str):
        return ""
    try:
        return node + "\n" + base64.b64decode(node, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return node


def history_text(history: WorkflowHistory) -> str:
    return decoded(json.loads(history.to_json()))


async def lock_history(harness, history: WorkflowHistory) -> WorkflowHistory:
    """The history of the lock child this apply started (its id is reused by every apply)."""
    started = [
        e.child_workflow_execution_started_event_attributes.workflow_execution
        for e in history.events
        if e.HasField("child_workflow_execution_started_event_attributes")
    ]
    assert [s.workflow_id for s in started] == ["platform-lock:rs2000:core"]
    return await harness.client.get_workflow_handle(started[0].workflow_id, run_id=started[0].run_id).fetch_history()


def state_files_text(harness) -> str:
    files = sorted(p for p in harness.settings.state_dir.rglob("*") if p.is_file())
    assert {p.name for p in files} >= {"audit.jsonl", "honcho-redis.status.json"}
    return "\n".join(p.read_text() for p in files)


def assert_no_secret(text: str, secrets: list[str], where: str) -> None:
    leaked = [s for s in secrets if s in text]
    assert leaked == [], f"secrets in {where}: {leaked}"


async def test_applied_with_secrets_on_stdout_and_stderr_stores_none(harness):
    stdout, out_secrets = leaky_output("Out")
    stderr, err_secrets = leaky_output("Err")
    secrets = out_secrets + err_secrets
    assert len(secrets) >= 2 * 23 and len(set(secrets)) == len(secrets)
    started = " Container core-honcho-redis-1  Started\n"
    harness.transport.script = {"compose_up": [ok(stdout=stdout, stderr=stderr + started)]}

    out = await harness.apply(apply_input())

    assert out.status == "applied"
    # Of the output only facts are kept: no text but the progress line rebuilt from its names.
    remote = out.result["remote"]
    assert remote["progress"] == ["Container core-honcho-redis-1 Started"] and remote["error_class"] is None
    assert remote["output_bytes"] == len(stdout) + len(stderr + started) and len(remote["output_sha256"]) == 64
    history = await out.handle.fetch_history()
    text = history_text(history)
    assert "Container core-honcho-redis-1 Started" in text
    assert_no_secret(text, secrets, "the apply's history")
    assert_no_secret(history_text(await lock_history(harness, history)), secrets, "the lock's history")
    assert_no_secret(state_files_text(harness), secrets, "the state files")


def compose_up_exits_1():
    stdout, out_secrets = leaky_output("Fo")
    stderr, err_secrets = leaky_output("Fe")
    script = {"compose_up": [RemoteOutput(returncode=1, stdout=stdout, stderr=stderr, duration_s=0.5)]}
    return script, out_secrets + err_secrets, "remote_failed", "compose up exited with code 1"


def compose_ps_fails_with_secrets_on_stderr():
    stderr = "Error: password=Qx7psPw Authorization: Bearer Qx7psBearer0123456 from postgres://a:Qx7psUrl@db\n"
    script = {"compose_ps": [failed(1, stderr)]}
    message = "last poll: the host agent could not look (unobserved)"
    return script, ["Qx7psPw", "Qx7psBearer0123456", "Qx7psUrl"], "unhealthy", message


def connection_error_with_secrets():
    error = ConnectFailed("rs2000: refused for ssh://deploy:Qx7sshUrl@rs2000 (token=Qx7sshTok)")
    message = "refused for ssh://deploy:[REDACTED]@rs2000"
    return {"compose_up": [error]}, ["Qx7sshUrl", "Qx7sshTok"], "remote_failed", message


def unexpected_exception_with_secrets():
    error = RuntimeError("cannot parse DB_PASSWORD=Qx7rtPw in -----BEGIN PRIVATE KEY-----\nQx7rtPemBody\n")
    message = "RuntimeError: cannot parse DB_PASSWORD=[REDACTED]"
    return {"compose_up": [error]}, ["Qx7rtPw", "Qx7rtPemBody"], "tool_error", message


@pytest.mark.parametrize(
    "case",
    [
        compose_up_exits_1,
        compose_ps_fails_with_secrets_on_stderr,
        unexpected_exception_with_secrets,
    ],
)
async def test_failed_apply_stores_no_secret_from_its_error_path(harness, case):
    script, secrets, status, message = case()
    write_platform(harness.root, modules=[module_doc(health={"stable_seconds": 5, "timeout_seconds": 20})])
    harness.transport.script = script

    out = await harness.apply(apply_input())

    assert out.status == status and message in out.result["error"]
    assert out.result["rollback"] is not None
    history = await out.handle.fetch_history()
    text = history_text(history)
    assert "compose.service.honcho-redis" in text
    assert_no_secret(text, secrets, "the apply's history")
    assert_no_secret(history_text(await lock_history(harness, history)), secrets, "the lock's history")
    files = state_files_text(harness)
    assert_no_secret(files, secrets, "the state files")
    # Where the error itself carried a secret, its records show the marker instead.
    assert (REDACTED in files) == (REDACTED in out.result["error"])


async def test_secret_in_a_change_summary_stays_in_the_callers_own_input(harness):
    summary = "bump image; registry password=Qx7sumPw, token: Qx7sumTok"
    secrets = ["Qx7sumPw", "Qx7sumTok"]
    harness.transport.script = {"compose_up": [failed(1, "pull access denied")]}

    out = await harness.apply(apply_input(plan(changes=[change(summary=summary)])))

    assert out.status == "remote_failed"
    doc = json.loads((await out.handle.fetch_history()).to_json())
    started, later = doc["events"][0], doc["events"][1:]
    assert "workflowExecutionStartedEventAttributes" in started
    # The start event holds the input exactly as the caller sent it; the workflow
    # cannot change that. Everything it wrote after carries only the redacted form.
    assert all(s in decoded(started) for s in secrets)
    assert_no_secret(decoded(later), secrets, "events after the start")
    assert_no_secret(state_files_text(harness), secrets, "the state files")
