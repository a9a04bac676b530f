"""Web UI fixtures: a Temporal dev server with its UI, one finished apply, and headless Chromium.

The apply runs for real on that server (phase "05" with the fake transport, so
it also starts and releases its project lock child `platform-lock:...`). Its
worker keeps polling until the module's tests are done: the UI queries the
workflow (e.g. for its current details) and a query waits for a worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from platformctl.client import DATA_CONVERTER, register_search_attributes
from tests.conftest import Harness
from tests.platform_files import apply_input, module_doc, write_platform

CHROMIUM = Path("/usr/bin/chromium")
TEMPORAL_CLI = Path(sys.executable).parent / "temporal"
NAMESPACE = "default"
SUMMARY = "honcho-redis@rs2000 0123456 PR #165"
DETAILS = "- update compose.service.honcho-redis: bump image"
# The UI is a single-page app: without virtual time Chromium dumps the empty shell.
VIRTUAL_TIME_BUDGET_MS = 15000
CHROMIUM_TIMEOUT_S = 60
UI_ERROR_PAGE = "Uh oh. There's an error."
# An instant health smoke: the default window (stable 30 s) would be real time here.
FAST_HEALTH = {"stable_seconds": 0, "timeout_seconds": 5, "poll_seconds": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Page:
    url: str
    dom: str
    screenshot: Path | None

    def where(self) -> str:
        """For assertion messages: what was opened and where to look at it."""
        shot = f", screenshot {self.screenshot}" if self.screenshot else ""
        return f"(url {self.url}{shot}, DOM {len(self.dom)} chars)"


async def open_page(url: str, out_dir: Path, name: str, *, screenshot: bool = True) -> Page:
    """Load `url` in a fresh headless Chromium; return its DOM and, if asked, a screenshot."""
    shot = out_dir / f"{name}.png"
    with tempfile.TemporaryDirectory(prefix="chromium-profile-", ignore_cleanup_errors=True) as profile:
        args = [
            str(CHROMIUM),
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}",  # fresh each time: no cache or state from another page
            "--window-size=1600,1200",
            f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
            "--dump-dom",
            *([f"--screenshot={shot}"] if screenshot else []),
            url,
        ]
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), CHROMIUM_TIMEOUT_S)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: Chromium and the helpers it forked
            await proc.wait()
            raise AssertionError(f"chromium did not finish {url} within {CHROMIUM_TIMEOUT_S} s") from None
    dom = out.decode(errors="replace")
    (out_dir / f"{name}.html").write_text(dom)
    assert proc.returncode == 0 and dom, (
        f"chromium exited {proc.returncode} on {url}:\n{err.decode(errors='replace')[-2000:]}"
    )
    return Page(url, dom, shot if screenshot else None)


@dataclass
class UiApply:
    client: Client
    base_url: str  # the Web UI
    workflow_id: str
    run_id: str
    lock_id: str  # the project lock child the apply held
    result: dict[str, Any]
    out_dir: Path  # DOM dumps and screenshots

    async def open(self, path: str, name: str, *, screenshot: bool = True) -> Page:
        # The UI draws its own 500 page when one of its fetches fails, as on a machine
        # busy with other tests: open it again, as its "Try a refresh" says, twice at most.
        for _ in range(2):
            page = await open_page(self.base_url + path, self.out_dir, name, screenshot=screenshot)
            if UI_ERROR_PAGE not in page.dom:
                return page
        return await open_page(self.base_url + path, self.out_dir, name, screenshot=screenshot)


async def wait_listed(client: Client, query: str, timeout_s: float = 10) -> list[str]:
    """Workflow ids visibility lists for `query`, once it lists any."""
    deadline = time.monotonic() + timeout_s
    while True:
        ids = [w.id async for w in client.list_workflows(query)]
        if ids or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def ui_apply(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[UiApply]:
    ui_port = free_port()
    env = await WorkflowEnvironment.start_local(
        namespace=NAMESPACE,
        dev_server_existing_path=str(TEMPORAL_CLI),
        data_converter=DATA_CONVERTER,
        ui=True,
        ui_port=ui_port,
        dev_server_log_level="error",
    )
    try:
        client = env.client
        await register_search_attributes(client, NAMESPACE)
        root = write_platform(tmp_path_factory.mktemp("ui-platform"), modules=[module_doc(health=FAST_HEALTH)])
        harness = Harness(client=client, root=root, phase="05")  # fake transport: executes, so a lock child runs
        async with harness.worker():
            handle = await client.start_workflow(
                "ApplyWorkflow",
                apply_input(),
                id=f"apply-ui-{uuid.uuid4()}",
                task_queue=harness.task_queue,
                static_summary=SUMMARY,
                static_details=DETAILS,
            )
            result = await handle.result()
            result = result if isinstance(result, dict) else result.model_dump()
            assert result["status"] == "applied", result
            locks = await wait_listed(client, 'WorkflowType="ProjectLockWorkflow"')
            assert len(locks) == 1 and locks[0].startswith("platform-lock:"), locks
            assert handle.id in await wait_listed(client, 'WorkflowType="ApplyWorkflow"')
            yield UiApply(
                client=client,
                base_url=f"http://127.0.0.1:{ui_port}",
                workflow_id=handle.id,
                run_id=(await handle.describe()).run_id,
                lock_id=locks[0],
                result=result,
                out_dir=tmp_path_factory.mktemp("ui-pages"),
            )
    finally:
        await env.shutdown()
