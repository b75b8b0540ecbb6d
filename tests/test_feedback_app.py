"""The annotation app over real HTTP (uvicorn on a free loopback port, real SQLite, real sandbox):
authentication and CSRF, XSS, the keep rules, and 20 concurrent annotators x 50 submissions."""

import html as htmllib
import json
import re
import threading
import uuid

import pytest
from feedback_helpers import FIXED, PROMPT, Client, failing, form_values, make_task, running_app

from ilf.feedback.app import AnnotateConfig
from ilf.feedback.store import FeedbackStore

XSS = '<script>alert("xss")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def store(tmp_path):
    s = FeedbackStore(tmp_path / "f.db")
    wrong_xss = PROMPT + f"    return a - b  # {XSS}\n"
    s.add_failing(
        [failing(1, 0, wrong_xss, error=f"AssertionError: {XSS}"), failing(1, 1), failing(2, 0)],
        {1: make_task(1, text=f"Add two numbers {XSS}"), 2: make_task(2)},
    )
    return s


def submit_form(page: dict, sample: str, feedback: str, refinement: str, submission_id: str | None = None) -> dict:
    return {
        "csrf": page["csrf"],
        "submission_id": submission_id or page["submission_id"],
        "task_key": page["task_key"],
        "sample": sample,
        "feedback": feedback,
        "refinement": refinement,
    }


def test_requests_without_token_or_csrf_are_refused(store):
    token = store.add_annotator("alice")
    with running_app(store) as base:
        anon = Client(base)
        assert anon.get("/task")[0] == 303  # to the login page
        assert anon.get("/?token=not-a-token")[0] == 401
        status, body, _ = anon.post(
            "/submit",
            data={"csrf": "x", "submission_id": uuid.uuid4().hex, "task_key": "1", "feedback": "f", "refinement": FIXED, "sample": "1"},
        )
        assert status == 401
        assert anon.post("/api/run", json_body={"task_key": "1", "sample": 1, "refinement": FIXED})[0] == 401
        # Login form: the double-submit CSRF cookie is required.
        assert anon.post("/login", data={"token": token, "csrf": "forged"})[0] == 403
        assert anon.get("/")[0] == 200
        csrf = next(c.value for c in anon.jar if c.name == "ilf_login_csrf")
        assert anon.post("/login", data={"token": "wrong", "csrf": csrf})[0] == 401

        c = Client(base)
        c.login(token)
        page = form_values(c.get("/task")[1])
        good = submit_form(page, page["samples"][1], "Add instead of subtracting.", FIXED)
        assert c.post("/submit", data={**good, "csrf": ""})[0] == 403
        assert c.post("/submit", data={**good, "csrf": "forged-token"})[0] == 403
        assert c.post("/skip", data={k: good[k] for k in ("submission_id", "task_key")})[0] == 403
        assert c.post("/api/run", json_body={"task_key": "1", "sample": page["samples"][1], "refinement": FIXED})[0] == 403
        assert (
            c.post(
                "/api/run",
                json_body={"task_key": "1", "sample": page["samples"][1], "refinement": FIXED},
                headers={"X-CSRF-Token": page["csrf"], "Origin": "http://evil.example"},
            )[0]
            == 403
        )
        assert c.post("/logout", data={"csrf": "nope"})[0] == 403
        assert store.feedback_records(include_skips=True) == []
        # With the token and the CSRF token it goes through.
        status, _, headers = c.post("/submit", data=good)
        assert status == 303 and headers["location"] == "/task"
        assert len(store.feedback_records()) == 1


def test_model_code_and_feedback_render_as_text(store):
    token = store.add_annotator("alice")
    with running_app(store) as base:
        c = Client(base)
        c.login(token)
        status, html, headers = c.get("/task")
        assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
        assert "<script>alert" not in html and "<img src=x" not in html
        assert htmllib.escape(XSS, quote=False) in html or "&lt;script&gt;" in html
        page = form_values(html)
        # A refused submission re-renders the page with the annotator's feedback: still escaped.
        form = submit_form(page, page["samples"][0], f"Feedback {XSS}", PROMPT + "    return 0\n")
        status, html, _ = c.post("/submit", data=form)
        assert status == 422
        assert "<script>alert" not in html and "<img src=x" not in html and "Feedback &lt;script&gt;" in html
        # The live feedback check returns data (JSON), rendered by the page with textContent.
        r = c.post("/api/check", json_body={"feedback": "Bad.\nreturn a + b"}, headers={"X-CSRF-Token": page["csrf"]})
        assert r[0] == 200 and json.loads(r[1])["code_lines"] == ["return a + b"]


