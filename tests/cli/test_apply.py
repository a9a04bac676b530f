"""`platform-apply apply / approve / reject / sign` through the real worker, dev
server and (for applies with the gate open) the real test sshd."""

from __future__ import annotations

import asyncio
import json

import pytest
from temporalio.service import RPCError, RPCStatusCode

from platformctl.cli.plan_binding import workflow_id
from platformctl.models import Approval
from platformctl.policy.approval import sign
from platformctl.policy.plan import plan_digest
from tests.cli.conftest import new_module, write_json
from tests.e2e.conftest import compose_up_argv, write_module
from tests.platform_files import SHA, approval, change, plan

PR = "165"


def approve_flags(sha: str = SHA) -> list[str]:
    return ["--approve-sha", sha, "--approve-pr", PR, "--approved-by", "ci"]


def wid(module: str) -> str:
    """The id `apply` gives the plan these tests write: `plan(module=module, changes=[change(module)])`."""
    return workflow_id(module, SHA, plan_digest(plan(module=module, changes=[change(module)])))


async def test_applied_exits_9_with_a_summary_line_and_the_ui_summary(platform, sshd_host, host_name, cli, tmp_path):
    module = new_module()
    write_module(platform.root, module, host_name)
    await platform.start_worker(phase="05")
    bumped = plan(module=module, changes=[change(module, summary="bump redis")])
    plan_file = write_json(tmp_path / "plan.json", bumped)
    apply_id = workflow_id(module, SHA, plan_digest(bumped))

    ran = await cli.run("apply", str(plan_file), *approve_flags())

    assert ran.code == 9, ran
    assert ran.out == f"applied {module}@{host_name} 0123456 exit 9\n", ran
    # Not a terminal: one plain line per phase change, on stderr.
    phases = [line.split(": ", 1)[1] for line in ran.err.splitlines() if line.startswith(f"{apply_id}: ")]
    assert "health_check" in phases and len(phases) == len(set(phases)), ran.err
    assert sshd_host.calls().count(compose_up_argv(sshd_host, module)) == 1
    described = await platform.client.get_workflow_handle(apply_id).describe()
    assert await described.static_summary() == f"{module}@{host_name} 0123456 PR #165"
    details = await described.static_details()
    assert details is not None and f"- `update` compose.service.{module}: bump redis" in details, details
    # compose up's own output stayed on the host: the operator fetches it, nothing stores it.
    logs = await cli.run("logs", apply_id)
    assert logs.code == 0, logs
    assert "== up.stderr:" in logs.out and f"Container core-{module}-1  Started" in logs.out, logs


async def test_a_failed_rollback_is_on_the_ci_line(platform, sshd_host, host_name, cli, tmp_path):
    """CI logs show the one line: when the automatic rollback fails too, it says so there."""
    module = new_module()
    write_module(platform.root, module, host_name)
    sshd_host.set_behaviour(module, "unhealthy rollback=fail")
    await platform.start_worker(phase="05")
    plan_file = write_json(tmp_path / "plan.json", plan(module=module, changes=[change(module)]))

    ran = await cli.run("apply", str(plan_file), *approve_flags())

    assert ran.code == 4, ran
    assert ran.out.startswith(f"unhealthy {module}@{host_name} 0123456 exit 4: "), ran
    assert "; ROLLBACK FAILED" in ran.out and ran.out.rstrip().endswith("check the service on the host"), ran


async def test_a_dry_run_exits_0_and_json_prints_the_apply_result(platform, sshd_host, host_name, cli, tmp_path):
    module = new_module()
    write_module(platform.root, module, host_name)
    await platform.start_worker(phase=None)
    # The whole apply input, approval included, is accepted as well as a bare plan.
    plan_file = write_json(tmp_path / "input.json", {"plan": plan(module=module, changes=[change(module)]),
                                                     "approval": approval()})

    ran = await cli.run("apply", str(plan_file), "--json")

    assert ran.code == 0, ran
    result = json.loads(ran.out)
    assert (result["status"], result["exitCode"], result["module"], result["host"]) == ("dry_run", 0, module, host_name)
    assert result["command"].startswith("docker compose -f ")
    assert sshd_host.calls() == []


