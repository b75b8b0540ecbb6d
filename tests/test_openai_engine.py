"""The OpenAI-compatible engine against a real `ilf serve` on loopback (a tiny real transformers
model, real uvicorn), plus retries against a real HTTP server that answers 503/429 first."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ilf.errors import IlfError
from ilf.generation import openai as openai_mod
from ilf.generation.base import SamplingParams
from ilf.generation.openai import OpenAIEngine, cut_at_stop, normalize_base_url

sys.path.insert(0, str(Path(__file__).parent))

PROMPTS = ["def add(a, b):\n", "for i in range(10):\n", "class Stack:\n"]
SERVER_START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = SERVER_START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server at {url} did not start within {timeout} s")


@pytest.fixture(scope="module")
def server(tiny):
    """`ilf serve` as a user starts it, in its own process."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "ilf.cli",
        "serve",
        "--model",
        str(tiny),
        "--engine",
        "transformers",
        "--port",
        str(port),
        "--model-name",
        "tiny",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def engine(server):
    return OpenAIEngine(base_url=server, concurrency=4)


def post(url: str, body: dict, headers: dict | None = None) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_model_name_comes_from_the_server(engine):
    assert engine.model == "tiny"
    assert engine.list_models() == ["tiny"]


def test_n_completions_per_prompt_with_token_counts(engine):
    out = engine.generate(PROMPTS[:2], SamplingParams(n=3, temperature=0.8, max_new_tokens=12, seed=1))
    assert [len(c) for c in out] == [3, 3]
    for comps in out:
        for c in comps:
            assert 1 <= c.num_tokens <= 12
            assert c.finish_reason in ("stop", "length")
            assert c.text
        assert len({c.text for c in comps}) > 1, "n samples at T=0.8 should differ"


def test_stop_strings_are_honoured_by_the_server_and_the_client(engine, server):
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=40)
    full = engine.generate([PROMPTS[0]], greedy)[0][0].text
    assert len(full) > 12
    stop = full[6:9]  # a string the model really generates, part-way through
    first = full.find(stop)
    cut = engine.generate([PROMPTS[0]], SamplingParams(n=1, temperature=0.0, max_new_tokens=40, stop=["@@never@@", stop]))[0][0]
    assert cut.text == full[:first]
    assert cut.finish_reason == "stop"
    assert cut.num_tokens < 40
    # Servers that take at most a few stop strings (OpenAI, vLLM: 4) get the first ones; the client
    # still cuts at the others (the server then generates on, to the token limit).
    capped = OpenAIEngine(base_url=server, max_stop=1)
    late = capped.generate([PROMPTS[0]], SamplingParams(n=1, temperature=0.0, max_new_tokens=40, stop=["@@never@@", stop]))[0][0]
    assert capped.request_body("x", SamplingParams(stop=["a", "b"]))["stop"] == ["a"]
    assert (late.text, late.finish_reason, late.num_tokens) == (full[:first], "stop", 40)
    # The server itself cuts (not only the client's safety net), as vLLM does.
    raw = post(server + "/completions", {"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 40, "temperature": 0, "stop": stop})
    assert raw["choices"][0]["text"] == full[:first]
    assert raw["usage"]["completion_tokens"] == raw["choices"][0]["num_tokens"]
    assert raw["usage"]["prompt_tokens"] > 0


def test_same_seed_same_samples_other_seed_other_samples(engine):
    p = SamplingParams(n=2, temperature=0.8, top_p=0.95, max_new_tokens=16, seed=7)
    a = engine.generate(PROMPTS, p)
    b = engine.generate(PROMPTS, p)
    assert a == b
    c = engine.generate(PROMPTS, SamplingParams(n=2, temperature=0.8, top_p=0.95, max_new_tokens=16, seed=8))
    assert [x.text for x in sum(c, [])] != [x.text for x in sum(a, [])]


def test_results_and_progress_follow_prompt_order_whatever_the_batching(engine):
    p = SamplingParams(n=2, temperature=0.8, max_new_tokens=10, seed=3)
    seen = []
    together = engine.generate(PROMPTS, p, progress=lambda i, comps: seen.append((i, comps)))
    assert [i for i, _ in seen] == [0, 1, 2]
    assert [comps for _, comps in seen] == together
    alone = [engine.generate([q], p)[0] for q in PROMPTS]
    assert together == alone


def test_greedy_through_the_server_equals_the_local_engine(engine, tiny):
    from ilf.generation import get_engine

    local = get_engine("transformers", str(tiny))
    p = SamplingParams(n=1, temperature=0.0, max_new_tokens=20, stop=["\n\n"])
    assert engine.generate(PROMPTS, p) == local.generate(PROMPTS, p)


def test_unreachable_server_is_one_clear_error():
    port = free_port()  # nothing listens there
    t = time.monotonic()
    with pytest.raises(IlfError, match=rf"cannot reach http://127.0.0.1:{port}/v1: .*is the server running"):
        OpenAIEngine(base_url=f"http://127.0.0.1:{port}")
    assert time.monotonic() - t < 10


def test_unknown_model_and_bad_request_are_clear_errors(engine, server):
    with pytest.raises(IlfError, match="does not serve model 'gpt-9'.*tiny"):
        OpenAIEngine("gpt-9", base_url=server)
    with pytest.raises(IlfError, match="n must be an integer >= 1"):  # checked before any request
        engine.generate(["x"], SamplingParams(n=0, max_new_tokens=4))
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        server + "/completions", data=json.dumps({"prompt": "x", "n": 0}).encode(), headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as e:  # a client that is not ilf: the server refuses it
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 400 and "greater than or equal to 1" in e.value.read().decode()


def test_api_key_is_required_when_the_server_sets_one(tiny):
    import uvicorn

    from ilf.generation import get_engine
    from ilf.serve import create_app

    port = free_port()
    app = create_app(get_engine("transformers", str(tiny)), "tiny", api_key="s3cret")
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not srv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(IlfError, match="HTTP 401: invalid or missing API key"):
            OpenAIEngine(base_url=url, api_key="")
        eng = OpenAIEngine(base_url=url, api_key="s3cret")
        assert len(eng.generate(["x = "], SamplingParams(n=2, max_new_tokens=4))[0]) == 2
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


class _Flaky(BaseHTTPRequestHandler):
    """Answers /v1/completions with 503, then 429 (Retry-After: 0), then a completion."""

    calls = 0

    def log_message(self, *a):
        pass

    def _send(self, code: int, body: dict, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"data": [{"id": "flaky"}]})

    def do_POST(self):
        type(self).calls += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).calls == 1:
            self._send(503, {"error": {"message": "overloaded"}})
        elif type(self).calls == 2:
            self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
        else:
            self._send(
                200,
                {"choices": [{"index": 0, "text": "return a + b\nassert x", "finish_reason": "length"}], "usage": {"completion_tokens": 9}},
            )


