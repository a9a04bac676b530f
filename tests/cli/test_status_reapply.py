"""`platform-apply status / reapply / schedule` over the module state kept in Temporal,
through the real worker, dev server and test sshd."""

from __future__ import annotations

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

    sshd_host.set_head_sha("f" * 40)  # the checkout moved on: nothing unapproved may run
    skipped = await cli.run("reapply", module)
    assert skipped.code == 0 and f"{module}: skipped" in skipped.out and "holds commit" in skipped.out, skipped
    assert sshd_host.calls().count(compose_up_argv(sshd_host, module)) == 2

    sched_id = f"reapply-{module}"
    made = await cli.run("schedule", "--every", "60", "--id", sched_id, module)
    assert made.code == 0, made
    desc = await platform.client.get_schedule_handle(sched_id).describe()
    assert desc.schedule.policy.pause_on_failure is True
    assert desc.schedule.policy.overlap.name == "SKIP"
    # Made again, or with a cron Temporal refuses: a usage error that says why, no traceback.
    twice = await cli.run("schedule", "--every", "60", "--id", sched_id, module)
    assert twice.code == 64 and f"schedule {sched_id} exists already" in twice.err, twice
    bad_cron = await cli.run("schedule", "--cron", "garbage", "--id", f"{sched_id}-cron", module)
    assert bad_cron.code == 64 and "Temporal refused the schedule" in bad_cron.err, bad_cron
    await platform.client.get_schedule_handle(sched_id).delete()
