#!/usr/bin/env bash
# The whole test suite, one pytest process per file, as many at once as there are cores.
# The tests are dominated by XLA and Pallas-interpret compiles, which leave a core idle
# in a single process; concurrent files keep every core busy. Usage (what `make test`
# runs): tools/run_tests.sh PYTHON [jobs]. Prints one line per file, the output of every
# file that failed, and exits non-zero if any did.
set -u
py=${1:?usage: run_tests.sh PYTHON [jobs]}
jobs=${2:-$(nproc)}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# Slowest first, so the long files start at once; any other file follows.
order="test_ops test_min_versions test_fp8_native test_kernels_int8 test_kernels_codebook
  test_numerics test_switchback_linear test_nn_sharding test_nn_fsdp test_example test_nn_attention
  test_properties test_bad_input test_nn_linen test_nn_nnx test_golden_primitives
  test_docs_build test_benchmarks_smoke test_primitives"
# XLA's CPU backend at optimization level 0: the suite compiles hundreds of small
# programs whose run time is negligible; level 0 roughly halves the compile time
# (measured on 2 cores: test_ops 319 s -> 206 s) and IEEE arithmetic is the same at any
# level (the bit-exact tests pass at both). A caller's XLA_FLAGS follow, and win.
export XLA_FLAGS="--xla_backend_optimization_level=0 ${XLA_FLAGS:-}"
files=""
for name in $order; do [ -f "tests/$name.py" ] && files="$files tests/$name.py"; done
for f in tests/test_*.py; do
  case " $files " in *" $f "*) ;; *) files="$files $f" ;; esac
done
run_one() {
  local f=$1 name start=$SECONDS
  name=$(basename "$f" .py)
  "$py" -m pytest -q -p no:cacheprovider "$f" > "$logs/$name.log" 2>&1
  echo $? > "$logs/$name.rc"
  echo "$name ($((SECONDS - start)) s): $(tail -1 "$logs/$name.log")"
}
start=$SECONDS
for f in $files; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 0.5; done
  run_one "$f" &
done
wait
failed=0
for rc in "$logs"/*.rc; do
  if [ "$(cat "$rc")" != 0 ]; then
    failed=1
    echo "===== $(basename "$rc" .rc) failed:"
    cat "${rc%.rc}.log"
  fi
done
echo "test suite: $((SECONDS - start)) s, $([ $failed = 0 ] && echo passed || echo FAILED)"
exit $failed
