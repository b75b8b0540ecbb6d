"""One training step's pieces on the bundled 0.5B model, side by side in one process: forward +
backward per sequence with the plain transformers loss (full logits) in fp32 and under bf16
autocast, with TRL's fused LM head (what SFTTrainer uses: log-probs of the target positions only,
plus entropy and accuracy), and one AdamW step over all parameters.

    flock /tmp/ilf-heavy.lock python benchmarks/bench_finetune_step.py [--seqs 4]

Data: the first SEQS π_θ pairs (task prompt -> human refinement) of the authors' annotations.
The machine is shared: the load average is printed; compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--bf16-seqs", type=int, default=2, help="bf16 autocast is slow here: fewer sequences")
    args = ap.parse_args()

    from trl.trainer.utils import add_fused_lm_head

    from ilf.finetune import Pair, encode_pairs, end_token_ids, training_eos_id
    from ilf.models import load_hf_model
    from ilf.pairs import annotation_pairs

    torch.set_num_threads(os.cpu_count() or 1)
    load0 = os.getloadavg()[0]
    model, tok = load_hf_model(args.model, dtype=torch.float32)
    model.train()
    eos = training_eos_id(tok, end_token_ids(tok, model))
    pairs = [Pair(p["prompt"], p["completion"]) for p in annotation_pairs(split="train", kind="program")[: args.seqs]]
    enc, _, _ = encode_pairs(pairs, tok, 512, eos)
    rows = []

    def batch(e):
        ids = torch.tensor([e.input_ids])
        labels = torch.tensor([[t if m else -100 for t, m in zip(e.input_ids, e.completion_mask)]])
        return ids, labels

    def run(name, fn, n):
        t = time.time()
        for e in enc[:n]:
            fn(*batch(e)).backward()
        model.zero_grad(set_to_none=True)
        rows.append((name, (time.time() - t) / n))

    def plain(ids, labels):
        return model(input_ids=ids, labels=labels).loss

    def plain_bf16(ids, labels):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(input_ids=ids, labels=labels).loss

    run("warm-up", plain, 1)
    rows.clear()
    run("plain loss, fp32", plain, args.seqs)
    run("plain loss, bf16 autocast", plain_bf16, args.bf16_seqs)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))

    def fused(ids, labels):
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        return -(out.log_probs.sum()) / out.label_mask.sum()

    run("TRL fused LM head, fp32", fused, args.seqs)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    steps = []
    for _ in range(2):  # the first step allocates the AdamW state
        plain(*batch(enc[0])).backward()
        t = time.time()
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps.append(time.time() - t)

    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.model}: {n_params / 1e6:.0f}M parameters, sequences of {[len(e.input_ids) for e in enc]} tokens, "
        f"{torch.get_num_threads()} threads, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    for name, s in rows:
        print(f"  {name:30} {s:7.2f} s per sequence (forward + backward)")
    print(f"  {'AdamW step, all parameters':30} {steps[1]:7.2f} s ({steps[0]:.2f} s the first time)")


if __name__ == "__main__":
    main()
