#!/usr/bin/env bash
# Issue 12's experiments that build on the CPU-scale replication (runs/cpu), one heavy job at a
# time, each with ilf's own commands. Every step resumes or is skipped when its output exists, so
# the script can be killed and started again (also in another session, after unpacking runs/cpu).
#
#   setsid nohup bash results/queue.sh > runs/queue.log 2>&1 &              # every step, in order
#   setsid nohup bash results/queue.sh table2-llm bugs > runs/queue.log 2>&1 &   # only the steps named
#   kill -- -"$(pgrep -f 'bash results/queue.sh' | head -1)"    # stop it and its running ilf command (setsid: its own group)
#
# Outputs go to runs/paper/<experiment>/; each experiment's report is written with `ilf report` or
# `ilf feedback-stats` and then published under results/<experiment>/ with its README.
set -euo pipefail
cd "$(dirname "$0")/.."
ILF=.venv/bin/ilf
CPU=runs/cpu
OUT=runs/paper
LLM=qwen2.5-coder-1.5b-instruct
AUTHORS=$(.venv/bin/python -c "from ilf.data import locate; print(locate('authors'))")
mkdir -p "$OUT"
STEPS=(validation table2-llm table3 bugs sources figure4 humaneval table1 rounds)
for s in "$@"; do [[ " ${STEPS[*]} " == *" $s "* ]] || { echo "queue.sh: unknown step '$s' (steps: ${STEPS[*]})" >&2; exit 2; }; done
want() { [ $# -gt 0 ] && { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }; }
ONLY="$*"
# step NAME: ends the previous step (appends its segment to <dir>/meta.json: wall time, code version,
# CPU; a resumed step gets one segment per invocation), then starts NAME in D=$OUT/NAME.
segment() {
  [ -n "${D:-}" ] || return 0
  .venv/bin/python - "$D/meta.json" "$T0" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo +dirty)" <<'PY'
import json, os, sys, time
path, t0, code = sys.argv[1], float(sys.argv[2]), sys.argv[3]
from ilf import machine
cpu = machine.describe()
meta = json.load(open(path)) if os.path.exists(path) else {"segments": []}
meta["segments"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "seconds": round(time.time() - t0), "code": code, "cpu": cpu})
meta["seconds"] = sum(s["seconds"] for s in meta["segments"])
json.dump(meta, open(path, "w"), indent=2)
PY
  D=
}
# A killed or failed queue still records the interrupted step's segment.
trap segment EXIT
step() {
  segment
  echo "[queue $(date -u +%H:%M:%S)] $*"
  D=$OUT/$1 T0=$(date +%s)
  mkdir -p "$D"
}
evaluate() { [ -f "${1%.jsonl}_results.jsonl" ] || $ILF evaluate "$1" "${@:2}"; }

