"""The web console in a real browser: Debian's Chromium driven by Playwright, a real server.

Flows are driven through the API (Connect JSON over the same HTTP port) while the browser
watches: the board and the flow page follow live, Retry on a failed phase moves it, a read-only
token sees no action buttons, and an action confirmed on a stale page reports the version
conflict in words. Skipped when no Chromium is installed (``make setup`` installs it).

``FLOWSTATE_SCREENSHOTS`` (a directory) saves the board and the flow page as PNGs
(docs/console.md's pictures).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from flowstate.cli.console import console_signin_url
from flowstate.core.model import Tenant
from flowstate.testing import RunningServer, serve_in_process

CHROMIUM = os.environ.get("FLOWSTATE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Skipped without Chromium on a developer's machine only: CI (CI=true) must run them, so there a
# missing browser fails at launch instead of passing as a skip.
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="no Chromium (make setup installs Debian's chromium)",
)
SERVICE = "/flowstate.v1.FlowStateService"
TIMEOUT_MS = 15_000
SCREENSHOTS = os.environ.get("FLOWSTATE_SCREENSHOTS")


@pytest_asyncio.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium (the system's: Playwright downloads no browser)."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            await launched.close()


class Api:
    """Drives flows through the HTTP port (Connect JSON), as a worker would."""

    def __init__(self, http: httpx.AsyncClient, token: str) -> None:
        self._http = http
        self._headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}

    async def call(self, method: str, **body: Any) -> dict[str, Any]:
        if method not in ("GetFlow", "ListFlows"):
            body.setdefault("requestId", str(uuid.uuid4()))
        response = await self._http.post(
            f"{SERVICE}/{method}", content=json.dumps(body), headers=self._headers
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def move(self, flow_id: str, phase: str, state: str, **extra: Any) -> dict[str, Any]:
        return await self.call(
            "TransitionPhase", flowId=flow_id, phase=phase, targetState=state, **extra
        )

    async def fail(self, flow_id: str, phase: str) -> dict[str, Any]:
        failure = {"errorCode": "ERROR_CODE_PHASE_EXECUTION_FAILED", "message": "agent crashed"}
        return await self.move(flow_id, phase, "PHASE_STATE_FAILED", failure=failure)


async def _sign_in(page: Page, base_url: str, token: str) -> None:
    await page.goto(base_url + "/")
    await page.fill("textarea[name=token]", token)
    await page.click("button[type=submit]")
    await expect(page.get_by_test_id("who")).to_be_visible(timeout=TIMEOUT_MS)


async def test_board_and_flow_page_follow_the_api_live_and_retry_works(
    browser: Browser, http: httpx.AsyncClient, base_url: str, web_server: RunningServer
) -> None:
    tenant = Tenant("acme", f"console-{uuid.uuid4().hex[:8]}")
    token = web_server.mint(tenant, user="alice", scopes=["flows:write"])
    api = Api(http, token)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    try:
        await _sign_in(page, base_url, token)
        await expect(page.get_by_test_id("who")).to_contain_text("alice")
        await expect(page.get_by_test_id("who")).to_contain_text(tenant.client_account_id)
        await expect(page.get_by_test_id("live")).to_have_text("● live", timeout=TIMEOUT_MS)

        flow_id = (await api.call("CreateFlow", displayName="Q3 migration"))["flow"]["flowId"]
        row = page.locator(f"tr[data-flow-id='{flow_id}']")
        await expect(row.get_by_test_id("status")).to_have_text("initialized", timeout=TIMEOUT_MS)
        await api.move(flow_id, "data_import", "PHASE_STATE_IN_PROGRESS")
        await expect(row.get_by_test_id("status")).to_have_text("data gathering")
        await expect(row.get_by_test_id("progress")).to_have_text("6.0%")
        await api.move(flow_id, "data_import", "PHASE_STATE_COMPLETED")
        await expect(row.get_by_test_id("progress")).to_have_text("20.0%")
        if SCREENSHOTS:
            other = (await api.call("CreateFlow", displayName="Q4 assessment"))["flow"]["flowId"]
            await api.move(other, "data_import", "PHASE_STATE_IN_PROGRESS")
            await expect(page.locator(f"tr[data-flow-id='{other}']")).to_be_visible()
            await page.screenshot(path=f"{SCREENSHOTS}/console-board.png")

        await row.locator("a").click()
        phase = page.locator("tr[data-phase='field_mapping']").get_by_test_id("phase-state")
        await expect(phase).to_have_text("not started", timeout=TIMEOUT_MS)
        await api.move(flow_id, "field_mapping", "PHASE_STATE_IN_PROGRESS")
        await expect(phase).to_have_text("in progress", timeout=TIMEOUT_MS)
        await api.fail(flow_id, "field_mapping")
        await expect(phase).to_have_text("failed", timeout=TIMEOUT_MS)
        await expect(page.locator("tr[data-phase='field_mapping'] .errctx")).to_contain_text(
            "agent crashed"
        )
        await expect(page.get_by_test_id("flow-status")).to_have_text("failed")

        retry = page.locator("button[data-action=retry][data-phase=field_mapping]")
        await retry.click(timeout=TIMEOUT_MS)
        await expect(page.get_by_test_id("confirm-change")).to_contain_text(
            "field_mapping goes from failed to retry needed"
        )
        if SCREENSHOTS:
            await page.screenshot(path=f"{SCREENSHOTS}/console-flow-confirm.png")
        await page.get_by_test_id("confirm").click()
        await expect(phase).to_have_text("retry needed", timeout=TIMEOUT_MS)
        await expect(page.get_by_test_id("notice")).to_contain_text("Done")
        await expect(page.get_by_test_id("flow-status")).to_have_text("retry pending")
        assert (await api.call("GetFlow", flowId=flow_id))["flow"]["phases"][1]["state"] == (
            "PHASE_STATE_RETRY_NEEDED"
        )
        if SCREENSHOTS:
            await page.screenshot(path=f"{SCREENSHOTS}/console-flow.png", full_page=True)
    finally:
        await context.close()


async def test_a_read_only_token_sees_no_action_buttons(
    browser: Browser, http: httpx.AsyncClient, base_url: str, web_server: RunningServer
) -> None:
    tenant = Tenant("acme", f"console-{uuid.uuid4().hex[:8]}")
    writer = Api(http, web_server.mint(tenant))
    flow_id = (await writer.call("CreateFlow"))["flow"]["flowId"]
    await writer.move(flow_id, "data_import", "PHASE_STATE_IN_PROGRESS")
    await writer.fail(flow_id, "data_import")
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await _sign_in(page, base_url, web_server.mint(tenant, scopes=["flows:read"]))
        await page.locator(f"tr[data-flow-id='{flow_id}'] a").click(timeout=TIMEOUT_MS)
        await expect(page.get_by_test_id("flow-status")).to_have_text("failed", timeout=TIMEOUT_MS)
        await expect(page.get_by_test_id("read-only")).to_be_visible()
        assert await page.locator("button[data-action]").count() == 0
        assert await page.get_by_test_id("actions").count() == 0

        await page.get_by_role("link", name="Definitions").click()
        discovery = page.locator("article[data-definition=discovery]")
        await expect(discovery.locator("g.node")).to_have_count(5, timeout=TIMEOUT_MS)
        await expect(discovery.locator("line.edge")).to_have_count(4)
    finally:
        await context.close()


async def test_an_action_on_a_stale_page_reports_the_version_conflict(
    browser: Browser, http: httpx.AsyncClient, base_url: str, web_server: RunningServer
) -> None:
    tenant = Tenant("acme", f"console-{uuid.uuid4().hex[:8]}")
    token = web_server.mint(tenant)
    api = Api(http, token)
    flow_id = (await api.call("CreateFlow"))["flow"]["flowId"]
    await api.move(flow_id, "data_import", "PHASE_STATE_IN_PROGRESS")
    failed = await api.fail(flow_id, "data_import")
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await _sign_in(page, base_url, token)
        await page.goto(f"{base_url}/flows/{flow_id}")
        await expect(page.get_by_test_id("flow-version")).to_have_text(
            str(failed["flow"]["version"]), timeout=TIMEOUT_MS
        )
        await page.locator("button[data-action=retry][data-phase=data_import]").click()
        await expect(page.get_by_test_id("confirm")).to_be_visible()
        # While the confirmation is open, someone else changes the flow.
        await api.call("PauseFlow", flowId=flow_id, reason="maintenance")
        await page.get_by_test_id("confirm").click()
        notice = page.get_by_test_id("notice")
        await expect(notice).to_contain_text("Version conflict", timeout=TIMEOUT_MS)
        await expect(notice).to_contain_text(f"now at version {int(failed['flow']['version']) + 1}")
        await expect(page.get_by_test_id("flow-status")).to_have_text("paused")
        flow = (await api.call("GetFlow", flowId=flow_id))["flow"]
        assert flow["phases"][0]["state"] == "PHASE_STATE_FAILED"  # the retry changed nothing
    finally:
        await context.close()


async def test_the_dev_sign_in_link_signs_in_once_and_leaves_no_secret_in_the_url(
    browser: Browser, database_url: str, tmp_path: Path
) -> None:
    async with serve_in_process(
        database_url,
        http_port=0,
        jwt_secret=None,
        jwt_issuer=None,
        jwt_audience=None,
        dev_auth=True,
        data_dir=tmp_path,
    ) as running:
        server = running.server
        assert server.console_url is not None
        link = console_signin_url(server.console_url, server.auth, user_id="erin")
        context = await browser.new_context()
        page = await context.new_page()
        try:
            await page.goto(link)
            await expect(page.get_by_test_id("who")).to_contain_text("erin", timeout=TIMEOUT_MS)
            await expect(page.get_by_test_id("who")).to_contain_text("dev/local")
            assert "signin" not in page.url
            assert "signin" not in await page.evaluate("location.href")
            await page.reload()  # the session survives a reload of the tab (sessionStorage)
            await expect(page.get_by_test_id("who")).to_contain_text("erin", timeout=TIMEOUT_MS)
            second = await context.new_page()
            await second.goto(link)  # the same link again: refused, in words
            await expect(second.get_by_role("alert")).to_contain_text("already used")
        finally:
            await context.close()


async def test_approval_buttons_decide_with_a_comment_and_alerts_show_as_badges(
    browser: Browser, http: httpx.AsyncClient, base_url: str, web_server: RunningServer
) -> None:
    """A phase in WAITING_APPROVAL: an approver (flows:approve) sees approve / request changes /
    reject and decides with a comment after a confirmation; a writer without flows:approve sees
    no decision button. A passed deadline shows as an alert badge on the board and the page."""
    tenant = Tenant("acme", f"console-{uuid.uuid4().hex[:8]}")
    worker = Api(http, web_server.mint(tenant, user="worker"))
    past = "2020-01-01T00:00:00Z"  # already passed: the next alert scan raises it
    flow_id = (await worker.call("CreateFlow", displayName="needs sign-off", deadline=past))[
        "flow"
    ]["flowId"]
    await worker.move(flow_id, "data_import", "PHASE_STATE_IN_PROGRESS")
    await worker.move(flow_id, "data_import", "PHASE_STATE_WAITING_APPROVAL")
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await _sign_in(page, base_url, web_server.mint(tenant, user="worker"))
        row = page.locator(f"tr[data-flow-id='{flow_id}']")
        await expect(row.get_by_test_id("alert")).to_have_text(
            "deadline exceeded", timeout=TIMEOUT_MS
        )
        await row.locator("a").click()
        await expect(page.get_by_test_id("alert")).to_have_text(
            "deadline exceeded", timeout=TIMEOUT_MS
        )
        await expect(page.get_by_test_id("no-approve")).to_be_visible()
        assert await page.locator("button[data-decision]").count() == 0

        await context.close()
        context = await browser.new_context()
        page = await context.new_page()
        await _sign_in(
            page, base_url, web_server.mint(tenant, user="carol", scopes=["flows:approve"])
        )
        await page.goto(f"{base_url}/flows/{flow_id}")
        approve = page.locator("button[data-decision=approve][data-phase=data_import]")
        await expect(approve).to_be_visible(timeout=TIMEOUT_MS)
        await expect(page.locator("button[data-decision]")).to_have_count(3)
        assert await page.get_by_test_id("actions").count() == 0  # no flows:write
        await approve.click()
        await expect(page.get_by_test_id("confirm-change")).to_contain_text(
            "data_import goes from waiting approval to completed"
        )
        await page.get_by_test_id("comment").fill("numbers check out")
        await page.get_by_test_id("confirm").click()
        phase = page.locator("tr[data-phase='data_import']")
        await expect(phase.get_by_test_id("phase-state")).to_have_text(
            "completed", timeout=TIMEOUT_MS
        )
        await expect(phase.get_by_test_id("approval")).to_contain_text("approve by carol")
        await expect(phase.get_by_test_id("approval")).to_contain_text("numbers check out")
        decided = (await worker.call("GetFlow", flowId=flow_id))["flow"]["phases"][0]["approval"]
        assert (decided["approver"], decided["comment"]) == ("carol", "numbers check out")
    finally:
        await context.close()


async def test_labels_filter_multi_select_and_a_bulk_retry_on_the_board(
    browser: Browser, http: httpx.AsyncClient, base_url: str, web_server: RunningServer
) -> None:
    """The board filters by labels on the server; an admin selects the flows shown and retries
    them in one bulk action, whose outcome counts the notice shows; a writer sees no selection."""
    tenant = Tenant("acme", f"console-{uuid.uuid4().hex[:8]}")
    worker = Api(http, web_server.mint(tenant, user="worker"))
    core = []
    for name in ("core-a", "core-b", "core-new"):
        created = await worker.call("CreateFlow", displayName=name, labels={"team": "core"})
        core.append(created["flow"]["flowId"])
    web = (await worker.call("CreateFlow", displayName="web", labels={"team": "web"}))["flow"]
    for flow_id in core[:2]:
        await worker.move(flow_id, "data_import", "PHASE_STATE_IN_PROGRESS")
        await worker.fail(flow_id, "data_import")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    try:
        await _sign_in(page, base_url, web_server.mint(tenant, user="writer"))
        await expect(page.locator(f"tr[data-flow-id='{web['flowId']}']")).to_be_visible(
            timeout=TIMEOUT_MS
        )
        assert await page.get_by_test_id("bulk-bar").count() == 0
        assert await page.get_by_test_id("select").count() == 0

        await context.close()
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        await _sign_in(page, base_url, web_server.mint(tenant, user="olga", scopes=["flows:admin"]))
        await page.fill("input[name=labels]", "team=core")
        await page.press("input[name=labels]", "Tab")  # commits the field (a change event)
        for flow_id in core:
            await expect(page.locator(f"tr[data-flow-id='{flow_id}']")).to_be_visible(
                timeout=TIMEOUT_MS
            )
        # The core rows were on the board before the filter: the web row's leaving is the sign
        # that the filtered list arrived (the suite's bound, not Playwright's 5 s default).
        await expect(page.locator(f"tr[data-flow-id='{web['flowId']}']")).to_have_count(
            0, timeout=TIMEOUT_MS
        )
        await page.get_by_test_id("select-all").check()
        await expect(page.get_by_test_id("selected-count")).to_have_text("3 selected")
        await page.select_option("select[name=bulk-action]", label="retry")
        await page.get_by_test_id("bulk-start").click()
        await expect(page.get_by_test_id("bulk-confirm")).to_contain_text("retry 3 flows?")
        await page.get_by_test_id("bulk-confirm-yes").click()
        await expect(page.get_by_test_id("bulk-notice")).to_have_text(
            "bulk retry done: applied 2, refused 0, skipped 1", timeout=TIMEOUT_MS
        )
        for flow_id in core[:2]:
            status = page.locator(f"tr[data-flow-id='{flow_id}']").get_by_test_id("status")
            await expect(status).to_have_text("retry pending", timeout=TIMEOUT_MS)
        await expect(page.get_by_test_id("selected-count")).to_have_text("0 selected")
    finally:
        await context.close()


def _definition(name: str, *phases: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "phases": list(phases)}


def _child_phase(name: str, definition: str, weight: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "weight": weight,
        "kind": "PHASE_KIND_CHILD_FLOW",
        "childFlow": {"definitionName": definition},
        **extra,
    }


async def _register_tree_definitions(admin: Api) -> None:
    """work: a -> b; mid: one child flow of work; release: prep -> (left: work, right: mid) ->
    finish. A release started on both sides is a tree three levels deep."""
    definitions = [
        _definition(
            "work",
            {"name": "a", "weight": 50, "maxRetries": 1},
            {"name": "b", "weight": 50, "dependsOn": ["a"]},
        ),
        _definition("mid", _child_phase("inner", "work", 100)),
        _definition(
            "release",
            {"name": "prep", "weight": 10},
            _child_phase("left", "work", 40, dependsOn=["prep"], maxRetries=1),
            _child_phase("right", "mid", 40, dependsOn=["prep"], maxRetries=1),
            {"name": "finish", "weight": 10, "dependsOn": ["left", "right"]},
        ),
    ]
    for definition in definitions:
        await admin.call("CreateFlowDefinition", definition=definition)


def _phase(flow: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in flow["phases"] if p["name"] == name)


async def test_the_flow_tree_shows_children_live_and_links_parent_and_child(
    browser: Browser, http: httpx.AsyncClient, base_url: str, web_server: RunningServer
) -> None:
    """A parent whose two child-flow phases have started (one child has a child of its own):
    its page lists the descendants under the phases they follow, to the depth chosen; driving a
    child to completion through the API moves the child's row and the parent's phase live; the
    child's page links back to its parent, the board marks children and can hide them."""
    tenant = Tenant("acme", f"console-{uuid.uuid4().hex[:8]}")
    api = Api(http, web_server.mint(tenant, user="worker", scopes=["flows:admin"]))
    await _register_tree_definitions(api)
    parent_id = (await api.call("CreateFlow", definitionName="release", displayName="Release 7"))[
        "flow"
    ]["flowId"]
    await api.move(parent_id, "prep", "PHASE_STATE_IN_PROGRESS")
    await api.move(parent_id, "prep", "PHASE_STATE_COMPLETED")
    await api.move(parent_id, "left", "PHASE_STATE_IN_PROGRESS")
    parent = (await api.move(parent_id, "right", "PHASE_STATE_IN_PROGRESS"))["flow"]
    left, right = _phase(parent, "left")["childFlowId"], _phase(parent, "right")["childFlowId"]
    mid = (await api.move(right, "inner", "PHASE_STATE_IN_PROGRESS"))["flow"]
    grandchild = _phase(mid, "inner")["childFlowId"]

    context = await browser.new_context(viewport={"width": 1280, "height": 1000})
    page = await context.new_page()
    try:
        await _sign_in(
            page, base_url, web_server.mint(tenant, user="alice", scopes=["flows:write"])
        )
        # The board: children say whose they are; "top-level only" hides them.
        child_row = page.locator(f"tr[data-flow-id='{left}']")
        await expect(child_row.get_by_test_id("parent-indicator")).to_contain_text(
            "child of Release 7 · phase left", timeout=TIMEOUT_MS
        )
        await expect(page.locator(f"tr[data-flow-id='{grandchild}']")).to_be_visible()
        await page.get_by_label("top-level only").check()
        await expect(child_row).to_have_count(0)
        await expect(page.locator(f"tr[data-flow-id='{parent_id}']")).to_be_visible()
        await page.get_by_label("top-level only").uncheck()
        await page.fill("input[name=parent]", right)
        await page.press("input[name=parent]", "Tab")
        await expect(page.locator("table.board tbody tr[data-flow-id]")).to_have_count(1)
        await expect(page.locator(f"tr[data-flow-id='{grandchild}']")).to_be_visible()

        await page.goto(f"{base_url}/flows/{parent_id}")
        children = page.get_by_test_id("children")
        rows = {
            flow_id: children.locator(f"tr[data-child-id='{flow_id}']")
            for flow_id in (left, right, grandchild)
        }
        for flow_id, level in ((left, "1"), (right, "1"), (grandchild, "2")):
            await expect(rows[flow_id]).to_have_attribute("data-level", level, timeout=TIMEOUT_MS)
        await expect(rows[left].get_by_test_id("child-status")).to_have_text("initialized")
        await expect(rows[left].get_by_test_id("child-progress")).to_have_text("0.0%")
        left_phase = page.locator("tr[data-phase='left']")
        await expect(left_phase.get_by_test_id("phase-child-link")).to_have_attribute(
            "href", f"/flows/{left}"
        )
        await expect(page.locator("svg.dag g.node.child")).to_have_count(2)
        # Depth 1: the grandchild is not read.
        await page.select_option("select[name=children-depth]", "1")
        await expect(rows[grandchild]).to_have_count(0, timeout=TIMEOUT_MS)
        await page.select_option("select[name=children-depth]", "2")
        await expect(rows[grandchild]).to_be_visible(timeout=TIMEOUT_MS)

        # A grandchild's change reaches its row (the related flows are watched).
        await api.move(grandchild, "a", "PHASE_STATE_IN_PROGRESS")
        grand = (await api.call("GetFlow", flowId=grandchild))["flow"]
        await expect(rows[grandchild].get_by_test_id("child-progress")).to_have_text(
            f"{grand['progress']:.1f}%", timeout=TIMEOUT_MS
        )

        # The left child driven to completion from its own side: its row and the parent's
        # phase follow without a reload of the page.
        await api.move(left, "a", "PHASE_STATE_IN_PROGRESS")
        half = (await api.call("GetFlow", flowId=left))["flow"]
        await expect(rows[left].get_by_test_id("child-progress")).to_have_text(
            f"{half['progress']:.1f}%", timeout=TIMEOUT_MS
        )
        await expect(left_phase.get_by_test_id("phase-state")).to_have_text("in progress")
        for phase_name in ("a", "b"):
            if phase_name == "b":
                await api.move(left, phase_name, "PHASE_STATE_IN_PROGRESS")
            await api.move(left, phase_name, "PHASE_STATE_COMPLETED")
        await expect(rows[left].get_by_test_id("child-status")).to_have_text(
            "completed", timeout=TIMEOUT_MS
        )
        await expect(rows[left].get_by_test_id("child-progress")).to_have_text("100.0%")
        await expect(left_phase.get_by_test_id("phase-state")).to_have_text("completed")
        await expect(left_phase.get_by_test_id("phase-child")).to_contain_text("completed")
        now = (await api.call("GetFlow", flowId=parent_id))["flow"]
        await expect(page.get_by_test_id("flow-progress")).to_have_text(f"{now['progress']:.1f}%")
        if SCREENSHOTS:
            await page.screenshot(path=f"{SCREENSHOTS}/console-tree.png")

        # A child's recovery option, among the parent's, says which child it acts on; cancelling
        # the right child fails the parent's phase that follows it.
        cancel_right = page.locator(f"button[data-action=cancel][data-flow-id='{right}']")
        await expect(cancel_right).to_have_text("cancel in child of right")
        await cancel_right.click()
        await expect(page.get_by_test_id("confirm-change")).to_contain_text(
            "In child flow Release 7 / right (followed by phase right): The flow goes from active"
        )
        await page.get_by_test_id("confirm").click()
        right_phase = page.locator("tr[data-phase='right']")
        await expect(right_phase.get_by_test_id("phase-state")).to_have_text(
            "failed", timeout=TIMEOUT_MS
        )
        await expect(right_phase.locator(".errctx")).to_contain_text("child flow cancelled")
        await expect(rows[right].get_by_test_id("child-status")).to_have_text("cancelled")
        await expect(rows[grandchild].get_by_test_id("child-status")).to_have_text("cancelled")
        # A retry of that phase starts a new child; the cancelled one stays, as an earlier attempt.
        await api.call("Retry", flowId=parent_id, phase="right")
        restarted = (await api.move(parent_id, "right", "PHASE_STATE_IN_PROGRESS"))["flow"]
        new_right = _phase(restarted, "right")["childFlowId"]
        await expect(children.locator(f"tr[data-child-id='{new_right}']")).to_have_attribute(
            "data-level", "1", timeout=TIMEOUT_MS
        )
        await expect(rows[right]).to_contain_text("earlier attempt")
        await expect(right_phase.get_by_test_id("phase-child-link")).to_have_attribute(
            "href", f"/flows/{new_right}"
        )

        # Parent -> child -> parent, by the links.
        await rows[left].get_by_test_id("child-link").click()
        await expect(page).to_have_url(f"{base_url}/flows/{left}")
        lineage = page.get_by_test_id("lineage")
        await expect(lineage.get_by_test_id("parent-link")).to_have_text(
            "Release 7", timeout=TIMEOUT_MS
        )
        await expect(page.get_by_test_id("parent-phase")).to_contain_text(
            "Child flow of phase left (completed)"
        )
        # The parent changes without this child (paused): its status here follows.
        await api.call("PauseFlow", flowId=parent_id, reason="freeze")
        await expect(lineage.get_by_test_id("ancestor-status")).to_have_text(
            "paused", timeout=TIMEOUT_MS
        )
        await lineage.get_by_test_id("parent-link").click()
        await expect(page).to_have_url(f"{base_url}/flows/{parent_id}")
        await expect(rows[right]).to_be_visible(timeout=TIMEOUT_MS)
        # The grandchild's page names both ancestors, root first.
        await rows[grandchild].get_by_test_id("child-link").click()
        crumbs = page.get_by_test_id("lineage").locator("a")
        await expect(crumbs).to_have_count(2, timeout=TIMEOUT_MS)
        await expect(crumbs.first).to_have_text("Release 7")
        await expect(crumbs.last).to_have_attribute("href", f"/flows/{right}")

        # The definitions page names each child_flow phase's child definition.
        await page.get_by_role("link", name="Definitions").click()
        release = page.locator("article[data-definition=release]")
        await expect(release.get_by_test_id("definition-child")).to_have_count(
            2, timeout=TIMEOUT_MS
        )
        await expect(release.get_by_test_id("definition-child").first).to_have_text(
            "child flow work (latest), cancelled when the parent is cancelled"
        )
        await expect(release.locator("g.node.child")).to_have_count(2)
    finally:
        await context.close()


