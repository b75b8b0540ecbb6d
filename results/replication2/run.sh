#!/usr/bin/env bash
# results/replication2: ILF again, with the refiner results/refiners chose (the bundled 1.5B writes the
# program again from the task and the execution trace of π_θ's failing x0, x0 not shown) and a FINETUNE
# recipe chosen on MBPP_Refine; every method against zero-shot and RFT on MBPP_Test, 3 FINETUNE seeds.
# Usage: bash results/replication2/run.sh [RUN_DIR]   (default runs/replication2). Every step resumes
# or skips; on a new machine it starts from what results/replication2/raw holds.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:-runs/replication2}
RAW=results/replication2/raw
mkdir -p "$R"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$R/log.txt"; }
SEEDS="0 1 2"

for f in $( [ -d "$RAW" ] && cd "$RAW" && find . -name '*.jsonl.gz' -o -name '*.json'); do
  dest="$R/${f%.gz}"
  [ -e "$dest" ] && continue
  mkdir -p "$(dirname "$dest")"
  case $f in *.gz) gunzip -c "$RAW/$f" > "$dest" ;; *) cp "$RAW/$f" "$dest" ;; esac
done

# 1. Round 1 of Algorithm 1 from measured files, and every method's training set from it, built by the
# pipeline's own code (ilf.pairs, ilf.baselines):
#   x0: π_θ's samples of MBPP_Train (results/table1's 10 per task, results/pool30's 20 more where none
#       of 10 passed); f: the execution trace of one failing x0 per task unsolved at 30 (198 tasks);
#   x1: the 1.5B's regenerations, 5 per x0 (results/refiners, row r15-regenerate-trace).
METHODS="ilf distill rft ilf-rft rft-all ilf-dpo rft-dpo gold"
if ! (for m in $METHODS; do [ -s "$R/train/$m.jsonl" ] || exit 1; done); then
  log "building the training sets"
  python - "$R" <<'PY'
import gzip, json, sys
from pathlib import Path
from ilf.baselines import baseline_pairs
from ilf.jsonl import load_jsonl, write_jsonl
from ilf.pairs import ilf_pairs
from ilf.tasks import load_tasks

R = Path(sys.argv[1])
gz = lambda p: [json.loads(line) for line in gzip.open(p, "rt")]
x0 = [r for r in gz("results/table1/raw/samples_results.jsonl.gz") if 311 <= int(r["task_id"]) <= 974]
x0 += [dict(r, sample_id=int(r["sample_id"]) + 10) for r in gz("results/pool30/raw/samples_results.jsonl.gz")]
refs = gz("results/refiners/raw/r15-regenerate-trace/refinements_results.jsonl.gz")
tasks = load_tasks("mbpp")
r1 = R / "r1"
write_jsonl(r1 / "results.jsonl", x0)
write_jsonl(r1 / "feedback.jsonl", gz("results/refiners/raw/feedback_trace.jsonl.gz"))
write_jsonl(r1 / "refinements.jsonl", refs)
write_jsonl(r1 / "train_pairs.jsonl", ilf_pairs(refs, tasks, seed=0))
sets = {"ilf": load_jsonl(r1 / "train_pairs.jsonl")}
# The distillation control: the 1.5B with the task alone (no x0, no feedback), same x0 and budget.
sets["distill"] = ilf_pairs(gz("results/refiners/raw/r15-chat-resample/refinements_results.jsonl.gz"), tasks, seed=0, source="distill")
for m in ("rft", "ilf-rft", "rft-all", "ilf-dpo", "rft-dpo", "gold"):
    sets[m] = baseline_pairs(m, r1, tasks, seed=0, annotations=list)
for m, recs in sets.items():
    if (R / "train" / f"{m}.jsonl").exists():
        continue
    write_jsonl(R / "train" / f"{m}.jsonl", recs)
    print(f"{m}: {len(recs)} records on {len({r['task_id'] for r in recs})} tasks")
PY
fi

# Sample a model on some tasks and EVAL it: NAME MODEL DATASET TASKS N SEED (skips what is done).
sample_eval() {
  local out=$1 model=$2 dataset=$3 tasks=$4 n=$5 seed=$6
  [ -s "${out}_results.jsonl" ] && return 0
  local t0=$SECONDS
  mkdir -p "$(dirname "$out")"
  local sel=(--tasks "$tasks"); [ "$tasks" = all ] && sel=()
  ilf sample --model "$model" --dataset "$dataset" "${sel[@]}" --n "$n" --seed "$seed" --output "$out.jsonl" 2>&1 | tail -n 1
  ilf evaluate "$out.jsonl" --dataset "$dataset" 2>&1 | tail -n 1
  log "sampled and judged $(basename "$out") ($dataset, n = $n, seed $seed) in $((SECONDS - t0)) s"
}

# 2. The recipe, chosen on validation only: MBPP_Refine's first 80 tasks (111-190) × 5 samples, the
# replication sweep's protocol. LoRA (r 16, α 32, every projection) at two learning rates and two
# lengths (early stopping as a choice of epochs), and full fine-tuning at the replication's lr, for ILF
# and RFT; the setting with the best mean pass rate of the two is every SFT method's recipe.
V=$R/validation
sample_eval "$V/zero-shot" qwen2.5-coder-0.5b-instruct mbpp 111-190 5 0
SWEEP=(--sweep-tasks refine --sweep-max-tasks 80 --sweep-n 5 --batch-size 8 --report-to none)
for m in ilf rft; do
  if [ ! -s "$V/$m-lora/sweep/best.json" ]; then
    log "start validation sweep $m-lora"; t0=$SECONDS
    ilf finetune --data "$R/train/$m.jsonl" --output "$V/$m-lora" --lora --per-device-batch-size 2 \
      --sweep-learning-rates 1e-4,3e-4 --sweep-epochs 2,4 "${SWEEP[@]}" 2>&1 | tail -n 1
    log "done validation sweep $m-lora in $((SECONDS - t0)) s"
  fi
  if [ ! -s "$V/$m-full/sweep/best.json" ]; then
    log "start validation sweep $m-full"; t0=$SECONDS
    ilf finetune --data "$R/train/$m.jsonl" --output "$V/$m-full" --per-device-batch-size 1 \
      --sweep-learning-rates 1e-5 --sweep-epochs 2 "${SWEEP[@]}" 2>&1 | tail -n 1
    log "done validation sweep $m-full in $((SECONDS - t0)) s"
  fi
