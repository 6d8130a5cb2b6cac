#!/usr/bin/env bash
# One lent-GPU session's measurements, in parts that each fit the device tool's 10-minute command limit
# (run from the repository root on the GPU machine, with the wheels of .whl/ carried; $OUT collects logs):
#   bash benchmarks/gpu_session.sh sweep                build, the kernel variants' native tests, the conv kernel
#                                                       sweep (every variant's parity, GPU time, ncu), memcheck
#   bash benchmarks/gpu_session.sh build-test-bench     build, a short sweep, native tests, host overhead, bench
#   bash benchmarks/gpu_session.sh e2e                  the end-to-end training step (st_adapter_fast/bench/e2e.py)
# The sweep's fastest correct CUDA variants (its "recommended: export ..." line) are written to
# /tmp/cuda_variants.env, which later parts on the same (still warm) machine run with.
# Each step has its own time limit and the script goes on past a failed step, so that what did run comes back.
set -u
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=16 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0
FINAL=${OUT:-/tmp/out}; OUT=/tmp/session/${1:-none}; mkdir -p "$OUT" "$FINAL"
# The device tool brings back at most 8 files: everything goes into one archive at the end.
trap 'tar czf "$FINAL/${1:-none}.tgz" -C /tmp/session "${1:-none}"' EXIT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/pip.log" 2>&1
export PYTHONPATH=/tmp/site:$PWD
deadline=$((SECONDS + ${SESSION_SECONDS:-570}))   # the device tool stops a command at 600 s
step() {  # step NAME SECONDS COMMAND...: run with a limit (never past the deadline), log to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    [ $((deadline - SECONDS)) -lt "$limit" ] && limit=$((deadline - SECONDS))
    [ "$limit" -le 5 ] && { echo "== $name: skipped, no time left"; return; }
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s"; tail -n 25 "$OUT/$name.log"
}
recommend() {  # the sweep's "recommended: export ..." line into /tmp/cuda_variants.env
    local line
    line=$(grep '^recommended: export ' "$OUT/$1.log" | tail -n 1 | sed 's/^recommended: //')
    [ -n "$line" ] && echo "$line" >/tmp/cuda_variants.env && echo "== using: $line"
}
info() {
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv >"$OUT/nvidia-smi.txt"
    python3 -c "import torch, triton, sys; print(sys.version, torch.__version__, torch.version.cuda, triton.__version__)" \
        >"$OUT/versions.txt" 2>&1
    python3 -c "import timm; print('timm', timm.__version__)" >>"$OUT/versions.txt" 2>&1; cat "$OUT/versions.txt"
    (command -v ncu && command -v compute-sanitizer) >>"$OUT/versions.txt" 2>&1
}
case "${1:-}" in
sweep)
    info
    step build 150 python3 setup.py build_ext --inplace
    # Every variant natively (parity in every dtype and kt, CUDA graphs, determinism) before any timing.
    step variant-tests 60 env ST_ADAPTER_FAST_AUTOTUNE=0 python3 -m pytest -q --maxfail=30 -n 12 -p no:cacheprovider \
        tests/kernels/test_kernel_variants.py
    step sweep 270 python3 benchmarks/cuda_kernel_sweep.py --max-seconds 240 --ncu --json "$OUT/sweep.json"
    recommend sweep
    # Out-of-bounds accesses of every variant on the parity shapes (compute-sanitizer, where it works); without
    # the caching allocator, so that each tensor is its own allocation and a stray access cannot land in a neighbour.
    step memcheck 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 3 \
        python3 benchmarks/cuda_kernel_sweep.py --parity-only "$OUT/memcheck.jsonl"
    ;;
build-test-bench)
    info
    step build 150 python3 setup.py build_ext --inplace
    if [ ! -f /tmp/cuda_variants.env ]; then   # no sweep on this machine yet: a short one (ViT-B/16 bf16, CUDA only)
        step sweep 100 python3 benchmarks/cuda_kernel_sweep.py --max-seconds 90 --configs vit-b16 --dtypes bfloat16 \
            --no-triton --json "$OUT/sweep.json"
        recommend sweep
    fi
    step tests 75 env ST_ADAPTER_FAST_AUTOTUNE=0 python3 -m pytest -q --maxfail=20 -n 12 \
        -p no:cacheprovider tests/kernels/test_gpu_paths.py tests/kernels/test_kernel_variants.py \
        tests/api/test_training_path.py tests/kernels/test_properties.py \
        tests/kernels/test_triton_parity.py tests/kernels/test_compiled_kernels.py tests/kernels/test_compile.py
    # The rest of the session (the e2e part too) runs with the sweep's fastest correct variants.
    [ -f /tmp/cuda_variants.env ] && . /tmp/cuda_variants.env && cat /tmp/cuda_variants.env
    step host 30 python3 benchmarks/host_overhead.py --json "$OUT/host_overhead.json"
    for dtype in bfloat16 float16; do   # bf16 rows first; both into one file
        step bench-$dtype 400 python3 -m st_adapter_fast.cli bench --quick --configs vit-b16 vit-l14 --dtypes $dtype \
            --no-progress --out "$OUT/bench.json"
    done
    ;;
e2e)
    [ -f /tmp/cuda_variants.env ] && . /tmp/cuda_variants.env && cat /tmp/cuda_variants.env
    step e2e 600 python3 -m st_adapter_fast.cli bench --e2e-only --out "$OUT/e2e.json"
    ;;
*)
    echo "usage: $0 sweep | build-test-bench | e2e" >&2; exit 2 ;;
esac
