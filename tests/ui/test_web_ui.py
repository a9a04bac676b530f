"""What an operator sees of an apply in the Temporal Web UI, in real headless Chromium.

Needs /usr/bin/chromium (Debian `chromium`; `.ci/run` installs it). Each test
writes the DOM dumps and screenshots it took to a temporary folder named in
its assertion messages.
"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.ui.conftest import CHROMIUM, DETAILS, NAMESPACE, SUMMARY, UiApply

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (Debian package `chromium`; .ci/run installs it)"
)

APPLIES_ONLY = 'WorkflowType="ApplyWorkflow"'


class _Iframes(HTMLParser):
    """The `src` of every iframe in a page, by the iframe's id."""

    def __init__(self) -> None:
        super().__init__()
        self.src: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "iframe" and a.get("id") and a.get("src"):
            self.src[str(a["id"])] = str(a["src"])


def iframe_sources(dom: str) -> dict[str, str]:
    parser = _Iframes()
    parser.feed(dom)
    return parser.src


def rendered_content(src: str) -> str:
    """The markdown a UI `/render?content=...` frame shows."""
    return parse_qs(urlsplit(src).query).get("content", [""])[0]


async def test_apply_page_shows_its_static_summary(ui_apply: UiApply) -> None:
    # Where UI 2.54.1 shows it: not on the page `/workflows/<id>` opens (it
    # redirects to the run's Timeline tab, whose DOM holds neither summary nor
    # details), but on the same page's "User Metadata" tab,
    # `/workflows/<id>/<run id>/user-metadata` (the tab needs the run id; a
    # bare `<id>/user-metadata` is not that route). That tab draws the summary
    # and details as markdown in sandboxed iframes `#user-metadata-summary` and
    # `#user-metadata-details` whose `src` is `/render?content=<the text>`;
    # `--dump-dom` dumps only the top frame, so the frame's own page is opened
    # too, to prove the text is rendered, not just passed along.
    page = await ui_apply.open(
        f"/namespaces/{NAMESPACE}/workflows/{ui_apply.workflow_id}/{ui_apply.run_id}/user-metadata", "user-metadata"
    )
    assert ui_apply.workflow_id in page.dom, f"the apply's page did not render {page.where()}"
    frames = iframe_sources(page.dom)
    assert "user-metadata-summary" in frames, f"no summary frame on the User Metadata tab {page.where()}: {frames}"
    assert rendered_content(frames["user-metadata-summary"]) == SUMMARY, f"{frames} {page.where()}"
    assert rendered_content(frames.get("user-metadata-details", "")) == DETAILS, f"{frames} {page.where()}"

    summary = await ui_apply.open(frames["user-metadata-summary"], "summary-frame", screenshot=False)
    assert SUMMARY in summary.dom, f"the summary frame does not show {SUMMARY!r} {summary.where()}; tab {page.where()}"


async def test_applies_only_list_shows_the_apply_but_not_its_lock(ui_apply: UiApply) -> None:
    # The lock child exists and the unfiltered list shows it: so its absence
    # below is the query's doing, not a page that shows no locks anyway.
    everything = await ui_apply.open(f"/namespaces/{NAMESPACE}/workflows", "all-workflows", screenshot=False)
    assert ui_apply.lock_id in everything.dom, f"the unfiltered list lacks {ui_apply.lock_id} {everything.where()}"
    assert ui_apply.workflow_id in everything.dom, f"the unfiltered list lacks the apply {everything.where()}"

    page = await ui_apply.open(f"/namespaces/{NAMESPACE}/workflows?query={quote(APPLIES_ONLY)}", "applies-only")
    assert ui_apply.workflow_id in page.dom, f"{APPLIES_ONLY} does not list the apply {page.where()}"
    assert ui_apply.lock_id not in page.dom, f"{APPLIES_ONLY} lists the lock {ui_apply.lock_id} {page.where()}"
