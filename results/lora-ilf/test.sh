#!/usr/bin/env bash
# ILF with LoRA (lr 1e-4, chosen on validation) on MBPP_Test 11-110 x 10, 3 FINETUNE seeds; resumes.
set -e
cd "$(dirname "$0")/../.."  # the project root; needs runs/cpu/r1/train_pairs.jsonl (unpack results/cpu/run)
D=runs/paper/lora-ilf; ILF=.venv/bin/ilf
for s in 0 1 2; do
  [ -f $D/test-s$s/model/config.json ] || $ILF finetune --data runs/cpu/r1/train_pairs.jsonl --lora --learning-rate 1e-4 --seed $s \
    --batch-size 8 --per-device-batch-size 2 --epochs 2 --max-length 768 --output $D/test-s$s/model
  $ILF sample --model $D/test-s$s/model --tasks 11-110 --n 10 --temperature 0.8 --top-p 0.95 --max-new-tokens 256 --seed 0 --output $D/test-s$s/samples.jsonl
  [ -f $D/test-s$s/samples_results.jsonl ] || $ILF evaluate $D/test-s$s/samples.jsonl
done