async def test_a_blocked_plan_exits_3(platform, host_name, cli, tmp_path):
    module = new_module()
    write_module(platform.root, module, host_name)
    await platform.start_worker(phase="05")
    plan_file = write_json(tmp_path / "plan.json", plan(module=module, changes=[change("someone-else")]))

    ran = await cli.run("apply", str(plan_file), *approve_flags())

    assert ran.code == 3, ran
    assert ran.out.startswith(f"blocked {module}@{host_name} 0123456 exit 3: "), ran


async def test_no_wait_then_a_refused_and_an_accepted_approve_while_a_rerun_attaches(
    platform, sshd_host, host_name, cli, tmp_path
):
    module = new_module()
    write_module(platform.root, module, host_name)
    await platform.start_worker(phase="05")
    plan_file = write_json(tmp_path / "plan.json", plan(module=module, changes=[change(module)]))

    started = await cli.run("apply", str(plan_file), "--no-wait")
    assert (started.code, started.out) == (0, f"{wid(module)}\n"), started

    # A CI re-run of the same plan attaches to the apply in flight and waits for it.
    rerun = await cli.start("apply", str(plan_file))
    await rerun.wait_stderr("attached to the apply in flight")

    refused = await cli.run("approve", wid(module), "--plan", str(plan_file), "--pr", "0", "--by", "ci")
    assert refused.code == 5, refused
    assert "approval refused" in refused.err and "pull request number" in refused.err, refused

    accepted = await cli.run("approve", wid(module), "--plan", str(plan_file), "--pr", PR, "--by", "ci")
    assert (accepted.code, accepted.out) == (0, f"approved {wid(module)}\n"), accepted

    done = await rerun.finish()
    assert done.code == 9 and done.out.startswith(f"applied {module}@{host_name} "), done
    # One workflow run, one compose up: the re-run started nothing of its own.
    assert sshd_host.calls().count(compose_up_argv(sshd_host, module)) == 1
    runs = [r async for r in platform.client.list_workflows(f"WorkflowId = '{wid(module)}'")]
    assert len(runs) <= 1, runs
    history = [e async for e in platform.client.get_workflow_handle(wid(module)).fetch_history_events()]
    assert history, "no workflow under the deterministic id"


async def test_a_rerun_with_its_approval_approves_the_apply_it_attaches_to(
    platform, sshd_host, host_name, cli, tmp_path
):
    module = new_module()
    write_module(platform.root, module, host_name)
    await platform.start_worker(phase="05")
    plan_file = write_json(tmp_path / "plan.json", plan(module=module, changes=[change(module)]))
    assert (await cli.run("apply", str(plan_file), "--no-wait")).code == 0

    ran = await cli.run("apply", str(plan_file), *approve_flags())

    assert ran.code == 9, ran
    assert "attached to the apply in flight" in ran.err
    assert sshd_host.calls().count(compose_up_argv(sshd_host, module)) == 1


async def test_a_rejected_apply_exits_5(platform, host_name, cli, tmp_path):
    module = new_module()
    write_module(platform.root, module, host_name)
    await platform.start_worker(phase="05")
    plan_file = write_json(tmp_path / "plan.json", plan(module=module, changes=[change(module)]))

    waiting = await cli.start("apply", str(plan_file))
    await waiting.wait_stderr(f"{wid(module)}: awaiting_approval")
    rejected = await cli.run("reject", wid(module), "--reason", "not during the sale", "--by", "alice")
    assert (rejected.code, rejected.out) == (0, f"rejected {wid(module)}\n"), rejected

    done = await waiting.finish()
    assert done.code == 5, done
    assert done.out.startswith(f"rejected {module}@{host_name} 0123456 exit 5: ") and "not during the sale" in done.out
    assert [a.get("rejected_by") for a in platform.audit() if a.get("module") == module] == ["alice"]
    # Rejected or approved again once it has ended: refused (5), saying how it ended.
    late = await cli.run("reject", wid(module), "--reason", "again")
    assert late.code == 5 and f"reject refused: {wid(module)} is not waiting (it ended rejected)" in late.err, late
    approve = await cli.run("approve", wid(module), "--plan", str(plan_file), "--pr", PR)
    assert approve.code == 5 and f"{wid(module)} is not waiting (it ended rejected)" in approve.err, approve
    # An id that names no workflow (a typo in CI) is not a refusal: 66.
    typo = await cli.run("reject", wid(module) + "x", "--reason", "again")
    assert typo.code == 66 and f"no workflow {wid(module)}x" in typo.err, typo


