#!/bin/bash
# Regenerate the Riemannian study: bash regenerate.sh RUN_FOLDER (run it twice at the same
# time, in two shells, for two worker processes: they share each folder's cells through the
# study's claim files). Then, once both have finished: bash regenerate.sh RUN_FOLDER finish
set -u
RUN=$(realpath -m "$1")
HERE=$(dirname "$(realpath "$0")")
export OMP_NUM_THREADS=1
if [ "${2:-}" = finish ]; then
  python "$HERE/assemble.py" "$RUN"
  for part in main paper; do
    python -m rbmem_tutorial.experiments merge --out "$RUN/final/$part"
    python -m rbmem_tutorial.experiments.matched "$RUN/final/$part" > /dev/null
  done
  exit 0
fi
CLI="python -m rbmem_tutorial.experiments tradeoff --profile cpu --n-param-samples 4 --n-x0 500
     --no-progress --train-seeds 0 1 2 3 4"
# the book's setting: prior centred at the trained weights, posterior at the refined mode
$CLI --methods map early-stop isotropic laplace --scales 0.25 0.5 1 2 --out "$RUN/main"
$CLI --methods riemannian --scales 1 2 4 8 --temperature mean 16 data-mean sum \
     --out "$RUN/main-riemannian"
$CLI --methods riemannian --scales 16 32 --temperature 16 data-mean \
     --out "$RUN/main-riemannian-large"
$CLI --methods riemannian-fisher --scales 0.25 0.5 1 2 --out "$RUN/main-fisher-small"
# the paper's setting: zero-mean prior, posterior and geodesics at the SGD weights
$CLI --prior-mean zero --base-point sgd --methods map laplace riemannian drift-control \
     drift-control-centre ensemble-centre --scales 0.25 0.5 1 2 --temperature sum data-mean \
     --out "$RUN/paper"
