#!/bin/bash
# Regenerate the digits matched study into this folder's cells/ and tables, from the current code:
#   bash book/data/digits/regenerate.sh [OUT]   (OUT defaults to this folder)
# Two worker processes share the cells through claim files (one from each end of the list);
# a killed run resumes where it stopped when started again (finished cells are kept). Then
# the tables are written. Each worker's log goes to OUT/logs/.
set -euo pipefail
HERE=$(dirname "$(realpath "$0")")
OUT=$(realpath -m "${1:-$HERE}")
mkdir -p "$OUT/logs"
export OMP_NUM_THREADS=1
RUN="python -m rbmem_tutorial.experiments.matched_run --study digits --out $OUT"
start=$(date +%s)
$RUN > "$OUT/logs/worker0.log" 2>&1 &
first=$!
$RUN --reverse > "$OUT/logs/worker1.log" 2>&1 &
second=$!
wait $first $second
$RUN --finish
echo "wall time $(( $(date +%s) - start )) s" >> "$OUT/logs/wall.log"
