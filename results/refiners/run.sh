#!/usr/bin/env bash
# results/refiners: π_Refine × feedback × interface on MBPP_Train's unsolved pool (n = 30), each
# against π_θ sampled again with the same budget. Resumable: every step resumes or skips.
# Usage: bash results/refiners/run.sh [RUN_DIR]   (default runs/refiners)
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:-runs/refiners}
mkdir -p "$R"
N=5
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$R/log.txt"; }

# On a new machine, start from what results/refiners/raw holds (feedback, finished rows, a row's partial
# refinements), so nothing measured is sampled again.
RAW=results/refiners/raw
for f in $(cd "$RAW" && find . -name '*.jsonl.gz'); do
  dest="$R/${f%.gz}"
  dest="${dest/refinements.partial.jsonl/refinements.jsonl}"
  if [ ! -e "$dest" ]; then mkdir -p "$(dirname "$dest")"; gunzip -c "$RAW/$f" > "$dest"; fi
done

# The pool: the 664 MBPP_Train tasks' 10 samples of results/table1 and the 20 more of results/pool30
# for the 252 unsolved at 10; tasks with none of 30 right get one failing x0 each (seeded).
if [ ! -s "$R/pool_results.jsonl" ]; then
  python - "$R" <<'PY'
import gzip, json, sys
from ilf.jsonl import write_jsonl
recs = [r for r in map(json.loads, gzip.open("results/table1/raw/samples_results.jsonl.gz", "rt")) if 311 <= int(r["task_id"]) <= 974]
for r in map(json.loads, gzip.open("results/pool30/raw/samples_results.jsonl.gz", "rt")):
    recs.append(dict(r, sample_id=int(r["sample_id"]) + 10))
write_jsonl(f"{sys.argv[1]}/pool_results.jsonl", recs)
PY
fi
[ -s "$R/feedback_trace.jsonl" ] || ilf feedback "$R/pool_results.jsonl" --source trace --output "$R/feedback_trace.jsonl"
# No feedback: the same x0 with "it fails its tests" (does the feedback's content matter?)
[ -s "$R/feedback_none.jsonl" ] || python - "$R" <<'PY'
import sys
from ilf.jsonl import load_jsonl, write_jsonl
R = sys.argv[1]
write_jsonl(f"{R}/feedback_none.jsonl", [dict(r, feedback="The program fails its tests.", feedback_id=r["feedback_id"].replace("trace", "none"), source="none") for r in load_jsonl(f"{R}/feedback_trace.jsonl")])
PY

refine() {  # NAME FEEDBACK [ilf refine flags...]; the first call also samples the control
  local name=$1 fb=$2; shift 2
  if [ ! -s "$R/$name/refinements_results.jsonl" ]; then
    log "start $name"
    mkdir -p "$R/$name"
    local t0=$SECONDS
    ilf refine "$R/$fb" --output "$R/$name/refinements.jsonl" --n $N "$@" 2>&1 | tail -n 3
    log "sampled $name in $((SECONDS - t0)) s"
    ilf evaluate "$R/$name/refinements.jsonl" 2>&1 | tail -n 1
    log "done $name in $((SECONDS - t0)) s"
  fi
}

