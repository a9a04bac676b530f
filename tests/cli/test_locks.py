"""`platform-apply locks` while an apply holds its project's lock and another waits;
a cancelled apply exits 5."""

from __future__ import annotations

import asyncio
import time

from tests.cli.conftest import new_module, write_json
from tests.cli.test_apply import wid
from tests.e2e.conftest import write_module
from tests.platform_files import SHA, change, plan

# Healthy at once, then held for the stable window: the lock stays held until we cancel.
LONG_HEALTH = {"stable_seconds": 60, "timeout_seconds": 120, "poll_seconds": 1}


async def locks_until(cli, expected: str, timeout_s: float = 30) -> list[str]:
    """`platform-apply locks` until a line equals `expected` (visibility lags a little)."""
    deadline = time.monotonic() + timeout_s
    while True:
        ran = await cli.run("locks")
        assert ran.code == 0, ran
        lines = ran.out.splitlines()
        if expected in lines:
            return lines
        assert time.monotonic() < deadline, f"no line {expected!r} in {lines}"
        await asyncio.sleep(0.5)


async def test_locks_lists_the_holder_and_the_waiters_and_cancelled_applies_exit_5(platform, host_name, cli, tmp_path):
    holder, waiter = new_module(), new_module()
    for module in (holder, waiter):  # one compose file: one project, one lock
        # Record-only rollback: a cancelled holder ends at once instead of watching a restored image.
        write_module(platform.root, module, host_name, health=LONG_HEALTH, rollback="record")
    await platform.start_worker(phase="05")
    flags = ["--approve-sha", SHA, "--approve-pr", "165", "--approved-by", "ci"]
    holder_id, waiter_id = wid(holder), wid(waiter)

    first_plan = write_json(tmp_path / "a.json", plan(holder, changes=[change(holder)]))
    first = await cli.start("apply", str(first_plan), *flags)
    await first.wait_stderr(f"{holder_id}: health_check")
    await locks_until(cli, f"{host_name}/core held by {holder_id}")
    # On the host, the agent's lease: what actually keeps the next compose up out.
    run_id = (await platform.client.get_workflow_handle(holder_id).describe()).run_id
    shown = await cli.run("locks", "--hosts")
    leased = f"{host_name}/core leased on the host to run {run_id} (health), expires in "
    assert shown.code == 0 and any(line.startswith(leased) for line in shown.out.splitlines()), shown

    second_plan = write_json(tmp_path / "b.json", plan(waiter, changes=[change(waiter)]))
    second = await cli.start("apply", str(second_plan), *flags)
    await second.wait_stderr(f"{waiter_id}: waiting_for_lock (platform-lock:{host_name}:core)")
    await locks_until(cli, f"{host_name}/core held by {holder_id} (waiting: {waiter_id})")

    for handle_id, running, module in ((waiter_id, second, waiter), (holder_id, first, holder)):
        await platform.client.get_workflow_handle(handle_id).cancel()
        done = await running.finish(60)
        assert done.code == 5, done
        assert done.out.startswith(f"cancelled {module}@{host_name} 0123456 exit 5"), done

    deadline = time.monotonic() + 30  # the lock and the host's lease, both freed
    while any(line.startswith(f"{host_name}/") for line in (await cli.run("locks", "--hosts")).out.splitlines()):
        assert time.monotonic() < deadline, "the lock or the lease outlived its holder"
        await asyncio.sleep(0.5)


async def test_locks_shows_a_squatter_under_a_lock_id(platform, host_name, cli):
    lock_id = f"platform-lock:{host_name}:squatted"
    squat = await platform.client.start_workflow("Squatter", {}, id=lock_id, task_queue="nobody-polls")
    try:
        await locks_until(
            cli,
            f"{lock_id}: SQUATTED by Squatter on task queue 'nobody-polls': applies of that project end blocked "
            f"until it is ended (temporal workflow terminate --workflow-id {lock_id})",
        )
    finally:
        await squat.terminate("test over")