async def test_signed_approvals_with_the_key_and_refused_without(platform, sshd_host, host_name, cli, tmp_path):
    key_file = tmp_path / "approval.key"
    key_file.write_text("a-test-approval-key-of-32-bytes!\n")
    platform.extra_env["PLATFORM_APPROVAL_KEY_FILE"] = str(key_file)
    signed, unsigned = new_module(), new_module()
    for module in (signed, unsigned):
        write_module(platform.root, module, host_name)
    await platform.start_worker(phase="05")
    cli.env.pop("PLATFORM_APPROVAL_KEY_FILE", None)

    plan_file = write_json(tmp_path / "unsigned.json", plan(module=unsigned, changes=[change(unsigned)]))
    ran = await cli.run("apply", str(plan_file), *approve_flags())
    assert ran.code == 5 and ran.out.startswith("approval_mismatch "), ran
    assert "not signed" in ran.out

    # Through the approve Update (CI approving later), an unsigned approval fails the call
    # and the apply keeps waiting; a signed one then approves it.
    later = new_module()
    write_module(platform.root, later, host_name)
    later_plan = write_json(tmp_path / "later.json", plan(module=later, changes=[change(later)]))
    assert (await cli.run("apply", str(later_plan), "--no-wait")).code == 0
    refused = await cli.run("approve", wid(later), "--plan", str(later_plan), "--pr", PR)
    assert refused.code == 5 and "not signed" in refused.err, refused
    assert "the apply still waits for an approval" in refused.err, refused
    accepted = await cli.run(
        "approve", wid(later), "--plan", str(later_plan), "--pr", PR, PLATFORM_APPROVAL_KEY_FILE=str(key_file)
    )
    assert accepted.code == 0, accepted
    assert (await platform.client.get_workflow_handle(wid(later)).result())["status"] == "applied"

    plan_file = write_json(tmp_path / "signed.json", plan(module=signed, changes=[change(signed)]))
    ran = await cli.run("apply", str(plan_file), *approve_flags(), PLATFORM_APPROVAL_KEY_FILE=str(key_file))
    assert ran.code == 9, ran
    assert sshd_host.calls().count(compose_up_argv(sshd_host, signed)) == 1
    assert sshd_host.calls().count(compose_up_argv(sshd_host, unsigned)) == 0

    printed = await cli.run(
        "sign", "--plan", str(plan_file), "--pr", PR, "--by", "ci", "--expires-at", "2030-01-01T00:00:00Z",
        PLATFORM_APPROVAL_KEY_FILE=str(key_file),
    )
    assert printed.code == 0, printed
    approval_json = json.loads(printed.out)
    digest = plan_digest(plan(module=signed, changes=[change(signed)]))
    expected = Approval(approved_sha=SHA, approved_pr=165, approved_by="ci", expires_at="2030-01-01T00:00:00Z",
                        plan_digest=digest)
    assert approval_json["signature"] == sign(b"a-test-approval-key-of-32-bytes!", signed, expected)
    assert {k: v for k, v in approval_json.items() if k != "signature"} == {
        "approved_sha": SHA, "approved_pr": 165, "approved_by": "ci", "allow_destructive": False,
        "expires_at": "2030-01-01T00:00:00Z", "plan_digest": digest,
    }
    # The same from flags, for a CI job that kept only the digest.
    flags = await cli.run(
        "sign", "--module", signed, "--sha", SHA, "--plan-digest", digest, "--pr", PR, "--by", "ci",
        "--expires-at", "2030-01-01T00:00:00Z", PLATFORM_APPROVAL_KEY_FILE=str(key_file),
    )
    assert (flags.code, flags.out) == (0, printed.out), flags


async def test_approve_signs_through_the_update_when_the_key_is_set(platform, host_name, cli, tmp_path):
    key_file = tmp_path / "approval.key"
    key_file.write_text("another-test-approval-key-32-byte\n")
    platform.extra_env["PLATFORM_APPROVAL_KEY_FILE"] = str(key_file)
    module = new_module()
    write_module(platform.root, module, host_name)
    await platform.start_worker(phase=None)
    plan_file = write_json(tmp_path / "plan.json", plan(module=module, changes=[change(module)]))
    waiting = await cli.start("apply", str(plan_file))
    await waiting.wait_stderr(f"{wid(module)}: awaiting_approval")

    accepted = await cli.run(
        "approve", wid(module), "--plan", str(plan_file), "--pr", PR, PLATFORM_APPROVAL_KEY_FILE=str(key_file)
    )

    assert accepted.code == 0, accepted
    done = await asyncio.wait_for(waiting.finish(), 60)
    assert done.code == 0 and done.out.startswith(f"dry_run {module}@{host_name} "), done