# The control (π_θ sampled again on the 198 tasks, N samples each, no x0, no feedback) comes with
# the first refiner; every refiner is compared with it.
refine regenerate-trace feedback_trace.jsonl --interface regenerate --control
C=$R/regenerate-trace/refinements_control
[ -s "${C}_results.jsonl" ] || ilf evaluate "$C.jsonl" 2>&1 | tail -n 1
refine paper-trace feedback_trace.jsonl --interface paper --shots 2 --no-control
refine regenerate-none feedback_none.jsonl --interface regenerate --no-control
# π_θ through its chat template with the task alone (no x0, no feedback, no "try again"): is it the
# interface or the feedback that regeneration gains from?
[ -s "$R/feedback_empty.jsonl" ] || python - "$R" <<'PY'
import sys
from ilf.jsonl import load_jsonl, write_jsonl
R = sys.argv[1]
write_jsonl(f"{R}/feedback_empty.jsonl", [dict(r, feedback="", feedback_id=r["feedback_id"].replace("trace", "empty"), source="none") for r in load_jsonl(f"{R}/feedback_trace.jsonl")])
PY
refine chat-resample feedback_empty.jsonl --interface regenerate --no-control
[ -s "$R/feedback_ref15.jsonl" ] || { log "start feedback_ref15"; t0=$SECONDS; ilf feedback "$R/pool_results.jsonl" --source llm --llm-model qwen2.5-coder-1.5b-instruct --llm-reference --llm-shots 1 --output "$R/feedback_ref15.jsonl" 2>&1 | tail -n 2; log "sampled feedback_ref15 in $((SECONDS - t0)) s"; }
refine regenerate-ref15 feedback_ref15.jsonl --interface regenerate --no-control
refine chat-trace-refuse feedback_trace.jsonl --interface chat --refuse-copies --no-control
refine chat-ref15-refuse feedback_ref15.jsonl --interface chat --refuse-copies --no-control
# The 1.5B as π_Refine: regeneration with the trace, and its own door with the task alone (is it the
# feedback or the bigger model that solves tasks?)
refine r15-regenerate-trace feedback_trace.jsonl --interface regenerate --model qwen2.5-coder-1.5b-instruct --no-control
refine r15-chat-resample feedback_empty.jsonl --interface regenerate --model qwen2.5-coder-1.5b-instruct --no-control
# π_Refine fine-tuned on many triples (the paper's π_Refine is trained for the job): on MBPP_Refine's
# tasks π_θ both fails and solves in results/table1's 10 samples, x0 = a failing sample with its
# trace, x1 = one of π_θ's passing programs of that task (up to 4 triples per task, seeded), beside
# the authors' 44 human triples; used in the paper's format, as the paper does.
F=$R/ft-refiner
if [ ! -s "$F/train_pairs.jsonl" ]; then
  mkdir -p "$F"
  python - "$R" <<'PY'
import gzip, json, sys
from ilf.jsonl import write_jsonl
write_jsonl(f"{sys.argv[1]}/ft-refiner/refine_tasks_results.jsonl", [r for r in map(json.loads, gzip.open("results/table1/raw/samples_results.jsonl.gz", "rt")) if 111 <= int(r["task_id"]) <= 310])
PY
  ilf feedback "$F/refine_tasks_results.jsonl" --source trace --per-task 0 --no-only-unsolved --output "$F/refine_tasks_trace.jsonl" 2>&1 | tail -n 1
  python - "$R" <<'PY'
import random, sys
from ilf.jsonl import load_jsonl, write_jsonl
from ilf.pairs import annotation_pairs, refine_pair
from ilf.tasks import load_tasks
F = f"{sys.argv[1]}/ft-refiner"
results = load_jsonl(f"{F}/refine_tasks_results.jsonl")
passing = {}
for r in results:
    if r["passed"]:
        passing.setdefault(r["task_id"], []).append(r["program"])
tasks = load_tasks("mbpp", task_ids=sorted(passing))
by_task = {}
for fb in load_jsonl(f"{F}/refine_tasks_trace.jsonl"):
    if fb["task_id"] in passing:
        by_task.setdefault(fb["task_id"], []).append(fb)
pairs = []
for tid in sorted(by_task):
    rng = random.Random(f"0:ft-refiner:{tid}")
    fbs = rng.sample(by_task[tid], min(4, len(by_task[tid])))
    for i, fb in enumerate(fbs):
        x1 = passing[tid][i % len(passing[tid])]
        pairs.append(refine_pair(tasks[tid], fb["program"], fb["feedback"], x1, source="pi_theta"))
human = annotation_pairs(split="refine", kind="refine")
write_jsonl(f"{F}/train_pairs.jsonl", pairs + human)
print(f"{len(pairs)} trace triples on {len(by_task)} MBPP_Refine tasks + {len(human)} human triples")
PY
fi
if [ ! -s "$F/model/config.json" ]; then
  log "start ft-refiner training"; t0=$SECONDS
  # LoRA, 4 sequences per forward pass: full fine-tuning at 1 sequence per pass took ~50 s per step and
  # 16 GB here; the LoRA learning rate is the usual order for adapters, not tuned.
  ilf finetune --data "$F/train_pairs.jsonl" --output "$F/model" --lora --learning-rate 2e-4 --batch-size 8 \
    --per-device-batch-size 4 --epochs 2 --max-length 768 --report-to none 2>&1 | tail -n 2
  log "trained ft-refiner in $((SECONDS - t0)) s"
fi
refine ft-refiner-trace feedback_trace.jsonl --mode finetune --model "$F/model" --interface paper --no-control
refine r15-chat-trace-refuse feedback_trace.jsonl --interface chat --refuse-copies --model qwen2.5-coder-1.5b-instruct --no-control
log "all done"
