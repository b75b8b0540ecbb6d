"""The annotation protocol end to end in headless Chromium (Debian's, driven by Playwright):
log in with a token, pick a sample, write feedback, edit the refinement, run the tests in the
sandbox, see the result and the edit distance, submit, find the record in the export."""

import json
import re
import shutil

import pytest
from feedback_helpers import PROMPT, failing, make_task, running_app
from playwright.sync_api import expect

from ilf.feedback.store import FeedbackStore
from ilf.text import normalized_edit_distance

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = '<script>alert("xss")</script><img src=x onerror=alert(1)>'

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian chromium is not installed")


@pytest.fixture
def browser_page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, viewport={"width": 1400, "height": 1000}
        )
        page = ctx.new_page()
        page.dialogs = []
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
        yield page
        ctx.close()


def test_annotate_in_a_browser_then_export(tmp_path, browser_page):
    page = browser_page
    store = FeedbackStore(tmp_path / "f.db")
    xss_program = PROMPT + f"    return a - b  # {XSS}\n"
    wrong = PROMPT + "    return a * b\n"
    store.add_failing(
        [failing(1, 0, xss_program, error=f"AssertionError: {XSS}"), failing(1, 1, wrong), failing(2, 0)],
        {1: make_task(1, text=f"Add two numbers. {XSS}"), 2: make_task(2)},
    )
    token = store.add_annotator("alice")
    with running_app(store) as base:
        # Log in with the token through the login form.
        page.goto(base + "/")
        page.fill("#token", "wrong-token")
        page.click("button[type=submit]")
        assert "not valid" in page.inner_text(".alert")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/task")
        assert "0 annotated" in page.inner_text("#progress")

        # Untrusted text is shown as text, and no script ran.
        assert XSS in page.inner_text(".task-text")
        assert XSS in page.inner_text("#sample-1")
        assert page.locator("img[src=x]").count() == 0 and page.dialogs == []

        # Pick the second sample: its copy lands in the refinement editor.
        page.check("#sample-2 input[name=sample]")
        assert page.input_value("#refinement") == wrong
        assert "chosen" in page.get_attribute("#sample-2", "class")

        # Feedback: a whole line of code triggers the warning, words only clear it.
        page.fill("#feedback", "The function multiplies.\nreturn a + b")
        expect(page.locator("#code-warning")).to_be_visible()
        feedback = "The function multiplies the numbers instead of adding them. Use addition."
        page.fill("#feedback", feedback)
        expect(page.locator("#code-warning")).to_be_hidden()
        expect(page.locator("#feedback-meter")).to_have_text(re.compile(r"^2 sentences"))

        # Running the unedited copy shows the failure.
        page.click("#run-tests")
        expect(page.locator("#result-status")).to_have_text("failed")
        assert "AssertionError" in page.inner_text("#result-error")

        # Edit the refinement; the distance updates live.
        refinement = wrong.replace("a * b", "a + b")
        page.fill("#refinement", refinement)
        expected = normalized_edit_distance(wrong, refinement, PROMPT)
        assert float(page.get_attribute("#distance", "data-value")) == pytest.approx(expected, abs=1e-4)
        assert f"{expected:.2f} / 0.50" in page.inner_text("#distance")
        page.click("#run-tests")
        expect(page.locator("#result-status")).to_have_text("tests passed")

        # Submit: the next task is served and the progress counts it.
        page.click("#submit")
        expect(page.locator("#progress")).to_contain_text("1 annotated")
        assert page.text_content(".eyebrow").strip() == "Task 2"
        assert page.dialogs == []

    out = tmp_path / "export.jsonl"
    assert store.export(out) == 1
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["task_id"] == 1 and rec["sample_id"] == 1 and rec["program"] == wrong
    assert rec["feedback"] == feedback and rec["refinement"] == refinement
    assert rec["source"] == "human" and rec["author"] == "alice" and rec["passed"] is True
    assert rec["edit_distance"] == pytest.approx(expected)
