#!/usr/bin/env bash
# Pack what results/replication2 has measured into raw/, so a new machine resumes without sampling or
# sweeping again (run.sh restores it) and every number recomputes: the log, the recipe, each judged
# results file, the sweep tables and their best settings, each model's ilf_finetune.json.
# Usage: bash results/replication2/pack.sh [RUN_DIR]   (default runs/replication2)
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${1:-runs/replication2}
RAW=results/replication2/raw
mkdir -p "$RAW"
cp "$R/log.txt" "$RAW/log.txt"
if [ -s "$R/recipe.json" ]; then cp "$R/recipe.json" "$RAW/recipe.json"; fi
dirs=$(cd "$R" && for d in validation test humanevalplus; do if [ -d "$d" ]; then echo "$d"; fi; done)
( cd "$R" && find $dirs -name '*results.jsonl' -o -name 'table.jsonl' ) | while read -r f; do
  mkdir -p "$RAW/$(dirname "$f")"
  gzip -9nc "$R/$f" > "$RAW/$f.gz"
done
( cd "$R" && find $dirs -name best.json ) | while read -r f; do
  mkdir -p "$RAW/$(dirname "$f")"
  cp "$R/$f" "$RAW/$f"
done
# What each evaluated model was trained on and with (kept apart: a model directory is not restored).
for meta in "$R"/models/*/ilf_finetune.json; do
  [ -e "$meta" ] || continue
  mkdir -p "$RAW/model-meta"
  cp "$meta" "$RAW/model-meta/$(basename "$(dirname "$meta")").json"
done
du -sh "$RAW"
