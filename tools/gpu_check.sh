#!/usr/bin/env bash
# One device call that checks fp8mm on a GPU: the tests that exercise compiled Pallas
# kernels, file by file (each with its own time limit so one slow file cannot eat the
# call), then a short summary. Run from the repository root on the GPU machine with
# `.whl` carried (pytest/hypothesis wheels, see the closing notes):
#   bash tools/gpu_check.sh [scale]
# FILES="test_ops:220 ..." picks the files (name:seconds) to run; default all six.
# Each file has its own limit (seconds measured on an H200, session 2: int8 46,
# ops 215, codebook 57 (75 in session 6), golden 38, primitives 31), multiplied by `scale` (default 1.3; 526 s at most).
# Logs go to $OUT (or /tmp/fp8mm-gpu) as <file>.log; the last lines are a table.
set -u
scale=${1:-1.3}
out=${OUT:-/tmp/fp8mm-gpu}
mkdir -p "$out"
if ls .whl/pytest-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/pytest-*.whl \
    .whl/iniconfig-*.whl .whl/pluggy-*.whl .whl/hypothesis-*.whl .whl/attrs-*.whl \
    .whl/sortedcontainers-*.whl 2>/dev/null
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
python3 -c "import jax; print('jax', jax.__version__, jax.devices()[0].device_kind)" | tee "$out/device.txt"
summary=()
files=${FILES:-test_kernels_int8:50 test_kernels_int8_wgmma:40 test_ops:220 test_kernels_codebook:80 test_golden_primitives:40 test_primitives:35}
for entry in $files; do
  name=${entry%%:*}
  f=tests/$name.py
  per_file=$(python3 -c "print(int(${entry##*:} * $scale))")
  timeout "$per_file" python3 -m pytest -q -p no:cacheprovider -rf --tb=short "$f" \
    > "$out/$name.log" 2>&1
  rc=$?
  line=$(grep -E "[0-9]+ (passed|failed)" "$out/$name.log" | tail -1)
  [ $rc -eq 124 ] && line="TIMED OUT after ${per_file}s: $(grep -c . "$out/$name.log") lines"
  summary+=("$name: $line")
  grep -E "^FAILED" "$out/$name.log" | head -5
done
printf '%s\n' "${summary[@]}" | tee "$out/summary.txt"
