"""Shared helpers of the feedback tests: synthetic tasks/results, a real uvicorn server on a free
loopback port, and a cookie-keeping HTTP client (urllib: real HTTP, no test client)."""

from __future__ import annotations

import http.cookiejar
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager

from ilf.tasks import Task

PROMPT = '"""\nWrite a function to add two numbers.\n"""\n\ndef add(a, b):\n'
TEST = "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"
WRONG = PROMPT + "    return a - b\n"
FIXED = PROMPT + "    return a + b\n"


def make_task(task_id, text="Write a function to add two numbers.") -> Task:
    return Task(
        task_id=task_id, text=text, prompt=PROMPT, entry_point="add", tests=TEST.strip().splitlines(), test_setup="", test=TEST, gold=FIXED
    )


def failing(task_id, sample_id, program=WRONG, error="AssertionError: assert add(1, 2) == 3 (got -1)") -> dict:
    return {
        "task_id": task_id,
        "sample_id": sample_id,
        "program": program,
        "passed": False,
        "status": "failed",
        "error": error,
        "failed_test": "assert add(1, 2) == 3",
    }


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@contextmanager
def running_app(store, config=None):
    """The annotation app served by uvicorn on a free loopback port; yields the base URL."""
    import uvicorn

    from ilf.feedback.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(store, config), host="127.0.0.1", port=port, log_level="warning", limit_concurrency=1000, backlog=2048)
    )
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not th.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(30)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


class Client:
    """A browser-like client: keeps cookies, never follows redirects (tests look at them)."""

    def __init__(self, base: str):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)

    def request(self, method: str, path: str, data: dict | None = None, json_body=None, headers=None):
        body = None
        hdrs = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        elif data is not None:
            body = urllib.parse.urlencode(data).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=hdrs)
        try:
            with self.opener.open(req, timeout=120) as r:
                return r.status, r.read().decode("utf-8"), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8"), dict(e.headers)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def login(self, token: str) -> None:
        status, _, headers = self.get("/?token=" + urllib.parse.quote(token))
        assert status == 303 and headers["location"] == "/task", status


def form_values(html: str) -> dict:
    """csrf, submission_id, task_key and the sample ids of a task page."""
    get = lambda name: re.search(rf'name="{name}" value="([^"]*)"', html).group(1)  # noqa: E731
    return {
        "csrf": get("csrf"),
        "submission_id": get("submission_id"),
        "task_key": get("task_key"),
        "samples": re.findall(r'name="sample" value="(\d+)"', html),
    }