def test_retries_on_429_and_5xx_then_succeeds_and_cuts_stop_client_side(monkeypatch):
    monkeypatch.setattr(openai_mod, "BACKOFF_BASE", 0.01)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        eng = OpenAIEngine(base_url=f"http://127.0.0.1:{httpd.server_port}/v1")
        [[c]] = eng.generate(["def add(a, b):\n"], SamplingParams(n=1, max_new_tokens=9, stop=["\nassert"]))
        assert _Flaky.calls == 3
        # This server ignored `stop`: the engine still cuts, and the cut means finish_reason "stop".
        assert (c.text, c.num_tokens, c.finish_reason) == ("return a + b", 9, "stop")
        eng.max_retries = 0
        _Flaky.calls = 0
        with pytest.raises(IlfError, match="HTTP 503: overloaded"):
            eng.generate(["x"], SamplingParams(n=1, max_new_tokens=2))
    finally:
        httpd.shutdown()


def test_ilf_sample_through_the_endpoint_writes_sample_records(server, data_dir, tmp_path):
    out = tmp_path / "samples.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "ilf.cli",
        "sample",
        "--engine",
        "openai",
        "--base-url",
        server,
        "--tasks",
        "11-12",
        "--n",
        "2",
        "--max-new-tokens",
        "8",
        "--data-dir",
        str(data_dir),
        "--output",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["task_id"], x["sample_id"]) for x in recs] == [(11, 0), (11, 1), (12, 0), (12, 1)]
    assert all(x["engine"] == "openai" and 1 <= x["num_tokens"] <= 8 and "program" in x for x in recs)


def test_serve_cli_refuses_bad_combinations():
    for args, msg in [
        (["--engine", "openai"], "would serve another server's model"),
        (["--engine", "transformers", "--dtype", "float16"], "--dtype applies to --engine vllm only"),
    ]:
        r = subprocess.run([sys.executable, "-m", "ilf.cli", "serve", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2
        assert msg in r.stderr and "Traceback" not in r.stderr


def test_helpers():
    assert normalize_base_url("127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalize_base_url("https://api.example.com/v1/") == "https://api.example.com/v1"
    assert cut_at_stop("abc\ndef x", ["\ndef", "c"]) == ("ab", True)
    assert cut_at_stop("abc", ["z"]) == ("abc", False)
