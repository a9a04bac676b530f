"""Asking the host agent one verb (host/platform_agent.py), as every step that
reaches a host through it does: what the exit codes of a host without the agent
mean, the answer read as typed facts only, `busy` asked again, and what the
answers to `apply` and `rollback` mean for the apply."""

from __future__ import annotations

import asyncio
from typing import NoReturn

from temporalio import activity

from platformctl import commands
from platformctl.models import ComposeUpResult, RemoteRecord, Target
from platformctl.outcomes import PolicyViolation, RemoteFailed
from platformctl.policy.remote_output import AgentAnswer, AgentVerb, UnreadableAnswer, agent_answer
from platformctl.transport import Transport, TransportError

NOT_FOUND = 127  # a login shell's answer when the deploy key is not forced through the gate
BUSY_POLL_S = 5.0  # how soon to ask again while the project is busy on the host


class OlderAgent(Exception):
    """The host's gate refused the verb (exit 126): its agent is older than the verb."""


async def ask(
    transport: Transport,
    target: Target,
    command: commands.RemoteCommand,
    run: str | None,
    verb: AgentVerb,
    *,
    timeout_s: float,
    busy_for_s: float = 0.0,
) -> AgentAnswer:
    """The agent's answer; `busy` is asked again every BUSY_POLL_S for `busy_for_s`,
    then returned. Each ask is one short SSH command: no channel waits on the host."""
    host = target.host
    loop = asyncio.get_running_loop()
    busy_until = loop.time() + busy_for_s
    while True:
        # A lost connection fails this attempt; the retry asks the agent again.
        out = await transport.run(host, command, timeout_s=timeout_s)
        if out.returncode == NOT_FOUND:
            raise PolicyViolation(
                f"{host.name}: no host agent (`platform-agent` not found, exit {NOT_FOUND}): the deploy key "
                "must run host/platform-gate as its forced command (docs/security.md, preparing a host)"
            )
        if out.returncode == commands.GATE_REFUSED:
            raise OlderAgent(f"{host.name}: the host's gate refused `{verb}`")
        if out.timed_out or out.returncode != 0:
            # The agent itself failed before it answered: nothing it recorded runs twice on a retry.
            raise TransportError(f"{host.name}: the host agent ended without an answer (exit {out.returncode})")
        try:
            answer = agent_answer(out.stdout, run, verb)
        except UnreadableAnswer as e:
            raise RemoteFailed(f"{host.name}: {e}") from None
        if answer.agent < commands.MIN_AGENT_PROTOCOL:
            raise PolicyViolation(
                f"{host.name}: host agent v{answer.agent} is older than v{commands.MIN_AGENT_PROTOCOL}"
            )
        if answer.answer != "busy" or loop.time() >= busy_until:
            return answer
        await asyncio.sleep(BUSY_POLL_S)


def holder(answer: AgentAnswer, run: str | None) -> str:
    """Who holds the project, for a message: a run id, never host text."""
    who = "this apply" if answer.holder is not None and answer.holder == run else f"run {answer.holder}"
    if answer.expires_in is not None:
        return f"{who}, its lease expiring in {answer.expires_in} s"
    return who if answer.held_s is None else f"{who}, for {answer.held_s} s"


def ran(command: commands.RemoteCommand, answer: AgentAnswer) -> ComposeUpResult:
    """A verb that ran compose, as its activity returns it: the agent's facts only."""
    return ComposeUpResult(
        executed=True,
        command=command.render(),
        timed_out=answer.timed_out,
        remote=RemoteRecord(
            returncode=answer.returncode,
            duration_s=round(answer.duration_s, 3),
            error_class=answer.error_class,
            progress=answer.progress,
            output_bytes=answer.output_bytes,
            output_sha256=answer.output_sha256 or None,
        ),
    )


