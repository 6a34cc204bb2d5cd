"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, against
``modelpress serve`` on loopback.

It signs in with the keyboard, uploads the digits CNN, adds the built-in digits, submits a
sweep and an svd job from the forms, watches the job reach ``succeeded`` on its page without a
reload, finds the sweep's chart drawn with one series per method, checks that no page scrolls
sideways at 1280 and 390 px, and that another tenant's job answers 404. It takes the README's
screenshots on the way: into ``MODELPRESS_UI_SCREENSHOTS`` when set (``make screenshots``
writes docs/ui/), else into a temporary folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Service

CHROMIUM = Path("/usr/bin/chromium")
# what the browser may do: nothing on the network but the page under test, no downloads of its own
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
JOB_TIMEOUT_MS = 300_000  # the machine is shared; an svd job takes seconds when it is not


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        message = "Debian's chromium is not installed (apt-get install -y chromium; make test does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with Service(tmp_path_factory.mktemp("ui-serve"), workers=1) as running:
        yield running


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("MODELPRESS_UI_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sign_in(browser, service: Service, token: str):  # type: ignore[no-untyped-def]
    """A fresh browser profile signed in by keyboard alone: the key field has the focus."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=service.url)
    page = context.new_page()
    page.goto("/ui/jobs")
    assert page.url.endswith("/ui/login?next=%2Fui%2Fjobs")
    page.keyboard.type(token)
    page.keyboard.press("Enter")
    page.wait_for_url("**/ui/jobs")
    return context, page


def no_sideways_scroll(page, width: int) -> None:  # type: ignore[no-untyped-def]
    page.set_viewport_size({"width": width, "height": 900})
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    wide = page.evaluate(
        "[...document.querySelectorAll('main *')].filter(e => e.getBoundingClientRect().right > innerWidth)"
        ".slice(0, 3).map(e => e.tagName + '.' + e.className)"
    )
    assert overflow <= 0, f"{page.url} scrolls sideways by {overflow} px at {width} px: {wide}"
    page.set_viewport_size({"width": 1280, "height": 900})


def hover_first_point(page, axis: str) -> str:  # type: ignore[no-untyped-def]
    """The tooltip's text after the mouse moves onto the first point of the first method."""
    canvas = page.locator(f'canvas[data-axis="{axis}"]')
    canvas.scroll_into_view_if_needed()
    x, y = page.evaluate(
        """axis => { const point = Chart.getChart(document.querySelector(`canvas[data-axis="${axis}"]`))
                       .getDatasetMeta(0).data[0]; return [point.x, point.y]; }""",
        axis,
    )
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.wait_for_timeout(100)
    return str(
        page.evaluate(
            """axis => Chart.getChart(document.querySelector(`canvas[data-axis="${axis}"]`))
                 .tooltip.body.flatMap(b => b.lines).join(" | ")""",
            axis,
        )
    )


def submit_job(page, method: str, rule: str, value: str) -> str:  # type: ignore[no-untyped-def]
    page.goto("/ui/new")
    page.select_option("#job-dataset", index=1)  # the digits
    page.select_option("#method", method)
    page.select_option("#rule", rule)
    page.fill("#rule-value", value)
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r"/ui/jobs/job_"))
    return str(page.url.rsplit("/", 1)[1])


