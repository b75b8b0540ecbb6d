"""Is the model EVAL samples the model FINETUNE made? A fine-tuned model and its base, side by side,
at full precision (transformers, float32: exactly FINETUNE's weights) and through the OpenVINO
engine at each weight format (q8_0, f16), same tasks and seeds.

Three measurements:
  1. weights: the update Δ = W_ft - W_base over every matrix, and what each format keeps of it
     (Δ_fmt = fmt(W_ft) - fmt(W_base)): RMS of Δ, RMS of the error Δ_fmt - Δ, cosine(Δ_fmt, Δ).
  2. greedy decoding: the share of prompts whose completion equals the float32 reference's, for the
     base and the fine-tuned model; and how many prompts the update changes (ft != base) on each path.
  3. sampling (temperature 0.8, the run's protocol): pass@1 of the fine-tuned model per path, EVAL in
     the sandbox, with the paired bootstrap difference vs float32 over tasks.

    flock /tmp/ilf-heavy.lock python benchmarks/bench_finetuned_precision.py --model runs/demo/r1/model \
        [--base qwen2.5-coder-0.5b-instruct] [--tasks 11-26] [--n 5]

Writes benchmarks/results/finetuned_precision.json (figures, CPU) and _samples.jsonl (raw records).

Measurement 3 alone, with two sampling seeds per path, so the f16 - float32 difference can be set
beside the spread of two streams of the same weights (resumes per path and seed):

    python benchmarks/bench_finetuned_precision.py --model runs/cpu/r1/model --tasks 111-140 --n 4 \
        --sampling-seeds 0,1 --paths f16,float32 --max-new-tokens 256 --out benchmarks/results/finetuned_precision_sampling
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ilf import machine
from ilf.evaluation import evaluate
from ilf.extraction import STOP_SEQUENCES, extract_program
from ilf.generation import SamplingParams, get_engine
from ilf.models import resolve_model
from ilf.tasks import load_tasks

RESULTS = Path(__file__).parent / "results"
FORMATS = ("q8_0", "f16")


def quantize_roundtrip(a: np.ndarray, fmt: str) -> np.ndarray:
    import gguf

    if fmt == "f16":
        return a.astype(np.float16).astype(np.float32)
    if a.shape[1] % 32:
        return a
    q = gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.dequantize(gguf.quants.quantize(a, q), q).reshape(a.shape)


def weight_report(base_dir: Path, ft_dir: Path) -> dict:
    """Δ and what each format keeps of it, over every 2-D tensor (the matrices the formats quantize)."""
    import torch
    from safetensors import safe_open

    def tensors(d: Path) -> dict:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(f, framework="pt") as st:
                for k in st.keys():
                    t = st.get_tensor(k)
                    if t.ndim == 2:
                        out[k] = t
        return out

    base, ft = tensors(base_dir), tensors(ft_dir)
    acc = {"n": 0, "dd": 0.0, **{f"{fmt}_{x}": 0.0 for fmt in FORMATS for x in ("ee", "qq", "qd")}}
    changed_codes = {"n": 0, "changed": 0}
    for k, tb in base.items():
        if k not in ft:
            continue
        b = tb.to(torch.float32).numpy()
        a = ft[k].to(torch.float32).numpy()
        d = (a - b).astype(np.float64)
        acc["n"] += d.size
        acc["dd"] += float((d * d).sum())
        for fmt in FORMATS:
            dq = (quantize_roundtrip(a, fmt) - quantize_roundtrip(b, fmt)).astype(np.float64)
            e = dq - d
            acc[f"{fmt}_ee"] += float((e * e).sum())
            acc[f"{fmt}_qq"] += float((dq * dq).sum())
            acc[f"{fmt}_qd"] += float((dq * d).sum())
            if fmt == "q8_0":
                changed_codes["n"] += d.size
                changed_codes["changed"] += int((dq != 0).sum())
    out = {"weights": acc["n"], "update_rms": (acc["dd"] / acc["n"]) ** 0.5}
    for fmt in FORMATS:
        out[fmt] = {
            "kept_update_rms": (acc[f"{fmt}_qq"] / acc["n"]) ** 0.5,
            "error_rms": (acc[f"{fmt}_ee"] / acc["n"]) ** 0.5,
            "error_over_update": (acc[f"{fmt}_ee"] / max(acc["dd"], 1e-300)) ** 0.5,
            "cosine": acc[f"{fmt}_qd"] / max((acc[f"{fmt}_qq"] * acc["dd"]) ** 0.5, 1e-300),
        }
    out["q8_0"]["share_of_weights_changed"] = changed_codes["changed"] / max(1, changed_codes["n"])
    return out


def paths() -> list[tuple[str, str, dict]]:
    return [("float32", "transformers", {"dtype": "float32"})] + [(f, "openvino", {"weights": f}) for f in FORMATS]


def sample_all(models: dict[str, str], tasks, params: SamplingParams) -> dict:
    """(model label, path) -> list of completions texts, one list per task (n each)."""
    out, timing = {}, {}
    for mlabel, spec in models.items():
        for plabel, engine, opts in paths():
            eng = get_engine(engine, spec, **opts)
            t = time.perf_counter()
            comps = eng.generate([tk.prompt for tk in tasks], params)
            timing[f"{mlabel}/{plabel}"] = time.perf_counter() - t
            eng.close()
            out[(mlabel, plabel)] = [[c.text for c in cs] for cs in comps]
            toks = sum(c.num_tokens for cs in comps for c in cs)
            print(
                f"  {mlabel:5s} {plabel:7s} {timing[f'{mlabel}/{plabel}']:7.1f} s, {toks / timing[f'{mlabel}/{plabel}']:.1f} tok/s",
                flush=True,
            )
    return {"texts": out, "seconds": timing}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    diffs = (a[idx] - b[idx]).mean(axis=1)
    return float((a - b).mean()), float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def sampling_spread(a: argparse.Namespace) -> None:
    """Measurement 3 only, with several sampling seeds per path, so the f16 - float32 difference in
    pass@1 can be set beside the spread between two float32 streams (two seeds of the same weights).
    Each (path, seed) is written as soon as it is done: a stopped benchmark keeps what it measured."""
    t_all = time.perf_counter()
    ft_dir = resolve_model(a.model).hf_dir
    seeds = [int(x) for x in a.sampling_seeds.split(",")]
    wanted = a.paths.split(",")
    tasks = list(load_tasks("mbpp", task_ids=a.tasks))
    ids = [tk.task_id for tk in tasks]
    out_json, out_samples = Path(a.out + ".json"), Path(a.out + "_samples.jsonl")
    done = json.loads(out_json.read_text())["runs"] if out_json.exists() else {}
    print(f"CPU: {machine.describe()}\nfine-tuned {ft_dir}; tasks {a.tasks}, n={a.n}, seeds {seeds}", flush=True)
    for plabel, engine, opts in [p for w in wanted for p in paths() if p[0] == w]:
        for seed in seeds:
            key = f"{plabel}@{seed}"
            if key in done:
                continue
            sp = SamplingParams(n=a.n, temperature=0.8, top_p=0.95, max_new_tokens=a.max_new_tokens, stop=list(STOP_SEQUENCES), seed=seed)
            eng = get_engine(engine, str(ft_dir), **opts)
            t = time.perf_counter()
            comps = eng.generate([tk.prompt for tk in tasks], sp)
            secs = time.perf_counter() - t
            eng.close()
            records = [
                {
                    "task_id": tk.task_id,
                    "sample_id": j,
                    "path": plabel,
                    "seed": seed,
                    "completion": c.text,
                    "program": extract_program(tk, c.text),
                }
                for tk, cs in zip(tasks, comps)
                for j, c in enumerate(cs)
            ]
            results = evaluate(records, tasks)
            # keyed by str(task id): the keys JSON gives back when a resumed run reads this file
            per_task = {str(t): float(np.mean([r["passed"] for r in results if r["task_id"] == t])) for t in ids}
            done[key] = {
                "pass@1": float(np.mean(list(per_task.values()))),
                "per_task": per_task,
                "seconds": secs,
                "texts": [c.text for cs in comps for c in cs],
            }
            with open(out_samples, "a") as f:
                for r in results:
                    f.write(
                        json.dumps({k: r.get(k) for k in ("task_id", "sample_id", "path", "seed", "completion", "passed", "status")}) + "\n"
                    )
            print(f"  {key:12s} pass@1 {done[key]['pass@1']:.3f}  {secs:7.1f} s", flush=True)
            comparisons = {}
            keys = sorted(done)
            for i, x in enumerate(keys):
                for y in keys[i + 1 :]:
                    ax = np.array([done[x]["per_task"][str(t)] for t in ids])
                    ay = np.array([done[y]["per_task"][str(t)] for t in ids])
                    same = sum(u == v for u, v in zip(done[x]["texts"], done[y]["texts"]))
                    comparisons[f"{x} - {y}"] = {"pass@1": list(paired_bootstrap(ax, ay)), "identical_samples": f"{same}/{len(ax) * a.n}"}
            out_json.write_text(
                json.dumps(
                    {
                        "cpu": machine.describe(),
                        "model": str(a.model),
                        "tasks": a.tasks,
                        "n": a.n,
                        "max_new_tokens": a.max_new_tokens,
                        "runs": done,
                        "comparisons": comparisons,
                        "wall_seconds_last_invocation": time.perf_counter() - t_all,
                    },
                    indent=1,
                )
                + "\n"
            )
            print(json.dumps(comparisons, indent=1), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the fine-tuned Hugging Face directory (e.g. runs/demo/r1/model)")
    ap.add_argument("--base", default="qwen2.5-coder-0.5b-instruct", help="the model it was trained from")
    ap.add_argument("--tasks", default="11-26")
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--out", default=str(RESULTS / "finetuned_precision"))
    ap.add_argument(
        "--sampling-seeds",
        default=None,
        help="only measurement 3, with these sampling seeds per path (e.g. 0,1): two float32 streams measure the "
        "stream-to-stream spread that any f16 - float32 difference must be compared with",
    )
    ap.add_argument("--paths", default="f16,float32", help="with --sampling-seeds: the paths to sample, in this order")
    a = ap.parse_args()
    if a.sampling_seeds is not None:
        return sampling_spread(a)

    t_all = time.perf_counter()
    base_dir, ft_dir = resolve_model(a.base).hf_dir, resolve_model(a.model).hf_dir
    print(f"CPU: {machine.describe()}\nbase {base_dir}\nfine-tuned {ft_dir}", flush=True)
    print("1. weights", flush=True)
    wr = weight_report(base_dir, ft_dir)
    print(json.dumps(wr, indent=2), flush=True)

    tasks = list(load_tasks("mbpp", task_ids=a.tasks))
    models = {"base": str(base_dir), "ft": str(ft_dir)}
    stop = list(STOP_SEQUENCES)
    print("2. greedy", flush=True)
    greedy = sample_all(models, tasks, SamplingParams(n=1, temperature=0.0, max_new_tokens=a.max_new_tokens, stop=stop))
    g = greedy["texts"]
    greedy_out = {}
    for m in models:
        for p, _, _ in paths():
            same = sum(x[0] == y[0] for x, y in zip(g[(m, p)], g[(m, "float32")]))
            greedy_out[f"{m}/{p}: same as {m}/float32"] = f"{same}/{len(tasks)}"
    for p, _, _ in paths():
        changed = sum(x[0] != y[0] for x, y in zip(g[("ft", p)], g[("base", p)]))
        greedy_out[f"{p}: prompts where ft != base"] = f"{changed}/{len(tasks)}"
    print(json.dumps(greedy_out, indent=2), flush=True)

    print(f"3. sampling n={a.n}, T=0.8, fine-tuned model", flush=True)
    sp = SamplingParams(n=a.n, temperature=0.8, top_p=0.95, max_new_tokens=a.max_new_tokens, stop=stop, seed=0)
    sampled = sample_all({"ft": str(ft_dir)}, tasks, sp)
    records = []
    for (m, p), per_task in sampled["texts"].items():
        for tk, texts in zip(tasks, per_task):
            for j, text in enumerate(texts):
                records.append(
                    {"task_id": tk.task_id, "sample_id": j, "model": m, "path": p, "completion": text, "program": extract_program(tk, text)}
                )
    results = evaluate(records, load_tasks("mbpp", task_ids=a.tasks))
    by = {}
    for r in results:
        by.setdefault(r["path"], {}).setdefault(r["task_id"], []).append(bool(r["passed"]))
    ids = [tk.task_id for tk in tasks]
    rate = {p: np.array([np.mean(by[p][t]) for t in ids]) for p in by}
    sampling_out = {}
    for p, _, _ in paths():
        d, lo, hi = paired_bootstrap(rate[p], rate["float32"])
        same = sum(x == y for xs, ys in zip(sampled["texts"][("ft", p)], sampled["texts"][("ft", "float32")]) for x, y in zip(xs, ys))
        # Only the OpenVINO paths share a random stream, so only their samples can be compared one by one.
        same_ov = sum(x == y for xs, ys in zip(sampled["texts"][("ft", p)], sampled["texts"][("ft", "f16")]) for x, y in zip(xs, ys))
        sampling_out[p] = {
            "pass@1": float(rate[p].mean()),
            "minus_float32": [d, lo, hi],
            "samples_same_as_float32": f"{same}/{len(ids) * a.n}",
            "samples_same_as_openvino_f16": f"{same_ov}/{len(ids) * a.n}" if p != "float32" else None,
            "seconds": sampled["seconds"][f"ft/{p}"],
            "programs_per_s": len(ids) * a.n / sampled["seconds"][f"ft/{p}"],
        }
    print(json.dumps(sampling_out, indent=2), flush=True)

    out = {
        "cpu": machine.describe(),
        "base": str(a.base),
        "model": str(a.model),
        "tasks": a.tasks,
        "n": a.n,
        "max_new_tokens": a.max_new_tokens,
        "weights": wr,
        "greedy": greedy_out,
        "greedy_seconds": greedy["seconds"],
        "sampling": sampling_out,
        "wall_seconds": time.perf_counter() - t_all,
    }
    Path(a.out + ".json").write_text(json.dumps(out, indent=2) + "\n")
    with open(a.out + "_samples.jsonl", "w") as f:
        for r in results:
            f.write(json.dumps({k: r.get(k) for k in ("task_id", "sample_id", "model", "path", "completion", "passed", "status")}) + "\n")
    print(f"wrote {a.out}.json and {a.out}_samples.jsonl ({out['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