def apply_outcome(target: Target, answer: AgentAnswer, run: str) -> AgentAnswer:
    """The answer to `apply` when compose up ran; any other answer ends the step, typed."""
    host = target.host.name
    if answer.answer == "busy" and answer.busy_with == "checkout":
        raise PolicyViolation(
            f"{host}: the checkout {target.host.remote_root} is busy on the host (another apply syncs it, or "
            "runs compose up from it while this one would sync it); nothing ran"
        )
    if answer.answer == "busy":
        raise PolicyViolation(
            f"{host}: compose project {target.project} busy on the host (held by {holder(answer, run)}); nothing ran"
        )
    if answer.answer == "ran":
        if answer.replayed:
            activity.logger.warning("%s: compose up already ran for this run; the agent's record answered", host)
        return answer
    if answer.answer == "interrupted":
        raise RemoteFailed(
            f"{host}: compose up of this run was interrupted on the host (the agent stopped before it "
            "finished); it is never run twice: see `platform-apply logs`"
        )
    if answer.answer == "run_conflict":
        raise PolicyViolation(f"{host}: the host agent has another request recorded for this run")
    if answer.reason == "checkout":
        held = answer.head or "something that is not a commit SHA"
        dirty = " with local changes" if answer.dirty else ""
        raise PolicyViolation(f"{host}:{target.host.remote_root} holds commit {held}{dirty}, not the approved one")
    if answer.answer == "lease_lost" or answer.reason in ("no_snapshot", "undefined_service"):
        raise PolicyViolation(f"{host}: the host agent answered {answer.answer} to `apply`")
    if answer.reason == "compose_config":
        raise RemoteFailed(f"{host}: compose cannot load {target.compose_path} ({answer.error_class}); nothing ran")
    if answer.reason is not None and answer.reason.startswith("sync_"):
        sync_refused(target, answer)
    raise RemoteFailed(f"{host}: the host agent cannot record the run (host storage); nothing ran")


def sync_refused(target: Target, answer: AgentAnswer) -> NoReturn:
    """The agent's refusal to bring the checkout to the approved commit (sync_checkout), typed."""
    host, root = target.host.name, target.host.remote_root
    if answer.reason == "sync_not_allowed":
        raise PolicyViolation(
            f"{host}: hosts.yaml sets sync_checkout, but the host does not allow it (its deploy key's forced "
            "command has no --allow-sync: run host/install --allow-sync there, or sync by hand, see "
            "docs/security.md); nothing ran"
        )
    if answer.reason == "sync_dirty":
        raise PolicyViolation(
            f"{host}:{root} has local edits to tracked files: not synced to the approved commit, the edits "
            "left as they are; nothing ran"
        )
    if answer.reason == "sync_unreachable":
        why = {
            True: "`git fetch` succeeded, but no branch it fetches holds it (push it to one)",
            False: "`git fetch` from the checkout's remote failed (its output: platform-apply logs)",
            None: "not found after `git fetch`",
        }[answer.fetched]
        raise PolicyViolation(f"{host}: the approved commit is not reachable in {root}: {why}; nothing ran")
    raise RemoteFailed(
        f"{host}: git could not read or check out {root} (not a git checkout the deploy user may change, or "
        "untracked files in the way: platform-apply logs); nothing ran"
    )


def rollback_outcome(target: Target, answer: AgentAnswer, run: str) -> bool:
    """Whether the agent's `rollback` put an image back (False: this run never ran up,
    so there is nothing to put back); a refusal ends the step, typed."""
    host = target.host.name
    if answer.answer == "busy":
        raise RemoteFailed(f"{host}: project busy on the host (held by {holder(answer, run)})")
    if answer.answer == "lease_lost":
        raise RemoteFailed(f"{host}: lease lost to run {answer.holder}: the project is another apply's now")
    if answer.reason == "not_applied":
        return False
    if answer.answer == "interrupted":
        raise RemoteFailed(f"{host}: the rollback of this run was interrupted on the host; never run twice")
    if answer.answer != "ran":
        why = {"no_snapshot": "the agent recorded no one image before compose up",
               "undefined_service": "the compose file does not define the service"}.get(
                   answer.reason or "", "nothing was put back")
        raise PolicyViolation(f"{host}: the host agent refused the rollback ({answer.reason or answer.answer}): {why}")
    return True
