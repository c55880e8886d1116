"""The approval as a person gives it: headless Chromium (Debian's) in the default Prefect UI of the local stack.

A newcomer's stack (``rotate stack up``: API authentication on, a worker, the example deployment ``jwt-demo`` on the
demo's store and service): sign in, start the example deployment from its Custom run form with a ``started_by``,
see the run pause, try a blank approver (the form refuses it), approve it oneself (the run refuses, and says so in
its question), approve it as a second person and see it complete with the store's CURRENT changed; then a second
run rejected in the form is rolled back. Screenshots of the paused run and the form are kept in
``test-artifacts/ui/`` (ignored by git).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from cli.stack import EXAMPLE
from stores import Stage, open_store
from targets.http import tls_context
from tests.fixtures.stack import LocalStack

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "ui"
expect.set_options(timeout=120_000)  # the UI loads its forms' schemas from a busy server


def _api(stack: LocalStack) -> httpx.Client:
    user, _, password = stack.state.auth_string.partition(":")
    return httpx.Client(base_url=stack.state.api_url, auth=(user, password), timeout=10, verify=tls_context())


def _current_version(stack: LocalStack) -> str:
    (current,) = [
        v.version_id for v in open_store(stack.state.example_store).describe().versions if Stage.CURRENT in v.stages
    ]
    return current


@pytest.fixture(scope="module")
def page(local_stack: LocalStack) -> Iterator[Page]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # Without a GPU, Chromium draws WebGL and composites through SwiftShader's software GL, and the run page's
        # graph (WebGL) redraws all the time: 53 s of CPU in this module's 60 s here. Without GL the graph stays
        # blank in the screenshots, the forms are the same, and the browser takes 32 s of CPU, not 79 s.
        no_gl = ["--disable-gpu", "--disable-software-rasterizer"]
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", *no_gl])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        # The UI's pages call an analytics host even with analytics off: only loopback may be reached. (Only those
        # requests are routed through this process, which answers them only while a Playwright call runs.)
        context.route(re.compile(r"^(?!http://127\.0\.0\.1[:/])"), lambda route: route.abort())
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(f"{local_stack.state.ui_url}/v2/")
        page.get_by_placeholder("admin:pass").fill(local_stack.state.auth_string)
        page.get_by_role("button", name="Login").click()
        page.wait_for_url("**/dashboard**")
        try:
            yield page
        finally:
            browser.close()


def _start_example(page: Page, stack: LocalStack, started_by: str) -> str:
    """Start the example deployment from its Custom run form; returns the new flow run's id."""
    with _api(stack) as api:
        (deployment,) = [d for d in api.post("/deployments/filter", json={}).json() if d["name"] == EXAMPLE]
        of_example = {"deployments": {"id": {"any_": [deployment["id"]]}}}
        before = {r["id"] for r in api.post("/flow_runs/filter", json=of_example).json()}
    page.goto(f"{stack.state.ui_url}/v2/deployments/deployment/{deployment['id']}")
    page.get_by_role("button", name="Run").first.click()
    page.get_by_role("menuitem", name="Custom run").click()
    started_by_field = page.locator("xpath=//label[normalize-space()='Started By (Optional)']/following::textarea[1]")
    expect(started_by_field).not_to_have_value("")  # the deployment's parameters are filled in
    started_by_field.fill(started_by)
    page.screenshot(path=ARTIFACTS / "custom-run-form.png", full_page=True)
    page.get_by_role("button", name="Submit").click()
    deadline = time.monotonic() + 180  # the form validates its parameters on the server first
    resubmit_at = time.monotonic() + 60
    with _api(stack) as api:
        while True:
            page.wait_for_timeout(2000)
            new = [r for r in api.post("/flow_runs/filter", json=of_example).json() if r["id"] not in before]
            if new:
                (run,) = new
                assert run["parameters"]["options"]["started_by"] == started_by
                return run["id"]
            if time.monotonic() > resubmit_at and page.get_by_role("button", name="Submit").is_visible():
                # Still on the form a minute later: the UI's request did not go through (seen once on a loaded
                # machine; the UI does not retry it), so the person presses Submit again, once.
                page.screenshot(path=ARTIFACTS / "custom-run-resubmitted.png", full_page=True)
                page.get_by_role("button", name="Submit").click()
                resubmit_at = float("inf")
            if time.monotonic() > deadline:
                page.screenshot(path=ARTIFACTS / "custom-run-not-started.png", full_page=True)
                raise AssertionError("the Custom run form started no run (see custom-run-not-started.png)")


def _run(stack: LocalStack, flow_run_id: str) -> dict[str, Any]:
    with _api(stack) as api:
        return api.get(f"/flow_runs/{flow_run_id}").json()


def _wait_for(page: Page, stack: LocalStack, flow_run_id: str, done: Any, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = _run(stack, flow_run_id)
        if done(run["state"]):
            return run
        assert time.monotonic() < deadline, f"flow run {flow_run_id} is still {run['state']['name']}"
        page.wait_for_timeout(1000)


def _resume_form(page: Page) -> Locator:
    """The paused run's Resume form (the default UI keeps Resume in the run's menu)."""
    page.get_by_role("button", name="Open menu").first.click()
    page.get_by_role("menuitem", name="Resume").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_label("Approver")).to_be_visible()
    return dialog


