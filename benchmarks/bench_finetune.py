"""FINETUNE throughput and memory on this machine: target tokens/s and peak RSS of ilf.finetune (TRL
SFTTrainer; full fine-tuning fp32, full with bf16 autocast, LoRA) beside a plain transformers
`Trainer` loop on the same tokenized data, printed side by side in one run.

Protocol: the bundled Qwen2.5-Coder-0.5B-Instruct (ilf.models, fp32 master weights); data = the
first PAIRS π_θ pairs (task prompt -> human refinement) of the authors' annotations on MBPP_Train;
per-device batch 1, gradient accumulation BATCH, MAX_STEPS optimizer steps, AdamW (fused), lr 5e-6. Each
variant runs in its own process (so its peak RSS is its own) under `flock /tmp/ilf-heavy.lock`:

    flock /tmp/ilf-heavy.lock python benchmarks/bench_finetune.py [--pairs 8 --batch 4 --steps 2]

The machine is shared: the load average at start and end is printed, since other processes that do
not take the lock slow every variant (compare variants within one run, not across runs).

Tokens/s counts target (completion + end) tokens trained divided by the training loop's wall time
(model loading and saving excluded; they are printed separately). Raw per-variant JSON goes to
benchmarks/results/bench_finetune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "ilf-full-fp32": dict(lora=False, bf16=False),
    "ilf-full-bf16": dict(lora=False, bf16=True),  # autocast; ilf falls back to fp32 without AVX512-BF16/AMX
    "ilf-lora-bf16": dict(lora=True, bf16=True),
    "ilf-lora-fp32": dict(lora=True, bf16=False),
    "ilf-lora-fp32-gc": dict(lora=True, bf16=False, gradient_checkpointing=True),
    "ilf-full-fp32-pd4": dict(lora=False, bf16=False, per_device_batch_size=4),
    "ilf-full-fp32-gc": dict(lora=False, bf16=False, gradient_checkpointing=True),
    "plain-Trainer-full-fp32": None,
}


def pairs_for(n: int) -> list[dict]:
    from ilf.pairs import annotation_pairs

    return annotation_pairs(split="train", kind="program")[:n]


def run_ilf(name: str, args) -> dict:
    from ilf.finetune import FinetuneConfig, finetune

    out = Path(tempfile.mkdtemp(prefix="bench_ft_")) / "model"
    kw = {"per_device_batch_size": 1, **VARIANTS[name]}
    cfg = FinetuneConfig(
        batch_size=args.batch, max_steps=args.steps, max_length=args.max_length, report_to="none", save_steps=-1, **kw
    )  # no checkpoint: the plain loop writes none either
    try:
        finetune(pairs_for(args.pairs), args.model, out, cfg)
        m = json.loads((out / "ilf_finetune.json").read_text())["metrics"]
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)  # a 2.4 GB model per variant
    return {
        "train_seconds": m["train_seconds"],
        "load_seconds": m["load_seconds"],
        "save_seconds": m["save_seconds"],
        "target_tokens": m["target_tokens"],
        "target_tokens_per_second": m["target_tokens_per_second"],
        "seconds_per_step": m["seconds_per_step"],
        "train_loss": m["train_loss"],
    }


def run_plain(args) -> dict:
    """The same examples (same tokenization) through a plain transformers Trainer."""
    import torch
    from transformers import Trainer, TrainingArguments

    from ilf.finetune import Pair, encode_pairs, end_token_ids, training_eos_id
    from ilf.models import load_hf_model

    torch.set_num_threads(os.cpu_count() or 1)
    t = time.time()
    model, tok = load_hf_model(args.model, dtype=torch.float32)
    model.train()
    load_s = time.time() - t
    eos = training_eos_id(tok, end_token_ids(tok, model))
    enc, _, _ = encode_pairs([Pair(p["prompt"], p["completion"]) for p in pairs_for(args.pairs)], tok, args.max_length, eos)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(enc)

        def __getitem__(self, i):
            e = enc[i]
            labels = [t if m else -100 for t, m in zip(e.input_ids, e.completion_mask)]
            return {"input_ids": torch.tensor(e.input_ids), "labels": torch.tensor(labels)}

    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench_plain_"),
        per_device_train_batch_size=1,
        optim="adamw_torch_fused",  # the Trainer's default, as ilf's
        gradient_accumulation_steps=args.batch,
        max_steps=args.steps,
        learning_rate=5e-6,
        lr_scheduler_type="linear",
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        seed=42,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=DS())
    t = time.time()
    res = trainer.train()
    train_s = time.time() - t
    sequences = args.steps * args.batch
    tokens = sum(enc[i % len(enc)].num_target_tokens for i in range(sequences))
    return {
        "train_seconds": round(train_s, 2),
        "load_seconds": round(load_s, 2),
        "save_seconds": None,
        "target_tokens": tokens,
        "target_tokens_per_second": round(tokens / train_s, 2),
        "seconds_per_step": round(train_s / args.steps, 3),
        "train_loss": res.training_loss,
    }


def run_bf16_probe(args) -> dict:
    """fp32 vs bf16 autocast for one forward+backward of the same sequence, same process: does
    bf16 pay on this CPU? (A whole bf16 variant takes too long to run by default.)"""
    import torch

    from ilf.finetune import Pair, encode_pairs, end_token_ids, training_eos_id
    from ilf.models import load_hf_model

    torch.set_num_threads(os.cpu_count() or 1)
    model, tok = load_hf_model(args.model, dtype=torch.float32)
    model.train()
    eos = training_eos_id(tok, end_token_ids(tok, model))
    e = encode_pairs([Pair(p["prompt"], p["completion"]) for p in pairs_for(1)], tok, args.max_length, eos)[0][0]
    ids = torch.tensor([e.input_ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(e.input_ids, e.completion_mask)]])
    times = {}
    for name in ("fp32", "fp32", "bf16"):  # the first fp32 pass warms up
        t = time.time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        times[name] = time.time() - t
    return {
        "tokens": len(e.input_ids),
        "fp32_seconds": round(times["fp32"], 2),
        "bf16_seconds": round(times["bf16"], 2),
        "bf16_over_fp32": round(times["bf16"] / times["fp32"], 2),
    }


def child(name: str, args) -> None:
    if name == "bf16-probe":
        r = run_bf16_probe(args)
        r["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print("BENCH_RESULT " + json.dumps(r), flush=True)
        return
    r = run_plain(args) if VARIANTS[name] is None else run_ilf(name, args)
    r["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("BENCH_RESULT " + json.dumps(r), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="gradient accumulation steps (per-device batch 1)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=512)
    default = list(VARIANTS) + ["bf16-probe"]  # ilf falls back to fp32 on CPUs without native bf16
    ap.add_argument("--variants", default=",".join(default))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args)
        return

    from ilf.models import resolve_model

    resolve_model(args.model)  # convert once, outside the timed children
    results = {}
    load_start = os.getloadavg()[0]
    for name in args.variants.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--model",
            args.model,
            "--pairs",
            str(args.pairs),
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--max-length",
            str(args.max_length),
        ]
        print(f"== {name}", file=sys.stderr, flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
        if p.returncode != 0 or line is None:
            results[name] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            results[name] = json.loads(line[len("BENCH_RESULT ") :])
        print(f"   {results[name]}", file=sys.stderr, flush=True)

    out = Path(__file__).parent / "results" / "bench_finetune.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
    print(
        f"\nFINETUNE on {args.model}: {args.pairs} pairs, per-device batch 1 x accumulation {args.batch}, "
        f"{args.steps} optimizer steps, max_length {args.max_length}, {os.cpu_count()} CPU threads; "
        f"load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    )
    hdr = f"{'variant':26} {'target tok/s':>12} {'s/step':>8} {'train s':>8} {'load s':>7} {'peak RSS GiB':>13} {'loss':>7}"
    print(hdr)
    print("-" * len(hdr))
    for name, r in results.items():
        if name == "bf16-probe" and "error" not in r:
            print(
                f"{'bf16 autocast probe':26} one fwd+bwd of {r['tokens']} tokens: fp32 {r['fp32_seconds']} s, "
                f"bf16 {r['bf16_seconds']} s ({r['bf16_over_fp32']}x)"
            )
            continue
        if "error" in r:
            print(f"{name:26} error: {r['error']}")
            continue
        print(
            f"{name:26} {r['target_tokens_per_second']:>12.1f} {r['seconds_per_step']:>8.1f} {r['train_seconds']:>8.1f} "
            f"{r['load_seconds']:>7.1f} {r['peak_rss_mb'] / 1024:>13.2f} {r['train_loss']:>7.4f}"
        )
    print(f"raw: {out}")


if __name__ == "__main__":
    main()