# Validation reference: the sweep chose each method's learning rate on MBPP_Refine 111-150 (5 samples
# per task at T = 0.8); zero-shot π_θ on the same tasks and seeds says whether FINETUNE helped there.
if want validation; then
  step "validation"
  $ILF sample --tasks 111-150 --n 5 --temperature 0.8 --output $D/zero-shot.jsonl
  evaluate $D/zero-shot.jsonl
  for f in $CPU/sweep/*/lr*/results.jsonl; do
    m=$(basename "$(dirname "$(dirname "$f")")"); setting=$(basename "$(dirname "$f")")
    ln -sf "$PWD/$f" "$D/$m-${setting}_results.jsonl"
  done
  $ILF report $D/zero-shot_results.jsonl $(ls $D/*-lr*_results.jsonl) --output $D/report
fi

# Table 2, LLM row: the feedback the 1.5B wrote (1 human example) for the replication's llm-1shot
# baseline (100 of π_θ's unsolved x0); few-shot π_Refine (the 0.5B, 2 human triples) refines with it
# and with shuffled feedback, as for the trace feedback in the replication itself.
if want table2-llm; then
  step "table2-llm"
  $ILF refine $CPU/baselines/llm-1shot/feedback.jsonl --output $D/x1.jsonl --n 10 --shuffled-n 2
  evaluate $D/x1.jsonl && evaluate $D/x1_shuffled.jsonl
  $ILF report $D/x1_results.jsonl $D/x1_shuffled_results.jsonl --output $D/report
fi

# Table 3: π_Refine fine-tuned on the 44 MBPP_Refine triples ([refine_finetune]'s defaults), on
# the paper's tasks (the authors' 128 MBPP_Train annotations, human feedback as in the paper); the
# few-shot π_Refine beside it is results/table2-authors' (same feedback, same x0). π_θ's own
# failures with trace feedback are left out for compute: choosing the replication's π_Refine already
# found a fine-tuned one repairing 0 of 24 tasks there (docs/results.md, "Choosing π_Refine").
if want table3; then
  step "table3"
  [ -f $D/refiner/config.json ] || $ILF finetune --data surge --split refine --kind refine --output $D/refiner \
    --learning-rate 5e-6 --batch-size 32 --epochs 2 --max-length 1024
  $ILF refine "$AUTHORS" --tasks train --mode finetune --model $D/refiner --output $D/x1_authors.jsonl --n 10
  evaluate $D/x1_authors.jsonl
  $ILF report results/table2-authors/run/r1/refinements.jsonl.gz $D/x1_authors_results.jsonl \
    --labels few-shot,fine-tuned --output $D/report
fi

# Figure 5, Tables 5-6: the 1.5B tags every feedback with the bugs it addresses: the authors' 195, the
# 1.5B's 100 (the llm-1shot baseline) and the traces of the same 100 x0 (of the replication's 306: the
# tagger takes 2-3 min per 16 traces on a 2-core CPU; the paper tagged 50 per source). Figure 5 pairs each
# source's feedback with the few-shot π_Refine's 10 refinements per feedback: the authors' (MBPP_Train,
# results/table2-authors), the 1.5B's (results/table2-llm) and the traces' (the replication's round 1).
if want bugs; then
  step "bugs"
  .venv/bin/python - $CPU/baselines/llm-1shot/feedback.jsonl $CPU/r1/feedback.jsonl $D/trace_same_x0.jsonl <<'PY'
import json, sys
llm, trace, out = sys.argv[1:]
ids = {json.loads(line)["task_id"] for line in open(llm)}
with open(out + ".tmp", "w") as f:
    f.writelines(line for line in open(trace) if json.loads(line)["task_id"] in ids)
__import__("os").replace(out + ".tmp", out)
PY
  $ILF feedback-bugs "$AUTHORS" $CPU/baselines/llm-1shot/feedback.jsonl $D/trace_same_x0.jsonl --output $D/tags.jsonl
  $ILF feedback-stats "$AUTHORS" $CPU/baselines/llm-1shot/feedback.jsonl $D/trace_same_x0.jsonl --bugs $D/tags.jsonl \
    --refinements results/table2-authors/run/r1/refinements.jsonl.gz --refinements results/table2-llm/raw/x1_results.jsonl.gz \
    --refinements $CPU/r1/refinements.jsonl --output $D/report
fi

# Feedback sources on the same x0 (beyond the paper): the 100 unsolved MBPP_Train x0 that have both
# trace feedback (the replication's round 1) and the 1.5B's (its llm-1shot baseline). Rows: few-shot
# the control with no feedback at all (π_θ sampled 10 more times on the same tasks, seed 1; its x0
# came from seed 0), few-shot π_Refine with each feedback (10 each), and the 1.5B writing feedback
# and repair itself (1 draw, 1-shot and 2-shot); each row paired with the control.
if want sources; then
  step "sources"
  IDS=$(.venv/bin/python -c "import json; print(','.join(str(json.loads(l)['task_id']) for l in open('$CPU/baselines/llm-1shot/feedback.jsonl')))")
  $ILF sample --tasks "$IDS" --n 10 --temperature 0.8 --seed 1 --output $D/resample.jsonl
  evaluate $D/resample.jsonl
  $ILF report $D/resample_results.jsonl $CPU/r1/refinements.jsonl results/table2-llm/raw/x1_results.jsonl.gz \
    $CPU/baselines/llm-1shot/feedback.jsonl $CPU/baselines/llm-2shot/feedback.jsonl \
    --labels no-feedback,trace,llm,llm-1shot-1.5b,llm-2shot-1.5b --common-tasks --output $D/report
fi

# Figure 4: training-set size with LLM feedback. The replication's llm-1shot baseline trains on the
# 1.5B's passing refinements of π_θ's unsolved x0 (all N of them, seed 0: its EVAL is the last point);
# FINETUNE on seeded subsets of N/4 and N/2 of them with the same settings (the llm-1shot sweep's
# learning rate) and sample MBPP_Test; zero-shot and ILF are the reference lines.
if want figure4; then
  step "figure4"
  PAIRS=$CPU/baselines/llm-1shot/train_pairs.jsonl
  ALL=$(wc -l < $PAIRS)
  LR=$(.venv/bin/python -c "import json; print(json.load(open('$CPU/sweep/llm-1shot/best.json'))['learning_rate'])")
  KS=$(.venv/bin/python -c "print(' '.join(sorted({str(max(1, $ALL // 4)), str(max(1, $ALL // 2))}, key=int)))")
  for K in $KS; do
    [ -f $D/k$K/config.json ] || $ILF finetune --data $PAIRS --max-pairs $K --learning-rate $LR --batch-size 8 --epochs 2 \
      --max-length 768 --output $D/k$K
    $ILF sample --model $D/k$K --split test --n 10 --temperature 0.8 --output $D/k$K.jsonl
    evaluate $D/k$K.jsonl
  done
  ln -sf "$PWD/$CPU/eval/zero-shot/results.jsonl" $D/zero-shot_results.jsonl
  ln -sf "$PWD/$CPU/eval/ilf/results.jsonl" $D/ilf_results.jsonl
  ln -sf "$PWD/$CPU/eval/llm-1shot/results.jsonl" $D/k${ALL}_results.jsonl
  FILES=$(for K in $KS $ALL; do echo -n " $D/k${K}_results.jsonl"; done)
  $ILF report $D/zero-shot_results.jsonl $D/ilf_results.jsonl $FILES --x "-,-,$(echo $KS $ALL | tr ' ' ,)" \
    --labels "zero-shot,ilf,$(for K in $KS $ALL; do echo -n k$K,; done | sed 's/,$//')" \
    --x-label "training tasks with LLM feedback" --output $D/report
fi

# HumanEval(+) before and after ILF (does the gain transfer, or does the model forget?): zero-shot
# and the three ILF seeds of the replication, 10 samples per task at T = 0.8, each judged on
# HumanEval's tests and on HumanEval+'s (ilf evaluate resumes: a finished file is re-read, not re-run).
if want humaneval; then
  step "humaneval"
  for m in zero-shot ilf ilf@s1 ilf@s2; do
    case $m in zero-shot) model=qwen2.5-coder-0.5b-instruct ;; ilf) model=$CPU/r1/model ;; *) model=$CPU/r1/model@${m#ilf@} ;; esac
    $ILF sample --dataset humaneval --model "$model" --n 10 --temperature 0.8 --max-new-tokens 512 --output $D/$m.jsonl
    for ds in humaneval humanevalplus; do $ILF evaluate $D/$m.jsonl --dataset $ds --output $D/${m}_$ds.jsonl; done
  done
  for ds in humaneval humanevalplus; do
    $ILF report $D/zero-shot_$ds.jsonl $D/ilf_$ds.jsonl $D/ilf@s1_$ds.jsonl $D/ilf@s2_$ds.jsonl \
      --labels zero-shot,ilf,ilf@s1,ilf@s2 --output $D/report-$ds
  done
fi

# Table 1: zero-shot π_θ on all of MBPP, 10 samples per task at T = 0.8 (the paper: 30).
if want table1; then
  step "table1"
  $ILF sample --split all --n 10 --temperature 0.8 --output $D/samples.jsonl
  evaluate $D/samples.jsonl
  $ILF report $D/samples_results.jsonl --output $D/report
fi
# ILF rounds 2 and 3 (x0 from the previous round's π_θ*), in a copy of the replication whose round 1,
# ILF sweep and zero-shot EVAL are reused (stage fingerprints hash contents, not paths). It runs the
# replication's code (the worktree of results/cpu/README.md, in ../repl), which made round 1, with
# results/rounds/rounds.patch: later rounds skip the shuffled-feedback control and reuse round 1's
# swept setting; and results/rounds/eval-order.patch (added in session 17, order only): round k's π_θ* is
# evaluated as soon as it is trained. Only zero-shot and ILF are evaluated: ilf-r1, ilf-r2 and the final
# round's 3 seeds.
if want rounds; then
  step "rounds"
  grep -q 'r == 1:  # Table 2' ../repl/src/ilf/pipeline.py || { echo "queue.sh rounds: ../repl lacks results/rounds/rounds.patch (git -C ../repl am \"$PWD/results/rounds/rounds.patch\")" >&2; exit 2; }
  R=runs/rounds
  if [ ! -f $R/manifest.json ]; then
    mkdir -p $R/eval $R/sweep && cp -a $CPU/r1 $CPU/manifest.json $R/ && cp -a $CPU/eval/zero-shot $R/eval/ && cp -a $CPU/sweep/ilf $R/sweep/
  fi
  PYTHONPATH=../repl/src $ILF run cpu run_dir=$R rounds=3 'eval.methods=["zero-shot","ilf"]'
fi

segment
echo "[queue $(date -u +%H:%M:%S)] done"