def test_keep_rules_refuse_failing_or_far_refinements(store):
    token = store.add_annotator("alice")
    with running_app(store) as base:
        c = Client(base)
        c.login(token)
        page = form_values(c.get("/task")[1])
        sample = page["samples"][1]  # the plain wrong program
        hdr = {"X-CSRF-Token": page["csrf"]}
        run = c.post("/api/run", json_body={"task_key": page["task_key"], "sample": sample, "refinement": FIXED}, headers=hdr)
        assert run[0] == 200 and '"passed":true' in run[1]
        run = c.post(
            "/api/run", json_body={"task_key": page["task_key"], "sample": sample, "refinement": PROMPT + "    return a * b\n"}, headers=hdr
        )
        assert '"passed":false' in run[1] and "AssertionError" in run[1]
        # Tests fail -> refused.
        status, html, _ = c.post("/submit", data=submit_form(page, sample, "Multiply.", PROMPT + "    return a * b\n"))
        assert status == 422 and "does not pass the tests" in html
        # Passing but rewritten far from the original -> refused (distance >= 0.5).
        far = PROMPT + "    total = 0\n    for x in (a, b):\n        total = total + x\n    return total\n"
        status, html, _ = c.post("/submit", data=submit_form(page, sample, "Loop.", far))
        assert status == 422 and "changes too much" in html
        # in an annotator's words: how much was changed, what is allowed, what to do
        text = " ".join(html.split())
        assert re.search(r"about \d+ characters added, removed or replaced in an original of \d+ characters \(\d+% of it\)", text), text
        assert "less than 50% of the original" in text and "reload this task" in text
        assert store.feedback_records() == []
        # The same with the rules relaxed (configurable).
    with running_app(store, AnnotateConfig(max_edit_distance=10.0)) as base:
        c = Client(base)
        c.login(token)
        page = form_values(c.get("/task")[1])
        status, _, _ = c.post("/submit", data=submit_form(page, page["samples"][1], "Loop.", far))
        assert status == 303
        (rec,) = store.feedback_records()
        assert rec["passed"] is True and rec["edit_distance"] > 0.5 and rec["refinement"] == far