async def test_external_dependencies_are_listed_linked_and_follow_the_other_flow(
    browser: Browser, http: httpx.AsyncClient, base_url: str, web_server: RunningServer
) -> None:
    """A flow whose first phase waits for a phase of another flow: its page names that flow
    (linked) and phase with the phase's state, which follows the other flow live; a flow outside
    any tree shows no tree sections."""
    tenant = Tenant("acme", f"console-{uuid.uuid4().hex[:8]}")
    api = Api(http, web_server.mint(tenant, user="worker"))
    upstream = (await api.call("CreateFlow", displayName="upstream"))["flow"]["flowId"]
    dependency = {"phase": "data_import", "flowId": upstream, "flowPhase": "data_import"}
    downstream = (await api.call("CreateFlow", externalDependencies=[dependency]))["flow"]
    context = await browser.new_context()
    page = await context.new_page()
    try:
        await _sign_in(page, base_url, web_server.mint(tenant, scopes=["flows:read"]))
        await page.goto(f"{base_url}/flows/{downstream['flowId']}")
        row = page.get_by_test_id("external").locator(
            f"tr[data-phase='data_import'][data-flow-id='{upstream}']"
        )
        await expect(row.get_by_test_id("external-state")).to_have_text(
            "not started", timeout=TIMEOUT_MS
        )
        await expect(row.get_by_test_id("external-link")).to_have_text("upstream")
        assert await page.get_by_test_id("children").count() == 0
        assert await page.get_by_test_id("lineage").count() == 0
        await api.move(upstream, "data_import", "PHASE_STATE_IN_PROGRESS")
        await expect(row.get_by_test_id("external-state")).to_have_text(
            "in progress", timeout=TIMEOUT_MS
        )
        await api.move(upstream, "data_import", "PHASE_STATE_COMPLETED")
        await expect(row.get_by_test_id("external-state")).to_have_text(
            "completed", timeout=TIMEOUT_MS
        )
        await row.get_by_test_id("external-link").click()
        await expect(page).to_have_url(f"{base_url}/flows/{upstream}")
        await expect(page.get_by_test_id("flow-status")).to_be_visible(timeout=TIMEOUT_MS)
        assert await page.get_by_test_id("external").count() == 0
    finally:
        await context.close()