async def test_with_no_worker_on_the_task_queue_apply_and_approve_exit_2_and_send_nothing(
    platform, host_name, cli, tmp_path
):
    module = new_module()
    write_module(platform.root, module, host_name)
    await platform.start_worker(phase="05")
    plan_file = write_json(tmp_path / "plan.json", plan(module=module, changes=[change(module)]))

    # A mistyped queue used to wait in silence, and its apply kept the id the right run then attached to.
    typo = await cli.run("apply", str(plan_file), *approve_flags(), PLATFORM_TASK_QUEUE="platform-aply")
    assert typo.code == 2, typo
    assert "no worker polls task queue 'platform-aply'" in typo.err and "nothing was sent" in typo.err, typo
    with pytest.raises(RPCError) as gone:
        await platform.client.get_workflow_handle(wid(module)).describe()
    assert gone.value.status == RPCStatusCode.NOT_FOUND

    # An apply waiting on a queue no worker polls: its approve used to wait forever.
    stranded = await platform.client.start_workflow(
        "ApplyWorkflow", json.loads(plan_file.read_text()), id=f"apply-stranded-{module}", task_queue="nobody-polls"
    )
    approve = await cli.run("approve", stranded.id, "--plan", str(plan_file), "--pr", PR)
    assert approve.code == 3 and "on task queue nobody-polls, not an ApplyWorkflow on" in approve.err, approve
    await stranded.terminate()

    # Approving an id no workflow runs under exits 66 (not 5, a refusal), with a signing key too.
    key_file = tmp_path / "approval.key"
    key_file.write_text("a-test-approval-key-of-32-bytes!\n")
    keyed = {"PLATFORM_APPROVAL_KEY_FILE": str(key_file)}
    missing = await cli.run("approve", wid(module), "--plan", str(plan_file), "--pr", PR, **keyed)
    assert missing.code == 66 and f"no workflow {wid(module)} in namespace" in missing.err, missing


async def test_an_id_taken_by_another_plan_type_or_queue_is_never_attached_to_or_approved(
    platform, sshd_host, host_name, cli, tmp_path
):
    """The red-team break: a namespace user starts an ApplyWorkflow under the id CI uses, with
    another module's plan and no approval. `apply` used to attach (exit 0) and `approve` to sign
    for whatever module the workflow named, and that module's compose up ran."""
    ours, theirs = new_module(), new_module()
    for module in (ours, theirs):
        write_module(platform.root, module, host_name)
    await platform.start_worker(phase="05")
    plan_file = write_json(tmp_path / "plan.json", plan(module=ours, changes=[change(ours)]))
    key_file = tmp_path / "approval.key"
    key_file.write_text("a-test-approval-key-of-32-bytes!\n")
    squatter = await platform.client.start_workflow(
        "ApplyWorkflow", {"plan": plan(module=theirs, changes=[change(theirs)])}, id=wid(ours),
        task_queue=platform.task_queue,
    )

    attached = await cli.run("apply", str(plan_file), "--no-wait")
    assert attached.code == 3 and f"id {wid(ours)} taken by an apply of another plan" in attached.err, attached
    approved = await cli.run(
        "approve", wid(ours), "--plan", str(plan_file), "--pr", PR, PLATFORM_APPROVAL_KEY_FILE=str(key_file)
    )
    assert approved.code == 3 and "taken by an apply of another plan" in approved.err, approved
    assert (await squatter.query("status"))["phase"] == "awaiting_approval"
    await squatter.terminate()

    # Another workflow type under the id, or an apply, on a queue this platform does not poll
    # (on this one, the worker ends a workflow of a type it does not know at once).
    for kind, queue in (("SomethingElse", "not-ours"), ("ApplyWorkflow", "not-ours")):
        taken = await platform.client.start_workflow(
            kind, {"plan": plan(module=ours, changes=[change(ours)])}, id=wid(ours), task_queue=queue
        )
        ran = await cli.run("apply", str(plan_file), "--no-wait")
        assert ran.code == 3 and f"taken by {kind} on task queue {queue}" in ran.err, ran
        await taken.terminate()
    assert sshd_host.calls() == []
