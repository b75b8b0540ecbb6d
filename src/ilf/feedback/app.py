"""The human annotation web app (`ilf annotate`): the paper's protocol (Appendix A.2) in a browser.

For each task the annotator sees the description, the tests and up to 10 failing samples with
their errors (code highlighted server-side by pygments), then
  1. picks the sample that looks easiest to fix, or marks "none is easy to fix";
  2. writes feedback: 1-4 sentences, in words (the page warns about whole lines of code);
  3. edits a copy of the chosen program into a refinement, runs the tests in the sandbox
     ("Run tests") and sees the normalised edit distance to the original live;
  4. submits: refused unless the tests pass and the distance is < 0.5 (the paper's keep rules,
     `AnnotateConfig`), then the next task is served.

Security: model code and feedback are untrusted text. Pages are Jinja2 with autoescape (no `|safe`
on data; highlighted code is escaped by pygments), a Content-Security-Policy forbids inline
scripts, the session cookie is HttpOnly + SameSite=Lax, every POST needs the session's CSRF token
(the login form a double-submit cookie), and every page needs a session made from an annotator's
token. Programs run only through `ilf.sandbox`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import threading
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from ilf.errors import IlfError
from ilf.feedback.store import LEASE_SECONDS, AlreadyAnnotated, FeedbackStore, Session
from ilf.jsonl import read_text
from ilf.tasks import normalize_newlines
from ilf.text import code_lines, normalized_edit_distance, sentences, word_count

HERE = Path(__file__).parent
SESSION_COOKIE = "ilf_session"
LOGIN_COOKIE = "ilf_login_csrf"
# Inputs larger than these are refused (a pasted file is a mistake, and keeps the sandbox cheap).
MAX_FEEDBACK_CHARS = 5_000
MAX_PROGRAM_CHARS = 20_000
MAX_BODY_BYTES = 256 * 1024
"""Largest request body the app reads (a form or JSON with a refinement and feedback at their
caps, UTF-8, is well under it); more gets 413 before it is read into memory."""
# The protocol's guideline for feedback length (a warning in the page, not a refusal).
MAX_SENTENCES = 4
# Sandbox workers shared by all annotators' "Run tests" (each runs one program at a time).
APP_SANDBOX_WORKERS = 2
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def too_much_changed(distance: float, limit: float, original_chars: int) -> str:
    """The refusal an annotator reads when a refinement rewrites too much: how much was changed,
    what is allowed, and what to do (the paper's rule: edit distance below 0.5 of the original)."""
    n = max(1, original_chars)
    edits = round(distance * n)
    return (
        f"The refinement changes too much of the original program: about {edits} characters added, removed or "
        f"replaced in an original of {original_chars} characters ({distance:.0%} of it). A refinement may change "
        f"less than {limit:.0%} of the original (fewer than {max(1, math.ceil(limit * n))} characters here), so that "
        "it stays a repair of this program rather than a new one. Keep the original's lines and change only the "
        "ones that are wrong; to start again from the original, reload this task."
    )


@dataclass
class AnnotateConfig:
    """How a collection runs; `ilf annotate` flags have the same names."""

    max_edit_distance: float = 0.5  # refuse refinements at or above this normalised distance (paper: < 0.5)
    require_passing: bool = True  # refuse refinements that fail the tests (paper: keep only passing ones)
    annotations_per_task: int = 1  # different annotators per task
    exclusive: bool = True  # never serve a task to two annotators at the same time
    lease_seconds: float = LEASE_SECONDS  # a served task stays reserved this long
    test_timeout: float | None = None  # seconds per "Run tests" (None: ilf.sandbox.DEFAULT_TIMEOUT)
    secure_cookies: bool = False  # set when the app is served over https (behind a proxy)


# -- syntax highlighting ----------------------------------------------------------------------


def highlight(code: str | None) -> Markup:
    """Python code as escaped, highlighted HTML (pygments escapes every character of the input)."""
    from pygments import highlight as _hl
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return Markup(_hl(code or "", PythonLexer(stripnl=False, ensurenl=False), HtmlFormatter(cssclass="hl")))


def pygments_css() -> str:
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(style="default").get_style_defs(".hl")


# -- running tests ------------------------------------------------------------------------------


class TestRunner:
    """Runs a refinement against its task's tests in `ilf.sandbox`, with a verdict cache in the
    store keyed by (program, test, timeout): the submit check reuses the "Run tests" verdict."""

    def __init__(self, store: FeedbackStore, timeout: float | None, workers: int = 0):
        self.store = store
        self.timeout = timeout
        self.workers = workers or min(APP_SANDBOX_WORKERS, os.cpu_count() or 1)
        self._sandbox = None
        self._lock = threading.Lock()

    def _check(self, program: str, test: str, entry_point: str | None):
        from ilf import judge
        from ilf.sandbox import DEFAULT_TIMEOUT, Sandbox

        with self._lock:  # started on first use: pages that never run tests cost no worker
            if self._sandbox is None:
                self._sandbox = Sandbox(workers=self.workers)
        p = judge.plan_test(test, entry_point, float(self.timeout or DEFAULT_TIMEOUT))
        return p.verdict(self._sandbox.submit(p.job(program)))

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def run(self, program: str, test: str, entry_point: str | None = None) -> dict:
        ck = hashlib.sha256(json.dumps([program, test, self.timeout, entry_point]).encode("utf-8")).hexdigest()
        cached = self.store.cached_verdict(ck)
        if cached is not None:
            return cached
        v = self._check(program, test, entry_point)
        verdict = {
            "status": v.status,
            "passed": bool(v.passed),
            "error": v.error,
            "failed_test": getattr(v, "failed_test", None),
            "duration": round(float(getattr(v, "duration", 0.0) or 0.0), 3),
        }
        if verdict["status"] != "timeout":  # a timeout may be load on the machine: try again next time
            self.store.save_verdict(ck, verdict)
        return verdict


# -- the app --------------------------------------------------------------------------------------


def create_app(store: FeedbackStore, config: AnnotateConfig | None = None) -> FastAPI:
    config = config or AnnotateConfig()
    runner = TestRunner(store, config.test_timeout)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        runner.close()

    app = FastAPI(title="ilf annotate", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.state.runner = runner
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.autoescape = True
    templates.env.filters["highlight"] = highlight
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    css = pygments_css()

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        resp = await call_next(request)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        # The login URL carries a token: never send it to another site (same-origin keeps the Origin
        # header on our own POSTs, which "no-referrer" would turn into "null").
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["Cache-Control"] = "no-store"
        return resp

    # -- helpers ----------------------------------------------------------------------------

    def current(request: Request) -> tuple[Session | None, str | None]:
        sid = request.cookies.get(SESSION_COOKIE)
        return store.session(sid), sid

    def same_origin(request: Request) -> bool:
        """A browser's Origin header, when sent, must be this server (defence in depth)."""
        origin = request.headers.get("origin")
        if not origin or origin == "null":
            return origin is None
        host = request.headers.get("host", "")
        return origin.split("://", 1)[-1] == host

    def csrf_ok(request: Request, sess: Session, token: str | None) -> bool:
        return bool(token) and secrets.compare_digest(str(token), sess.csrf) and same_origin(request)

    def refuse(status: int, message: str, request: Request | None = None, json_api: bool = False) -> Response:
        if json_api or request is None:
            return JSONResponse({"error": message}, status_code=status)
        return templates.TemplateResponse(request, "message.html", {"title": "Refused", "message": message}, status_code=status)

    def set_cookie(resp: Response, name: str, value: str) -> None:
        resp.set_cookie(name, value, httponly=True, samesite="lax", secure=config.secure_cookies, path="/")

    def login_page(request: Request, error: str | None = None, status: int = 200, token: str = "", note: str | None = None) -> Response:
        csrf = secrets.token_urlsafe(24)
        ctx = {"csrf": csrf, "error": error, "token": token, "note": note}
        resp = templates.TemplateResponse(request, "login.html", ctx, status_code=status)
        set_cookie(resp, LOGIN_COOKIE, csrf)
        return resp

    def start_session(annotator) -> Response:
        sid, _ = store.create_session(annotator)
        resp = RedirectResponse("/task", status_code=303)
        set_cookie(resp, SESSION_COOKIE, sid)
        resp.delete_cookie(LOGIN_COOKIE, path="/")
        return resp

    def task_context(sess: Session, task_key: str, form: dict | None = None, errors: list[str] | None = None) -> dict:
        task = store.task(task_key)
        samples = store.samples(task_key)
        form = form or {}
        chosen = form.get("sample")
        chosen_sample = next((s for s in samples if str(s.id) == str(chosen)), None)
        tests = "\n".join(task.get("tests") or []) or task.get("test", "")
        if task.get("test_setup"):
            tests = task["test_setup"].rstrip() + "\n" + tests
        return {
            "sess": sess,
            "csrf": sess.csrf,
            "progress": store.progress(sess.annotator),
            "task": task,
            "task_key": task_key,
            "tests": tests,
            "samples": samples,
            "chosen": chosen_sample,
            "feedback": form.get("feedback", ""),
            "refinement": form.get("refinement", chosen_sample.program if chosen_sample else ""),
            "submission_id": form.get("submission_id") or uuid.uuid4().hex,
            "errors": errors or [],
            "config": config,
            "max_sentences": MAX_SENTENCES,
        }

    # -- pages ------------------------------------------------------------------------------

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/static-pygments.css")
    def pygments_stylesheet():
        return Response(css, media_type="text/css")

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, token: str | None = None):
        sess, _ = current(request)
        if token is not None:  # the login link printed by `ilf annotate`
            annotator = store.annotator_by_token(token)
            if annotator is None:
                return login_page(request, "This token is not valid.", 401)
            if sess is not None and sess.annotator.id == annotator.id:
                return RedirectResponse("/task", status_code=303)
            # A link followed from another site, or one that would replace the annotator who is
            # logged in here, is only a pre-filled form (login CSRF): the person confirms it.
            if sess is not None or request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
                note = (f"You are signed in as {sess.annotator.name}. " if sess is not None else "") + f"Sign in as {annotator.name}?"
                return login_page(request, token=token, note=note)
            return start_session(annotator)
        if sess is not None:
            return RedirectResponse("/task", status_code=303)
        return login_page(request)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        cookie = request.cookies.get(LOGIN_COOKIE)
        if not cookie or not secrets.compare_digest(str(form.get("csrf", "")), cookie) or not same_origin(request):
            return login_page(request, "The login form expired; please try again.", 403)
        annotator = store.annotator_by_token(str(form.get("token", "")).strip())
        if annotator is None:
            return login_page(request, "This token is not valid.", 401)
        return start_session(annotator)

    @app.post("/logout")
    async def logout(request: Request):
        sess, sid = current(request)
        form = await request.form()
        if sess is None:
            return RedirectResponse("/", status_code=303)
        if not csrf_ok(request, sess, form.get("csrf")):
            return refuse(403, "Missing or invalid CSRF token.", request)
        store.end_session(sid)
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.get("/task", response_class=HTMLResponse)
    def task_page(request: Request):
        sess, _ = current(request)
        if sess is None:
            return RedirectResponse("/", status_code=303)
        tk = store.next_task(
            sess.annotator,
            annotations_per_task=config.annotations_per_task,
            exclusive=config.exclusive,
            lease_seconds=config.lease_seconds,
        )
        if tk is None:
            return templates.TemplateResponse(
                request, "done.html", {"sess": sess, "csrf": sess.csrf, "progress": store.progress(sess.annotator)}
            )
        return templates.TemplateResponse(request, "task.html", task_context(sess, tk))

    # -- JSON endpoints used by the page's script --------------------------------------------

    async def json_body(request: Request) -> tuple[Session | None, dict | Response]:
        sess, _ = current(request)
        if sess is None:
            return None, refuse(401, "Not logged in.", json_api=True)
        if not csrf_ok(request, sess, request.headers.get("x-csrf-token")):
            return None, refuse(403, "Missing or invalid CSRF token.", json_api=True)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None, refuse(400, "Expected a JSON body.", json_api=True)
        if not isinstance(body, dict):
            return None, refuse(400, "Expected a JSON object.", json_api=True)
        return sess, body

    def feedback_check(text: str) -> dict:
        return {
            "words": word_count(text),
            "sentences": len(sentences(text)),
            "code_lines": code_lines(text),
            "max_sentences": MAX_SENTENCES,
        }

    @app.post("/api/check")
    async def api_check(request: Request):
        sess, body = await json_body(request)
        if sess is None:
            return body
        text = str(body.get("feedback", ""))[:MAX_FEEDBACK_CHARS]
        return feedback_check(text)

    def sample_of(task_key: str | None, sample_pk: Any):
        try:
            found = store.sample(int(sample_pk))
        except (TypeError, ValueError):
            return None
        if found is None or (task_key is not None and found[0] != task_key):
            return None
        return found

    @app.post("/api/run")
    async def api_run(request: Request):
        sess, body = await json_body(request)
        if sess is None:
            return body
        found = sample_of(body.get("task_key"), body.get("sample"))
        refinement = body.get("refinement")
        if found is None or not isinstance(refinement, str):
            return refuse(400, "Choose a sample and write a refinement first.", json_api=True)
        if len(refinement) > MAX_PROGRAM_CHARS:
            return refuse(413, f"The refinement is longer than {MAX_PROGRAM_CHARS} characters.", json_api=True)
        task_key, sample = found
        task = store.task(task_key)
        refinement = normalize_newlines(refinement)
        from starlette.concurrency import run_in_threadpool

        verdict = await run_in_threadpool(runner.run, refinement, task["test"], task.get("entry_point"))
        verdict["edit_distance"] = normalized_edit_distance(
            normalize_newlines(sample.program), refinement, normalize_newlines(task.get("prompt"))
        )
        verdict["max_edit_distance"] = config.max_edit_distance
        return verdict

    # -- submissions ------------------------------------------------------------------------

    async def form_session(request: Request) -> tuple[Session | None, dict, Response | None]:
        sess, _ = current(request)
        if sess is None:
            return None, {}, refuse(401, "Not logged in: open the link with your token first.", request)
        form = {k: str(v) for k, v in (await request.form()).items()}
        if not csrf_ok(request, sess, form.get("csrf")):
            return None, {}, refuse(403, "Missing or invalid CSRF token (reload the page and try again).", request)
        if not re.fullmatch(r"[A-Za-z0-9_-]{8,100}", form.get("submission_id", "")):
            return None, {}, refuse(400, "Missing or malformed submission_id.", request)
        if store.task(form.get("task_key", "")) is None:
            return None, {}, refuse(400, "Unknown task.", request)
        return sess, form, None

    @app.post("/skip")
    async def skip(request: Request):
        sess, form, bad = await form_session(request)
        if bad is not None:
            return bad
        try:
            store.submit(sess.annotator, form["submission_id"], form["task_key"], skip=True, require_lease=True, exclusive=config.exclusive)
        except AlreadyAnnotated:
            pass  # a second click on another tab: the task is done either way
        except IlfError as e:
            return refuse(409, str(e), request)
        return RedirectResponse("/task", status_code=303)

    @app.post("/submit")
    async def submit(request: Request):
        sess, form, bad = await form_session(request)
        if bad is not None:
            return bad
        if store.find_submission(form["submission_id"]) is not None:  # a retried POST
            return RedirectResponse("/task", status_code=303)
        task_key = form["task_key"]
        task = store.task(task_key)
        # Browsers submit textarea text with CRLF line ends: store what the annotator saw (LF).
        feedback = normalize_newlines(form.get("feedback", "")).strip()
        refinement = normalize_newlines(form.get("refinement", ""))
        errors = []
        found = sample_of(task_key, form.get("sample"))
        if found is None:
            errors.append("Choose the sample that is easiest to fix (or mark the task as none easy to fix).")
        if not feedback:
            errors.append("Write feedback: what is wrong with the program and how to fix it, in words.")
        if len(feedback) > MAX_FEEDBACK_CHARS:
            errors.append(f"The feedback is longer than {MAX_FEEDBACK_CHARS} characters.")
        if not refinement.strip():
            errors.append("Write the refinement: edit the program so that it passes the tests.")
        if len(refinement) > MAX_PROGRAM_CHARS:
            errors.append(f"The refinement is longer than {MAX_PROGRAM_CHARS} characters.")
        verdict = None
        distance = None
        if not errors:
            sample = found[1]
            original, prompt = normalize_newlines(sample.program), normalize_newlines(task.get("prompt"))
            distance = normalized_edit_distance(original, refinement, prompt)
            code_before = original[len(prompt) :] if prompt and original.startswith(prompt) and refinement.startswith(prompt) else original
            if distance >= config.max_edit_distance:
                errors.append(too_much_changed(distance, config.max_edit_distance, len(code_before)))
            else:
                from starlette.concurrency import run_in_threadpool

                verdict = await run_in_threadpool(runner.run, refinement, task["test"], task.get("entry_point"))
                if config.require_passing and not verdict["passed"]:
                    errors.append(f"The refinement does not pass the tests ({verdict['status']}: {verdict['error'] or 'failed'}).")
        if errors:
            ctx = task_context(sess, task_key, form, errors)
            return templates.TemplateResponse(request, "task.html", ctx, status_code=422)
        try:
            store.submit(
                sess.annotator,
                form["submission_id"],
                task_key,
                sample_pk=found[1].id,
                feedback=feedback,
                refinement=refinement,
                passed=verdict["passed"],
                status=verdict["status"],
                error=verdict["error"],
                edit_distance=distance,
                require_lease=True,
                exclusive=config.exclusive,
            )
        except AlreadyAnnotated as e:
            return refuse(409, f"{e}. Your earlier submission is kept.", request)
        except IlfError as e:  # e.g. a submission id of another annotator
            return refuse(409, str(e), request)
        return RedirectResponse("/task", status_code=303)

    return app


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413, counted as it arrives (a
    missing or false Content-Length does not get a larger body read)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            too_long = length is not None and int(length) > self.limit
        except ValueError:
            too_long = True
        if too_long:
            return await self._refuse(send)
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return msg

        async def tracking_send(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": f"request body over {self.limit} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def serve(store: FeedbackStore, config: AnnotateConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(store, config), host=host, port=port, log_level="warning")


# -- inputs: a results file or a run directory -------------------------------------------------


def find_results(path: str | Path) -> Path:
    """A results JSONL as given, or the newest round's results.jsonl of a run directory."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise IlfError(f"{p}: no such results file or run directory")
    rounds = sorted(
        (d for d in p.glob("r*") if d.is_dir() and re.fullmatch(r"r\d+", d.name) and (d / "results.jsonl").exists()),
        key=lambda d: int(d.name[1:]),
    )
    if rounds:
        return rounds[-1] / "results.jsonl"
    if (p / "results.jsonl").exists():
        return p / "results.jsonl"
    raise IlfError(f"{p}: no results.jsonl in this run directory yet (run `ilf run` up to EVAL of x0 first)")


def run_settings(path: str | Path) -> dict[str, Any]:
    """dataset / data_dir / feedback.tasks from a run directory's config.toml (empty if none)."""
    import tomllib

    p = Path(path)
    cfg = p / "config.toml" if p.is_dir() else None
    if cfg is None or not cfg.exists():
        return {}
    try:
        data = tomllib.loads(read_text(cfg))
    except tomllib.TOMLDecodeError as e:
        raise IlfError(f"{cfg}: invalid TOML ({e})") from None
    return {k: data[k] for k in ("dataset", "data_dir") if data.get(k)}


def unsolved_only(results: list[dict]) -> list[dict]:
    """Results of tasks where no sample passed (the paper collects feedback on those)."""
    solved = {r["task_id"] for r in results if r.get("passed") is True}
    return [r for r in results if r["task_id"] not in solved]


def load_failing(
    path: str | Path, tasks: Any = None, *, dataset: str | None = None, data_dir=None, tasks_file=None, only_unsolved: bool = True
) -> tuple[list[dict], Any]:
    """Results records of a results file or run directory (+ the TaskSet they refer to)."""
    from ilf.jsonl import load_jsonl
    from ilf.tasks import load_tasks

    results_path = find_results(path)
    results = load_jsonl(results_path)
    for i, r in enumerate(results, start=1):
        if "task_id" not in r:
            raise IlfError(f"{results_path}:{i}: missing field 'task_id'")
        if "passed" not in r:
            raise IlfError(f"{results_path}:{i}: missing field 'passed' (is this an `ilf evaluate` results file?)")
    if only_unsolved:
        results = unsolved_only(results)
    if tasks is None:
        settings = run_settings(path)
        ds = dataset or settings.get("dataset", "mbpp")
        ids = sorted({r["task_id"] for r in results}, key=str)
        tasks = load_tasks(
            ds, data_dir=data_dir or settings.get("data_dir") or None, path=tasks_file, task_ids=ids if ds != "jsonl" else None
        )
    return results, tasks