def _fill_and_resume(page: Page, decision: str, approver: str, reason: str) -> Locator:
    form = _resume_form(page)
    form.get_by_role("button", name="Select Decision").click()
    page.get_by_role("option", name=decision).click()
    form.get_by_label("Approver").fill(approver)
    form.get_by_label("Reason").fill(reason)
    form.get_by_role("button", name="Resume").click()
    return form


def _decide(page: Page, stack: LocalStack, flow_run_id: str, decision: str, approver: str, reason: str) -> None:
    """Give a decision in the Resume form, as a person does: if the run is still in the same pause a minute later,
    the UI's request did not go through (the stack's SQLite server answered it 503 on a loaded machine, and the UI
    does not retry it), so they open the form and decide again, once."""
    paused = _run(stack, flow_run_id)["state"]["id"]
    _fill_and_resume(page, decision, approver, reason)
    deadline = time.monotonic() + 60
    while _run(stack, flow_run_id)["state"]["id"] == paused:
        if time.monotonic() > deadline:
            page.screenshot(path=ARTIFACTS / "resume-resubmitted.png", full_page=True)
            page.reload()
            _fill_and_resume(page, decision, approver, reason)
            return
        page.wait_for_timeout(1000)


def _paused(state: dict[str, Any]) -> bool:
    return state["type"] == "PAUSED"


@pytest.mark.timeout(900)  # a worker's flow run on a busy 2-core machine takes its time
def test_a_second_person_approves_in_the_ui_and_the_key_changes(page: Page, local_stack: LocalStack) -> None:
    before = _current_version(local_stack)
    flow_run_id = _start_example(page, local_stack, started_by="alice")
    _wait_for(page, local_stack, flow_run_id, _paused)
    page.goto(f"{local_stack.state.ui_url}/v2/runs/flow-run/{flow_run_id}")
    expect(page.get_by_text("Paused", exact=True).first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "paused-run.png")
    with _api(local_stack) as api:  # the pause's artifact says what is approved, and by whom it may be
        found = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}).json()
    approval = [a for a in found if (a.get("key") or "").endswith("-approval")]
    assert approval and "Anyone but alice" in approval[0]["data"], found

    # A blank approver: the form refuses it, and the run stays paused.
    form = _fill_and_resume(page, "approve", "   ", "change 1234")
    expect(page.get_by_text("Validation failed for field 'approver'")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "blank-approver-refused.png")
    form.get_by_role("button", name="Cancel").click()
    page.wait_for_timeout(2000)
    assert _paused(_run(local_stack, flow_run_id)["state"])

    # The person who started it (other spacing and case): the run refuses and asks again, saying why.
    _decide(page, local_stack, flow_run_id, "approve", " Alice ", "I started it")
    deadline = time.monotonic() + 240  # a worker's run on two loaded cores: resume, refuse, record, pause again
    while True:
        page.wait_for_timeout(2000)  # the run resumes, refuses, and pauses again: Resume is offered only then
        _wait_for(page, local_stack, flow_run_id, _paused)
        page.reload()
        form = _resume_form(page)
        if "refused" in form.inner_text():
            break
        page.keyboard.press("Escape")
        assert time.monotonic() < deadline, "the refusal of a self-approval is not shown"
        page.wait_for_timeout(1000)
        page.reload()
    expect(form.get_by_text("Alice")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "approval-form-after-refusal.png")
    page.keyboard.press("Escape")
    assert _paused(_run(local_stack, flow_run_id)["state"])
    assert _current_version(local_stack) == before

    # A second person approves: the run completes, and the store's CURRENT is the new keyset.
    page.reload()
    _decide(page, local_stack, flow_run_id, "approve", "bob", "change 1234")
    _wait_for(page, local_stack, flow_run_id, lambda s: s["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"))
    assert _run(local_stack, flow_run_id)["state"]["type"] == "COMPLETED"
    page.reload()
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    assert _current_version(local_stack) != before


@pytest.mark.timeout(900)
def test_a_rejection_in_the_ui_rolls_back(page: Page, local_stack: LocalStack) -> None:
    store = open_store(local_stack.state.example_store)
    before = _current_version(local_stack)
    flow_run_id = _start_example(page, local_stack, started_by="alice")
    _wait_for(page, local_stack, flow_run_id, _paused)
    assert [v for v in store.describe().versions if Stage.PENDING in v.stages]  # staged, waiting for the decision
    page.goto(f"{local_stack.state.ui_url}/v2/runs/flow-run/{flow_run_id}")
    _decide(page, local_stack, flow_run_id, "reject", "bob", "not during the release")
    run = _wait_for(page, local_stack, flow_run_id, lambda s: s["type"] not in ("PAUSED", "RUNNING", "PENDING"))
    assert (run["state"]["type"], run["state"]["name"]) == ("CANCELLED", "Rejected"), run["state"]
    page.reload()
    expect(page.get_by_text(run["state"]["name"], exact=True).first).to_be_visible()
    assert _current_version(local_stack) == before
    assert [v for v in store.describe().versions if Stage.PENDING in v.stages] == []
