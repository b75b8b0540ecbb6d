"""OpenVINO GenAI engine: the fast CPU sampler (continuous batching; f16 or int8 weights).

Conversion. OpenVINO GenAI reads GGUF files itself (Q8_0, F16, F32 tensors; not the Q5_0 tensors of
the bundled Q4_K_M file), and optimum-intel's exporter needs an older transformers than ilf's. So the
Hugging Face directory is written once as a GGUF whose matrices are F16 (the default: keeps a
fine-tuning update) or Q8_0 (int8 weights, one scale per 32 values, exactly what OpenVINO runs as int8;
see ilf.generation.weights) and whose tokenizer metadata comes from the bundled model's GGUF. This
covers Qwen2-architecture models with the Qwen2.5 tokenizer: the bundled models and everything
FINETUNE makes from them. Others get a clear error (use --engine transformers).
The converted file is cached under `ilf.models.engine_dir(resolved, "openvino-f16")` (q8_0: "openvino").

Sampling. f32 activations and KV cache keep every prompt's samples independent of the batch (see
INFERENCE_PRECISION). All prompts are queued in a `ContinuousBatchingPipeline`; each request asks for
n samples of one prompt (they share its KV cache) with `rng_seed = prompt_seed(seed, prompt)`. Requests are
added one at a time, never more than MAX_INFLIGHT_PROMPTS at once, and each is read as soon as it
finishes, so progress and resumable writes follow the work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ilf.errors import IlfError
from ilf.generation.base import Completion, Engine, SamplingParams, cut_at_stop, prompt_seed, repeat_to_n
from ilf.generation.watchdog import STALL_TIMEOUT, StallWatchdog
from ilf.generation.weights import DEFAULT_WEIGHTS, check_weights

# KV cache for the scheduler, in GB: f32 entries (below) take 24 KB per token for the 0.5B model,
# 57 KB for the 1.5B, so 4 GB holds 8 prompts x n=10 x ~900 tokens of the larger one.
KV_CACHE_GB = 4
# Prompts queued in the pipeline at once (n sequences each). Enough to keep both cores busy with
# batched decoding (16 or 32 measured no faster here, and 16 once deadlocked OpenVINO GenAI's sampler,
# docs/limits.md); bounded so memory stays flat on long runs.
MAX_INFLIGHT_PROMPTS = 8
# Activations and KV cache in f32, not the CPU plugin's defaults (bf16 activations on CPUs with
# AVX512-BF16, u8 KV cache): with those, a prompt's samples depended on what else shared the batch
# (46/55 identical when resumed), so a resumed run differed from an uninterrupted one. In f32 they are
# batch-invariant (55/55; tests/test_models.py) at a small cost in speed (measured, with the CPU, in
# benchmarks/results/openvino_settings.json).
INFERENCE_PRECISION: str | None = "f32"
KV_CACHE_PRECISION: str | None = "f32"
# Reuse the KV blocks of a prompt prefix already computed (the few-shot examples every prompt of a
# stage shares; the LLM feedback prompt that its refinement prompt extends). Measured side by side
# (benchmarks/bench_prefix_caching.py): the same samples as without it, also when resumed, and the
# LLM baselines' prefill-heavy prompts ~2.6x faster; MBPP prompts unchanged in speed.
PREFIX_CACHING = True
SUPPORTED_ARCHS = {"qwen2"}
# How the matrices are stored in the converted GGUF: see ilf.generation.weights.


def gguf_name(weights: str) -> str:
    return f"model-{weights}.gguf"


def _num_threads() -> int:
    return int(os.environ.get("ILF_NUM_THREADS") or os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
# Conversion: Hugging Face directory -> Q8_0 GGUF


def _tokenizer_template():
    """The bundled model's GGUF reader: source of the Qwen2.5 tokenizer metadata."""
    import gguf

    from ilf.models import BUNDLED, DEFAULT_MODEL, assemble_bundled

    return gguf.GGUFReader(assemble_bundled(BUNDLED[DEFAULT_MODEL]))