@pytest.mark.slow
def test_20_concurrent_annotators_50_submissions_each_stored_exactly_once(tmp_path):
    n_annotators, per_annotator = 20, 50
    n_tasks = n_annotators * per_annotator
    store = FeedbackStore(tmp_path / "f.db")
    store.add_failing([failing(t, 0) for t in range(n_tasks)], {t: make_task(t) for t in range(n_tasks)})
    tokens = [store.add_annotator(f"annotator{i:02d}") for i in range(n_annotators)]
    sent: dict[str, list[str]] = {}
    served: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def annotator(i: int, base: str):
        try:
            c = Client(base)
            c.login(tokens[i])
            ids, tasks = [], []
            for j in range(per_annotator):
                status, html, _ = c.get("/task")
                assert status == 200, status
                page = form_values(html)
                tasks.append(page["task_key"])
                form = submit_form(page, page["samples"][0], f"Add a and b ({i}, {j}).", FIXED, uuid.uuid4().hex)
                if j % 10 == 5:  # a double click: the same submission twice at the same time
                    codes = []
                    post = lambda codes=codes, form=form: codes.append(c.post("/submit", data=form)[0])
                    twins = [threading.Thread(target=post) for _ in range(2)]
                    for t in twins:
                        t.start()
                    for t in twins:
                        t.join()
                    assert codes == [303, 303], codes
                else:
                    status, _, headers = c.post("/submit", data=form)
                    assert status == 303 and headers["location"] == "/task", status
                if j % 5 == 0:  # a retried POST (e.g. the response was lost): same submission id
                    assert c.post("/submit", data=form)[0] == 303
                ids.append(form["submission_id"])
            sent[f"annotator{i:02d}"], served[f"annotator{i:02d}"] = ids, tasks
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    with running_app(store) as base:
        threads = [threading.Thread(target=annotator, args=(i, base)) for i in range(n_annotators)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    records = store.feedback_records()
    assert len(records) == n_tasks
    by_sub = {}
    for r in FeedbackStore(tmp_path / "f.db")._conn().execute("SELECT submission_id, author, task_key FROM feedback"):
        by_sub[r[0]] = (r[1], r[2])
    assert len(by_sub) == n_tasks
    for name, ids in sent.items():
        assert len(ids) == per_annotator and all(by_sub[s][0] == name for s in ids)
    # Exclusive leases: no task was served to two annotators, and every task got one annotation.
    all_served = [t for ts in served.values() for t in ts]
    assert len(set(all_served)) == n_tasks
    assert sorted(r["task_id"] for r in records) == list(range(n_tasks))
    out = tmp_path / "export.jsonl"
    assert store.export(out) == n_tasks


def test_a_task_served_to_one_annotator_cannot_be_answered_by_another(store):
    ta, tb = store.add_annotator("alice"), store.add_annotator("bob")
    with running_app(store) as base:
        a, b = Client(base), Client(base)
        a.login(ta)
        b.login(tb)
        pa = form_values(a.get("/task")[1])  # task 1, leased to alice
        pb = form_values(b.get("/task")[1])  # exclusive: bob gets task 2
        assert pa["task_key"] != pb["task_key"]
        # bob posts alice's task with his own valid session and CSRF token
        steal = {"csrf": pb["csrf"], "submission_id": uuid.uuid4().hex, "task_key": pa["task_key"]}
        assert b.post("/skip", data=steal)[0] == 409
        sub = dict(steal, sample=pa["samples"][1], feedback="Add instead of subtracting.", refinement=FIXED, submission_id=uuid.uuid4().hex)
        assert b.post("/submit", data=sub)[0] == 409
        assert store.feedback_records(include_skips=True) == []
        # alice, who was served it, can
        assert a.post("/submit", data=submit_form(pa, pa["samples"][1], "Add instead of subtracting.", FIXED))[0] == 303


def test_a_login_link_does_not_replace_the_annotator_signed_in(store):
    ta, tb = store.add_annotator("alice"), store.add_annotator("bob")
    with running_app(store) as base:
        a = Client(base)
        a.login(ta)
        status, html, _ = a.get("/?token=" + tb)  # e.g. a link planted on another page
        assert status == 200 and "Sign in as bob?" in html and "signed in as alice" in html
        page = form_values(a.get("/task")[1])
        assert "alice" in a.get("/task")[1] and page["csrf"]  # still alice
        # followed from another site, a link only fills the form, even with nobody signed in
        fresh = Client(base)
        status, html, _ = fresh.get("/?token=" + tb, headers={"Sec-Fetch-Site": "cross-site"})
        assert status == 200 and "Sign in as bob?" in html
        assert fresh.get("/task")[0] == 303  # not signed in


def test_request_bodies_are_bounded(store):
    import http.client
    import urllib.parse

    from ilf.feedback.app import MAX_BODY_BYTES

    token = store.add_annotator("alice")
    with running_app(store) as base:
        c = Client(base)
        c.login(token)
        page = form_values(c.get("/task")[1])
        u = urllib.parse.urlsplit(base)
        cookie = "; ".join(f"{k.name}={k.value}" for k in c.jar)

        def post(extra_headers: dict, body_chunks) -> int:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
            conn.putrequest("POST", "/api/run")
            for k, v in {"Content-Type": "application/json", "X-CSRF-Token": page["csrf"], "Cookie": cookie, **extra_headers}.items():
                conn.putheader(k, v)
            conn.endheaders()
            for chunk in body_chunks:  # (the server may answer before all of it arrives)
                conn.send(chunk)
            return conn.getresponse().status

        # a declared length over the cap: refused on the headers, before any body is read
        assert post({"Content-Length": str(2 * MAX_BODY_BYTES)}, []) == 413
        # chunked, no Content-Length: counted as it arrives, refused once over the cap
        piece = b"x" * 65536
        chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * (MAX_BODY_BYTES // len(piece) + 1)
        assert post({"Transfer-Encoding": "chunked"}, chunks) == 413
        # a body under the cap still works
        ok = {"task_key": page["task_key"], "sample": page["samples"][1], "refinement": FIXED}
        assert c.post("/api/run", json_body=ok, headers={"X-CSRF-Token": page["csrf"]})[0] == 200
