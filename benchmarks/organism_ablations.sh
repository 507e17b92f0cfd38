#!/usr/bin/env bash
# The ablation tables of benchmarks/RESULTS.md on the shipped organisms, in one command:
#   bash benchmarks/organism_ablations.sh [OUT]   (default runs/ablations; ~15 min on 2 CPU cores)
# Every run resumes when the script is rerun after a kill; each prints its wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/ablations}
PROBE=${PROBE:-.venv/bin/probe}
DATA=$(.venv/bin/python -c "from probe.organism.data import ensure_split; print(ensure_split('test'))")
timed() {
  local name=$1
  shift
  local start=$SECONDS
  "$PROBE" "$@" --dataset "$DATA" --max-new-tokens 3 --out "$OUT/$name"
  echo "$name: $((SECONDS - start)) s"
}
timed drop-w1 drop --model organism-llava --window 1 --stride 1
timed drop-w2 drop --model organism-llava --window 2 --stride 2
timed knockout knockout --model organism-llava --block 'vision->last' --block 'instruction->last' \
  --block 'vision->instruction' --window 1
timed prune prune --model organism-llava --layer 2 --keep 0.1 --keep 0.25 --keep 0.5
timed mini-prefusion drop --model organism-llava-mini --layers 0,1 --stage prefusion
timed mini-llm drop --model organism-llava-mini --window 1 --stride 1