done
if [ ! -s "$R/recipe.json" ]; then
  python - "$R" <<'PY'
import json, sys
from pathlib import Path
from ilf.jsonl import load_jsonl, write_json

V = Path(sys.argv[1]) / "validation"
score = {}
for kind in ("lora", "full"):
    for m in ("ilf", "rft"):
        for row in load_jsonl(V / f"{m}-{kind}" / "sweep" / "table.jsonl"):
            key = (kind, row["learning_rate"], row["epochs"])
            score.setdefault(key, {})[m] = row["pass_rate"]
# Ties go to LoRA (listed first), the cheaper update.
rows = [(k, v) for k, v in score.items() if len(v) == 2]
best = max(rows, key=lambda kv: (sum(kv[1].values()) / 2, kv[0][0] == "lora"))
(kind, lr, epochs), rates = best
write_json(V.parent / "recipe.json", {"lora": kind == "lora", "learning_rate": lr, "epochs": epochs, "validation": {f"{k[0]} lr {k[1]:g} ep {k[2]:g}": v for k, v in rows}})
print(f"recipe: {kind}, lr {lr:g}, {epochs:g} epochs (validation pass rate ILF {rates['ilf']:.3f}, RFT {rates['rft']:.3f})")
PY
fi
RECIPE=($(python -c "
import json; r = json.load(open('$R/recipe.json'))
print(('--lora --per-device-batch-size 2' if r['lora'] else '--per-device-batch-size 1') + f\" --learning-rate {r['learning_rate']} --epochs {r['epochs']}\")"))

# DPO's learning rate on the same validation tasks: the recipe's, and a tenth of it (DPO moves a policy
# further per step than SFT on the same pairs).
if [ ! -s "$V/ilf-dpo/sweep/best.json" ]; then
  log "start validation sweep ilf-dpo"; t0=$SECONDS
  LR=$(python -c "import json; print(json.load(open('$R/recipe.json'))['learning_rate'])")
  ilf finetune --data "$R/train/ilf-dpo.jsonl" --output "$V/ilf-dpo" --objective dpo "${RECIPE[@]}" \
    --sweep-learning-rates "$LR,$(python -c "print($LR / 10)")" "${SWEEP[@]}" 2>&1 | tail -n 1
  log "done validation sweep ilf-dpo in $((SECONDS - t0)) s"
fi
DPO_LR=$(python -c "import json; print(json.load(open('$V/ilf-dpo/sweep/best.json'))['learning_rate'])")

# 3. Train each method with the recipe, 3 FINETUNE seeds (gold: one, labelled), and EVAL on MBPP_Test
# 11-110: n = 20 (two sampling seeds of 10) for zero-shot, ILF, ILF + RFT and RFT, which also get
# HumanEval+ (164 tasks × 10); n = 10 for the others. Every method's first seed comes before any
# method's second, so a session that ends early leaves every row measured once. A model's weights go
# once its samples are judged (its ilf_finetune.json stays: what was trained, on what, with which settings).
test_method() {  # METHOD SEED FULL(yes|no)
  local m=$1 s=$2 full=$3
  local label=$m; [ "$s" = 0 ] || label="$m@s$s"
  local out="$R/test/$label" he="$R/humanevalplus/$label"
  if [ -s "${out}_results.jsonl" ] && { [ "$full" = no ] || { [ -s "${out}_b_results.jsonl" ] && [ -s "${he}_results.jsonl" ]; }; }; then
    return 0
  fi
  local model=qwen2.5-coder-0.5b-instruct dir="$R/models/$m-s$s"
  if [ "$m" != zero-shot ]; then
    local extra=()
    case $m in *-dpo) extra=(--objective dpo --learning-rate "$DPO_LR") ;; esac
    log "finetune $m seed $s"; local t0=$SECONDS
    # Skips a finished identical run and resumes from its checkpoint.
    ilf finetune --data "$R/train/$m.jsonl" --output "$dir" --seed "$s" --batch-size 8 "${RECIPE[@]}" "${extra[@]}" \
      --report-to none 2>&1 | tail -n 1
    log "trained $m seed $s in $((SECONDS - t0)) s"
    model=$dir
  fi
  sample_eval "$out" "$model" mbpp 11-110 10 0
  if [ "$full" = yes ]; then
    sample_eval "${out}_b" "$model" mbpp 11-110 10 1
    sample_eval "$he" "$model" humanevalplus all 10 0
  fi
  if [ "$m" != zero-shot ]; then
    python -c "import sys; from ilf.models import remove_conversions; remove_conversions(sys.argv[1])" "$model"
    rm -f "$dir"/*.safetensors
  fi
}
test_method zero-shot 0 yes
for s in $SEEDS; do
  for m in ilf rft ilf-rft; do test_method "$m" "$s" yes; done
  for m in ilf-dpo rft-dpo distill rft-all; do test_method "$m" "$s" no; done
  [ "$s" != 0 ] || test_method gold 0 no
done
log "all done"
