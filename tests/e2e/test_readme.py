"""The operator recipes of README.md and docs/, run as printed.

Every ```sh block of README.md and docs/*.md is accounted for: either it
runs here, or NOT_RUN names it (by its exact code) with the reason; a new
block that is neither fails. The blocks that run are read from their pages
at test time and run verbatim, page by page in SESSION's order (the README's
first real apply, then docs/operating.md: the platform-apply command and the
temporal CLI, then docs/approvals.md's openssl signature, then
docs/upgrade.md's list query), each page's blocks in their order, as an
operator would paste them into one terminal at the repository root: against
a real Temporal dev server, the real `worker.py` (gate open,
PLATFORMCTL_PHASE=05: the recipes apply for real and say
`exit 9`/`applied`), and a real OpenSSH sshd with the stand-in docker
standing in for `rs2000`.

- The working directory is a copy of the repository layout (`example/` as
  shipped, except that hosts.yaml's `rs2000` is the test sshd, with its
  pinned host key and client key, and the module's health window is a few
  seconds instead of 30).
- Each block runs in its own `bash` with `set -euo pipefail`, continuing
  the shell state the blocks before it left (variables, functions, working
  directory), under a per-block timeout.
- A block exits 0, unless the comment on its last line says `exits N`: then
  it must exit N. Every other fence of README.md and docs/*.md must say what
  it is (```text, ```json, ```yaml) and is not run.

So a renamed flag, signal, workflow id or output in the docs fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from temporalio.client import Client, ScheduleActionStartWorkflow
from temporalio.service import RPCError

from platformctl.cli.plan_binding import workflow_id as apply_id
from platformctl.module_state import module_state_id
from platformctl.policy.plan import plan_digest
from tests.e2e.conftest import E2E, REPO, VENV_BIN, ssh_host_entry
from tests.sshd import COMPOSE_FILE, SshHost

# The recipe session: the ```sh blocks of these pages run in this order, as one terminal
# (each page continues the shell state of the ones before it: PLATFORM_ROOT, SHA, plan.json, keys).
SESSION = ("README.md", "docs/operating.md", "docs/approvals.md", "docs/upgrade.md")
# Every other ```sh block of README.md and docs/*.md, by its exact code: why it does not run here.
NOT_RUN = {
    "make run     # creates ./.venv, then: .venv/bin/python worker.py --dev\n"
    "make test    # creates ./.venv, then: .venv/bin/python -m pytest\n":
        "README.md's two commands: `make run` serves until stopped (this test runs the worker.py it starts, "
        "on a dev server of its own), and `make test` is the whole suite, which .ci/run runs",
    "host/install --user deploy --key platform_deploy.pub --checkout /opt/platform\n":
        "README.md's step 2 runs on the host, as root: tests/e2e/test_first_host.py runs host/install with "
        "these options on a fresh user of this machine, then doctor and a real apply through it",
    "host/install --user platform-deploy --key platform_deploy.pub --checkout /opt/platform\n":
        "docs/security.md's host preparation runs on the host, as root: tests/e2e/test_first_host.py runs it",
    "sudo -u platform-deploy sh -c 'git -C /opt/platform fetch && git -C /opt/platform checkout --detach SHA'\n":
        "docs/security.md's manual sync runs on a host with a real git remote: tests/host/test_sync_checkout.py "
        "runs the agent's sync, the same fetch and detached checkout",
}
RUN_FENCE = "sh"
NOT_RUN_FENCES = {"text", "json", "yaml"}  # illustrative only: never run
TASK_QUEUE = "platform-apply"  # the recipes name the default task queue
HOST = "rs2000"
MODULE = "honcho-redis"
# The example's 30 s stability window, in real time, for every apply the recipes make.
FAST_HEALTH = {"stable_seconds": 1, "timeout_seconds": 10, "poll_seconds": 1}
BLOCK_TIMEOUT_S = 45
EXPECTED_EXIT = re.compile(r"#.*?\bexits (\d+)\b")
MIN_BLOCKS = 10  # fewer means the pages' fences changed shape: look before trusting a green run

pytestmark = pytest.mark.timeout(240)


# ---- the pages' blocks -----------------------------------------------------


@dataclass(frozen=True)
class Block:
    number: int  # 1-based, in the session (0 for a block that does not run)
    page: str  # relative to the repository, e.g. docs/operating.md
    line: int  # the page's line of the block's first line of code
    code: str
    expected_exit: int

    def title(self) -> str:
        return f"{self.page} block {self.number} (line {self.line})"


def pages() -> list[str]:
    """README.md and every docs/*.md, as paths relative to the repository."""
    return ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]


def sh_blocks(page: str, text: str) -> list[Block]:
    """The page's ```sh blocks, in order; any other fence must be one that is clearly not run.
    (Fences indented under a list item count too: their indent is stripped.)"""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = lines[i].lstrip()
        if not opening.startswith("```"):
            i += 1
            continue
        indent = len(lines[i]) - len(opening)
        info = opening[3:].strip()
        body_start = i + 1
        i = body_start
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        assert i < len(lines), f"unclosed ``` fence at {page} line {body_start}"
        body = [line[indent:] for line in lines[body_start:i]]
        i += 1
        if info != RUN_FENCE:
            assert info in NOT_RUN_FENCES, (
                f"{page} line {body_start}: a ```{info} fence; use ```{RUN_FENCE} for a block that runs, "
                f"or one of {sorted(NOT_RUN_FENCES)} for one that is only illustrative"
            )
            continue
        code = "\n".join(body) + "\n"
        last = next((line for line in reversed(body) if line.strip()), "")
        said = EXPECTED_EXIT.search(last)
        blocks.append(Block(0, page, body_start + 1, code, int(said[1]) if said else 0))
    return blocks


def all_sh_blocks() -> list[Block]:
    return [block for page in pages() for block in sh_blocks(page, (REPO / page).read_text())]


def operator_blocks() -> list[Block]:
    """The session's blocks, numbered in the order they run. Every ```sh block of README.md
    and docs/*.md runs, or is in NOT_RUN with the reason: one that is neither fails here."""
    found = all_sh_blocks()
    unaccounted = [b for b in found if b.code not in NOT_RUN and b.page not in SESSION]
    assert not unaccounted, (
        "```sh blocks that the recipe test neither runs nor lists in NOT_RUN: "
        + ", ".join(f"{b.page} line {b.line}" for b in unaccounted)
        + ". Add the page to SESSION (its blocks then run, in order, after the pages before it), or the "
        "block's exact code to NOT_RUN with why it cannot run here."
    )
    stale = [code for code in NOT_RUN if code not in {b.code for b in found}]
    assert not stale, f"NOT_RUN names blocks that no page holds any more: {stale}"
    missing = [page for page in SESSION if not (REPO / page).is_file()]
    assert not missing, f"SESSION names pages that do not exist: {missing}"
    run = sorted((b for b in found if b.code not in NOT_RUN), key=lambda b: SESSION.index(b.page))  # stable
    return [Block(n, b.page, b.line, b.code, b.expected_exit) for n, b in enumerate(run, 1)]


# ---- one shell session, a block at a time --------------------------------


@dataclass
class Ran:
    block: Block
    code: int
    stdout: str
    stderr: str
    seconds: float

    def transcript(self, limit: int = 4000) -> str:
        return (
            f"--- code ---\n{self.block.code}--- exit {self.code} after {self.seconds:.1f} s ---\n"
            f"--- stdout ---\n{self.stdout[-limit:]}\n--- stderr ---\n{self.stderr[-limit:]}"
        )


def bash_internal_variables() -> set[str]:
    """What bash defines by itself: never carried from one block to the next."""
    names = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", "compgen -v"], env={}, capture_output=True, text=True, check=True
    ).stdout.split()
    return set(names) - {"PATH"}  # PATH is the operator's: an `export PATH=...` carries over


WRAPPER = """\
set -euo pipefail
__readme_state={state}
__readme_internal=' {internal} '
[ ! -f "$__readme_state" ] || source "$__readme_state"
__readme_save() {{
  set +eu
  {{
    for __readme_v in $(compgen -v); do
      case "$__readme_internal" in *" $__readme_v "*) continue ;; esac
      case "$__readme_v" in __readme_*|BASH_*) continue ;; esac
      __readme_d=$(declare -p "$__readme_v" 2>/dev/null) || continue
      __readme_f=${{__readme_d#declare -}}
      case "${{__readme_f%% *}}" in *r*) continue ;; esac
      printf '%s\\n' "$__readme_d"
    done
    declare -f
    printf 'cd -- %q\\n' "$PWD"
  }} > "$__readme_state.new" && mv -f "$__readme_state.new" "$__readme_state"
}}
trap '__readme_rc=$?; __readme_save; exit "$__readme_rc"' EXIT
"""


class Shell:
    """Runs blocks like one terminal would: each in a fresh `bash -euo pipefail`
    that starts where the previous block left the shell (its variables,
    functions and working directory, saved on exit)."""

    def __init__(self, cwd: Path, env: dict[str, str], work: Path) -> None:
        self.cwd = cwd
        self.env = env
        self.work = work
        self.state = work / "shell-state.sh"
        self.internal = " ".join(sorted(bash_internal_variables()))

    async def run(self, block: Block, timeout_s: float = BLOCK_TIMEOUT_S) -> Ran:
        script = self.work / f"block-{block.number:02d}.sh"
        script.write_text(WRAPPER.format(state=shlex.quote(str(self.state)), internal=self.internal) + block.code)
        out_path, err_path = script.with_suffix(".out"), script.with_suffix(".err")
        started = time.monotonic()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                "bash", "--noprofile", "--norc", str(script),
                cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True,  # its own process group: a timeout kills everything it started
            )
            try:
                code = await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
                code = -1
        ran = Ran(block, code, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"),
                  time.monotonic() - started)
        if code == -1:
            raise AssertionError(f"{block.title()} did not finish within {timeout_s:g} s\n{ran.transcript()}")
        return ran


# ---- what the blocks must print -------------------------------------------


@dataclass(frozen=True)
class Check:
    """Applies to every block whose code holds `needle`; at least one must."""

    needle: str
    what: str
    holds: Callable[[Ran], bool]
    unless: str | None = None  # not for blocks that also hold this

    def applies(self, block: Block) -> bool:
        return self.needle in block.code and (self.unless is None or self.unless not in block.code)


def _search(pattern: str, flags: int = re.M) -> Callable[[str], bool]:
    return lambda text: re.search(pattern, text, flags) is not None


def checks(sha: str) -> list[Check]:
    seen: dict[str, str] = {}  # what an earlier block printed, for a later block's check
    example_plan = json.loads((REPO / "example" / "plan.json").read_text())["plan"]
    wid = apply_id(MODULE, sha, plan_digest(example_plan))
    status_line = _search(rf"^{MODULE}: {sha[:12]} PR #165 applied \S+ by ci \((apply|reapply)-{MODULE}-{sha[:12]}")

    def doctor_ok(r: Ran) -> bool:
        return (
            "FAIL" not in r.stdout
            and re.search(rf"^OK   checkout: \S+ is at {sha}$", r.stdout, re.M) is not None
            and re.search(rf"^OK   compose ps {MODULE}: .*\(running, healthy\)$", r.stdout, re.M) is not None
        )

    def signed(r: Ran) -> bool:
        approval = json.loads(r.stdout.strip().splitlines()[-1])
        seen["signature"] = approval.get("signature", "")
        return (approval["approved_sha"], approval["approved_pr"]) == (sha, 165) and re.fullmatch(
            r"[0-9a-f]{64}", approval.get("signature", "")
        ) is not None

    def held_by_the_apply(r: Ran) -> bool:
        lines = r.stdout.splitlines()
        ours = [line for line in lines if line.startswith(f"{HOST}/core ")]
        return bool(lines) and all(line.startswith(f"{HOST}/core held by {wid}") for line in ours)

    return [
        Check(f"platform-apply doctor {HOST}", "every check of the host OK, the checkout at the plan's SHA",
              doctor_ok),
        Check('platform-apply approve "$ID"', "the README's first apply approved",
              lambda r: r.stdout.startswith(f"approved apply-{MODULE}-{sha[:12]}-")),
        Check("platform-apply apply first.json   #", "the one-line outcome of the README's first real apply",
              lambda r: f"applied {MODULE}@{HOST} {sha[:7]} exit 9" in r.stdout),
        Check("--no-wait", "the workflow id, first", lambda r: r.stdout.splitlines()[:1] == [wid], unless="ID=$("),
        Check("platform-apply status", "the module's line: SHA, PR, applied by ci", lambda r: status_line(r.stdout)),
        Check("platform-apply approve", "accepted", lambda r: f"approved {wid}" in r.stdout, unless='"$ID"'),
        Check("platform-apply locks", "any line about rs2000/core names the apply",
              held_by_the_apply),
        Check("platform-apply reject", "delivered, and the apply ends rejected by alice",
              lambda r: f"rejected {wid}" in r.stdout and "rejected by alice: not during the sale" in r.stdout),
        Check("platform-apply reapply", "re-applied", lambda r: re.search(rf"^{MODULE}: applied\b", r.stdout, re.M)
              is not None),
        Check("platform-apply schedule", "created", lambda r: "schedule platform-reapply created" in r.stdout),
        Check("platform-apply sign", "a signed approval", signed, unless="openssl dgst"),
        Check("temporal workflow execute", "the apply's result: applied, exit code 9",
              lambda r: re.search(r'^\s*Status\s+COMPLETED$', r.stdout, re.M) is not None
              and '"exitCode":9' in r.stdout and '"status":"applied"' in r.stdout, unless="-o json"),
        Check("--name status\n", "the status query answers with the module",
              lambda r: re.search(rf'"module":\s*"{MODULE}"', r.stdout) is not None),
        Check('"approved_pr": 0', "refused at once, with the reason",
              lambda r: "unable to update workflow: approval names no usable pull request number" in r.stderr),
        Check("--name reject", "the apply failed, rejected by alice",
              lambda r: "rejected by alice: not during the sale" in r.stdout),
        Check("-o json > out.json", "the CI recipe prints the exit code of applied",
              lambda r: r.stdout.strip().splitlines()[-1:] == ["9"]),
        Check("openssl dgst -sha256 -hmac", "openssl's signature is the one `platform-apply sign` gave",
              lambda r: bool(seen.get("signature")) and r.stdout.strip().splitlines()[-1:] == [seen["signature"]]),
    ]


# ---- the platform the recipes operate on -----------------------------------


def plan_sha() -> str:
    return str(json.loads((REPO / "example" / "plan.json").read_text())["plan"]["source_sha"])


def repo_copy(base: Path, host: SshHost) -> Path:
    """The repository layout the blocks run in, as `make run` leaves it (example/ as shipped
    plus the deploy key it makes), except that rs2000 is the test sshd."""
    repo = base / "repo"
    shutil.copytree(REPO / "example", repo / "example", ignore=shutil.ignore_patterns("keys", ".platform"))
    shutil.copy(REPO / "Makefile", repo)
    made = subprocess.run(["make", "-s", "example/keys/platform_deploy"], cwd=repo, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    hosts_path = repo / "example" / "hosts.yaml"
    hosts = yaml.safe_load(hosts_path.read_text())
    assert HOST in hosts["hosts"], f"example/hosts.yaml has no {HOST!r}: the recipes name it"
    hosts["hosts"][HOST].update(ssh_host_entry(host))  # address, port, user, remote_root, pinned key, client key
    hosts_path.write_text(yaml.safe_dump(hosts))
    module_path = repo / "example" / "modules" / MODULE / "module.yaml"
    module = yaml.safe_load(module_path.read_text())
    assert module["host"] == HOST
    assert module["spec"]["runtime"]["compose_file"] == COMPOSE_FILE, "the test sshd serves only this compose file"
    module["spec"]["health"] = FAST_HEALTH
    module_path.write_text(yaml.safe_dump(module))
    return repo


def shell_env(e2e: E2E, home: Path) -> dict[str, str]:
    """An operator's shell: the worker's Temporal address, .venv/bin on PATH; no other
    TEMPORAL_/PLATFORM_ settings (the README's first block sets PLATFORM_ROOT)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "PLATFORM_", "PLATFORMCTL_"))}
    env.update(
        PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
        TEMPORAL_ADDRESS=e2e.server.address,
        TEMPORAL_NAMESPACE="default",
        HOME=str(home),  # no operator's temporal CLI profile or ssh config leaks in
    )
    return env


async def clean_up(client: Client, blocks: list[Block]) -> None:
    """Delete the Schedules the blocks create and end what still runs on the recipes' task queue."""
    schedule_ids = {"platform-reapply"}  # `platform-apply schedule`'s default id
    for block in blocks:
        schedule_ids.update(re.findall(r"--schedule-id\s+(\S+)", block.code))
        schedule_ids.update(re.findall(r"platform-apply schedule\b[^\n]*?--id\s+(\S+)", block.code))
    for schedule_id in schedule_ids:
        with contextlib.suppress(RPCError):
            await client.get_schedule_handle(schedule_id).delete()
    running = [module_state_id(TASK_QUEUE, MODULE)]
    query = f"TaskQueue = '{TASK_QUEUE}' AND ExecutionStatus = 'Running'"
    running += [wf.id async for wf in client.list_workflows(query)]
    for workflow_id in dict.fromkeys(running):
        with contextlib.suppress(RPCError):
            await client.get_workflow_handle(workflow_id).terminate(reason="tests/e2e/test_readme.py cleanup")


# ---- the test ----------------------------------------------------------------


def test_every_sh_block_is_run_or_listed_with_its_reason() -> None:
    """Cheap, no services: the pages parse, every ```sh block is accounted for, and the exit-code
    comments are where they belong."""
    blocks = operator_blocks()
    assert len(blocks) >= MIN_BLOCKS, [b.title() for b in blocks]
    for block in blocks:
        for line in block.code.splitlines()[:-1]:
            # `exits N` is read from a block's last line only: anywhere else a non-zero exit stops the block.
            said = EXPECTED_EXIT.search(line)
            assert said is None or said[1] == "0", (
                f"{block.title()}: {line.strip()!r} says it exits {said[1]} but is not the block's last line"
            )
        assert "…" not in block.code and "[...]" not in block.code, f"{block.title()} holds a placeholder"


@pytest.mark.parametrize("code", list(NOT_RUN), ids=lambda code: code.splitlines()[0][:40])
def test_sh_blocks_not_run_here(code: str) -> None:
    """Listed, not silently ignored: each ```sh block that cannot run in this test, and why."""
    where = [f"{b.page} line {b.line}" for b in all_sh_blocks() if b.code == code]
    assert where, f"no page holds this NOT_RUN block any more:\n{code}"
    pytest.skip(f"{', '.join(where)}: {NOT_RUN[code]}")


async def test_every_operator_block_runs_as_printed(e2e: E2E, sshd_host: SshHost, tmp_path: Path) -> None:
    sha = plan_sha()
    sshd_host.set_head_sha(sha)  # the host's checkout is at the commit the plan was made for
    repo = repo_copy(tmp_path, sshd_host)
    home = tmp_path / "home"
    home.mkdir()
    e2e.root = repo / "example"
    e2e.task_queue = TASK_QUEUE
    blocks = operator_blocks()
    assert len(blocks) >= MIN_BLOCKS, [b.title() for b in blocks]
    await clean_up(e2e.client, blocks)  # nothing of an earlier run on this server
    await e2e.start_worker(phase="05")
    shell = Shell(repo, shell_env(e2e, home), tmp_path)
    all_checks = checks(sha)
    used: set[str] = set()
    ran: list[Ran] = []
    try:
        for block in blocks:
            result = await shell.run(block)
            ran.append(result)
            e2e.check_workers()
            if result.code != block.expected_exit:
                raise AssertionError(
                    f"{block.title()} exited {result.code}, the page says {block.expected_exit}\n"
                    f"{result.transcript()}\n--- worker log ---\n{e2e.all_logs()[-3000:]}"
                )
            for check in all_checks:
                if check.applies(block):
                    used.add(check.needle)
                    assert check.holds(result), f"{block.title()}: {check.what}\n{result.transcript()}"
        # The Schedule the temporal CLI recipe made re-applies on the recipes' task queue.
        action = (await e2e.client.get_schedule_handle("platform-reapply").describe()).schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow), action
        assert (action.workflow, action.task_queue) == ("ReapplyWorkflow", TASK_QUEUE), action
    finally:
        await clean_up(e2e.client, blocks)

    unmatched = [c.needle for c in all_checks if c.needle not in used]
    assert not unmatched, f"no block of {SESSION} holds {unmatched}: update the checks with the pages"

    # What the recipes did, seen from outside the shell.
    audit = e2e.audit()
    statuses = [line["status"] for line in audit]
    assert "applied" in statuses and "rejected" in statuses, statuses
    assert all(line["approved_by"] == "ci" for line in audit if line["status"] == "applied"), audit
    assert {line.get("rejected_by") for line in audit if line["status"] == "rejected"} == {"alice"}, audit
    up = ["docker", "compose", "-f", sshd_host.compose_path, "up", "-d", MODULE]
    calls = sshd_host.calls()
    assert calls.count(up) == statuses.count("applied"), (calls, statuses)
    print("; ".join(f"block {r.block.number}: {r.seconds:.1f} s" for r in ran))
