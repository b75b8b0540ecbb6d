#!/usr/bin/env bash
# The report of results/replication2 from whatever run.sh has finished so far: each method's MBPP_Test
# results (n = 20 where two sampling seeds are done: the second seed's sample ids follow the first's),
# against zero-shot, paired per task, each FINETUNE seed and the mean over seeds; HumanEval+ likewise.
# Usage: bash results/replication2/report.sh [RUN_DIR]   (default runs/replication2)
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:-runs/replication2}

merged() {  # OUT FILE...: one results file, sample ids of each later file shifted past the earlier ones
  python - "$@" <<'PY'
import sys
from ilf.jsonl import load_jsonl, write_jsonl
out, files = sys.argv[1], sys.argv[2:]
recs, offset = [], 0
for f in files:
    part = load_jsonl(f)
    recs += [dict(r, sample_id=int(r["sample_id"]) + offset) for r in part]
    offset += 1 + max(int(r["sample_id"]) for r in part)
write_jsonl(out, recs)
PY
}

report() {  # DIR NAME: ilf report of the finished files in DIR, zero-shot first
  local dir=$1 name=$2 files=() labels=()
  [ -s "$dir/zero-shot_results.jsonl" ] || return 0
  mkdir -p "$R/report-input/$name"
  for m in zero-shot ilf rft ilf-rft distill rft-all ilf-dpo rft-dpo gold; do
    for label in "$m" "$m@s1" "$m@s2"; do
      local a="$dir/${label}_results.jsonl" b="$dir/${label}_b_results.jsonl"
      [ -s "$a" ] || continue
      local use=$a
      if [ -s "$b" ]; then use="$R/report-input/$name/${label}_results.jsonl"; merged "$use" "$a" "$b"; fi
      files+=("$use"); labels+=("$label")
    done
  done
  if [ ${#files[@]} = 1 ]; then ilf report "${files[0]}" --output "$R/report/$name"; return; fi  # zero-shot alone
  (IFS=,; ilf report "${files[@]}" --labels "${labels[*]}" --output "$R/report/$name")
}

# The validation sweep (MBPP_Refine 111-190 × 5): every measured setting against zero-shot, paired per task.
V=$R/validation
if [ -s "$V/zero-shot_results.jsonl" ]; then
  files=("$V/zero-shot_results.jsonl") labels=(zero-shot)
  for d in "$V"/{ilf,rft}-{lora,full}/sweep/lr* "$V"/ilf-dpo/sweep/lr*; do
    [ -s "$d/results.jsonl" ] || continue
    files+=("$d/results.jsonl"); labels+=("$(basename "$(dirname "$(dirname "$d")")")-$(basename "$d")")
  done
  (IFS=,; ilf report "${files[@]}" --labels "${labels[*]}" --output "$R/report/validation")
fi

report "$R/test" mbpp-test
report "$R/humanevalplus" humanevalplus
