#!/usr/bin/env bash
# Everything CUDA in one call on a lent GPU machine (torch and triton already installed
# there): install reimpl against that torch, run the CUDA tests and the CUDA benchmark,
# leave logs and results in $OUT. Usage: OUT=/some/dir bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
{ nvidia-smi; python -c "import torch, triton; print(torch.__version__, triton.__version__)"; } \
  > "$OUT/env.txt" 2>&1
python -m pip install --quiet --no-deps -e . > "$OUT/install.log" 2>&1
# CUDA parity: the cuda-marked tests plus every table case on cuda (bounded examples); the
# first GPU run of many kernels (Triton optimizers, norms, linear cross-entropy): collect up to
# 30 failures rather than stop at the first, with the quick profile to stay in the budget
REIMPL_HYPOTHESIS_PROFILE=quick timeout 420 python -m pytest -q --maxfail=30 -m cuda -p no:cacheprovider \
  > "$OUT/pytest_cuda.log" 2>&1
echo "pytest rc=$?" >> "$OUT/summary.txt"
timeout 120 python -m reimpl check --device cuda --quick --json "$OUT/check_cuda.json" \
  > "$OUT/check_cuda.log" 2>&1
echo "check rc=$?" >> "$OUT/summary.txt"
timeout 240 python -m reimpl bench --device cuda --out "$OUT/bench" > "$OUT/bench.log" 2>&1
echo "bench rc=$?" >> "$OUT/summary.txt"
tail -3 "$OUT/pytest_cuda.log" "$OUT/check_cuda.log" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"
