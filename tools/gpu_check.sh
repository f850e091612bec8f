#!/usr/bin/env bash
# One device call that checks fp8mm on a GPU: every test file that exercises compiled
# Pallas kernels, run to completion, then a short table of passed/failed per file.
# Run from the repository root on the GPU machine:
#   bash tools/gpu_check.sh [jobs] [limit_s]
# Triton and Mosaic GPU compiles are CPU-bound and the files are independent, so up to
# `jobs` files (default 4) run at once, each as its own pytest process with its own
# share of GPU memory; every file gets `limit_s` seconds (default 540) to finish.
# FILES="test_ops test_numerics" picks the files. Logs go to $OUT (or /tmp/fp8mm-gpu):
# one <file>.log each, a summary.txt; the last lines printed are the table.
set -u
jobs=${1:-4}
limit=${2:-540}
out=${OUT:-/tmp/fp8mm-gpu}
mkdir -p "$out"
if ls .whl/pytest-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/pytest-*.whl \
    .whl/iniconfig-*.whl .whl/pluggy-*.whl .whl/hypothesis-*.whl .whl/attrs-*.whl \
    .whl/sortedcontainers-*.whl 2>/dev/null
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
# Several processes share the card: no preallocation, a bounded share each.
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.2
python3 -c "import jax; print('jax', jax.__version__, jax.devices()[0].device_kind)" | tee "$out/device.txt"
# Slowest first, so the long files start at once.
files=${FILES:-test_ops test_kernels_codebook test_numerics test_kernels_int8 test_kernels_int8_wgmma test_golden_primitives test_primitives test_properties}
run_one() {
  local name=$1 start=$SECONDS
  timeout "$limit" python3 -m pytest -q -p no:cacheprovider -rf --tb=short "tests/$name.py" \
    > "$out/$name.log" 2>&1
  local rc=$?
  local line
  line=$(grep -E "[0-9]+ (passed|failed)" "$out/$name.log" | tail -1)
  [ $rc -eq 124 ] && line="TIMED OUT after ${limit}s: $(grep -c . "$out/$name.log") lines"
  echo "$name ($((SECONDS - start)) s): $line" > "$out/$name.sum"
}
for name in $files; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
  run_one "$name" &
done
wait
for name in $files; do
  grep -E "^FAILED" "$out/$name.log" | head -8
done
cat "$out"/*.sum | tee "$out/summary.txt"
