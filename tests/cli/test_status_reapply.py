"""`platform-apply status / reapply / schedule` over the module state kept in Temporal,
through the real worker, dev server and test sshd."""

from __future__ import annotations

import asyncio
import json

from tests.cli.conftest import new_module, write_json
from tests.cli.test_apply import approve_flags
from tests.e2e.conftest import compose_up_argv, write_module
from tests.platform_files import change, plan


async def test_status_then_reapply_then_schedule(platform, sshd_host, host_name, cli, tmp_path):
    module = new_module()
    write_module(platform.root, module, host_name)
    await platform.start_worker(phase="05")
    plan_file = write_json(tmp_path / "plan.json", plan(module=module, changes=[change(module)]))
    assert (await cli.run("apply", str(plan_file), *approve_flags())).code == 9

    status = await cli.run("status", module)
    assert status.code == 0, status
    assert status.out.startswith(f"{module}: 0123456789ab PR #165 applied ") and " by ci " in status.out, status.out

    again = await cli.run("reapply", module, "--json")
    assert again.code == 0, again
    [entry] = json.loads(again.out)["results"]
    assert (entry["module"], entry["outcome"], entry["apply"]["status"]) == (module, "applied", "applied")
    assert sshd_host.calls().count(compose_up_argv(sshd_host, module)) == 2

    # Two re-applies a second apart (a manual one while the schedule fires): run ids are
    # time-ordered, so each must name its children with more than its first characters.
    first = await cli.start("reapply", module, "--json")
    await asyncio.sleep(1)
    second = await cli.run("reapply", module, "--json")
    for ran in (await first.finish(), second):
        assert ran.code == 0, ran
        assert [e["outcome"] for e in json.loads(ran.out)["results"]] == ["applied"], ran
    assert sshd_host.calls().count(compose_up_argv(sshd_host, module)) == 4

    sshd_host.set_head_sha("f" * 40)  # the checkout moved on: nothing unapproved may run
    skipped = await cli.run("reapply", module)
    assert skipped.code == 0 and f"{module}: skipped" in skipped.out and "holds commit" in skipped.out, skipped
    assert sshd_host.calls().count(compose_up_argv(sshd_host, module)) == 4

    sched_id = f"reapply-{module}"
    made = await cli.run("schedule", "--every", "60", "--id", sched_id, module)
    assert made.code == 0, made
    desc = await platform.client.get_schedule_handle(sched_id).describe()
    assert desc.schedule.policy.pause_on_failure is True
    assert desc.schedule.policy.overlap.name == "SKIP"
    assert "every 60 minutes" in made.out, made  # the unit, not only in --help
    # Made again: unchanged and a success (CI may run it on every push); paused, it stays so.
    twice = await cli.run("schedule", "--every", "60", "--id", sched_id, module)
    assert twice.code == 0 and f"schedule {sched_id} exists already, unchanged" in twice.out, twice
    await platform.client.get_schedule_handle(sched_id).pause(note="paused by the test")
    paused = await cli.run("schedule", "--every", "60", "--id", sched_id, module)
    assert paused.code == 0 and "PAUSED since " in paused.out and "paused by the test" in paused.out, paused
    assert (await platform.client.get_schedule_handle(sched_id).describe()).schedule.state.paused
    # Another spec under that id: a usage error that names both.
    other = await cli.run("schedule", "--every", "30", "--id", sched_id, module)
    assert other.code == 64 and "exists with another spec" in other.err, other
    assert "every 60 minutes" in other.err and "every 30 minutes" in other.err, other
    # A cron Temporal refuses: a usage error that says why, no traceback.
    bad_cron = await cli.run("schedule", "--cron", "garbage", "--id", f"{sched_id}-cron", module)
    assert bad_cron.code == 64 and "Temporal refused the schedule" in bad_cron.err, bad_cron
    await platform.client.get_schedule_handle(sched_id).delete()


async def test_status_shows_every_apply_in_flight(platform, host_name, cli, tmp_path):
    """Two applies of one module at once (the next plan waits for approval while one runs):
    both are named, and a module's first apply shows before it has any recorded state."""
    module = new_module()
    write_module(platform.root, module, host_name)
    await platform.start_worker(phase="05")
    ids = []
    for sha in ("1" * 40, "2" * 40):
        plan_file = write_json(tmp_path / f"{sha[0]}.json", plan(module=module, sha=sha, changes=[change(module)]))
        started = await cli.run("apply", str(plan_file), "--no-wait")
        assert started.code == 0, started
        ids.append(started.out.strip())
    try:
        status = await cli.run("status")
        assert status.code == 0, status
        [line] = [line for line in status.out.splitlines() if line.startswith(f"{module}: ")]
        assert line.startswith(f"{module}: never applied; in flight: "), line
        assert all(i in line for i in ids), line
        listed = await cli.run("status", module, "--json")
        [row] = json.loads(listed.out)
        assert sorted(a["workflow_id"] for a in row["in_flight"]) == sorted(ids), row
    finally:
        for i in ids:
            await cli.run("reject", i, "--reason", "test over")
