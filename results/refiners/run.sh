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
refine r15-chat-trace-refuse feedback_trace.jsonl --interface chat --refuse-copies --model qwen2.5-coder-1.5b-instruct --no-control
log "all done"
