"""Any OpenAI-compatible `/v1/completions` endpoint: `vllm serve`, `ilf serve`, llama.cpp's server,
a hosted API.

Plain completions (not chat): the paper's prompt is a code prefix the model continues. One request
per prompt asks for all `n` samples (`n=`), so servers that share the prompt's cache across samples
(vLLM, ilf serve) do; `concurrency` requests are in flight at once so a batching server (vLLM's
continuous batching) sees many prompts together.

Standard library HTTP only (urllib + threads): no client package to pin, nothing to clash with.

Seeds: each request carries `seed = prompt_seed(params.seed, prompt)` (the base.py contract), which
vLLM, llama.cpp and ilf serve honour; hosted APIs treat it as best effort.
Stop strings: the first `max_stop` (4) are sent to the server, because the OpenAI API and vLLM's
server refuse longer lists; ALL are applied again here, so the text is always cut at the first
stop string, even by a server that ignores `stop` (it then only spends more tokens).
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence
from urllib.parse import urlsplit

from ilf.errors import IlfError
from ilf.generation.base import Completion, Engine, SamplingParams, cut_at_stop, prompt_seed

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # where `ilf serve` and `vllm serve` listen by default
DEFAULT_CONCURRENCY = 8  # requests in flight: enough to keep a batching server busy, polite to hosted APIs
DEFAULT_TIMEOUT = 600.0  # seconds per request: n=30 samples of 512 tokens on a CPU server take minutes
MAX_RETRIES = 5  # on 429 and 5xx, and on dropped connections
BACKOFF_BASE = 1.0  # seconds; doubles per retry, with jitter, capped by BACKOFF_MAX
BACKOFF_MAX = 30.0
MAX_SERVER_STOP = 4  # stop strings per request the OpenAI API (and vLLM's server) accept
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


def normalize_base_url(url: str) -> str:
    """`http://host:8000` -> `http://host:8000/v1`; a URL with a path is taken as the API root."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if not parts.netloc:
        raise IlfError(f"invalid endpoint URL '{url}'")
    if parts.path in ("", "/"):
        url += "/v1"
    return url


