#!/bin/bash
# The gpu-digits trade-off profile on one GPU, within a fixed time, and the cost model measured
# on that GPU; results under $OUT (default ./gpu-out):
#   bash book/data/digits/gpu/run_on_gpu.sh [SECONDS]       (SECONDS: the time allowed, 420)
# Adds the profile's training seeds one at a time (each rerun extends the study, finished cells
# are kept) while enough time is left, so that what finishes is whole seeds; a seed cut by
# the deadline keeps its finished cells. DEVICE and EXTRA (more tradeoff options) are for a
# test of this script on a CPU.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} RBMEM_CACHE=${RBMEM_CACHE:-/tmp/rbmem-gpu-cache}
DEVICE=${DEVICE:-cuda}
DEADLINE=${1:-420}
START=$(date +%s)
{ nvidia-smi -L; python3 -c "import sys, torch; print(sys.version); print(torch.__version__)"
  nproc; } > "$OUT/env.txt" 2>&1
timeout 120 python3 book/data/digits/gpu/gpu_cost.py "$OUT/cost.json" --device "$DEVICE" \
    > "$OUT/cost.log" 2>&1
echo "cost: rc $?, $(( $(date +%s) - START )) s" > "$OUT/seeds.log"
STUDY=$(mktemp -d)/gpu-digits
seeds=""
for seed in 0 1 2 3 4 5 6 7 8 9; do
    left=$(( DEADLINE - ($(date +%s) - START) ))
    [ "$left" -lt 150 ] && break  # keep two minutes for the far scales below
    seeds="$seeds $seed"
    begun=$(date +%s)
    # shellcheck disable=SC2086
    timeout $(( left - 120 )) python3 -m rbmem_tutorial.experiments tradeoff --profile gpu-digits \
        --device "$DEVICE" --train-seeds $seeds --out "$STUDY" --no-progress ${EXTRA:-} \
        >> "$OUT/study.log" 2>&1
    rc=$?
    echo "seed $seed: rc $rc, $(( $(date +%s) - begun )) s" >> "$OUT/seeds.log"
done
# the mean-loss geodesics at the scales the matched study needs on this net (16 to 64), seed 0
left=$(( DEADLINE - ($(date +%s) - START) ))
if [ "$left" -ge 30 ]; then
    begun=$(date +%s)
    # shellcheck disable=SC2086
    timeout "$left" python3 -m rbmem_tutorial.experiments tradeoff --profile gpu-digits \
        --device "$DEVICE" --train-seeds 0 --methods riemannian --scales 16 32 64 \
        --out "$(dirname "$STUDY")/far" --no-progress ${EXTRA_FAR:-} >> "$OUT/far.log" 2>&1
    echo "far: rc $?, $(( $(date +%s) - begun )) s" >> "$OUT/seeds.log"
fi
echo "total $(( $(date +%s) - START )) s" >> "$OUT/seeds.log"
tar czf "$OUT/study.tar.gz" -C "$(dirname "$STUDY")" .
