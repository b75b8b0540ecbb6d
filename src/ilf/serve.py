"""`ilf serve`: an OpenAI-compatible `/v1/completions` + `/v1/models` server over any ilf engine.

So a team loads a model once and shares it (`ilf sample --engine openai --base-url ...`), and so the
OpenAI engine is tested against a real server on loopback. Only what code sampling needs: plain
completions (no chat, no streaming, no logprobs), with n, temperature, top_p, top_k, max_tokens,
stop and seed. Requests run one at a time (engines are not thread-safe); a request may carry a list
of prompts, which the engine then samples as one batch.

Each choice carries `num_tokens` (an ilf extension; OpenAI clients ignore it) so `OpenAIEngine`
reports exact token counts.
"""

# No `from __future__ import annotations`: FastAPI must see the request model class itself.
import random
import threading
import time
import uuid
from typing import Any, Optional, Union

from ilf.errors import IlfError
from ilf.generation.base import Engine, SamplingParams

DEFAULT_HOST = "127.0.0.1"  # loopback: exposing a model to the network is the user's explicit choice
DEFAULT_PORT = 8000  # the port `vllm serve` uses, so clients need no change
DEFAULT_MAX_TOKENS = 16  # the OpenAI API's default when a request gives no max_tokens
MAX_N = 128  # samples per prompt accepted in one request
MAX_PROMPTS = 1024  # prompts accepted in one request


def create_app(engine: Engine, model_name: str, api_key: Optional[str] = None):
    """The FastAPI app serving `engine` under the name `model_name`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    class CompletionRequest(BaseModel):
        # Unknown fields (logit_bias, user, stop_token_ids, ...) are accepted and ignored, as
        # OpenAI-compatible servers do, so existing clients work unchanged.
        model_config = ConfigDict(extra="ignore")

        model: Optional[str] = None
        prompt: Union[str, list[str]]
        n: int = Field(1, ge=1, le=MAX_N)
        temperature: float = Field(1.0, ge=0.0, le=2.0)
        top_p: float = Field(1.0, gt=0.0, le=1.0)
        top_k: int = Field(0, ge=-1)
        max_tokens: Optional[int] = Field(None, ge=1)
        stop: Optional[Union[str, list[str]]] = None
        seed: Optional[int] = None
        stream: bool = False
        echo: bool = False
        logprobs: Optional[int] = None
        best_of: Optional[int] = None

    app = FastAPI(title="ilf serve", version="1")
    lock = threading.Lock()  # one generate() at a time: engines hold one model and are not thread-safe
    created = int(time.time())

    def error(status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None):
        body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
        return JSONResponse(status_code=status, content=body)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return error(401, "invalid or missing API key (send 'Authorization: Bearer KEY')", "authentication_error")
        return await call_next(request)

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return error(400, f"{where}: {first.get('msg', 'invalid request')}", param=where or None)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "ilf"}]}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/completions")
    def completions(req: CompletionRequest):  # sync: FastAPI runs it in a worker thread
        if req.model is not None and req.model != model_name:
            return error(404, f"model '{req.model}' is not served here (this server serves '{model_name}')", "not_found_error", "model")
        if req.stream:
            return error(400, "stream=true is not supported by ilf serve", param="stream")
        if req.echo or req.logprobs or (req.best_of is not None and req.best_of != req.n):
            return error(400, "echo, logprobs and best_of are not supported by ilf serve")
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts or len(prompts) > MAX_PROMPTS:
            return error(400, f"prompt: give 1 to {MAX_PROMPTS} prompts", param="prompt")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        try:
            params = SamplingParams(
                n=req.n,
                temperature=req.temperature,
                top_p=req.top_p,
                top_k=max(0, req.top_k),
                max_new_tokens=req.max_tokens or DEFAULT_MAX_TOKENS,
                stop=[s for s in stop if s],
                # No seed: a fresh one, as OpenAI servers sample differently on every call.
                seed=req.seed if req.seed is not None else random.randrange(2**31 - 1),
            )
        except IlfError as e:  # one validation of sampling settings, the same as the commands'
            return error(400, str(e))
        try:
            with lock:
                outputs = engine.generate(prompts, params)
        except IlfError as e:
            return error(400, str(e))
        choices = []
        completion_tokens = 0
        for p, comps in enumerate(outputs):
            for j, c in enumerate(comps):
                choices.append(
                    {
                        "index": p * params.n + j,  # OpenAI's layout: prompt-major, then sample
                        "text": c.text,
                        "logprobs": None,
                        "finish_reason": c.finish_reason,
                        "num_tokens": c.num_tokens,
                    }
                )
                completion_tokens += c.num_tokens
        prompt_tokens = _count_prompt_tokens(engine, prompts)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    return app


def _count_prompt_tokens(engine: Engine, prompts: list[str]) -> int:
    tok = getattr(engine, "tokenizer", None)
    if tok is None:
        return 0  # this engine does not expose a tokenizer; usage then counts generated tokens only
    try:
        return sum(len(tok(p)["input_ids"]) for p in prompts)
    except Exception:
        return 0


def serve(
    engine: Engine,
    model_name: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    api_key: Optional[str] = None,
    log_level: str = "info",
) -> None:
    """Serve until interrupted, then close the engine."""
    import uvicorn

    app = create_app(engine, model_name, api_key=api_key)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        engine.close()
