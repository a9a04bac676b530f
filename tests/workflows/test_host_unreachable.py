"""A host that stops answering during compose up: the apply asks its agent again on
durable timers, for up to the up timeout plus 10 minutes. On a time-skipping server
of this file's own: these skip a quarter of an hour, which workflows other files
leave waiting on the shared server can stall."""

from __future__ import annotations

import time

import pytest

from platformctl.transport import ConnectFailed
from platformctl.transport.fake import ok
from tests.conftest import Harness
from tests.platform_files import apply_input, write_platform
from tests.workflows.test_apply import COMMAND
from tests.workflows.test_redaction_in_history import assert_no_secret, history_text
from tests.workflows.test_replay import replay


@pytest.fixture
def harness(own_ts_env, tmp_path) -> Harness:
    write_platform(tmp_path)
    return Harness(client=own_ts_env.client, root=tmp_path)


async def test_unreachable_host_is_asked_again_for_a_while_then_remote_failed(harness):
    harness.transport.script = {"compose_up": [ConnectFailed("rs2000: connection refused")]}
    started = time.monotonic()
    out = await harness.apply(apply_input())
    assert (out.status, out.error_type) == ("remote_failed", "RemoteFailed")
    assert "connection refused" in out.result["error"]
    # 4 attempts (about 14 s), then 4 again 30 s after each, for the up timeout (300 s) and 10 minutes more.
    asked = len(harness.transport.commands("compose_up"))
    assert asked % 4 == 0 and (300 + 600) // (30 + 14) <= asked // 4 - 1 <= (300 + 600) // 30, asked
    assert out.result["rollback"] is not None
    assert time.monotonic() - started < 60  # time-skipped


async def test_compose_up_that_finished_while_the_host_was_unreachable_keeps_its_outcome(harness):
    """The network went away after compose up was sent and stayed away past the step's
    retries: the agent's record of the run answers once it is back, so a release that
    succeeded is judged by its health, not rolled back for the outage."""
    cut = ConnectFailed("rs2000: connection lost while the command ran (it may have run)")
    harness.transport.script = {"compose_up": [cut] * 6 + [ok(stderr="Container core-honcho-redis-1 Started")]}
    out = await harness.apply(apply_input())
    assert out.status == "applied", out.result
    assert out.result["rollback"] is None and harness.transport.commands("compose_rollback") == []
    assert harness.transport.commands("compose_up") == [COMMAND] * 7  # one run id: the agent answers, never runs twice
    assert await replay(await out.handle.fetch_history()) is None


async def test_a_connection_error_with_secrets_stores_none_of_them(harness):
    error = ConnectFailed("rs2000: refused for ssh://deploy:Qx7sshUrl@rs2000 (token=Qx7sshTok)")
    harness.transport.script = {"compose_up": [error]}
    out = await harness.apply(apply_input())
    assert out.status == "remote_failed"
    assert "refused for ssh://deploy:[REDACTED]@rs2000" in out.result["error"]
    assert_no_secret(history_text(await out.handle.fetch_history()), ["Qx7sshUrl", "Qx7sshTok"], "the history")