class OpenAIEngine(Engine):
    """Sample from an OpenAI-compatible completions endpoint.

    model: the model name the server serves (None: the first one `/v1/models` lists).
    api_key: None reads `OPENAI_API_KEY` (local servers need none).
    extra_body: more JSON fields for every request, e.g. vLLM's `{"stop_token_ids": [...]}`.
    max_stop: stop strings sent per request (None = all; ilf serve has no limit); the rest are
        applied on the client only.
    """

    name = "openai"

    def __init__(
        self,
        model: Optional[str] = None,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = MAX_RETRIES,
        extra_body: Optional[dict[str, Any]] = None,
        max_stop: Optional[int] = MAX_SERVER_STOP,
    ):
        self.base_url = normalize_base_url(base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        self.max_retries = max_retries
        self.extra_body = dict(extra_body or {})
        self.max_stop = max_stop
        served = self.list_models()  # fails fast, in one line, when the server is not there
        if model is None:
            if not served:
                raise IlfError(f"{self.base_url}/models lists no model; pass --model NAME")
            model = served[0]
        elif served and model not in served:
            raise IlfError(f"{self.base_url} does not serve model '{model}' (it serves: {', '.join(served)})")
        self.model = model
        self.model_name = model  # what sample records call the model

    # -- HTTP ------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Optional[dict] = None, retries: Optional[int] = None) -> dict:
        url = f"{self.base_url}/{path}"
        data = json.dumps(body).encode("utf-8") if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        retries = self.max_retries if retries is None else retries
        attempt = 0
        while True:
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            wait: Optional[float] = None
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = resp.read()
                try:
                    return json.loads(payload)
                except json.JSONDecodeError:
                    raise IlfError(f"{method} {url}: the server did not answer JSON: {payload[:200]!r}") from None
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                if e.code not in RETRY_STATUS or attempt >= retries:
                    raise IlfError(f"{method} {url}: HTTP {e.code}: {detail}") from None
                wait = _retry_after(e)
            except urllib.error.URLError as e:
                reason = e.reason
                if isinstance(reason, ConnectionRefusedError) or attempt >= retries:
                    # Nothing listens there: retrying will not help, say so now.
                    raise IlfError(f"cannot reach {self.base_url}: {_describe(reason)} (is the server running?)") from None
            except (ConnectionError, socket.timeout, TimeoutError) as e:
                if attempt >= retries:
                    raise IlfError(f"{method} {url}: {_describe(e)} after {attempt + 1} attempts") from None
            attempt += 1
            if wait is None:
                wait = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            time.sleep(wait)

    def list_models(self) -> list[str]:
        # Two quick retries only: at start-up an unreachable server should be reported at once.
        out = self._request("GET", "models", retries=min(self.max_retries, 2))
        return [m.get("id") for m in out.get("data", []) if isinstance(m, dict) and m.get("id")]

    # -- sampling --------------------------------------------------------------------------------

    def request_body(self, prompt: str, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p if params.temperature > 0 else 1.0,
            "max_tokens": params.max_new_tokens,
            "seed": prompt_seed(params.seed, prompt),
        }
        stop = [x for x in params.stop if x]
        if stop:
            body["stop"] = stop if self.max_stop is None else stop[: self.max_stop]
        if params.top_k > 0:
            body["top_k"] = params.top_k  # an extension vLLM, llama.cpp and ilf serve accept
        body.update(self.extra_body)
        return body

    def complete(self, prompt: str, params: SamplingParams) -> list[Completion]:
        out = self._request("POST", "completions", self.request_body(prompt, params))
        choices = out.get("choices")
        if not isinstance(choices, list) or len(choices) != params.n:
            got = len(choices) if isinstance(choices, list) else "no"
            raise IlfError(f"{self.base_url}/completions returned {got} choices, expected n={params.n}")
        choices = sorted(choices, key=lambda c: c.get("index", 0))
        counts = _token_counts(choices, out.get("usage") or {})
        result = []
        for choice, count in zip(choices, counts):
            text, was_cut = cut_at_stop(choice.get("text") or "", params.stop)
            reason = choice.get("finish_reason") or "stop"
            result.append(Completion(text=text, num_tokens=count, finish_reason="stop" if was_cut or reason != "length" else "length"))
        return result

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        progress: Optional[Callable[[int, list[Completion]], None]] = None,
    ) -> list[list[Completion]]:
        results: list[Optional[list[Completion]]] = [None] * len(prompts)
        if not prompts:
            return []
        # progress() is called in prompt order, from this thread, as soon as every earlier prompt is
        # done: output files then come out in a stable order whatever the server's timing.
        next_report = 0
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            futures = [pool.submit(self.complete, p, params) for p in prompts]
            try:
                for i, fut in enumerate(futures):
                    results[i] = fut.result()
                    while next_report < len(prompts) and results[next_report] is not None:
                        if progress is not None:
                            progress(next_report, results[next_report])  # type: ignore[arg-type]
                        next_report += 1
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return results  # type: ignore[return-value]


def _token_counts(choices: list[dict], usage: dict) -> list[int]:
    """Generated tokens per choice. Exact when the server says so per choice (ilf serve's
    `num_tokens`, vLLM's `token_ids` when asked for); otherwise `usage.completion_tokens` is split
    evenly across the n choices (exact for n=1, an average otherwise)."""
    counts: list[Optional[int]] = []
    for c in choices:
        if isinstance(c.get("num_tokens"), int):
            counts.append(c["num_tokens"])
        elif isinstance(c.get("token_ids"), list):
            counts.append(len(c["token_ids"]))
        else:
            counts.append(None)
    if all(x is not None for x in counts):
        return counts  # type: ignore[return-value]
    total = usage.get("completion_tokens")
    if not isinstance(total, int):
        return [x or 0 for x in counts]
    known = sum(x for x in counts if x is not None)
    missing = [i for i, x in enumerate(counts) if x is None]
    share, extra = divmod(max(0, total - known), len(missing))
    for j, i in enumerate(missing):
        counts[i] = share + (1 if j < extra else 0)
    return counts  # type: ignore[return-value]


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        raw = e.read().decode("utf-8", "replace")
    except Exception:
        return e.reason or ""
    try:
        obj = json.loads(raw)
        err = obj.get("error", obj.get("detail", obj))
        if isinstance(err, dict):
            err = err.get("message", err)
        msg = err if isinstance(err, str) else json.dumps(err)
    except (json.JSONDecodeError, AttributeError):
        msg = raw
    return " ".join(msg.split())[:300]


def _retry_after(e: urllib.error.HTTPError) -> Optional[float]:
    value = e.headers.get("Retry-After") if e.headers else None
    try:
        return min(BACKOFF_MAX, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None


def _describe(reason: Any) -> str:
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
    return str(reason)