def hf_to_gguf(hf_dir: Path, out: Path, weights: str = DEFAULT_WEIGHTS) -> None:
    """Write a Hugging Face Qwen2 directory as a GGUF with `weights` matrices and F32 vectors."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(hf_dir)
    if cfg.model_type not in SUPPORTED_ARCHS:
        raise IlfError(
            f"{hf_dir}: the openvino engine converts Qwen2-architecture models, not {cfg.model_type!r}; use --engine transformers"
        )
    tmpl = _tokenizer_template()
    tmpl_tokens = tmpl.fields["tokenizer.ggml.tokens"].contents()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    vocab = tok.get_vocab()
    if any(vocab.get(t) != i for i, t in enumerate(tmpl_tokens[: len(vocab)] if len(vocab) <= len(tmpl_tokens) else [])) or len(
        vocab
    ) > len(tmpl_tokens):
        raise IlfError(f"{hf_dir}: the openvino engine needs the Qwen2.5 tokenizer; use --engine transformers")
    if cfg.vocab_size != len(tmpl_tokens):
        raise IlfError(f"{hf_dir}: vocab_size {cfg.vocab_size} != {len(tmpl_tokens)} of the Qwen2.5 tokenizer; use --engine transformers")

    arch = "qwen2"
    w = gguf.GGUFWriter(out, arch)
    w.add_name(Path(hf_dir).name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)
    w.add_rope_freq_base(float(rope))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    check_weights(weights, "openvino: weights")
    w.add_file_type({"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "f16": gguf.LlamaFileType.MOSTLY_F16}[weights])
    for key, field in tmpl.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), vtype, sub)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, cfg.num_hidden_layers)
    files = sorted(Path(hf_dir).glob("*.safetensors"))
    if not files:
        raise IlfError(f"{hf_dir}: no *.safetensors weights to convert")
    seen, embed = set(), None
    q8 = gguf.GGMLQuantizationType.Q8_0

    def matrix(gname: str, data):
        if weights == "q8_0" and data.shape[1] % 32 == 0:
            w.add_tensor(gname, gguf.quants.quantize(data, q8), raw_dtype=q8)
        elif weights == "f16":
            w.add_tensor(gname, np.ascontiguousarray(data, dtype=np.float16))
        else:  # a q8_0 file keeps matrices whose rows do not split into blocks of 32 in f32
            w.add_tensor(gname, np.ascontiguousarray(data, dtype=np.float32))

    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if gname is None:
                    raise IlfError(f"{f}: cannot map tensor {name!r} to GGUF; use --engine transformers")
                data = st.get_tensor(name).to(torch.float32).numpy()
                seen.add(gname)
                if gname == "token_embd.weight":
                    embed = data
                if data.ndim == 2:
                    matrix(gname, data)
                else:
                    w.add_tensor(gname, np.ascontiguousarray(data, dtype=np.float32))
    if "output.weight" not in seen and embed is not None:
        # Tied embeddings: OpenVINO's GGUF reader wants the output head as its own tensor.
        matrix("output.weight", embed)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def converted_gguf(resolved, weights: str = DEFAULT_WEIGHTS) -> Path:
    """The cached GGUF for `resolved` at `weights`, converting once (atomically) with a message."""
    from rich.console import Console

    from ilf.models import build_atomically, engine_dir

    check_weights(weights, "openvino: weights")
    # q8_0 keeps the historical cache folder; other formats get their own.
    final = engine_dir(resolved, "openvino" if weights == "q8_0" else f"openvino-{weights}")
    name = gguf_name(weights)
    if not (final / name).exists():
        con = Console(stderr=True)
        with con.status(f"[bold]Converting {resolved.name} for OpenVINO ({weights} GGUF, once) into {final} ..."):
            build_atomically(final, lambda tmp: hf_to_gguf(resolved.hf_dir, tmp / name, weights))
        con.print(f"[green]converted[/] {resolved.name} for OpenVINO ({weights}) -> {final}")
    return final / name


# ---------------------------------------------------------------------------------------------
# Engine


class OpenVINOEngine(Engine):
    name = "openvino"

    def __init__(
        self,
        model: Any = None,
        threads: int | None = None,
        kv_cache_gb: float = KV_CACHE_GB,
        max_inflight: int = MAX_INFLIGHT_PROMPTS,
        kv_cache_precision: str | None = KV_CACHE_PRECISION,
        inference_precision: str | None = INFERENCE_PRECISION,
        ov_properties: dict[str, Any] | None = None,
        stall_timeout: float | None = STALL_TIMEOUT,
        weights: str = DEFAULT_WEIGHTS,
        prefix_caching: bool = PREFIX_CACHING,
        **_: Any,
    ):
        import openvino_genai as ov_genai

        from ilf.models import resolve_model

        self.resolved = resolve_model(model)
        path = converted_gguf(self.resolved, weights)
        sched = ov_genai.SchedulerConfig()
        sched.cache_size = int(kv_cache_gb)
        self.prefix_caching = sched.enable_prefix_caching = bool(prefix_caching)
        props: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads or _num_threads())}
        if inference_precision:  # None: the CPU plugin's default
            props["INFERENCE_PRECISION_HINT"] = inference_precision
        if kv_cache_precision:
            props["KV_CACHE_PRECISION"] = kv_cache_precision
        props.update(ov_properties or {})  # any OpenVINO CPU plugin property, passed through
        self.max_inflight = int(max_inflight)
        self.pipe = ov_genai.ContinuousBatchingPipeline(str(path), sched, "CPU", props)
        self.tokenizer = self.pipe.get_tokenizer()
        self._ov = ov_genai
        from ilf.models import ENDOFTEXT_ID, IM_END_ID

        self.eos_ids = {ENDOFTEXT_ID, IM_END_ID}
        self._next_id = 0
        # step() holds the GIL and hung once (docs/limits.md): a watchdog process ends a stalled run.
        self.watchdog = StallWatchdog("openvino sampling", stall_timeout)

    def _config(self, params: SamplingParams, prompt: str):
        c = self._ov.GenerationConfig()
        c.apply_chat_template = False  # plain completion of the paper's prompt (it defaults to chat)
        c.max_new_tokens = params.max_new_tokens
        c.stop_token_ids = set(self.eos_ids)
        if params.stop:
            c.stop_strings = set(params.stop)
            c.include_stop_str_in_output = True  # ids keep the stop token; the text is cut here, exactly
        if params.temperature > 0:
            c.do_sample = True
            c.temperature = params.temperature
            c.top_p = params.top_p
            c.top_k = params.top_k if params.top_k > 0 else 0
            c.num_return_sequences = params.n
            c.rng_seed = prompt_seed(params.seed, prompt)
        else:
            c.do_sample = False
            c.num_return_sequences = 1
        return c

    def _completions(self, outputs, params: SamplingParams) -> list[Completion]:

        comps = []
        for out in outputs:
            ids = list(out.generated_ids)
            ended_eos = bool(ids) and ids[-1] in self.eos_ids
            body = ids[:-1] if ended_eos else ids
            text, hit = cut_at_stop(self.tokenizer.decode(body, skip_special_tokens=True), params.stop)
            reason = "stop" if (ended_eos or hit or len(ids) < params.max_new_tokens) else "length"
            comps.append(Completion(text=text, num_tokens=len(ids), finish_reason=reason))
        return repeat_to_n(comps, params.n)  # greedy: one decode, copied

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        progress: Optional[Callable[[int, list[Completion]], None]] = None,
    ) -> list[list[Completion]]:
        results: list[Optional[list[Completion]]] = [None] * len(prompts)
        pending = list(range(len(prompts)))[::-1]
        inflight: dict[int, Any] = {}
        with self.watchdog.armed() as watchdog:
            while pending or inflight:
                while pending and len(inflight) < self.max_inflight:
                    i = pending.pop()
                    self._next_id += 1
                    inflight[i] = self.pipe.add_request(self._next_id, prompts[i], self._config(params, prompts[i]))
                self.pipe.step()
                watchdog.beat()
                for i, handle in list(inflight.items()):
                    status = handle.get_status()
                    if status == self._ov.GenerationStatus.RUNNING:
                        continue
                    if status != self._ov.GenerationStatus.FINISHED:
                        raise IlfError(f"openvino: request for prompt {i} ended with status {status}")
                    comps = self._completions(handle.read_all(), params)
                    results[i] = comps
                    del inflight[i]
                    if progress:
                        progress(i, comps)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.pipe = None
        self.watchdog.close()