def test_the_dashboard_in_a_browser(browser, service: Service, digits_cnn_zip: Path, shots: Path) -> None:  # type: ignore[no-untyped-def]
    context, page = sign_in(browser, service, service.create_key("acme"))

    # 1. a model and the built-in digits, from the forms
    page.goto("/ui/new")
    page.set_input_files("#model-file", str(digits_cnn_zip))
    page.get_by_role("button", name="Upload model").click()
    page.wait_for_url(re.compile(r"/ui/new\?model_id=mdl_"))
    page.get_by_role("button", name="Use built-in digits").click()
    page.wait_for_url(re.compile(r"dataset_id=dst_"))

    # 2. a sweep (svd and prune are ticked by default); the one worker is busy with it for a while
    page.get_by_role("button", name="Submit sweep").click()
    page.wait_for_url(re.compile(r"/ui/jobs/job_"))
    sweep_id = page.url.rsplit("/", 1)[1]

    # 3. an svd job queued behind it: its page follows it to the end without a reload
    job_id = submit_job(page, "svd", "target_macs", "0.5")
    first = page.get_attribute("#live", "data-status")
    assert first in ("queued", "running"), f"the job had already ended ({first}) when its page loaded"
    page.evaluate("window.sameDocument = true")

    # 4. meanwhile, in a second tab, a prune job and the list, which follows its unfinished rows
    lister = context.new_page()
    pruned_id = submit_job(lister, "prune", "target_params", "0.3")
    lister.goto("/ui/jobs")
    row = f"#row-{pruned_id}"
    assert lister.get_attribute(row, "data-status") in ("queued", "running")
    lister.evaluate("window.sameDocument = true")
    lister.wait_for_selector(f'{row}[data-status="succeeded"]', timeout=JOB_TIMEOUT_MS)
    assert lister.locator(f"{row} td[data-label=Params]").inner_text().endswith("×")  # the finished row
    assert lister.evaluate("window.sameDocument === true"), "the list reloaded"

    page.wait_for_selector('#live[data-status="succeeded"]', timeout=JOB_TIMEOUT_MS)
    assert page.evaluate("window.sameDocument === true"), "the job page reloaded"
    assert page.locator("#live table").first.is_visible()  # the before/after table arrived with it
    assert page.get_by_role("link", name="model.onnx").is_visible()
    page.set_viewport_size({"width": 1280, "height": 600})
    page.screenshot(path=str(shots / "job.png"), full_page=True)

    # 5. the sweep's chart: one series per method, from the sweep's own JSON
    page.goto(f"/ui/jobs/{sweep_id}")
    page.wait_for_selector('canvas[data-axis="macs_ratio"][data-drawn="true"]')
    for axis in ("macs_ratio", "params_ratio"):
        series = page.evaluate(
            """axis => Chart.getChart(document.querySelector(`canvas[data-axis="${axis}"]`))
                 .data.datasets.filter(d => d.kind === "method").map(d => [d.label, d.data.length])""",
            axis,
        )
        assert sorted(label for label, _ in series) == ["prune", "svd"], series
        assert all(points > 0 for _, points in series), series
    assert "target" in hover_first_point(page, "macs_ratio")
    page.screenshot(path=str(shots / "sweep.png"), full_page=True)
    page.goto("/ui/jobs")
    page.screenshot(path=str(shots / "jobs.png"), full_page=True)

    # 6. every page fits a phone and a laptop without scrolling sideways
    for path in (
        "/ui/jobs",
        f"/ui/jobs/{job_id}",
        f"/ui/jobs/{sweep_id}",
        "/ui/new",
        f"/ui/compare?ids={job_id}&ids={pruned_id}",
    ):
        page.goto(path)
        for width in (1280, 390):
            no_sideways_scroll(page, width)

    # 7. an API error reaches the person as its problem detail
    page.goto("/ui/new")
    page.fill("#rule-value", "7")
    page.get_by_role("button", name="Submit job").click()
    assert "422" in page.locator(".problem-title").inner_text()
    assert "target_macs" in page.locator(".problem-detail").inner_text()
    context.close()

    # 8. another tenant: the job does not exist for them
    other, stranger = sign_in(browser, service, service.create_key("globex"))
    answer = stranger.goto(f"/ui/jobs/{job_id}")
    assert answer is not None and answer.status == 404
    assert f"no job '{job_id}'" in stranger.locator(".problem-detail").inner_text()
    assert stranger.goto(f"/ui/jobs/{job_id}/artifacts/model.onnx").status == 404  # type: ignore[union-attr]
    stranger.goto("/ui/jobs")
    assert stranger.locator(f"#row-{job_id}").count() == 0
    other.close()
    for name in ("jobs.png", "job.png", "sweep.png"):
        assert (shots / name).stat().st_size > 10_000, name
