"""Engines (transformers, OpenVINO GenAI) on a tiny real Qwen2 model: counts, seeds, stop strings."""

import re

import pytest

from ilf.errors import IlfError
from ilf.generation import ENGINES, SamplingParams, default_engine, get_engine

PROMPTS = ["def add(a, b):\n", '"""\nSort a list.\n"""\n\ndef sort_list(xs):\n', "def f():\n"]
ENGINE_NAMES = ["transformers", "openvino"]


@pytest.fixture(scope="module")
def engines(qwen_tiny, tmp_path_factory):
    import os

    os.environ.setdefault("ILF_CACHE", str(tmp_path_factory.mktemp("cache")))
    loaded = {}
    yield lambda name: loaded.setdefault(name, get_engine(name, str(qwen_tiny)))
    for e in loaded.values():
        e.close()


def texts(outs):
    return [[c.text for c in o] for o in outs]


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_counts_and_token_limit(engines, name):
    eng = engines(name)
    outs = eng.generate(PROMPTS, SamplingParams(n=3, temperature=0.8, max_new_tokens=12, seed=1))
    assert len(outs) == len(PROMPTS) and all(len(o) == 3 for o in outs)
    for o in outs:
        for c in o:
            assert 1 <= c.num_tokens <= 12
            assert c.finish_reason in ("stop", "length")
            assert c.text  # the tiny model never emits an end token
    # Samples of one prompt differ (temperature 0.8), i.e. n is n draws, not n copies.
    assert len(set(texts(outs)[0])) > 1


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_same_seed_same_samples_regardless_of_batch_and_order(engines, name):
    eng = engines(name)
    p = SamplingParams(n=2, temperature=0.8, max_new_tokens=10, seed=7)
    full = texts(eng.generate(PROMPTS, p))
    again = texts(eng.generate(PROMPTS, p))
    alone = texts(eng.generate([PROMPTS[2]], p))
    reordered = texts(eng.generate(PROMPTS[::-1], p))
    assert full == again
    assert alone[0] == full[2]
    assert reordered[::-1] == full
    other = texts(eng.generate(PROMPTS, SamplingParams(n=2, temperature=0.8, max_new_tokens=10, seed=8)))
    assert other != full


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_stop_strings_cut_the_completion(engines, name):
    eng = engines(name)
    greedy = SamplingParams(n=1, temperature=0, max_new_tokens=24)
    base = eng.generate([PROMPTS[0]], greedy)[0][0]
    assert base.finish_reason == "length" and base.num_tokens == 24
    # A word the model really writes, after its first few characters.
    words = [m for m in re.finditer(r"[A-Za-z]{3,}", base.text) if m.start() >= 4]
    assert words, f"no ascii word in {base.text!r}"
    stop = words[0].group(0)
    cut = eng.generate([PROMPTS[0]], SamplingParams(n=1, temperature=0, max_new_tokens=24, stop=[stop, "\x00never"]))[0][0]
    assert cut.text == base.text[: base.text.find(stop)]
    assert cut.finish_reason == "stop"
    assert cut.num_tokens < base.num_tokens


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_greedy_n_copies_and_progress_callback(engines, name):
    eng = engines(name)
    seen = {}
    outs = eng.generate(PROMPTS, SamplingParams(n=3, temperature=0, max_new_tokens=8), progress=lambda i, c: seen.setdefault(i, c))
    assert sorted(seen) == list(range(len(PROMPTS)))
    for i, o in enumerate(outs):
        assert len({c.text for c in o}) == 1
        assert [c.text for c in seen[i]] == [c.text for c in o]


def test_registry():
    assert {"transformers", "openvino", "vllm", "openai"} <= set(ENGINES)
    assert default_engine() == "openvino"  # the fastest measured here (benchmarks/bench_sampling.py)
    with pytest.raises(IlfError, match="unknown engine"):
        get_engine("nope", "x")


def test_one_opener_takes_every_setting_and_gives_each_engine_its_own(qwen_tiny, tmp_path, monkeypatch):
    """Callers pass ModelConfig's weights (and a base URL) whatever the engine: only openvino gets
    weights, only openai base_url; "auto" is the default engine."""
    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "cache"))
    with get_engine("transformers", str(qwen_tiny), weights="q8_0", base_url="http://127.0.0.1:9/v1") as eng:
        assert eng.name == "transformers"
    with get_engine("auto", str(qwen_tiny), weights="q8_0", base_url="http://127.0.0.1:9/v1") as eng:
        assert eng.name == default_engine() == "openvino"
    assert [p.name for p in (tmp_path / "cache" / "engines").rglob("*.gguf")] == ["model-q8_0.gguf"]  # it got the weights


def test_openvino_refuses_a_model_it_cannot_convert(tmp_path, monkeypatch):
    from tiny_models import build_tiny_model

    monkeypatch.setenv("ILF_CACHE", str(tmp_path / "cache"))
    d = build_tiny_model(tmp_path / "other_tok")  # a different tokenizer
    with pytest.raises(IlfError, match="use --engine transformers"):
        get_engine("openvino", str(d))
    # nothing half-built is left in the cache
    eng_dir = tmp_path / "cache" / "engines"  # any weight format's folder
    assert not eng_dir.exists() or not any(p.name.endswith(".gguf") for p in eng_dir.rglob("*"))


def test_openvino_prefix_caching_changes_no_sample(engines, qwen_tiny):
    """Prefix caching (on by default) reuses the KV cache of shared prefixes, as the LLM baselines'
    prompts have (the same few-shot examples; a refinement prompt extends its feedback prompt): the
    samples must be those computed without it, whatever ran before."""
    shots = "".join(f"TASK: example {i}\nOLD CODE:\ndef f{i}(x):\n    return x + {i}\nFEEDBACK:\nadd one more\n---\n" for i in range(12))
    queries = [shots + f"TASK: query {i}\nOLD CODE:\ndef g(x):\n    return {i}\nFEEDBACK:\n" for i in range(4)]
    p = SamplingParams(n=2, temperature=0.8, max_new_tokens=16, seed=3)
    cached = engines("openvino")
    assert cached.prefix_caching
    first = texts(cached.generate(queries, p))
    longer = [q + o[0] + "\nREFINEMENT:\n" for q, o in zip(queries, first)]
    cold = get_engine("openvino", str(qwen_tiny), prefix_caching=False)
    try:
        assert texts(cold.generate(queries, p)) == first
        assert texts(cached.generate(longer, p)) == texts(cold.generate(longer, p))
    finally:
        cold.close()
