"""Hugging Face transformers engine: the reference sampler (and what tests use with tiny models).

One `generate` call per prompt with the prompt repeated n times, seeded from (seed, prompt) so the
samples of a prompt never depend on the other prompts. Stop strings are checked by a small
stopping criterion on the decoded tail of each row: transformers' own `stop_strings` makes batched
sampling several times slower here (DESIGN.md).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from ilf.generation.base import Completion, Engine, SamplingParams, cut_at_stop, prompt_seed, repeat_to_n


class _StopOnStrings:
    """Marks a row done once its generated text contains a stop string; records the step."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_len: int):
        self.tok, self.stop, self.prompt_len = tokenizer, [s for s in stop if s], prompt_len
        self.done_at: dict[int, int] = {}

    def __call__(self, input_ids, scores, **kw):
        import torch

        gen = input_ids[:, self.prompt_len :]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stop or gen.shape[1] == 0:
            return done
        for row in range(gen.shape[0]):
            if row in self.done_at:
                done[row] = True
                continue
            # Decode the whole generation (not only the tail) so a stop string that starts
            # before the tail window is still found; completions are at most a few hundred tokens.
            text = self.tok.decode(gen[row], skip_special_tokens=True)
            if any(s in text for s in self.stop):
                self.done_at[row] = gen.shape[1]
                done[row] = True
        return done


class HFEngine(Engine):
    name = "transformers"

    def __init__(self, model: Any = None, dtype: Any = None, device: str = "cpu", threads: int | None = None, **_: Any):
        import torch

        from ilf.models import eos_token_ids, load_hf_model, resolve_model

        if threads:
            torch.set_num_threads(int(threads))
        self.resolved = resolve_model(model)
        self.model, self.tokenizer = load_hf_model(self.resolved, dtype=dtype, device=device)
        self.device = device
        self.eos_ids = eos_token_ids(self.tokenizer, self.model.generation_config.eos_token_id)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]

    def _generation_config(self, params: SamplingParams, n: int):
        from transformers import GenerationConfig

        # A fresh config: the model's own (e.g. a hub model's repetition_penalty, top_k=20) must
        # not silently change what "temperature 0.8, top_p 0.95" means.
        sample = params.temperature > 0
        kw: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            num_return_sequences=n,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        if sample:
            kw.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or 0)
        return GenerationConfig(**kw)

    def _one(self, prompt: str, params: SamplingParams) -> list[Completion]:
        import torch
        from transformers import StoppingCriteriaList

        enc = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        plen = enc["input_ids"].shape[1]
        n = params.n if params.temperature > 0 else 1  # greedy: one decode, copied n times
        crit = _StopOnStrings(self.tokenizer, params.stop, plen)
        torch.manual_seed(prompt_seed(params.seed, prompt))
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                generation_config=self._generation_config(params, n),
                stopping_criteria=StoppingCriteriaList([crit]),
            )
        comps = []
        for row in range(out.shape[0]):
            ids = out[row, plen:].tolist()
            eos_at = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
            if eos_at is not None:
                ids = ids[:eos_at]
            text, hit = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), params.stop)
            if hit:
                num, reason = crit.done_at.get(row, len(ids)), "stop"
            elif eos_at is not None:
                num, reason = eos_at + 1, "stop"  # the end token counts as generated
            else:
                num, reason = len(ids), "length"
            comps.append(Completion(text=text, num_tokens=num, finish_reason=reason))
        return repeat_to_n(comps, params.n)

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams,
        progress: Optional[Callable[[int, list[Completion]], None]] = None,
    ) -> list[list[Completion]]:
        results = []
        for i, p in enumerate(prompts):
            comps = self._one(p, params)
            results.append(comps)
            if progress:
                progress(i, comps)
        return results

    def close(self) -> None:
        self.model = None
