#!/usr/bin/env bash
# A lent GPU's session: every open GPU goal, measured in parts that each fit the device tool's 10-minute command
# limit, in the order of what they settle (a session has 15 device minutes in all, the machine's start included:
# `main` first, then `more` at once while the machine is warm, `extra` only if time is left). Run from the
# repository root on the GPU machine; $OUT collects one archive per part.
#   bash benchmarks/gpu_session.sh main    build; the native GPU tests (no sync, CUDA graph capture, every CUDA
#                                          variant's parity, reduce-overhead training); the conv kernel sweep
#                                          (issue 20); host time per call (18); the end-to-end step at 8 clips:
#                                          reference / fast / fast compiled (reduce-overhead) / floor (18, 19)
#   bash benchmarks/gpu_session.sh more    the end-to-end step at 64 and 32 clips (18, 19: every variant whose goal
#                                          is at that batch), the bench rows with the sweep's variants (20)
#   bash benchmarks/gpu_session.sh extra   data feeding from a store (23), every library's backbone (21),
#                                          compute-sanitizer on the CUDA variants, the fp16 / ViT-L bench rows
# Wheels the machine lacks travel in .whl/ (name it in the tool's `carry`): PyAV for `extra`'s data feed,
# open_clip_torch, ftfy and wcwidth for its backbones (how to fetch them: /work/.library/device/README.md; the
# machine has torch, timm, transformers, tqdm, pyyaml and matplotlib). The sweep's fastest correct CUDA variants
# (its "recommended: export ..." line) go to /tmp/cuda_variants.env, which later parts on the same machine use.
# Each step has its own time limit and the script goes on past a failed step, so that what did run comes back.
set -u
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=16 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0
PART=${1:-none}
FINAL=${OUT:-/tmp/out}; OUT=/tmp/session/$PART; mkdir -p "$OUT" "$FINAL"
# The device tool brings back at most 8 files: everything goes into one archive at the end.
trap 'tar czf "$FINAL/$PART.tgz" -C /tmp/session "$PART"' EXIT
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >"$OUT/pip.log" 2>&1
fi
export PYTHONPATH=/tmp/site:$PWD
E2E=/tmp/session/e2e.json   # every e2e batch of every part merges into this one file (bench --out merges batches)
deadline=$((SECONDS + ${SESSION_SECONDS:-570}))   # the device tool stops a command at 600 s
step() {  # step NAME SECONDS COMMAND...: run with a limit (never past the deadline), log to $OUT/NAME.log
    local name=$1 limit=$2; shift 2
    [ $((deadline - SECONDS)) -lt "$limit" ] && limit=$((deadline - SECONDS))
    [ "$limit" -le 5 ] && { echo "== $name: skipped, no time left"; return; }
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s"; tail -n 15 "$OUT/$name.log"
}
recommend() {  # the sweep's "recommended: export ..." line into /tmp/cuda_variants.env
    local line
    line=$(grep '^recommended: export ' "$OUT/$1.log" | tail -n 1 | sed 's/^recommended: //')
    [ -n "$line" ] && echo "$line" >/tmp/cuda_variants.env && echo "== using: $line"
}
use_variants() { [ -f /tmp/cuda_variants.env ] && . /tmp/cuda_variants.env && cat /tmp/cuda_variants.env; }
info() {
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv >"$OUT/nvidia-smi.txt"
    python3 -c "import sys, torch, triton, timm; print(sys.version, torch.__version__, torch.version.cuda, triton.__version__, 'timm', timm.__version__)" \
        >"$OUT/versions.txt" 2>&1
    git log -1 --format='commit %H %s' >>"$OUT/versions.txt" 2>&1; date -u >>"$OUT/versions.txt"
    (command -v ncu && command -v compute-sanitizer) >>"$OUT/versions.txt" 2>&1; cat "$OUT/versions.txt"
}
build() {  # the extension against the machine's torch (kept between calls on a warm machine: then quick)
    step build 180 python3 setup.py build_ext --inplace
}
case "$PART" in
main)
    info
    build
    step gpu-tests 100 env ST_ADAPTER_FAST_AUTOTUNE=0 python3 -m pytest -q --maxfail=30 -n 12 -p no:cacheprovider \
        tests/kernels/test_gpu_paths.py tests/kernels/test_host_path.py tests/kernels/test_kernel_variants.py \
        tests/api/test_compiling.py tests/api/test_checkpointing.py
    step sweep 150 python3 benchmarks/cuda_kernel_sweep.py --max-seconds 120 --ncu --json "$OUT/sweep.json"
    recommend sweep
    use_variants
    step host 40 python3 benchmarks/host_overhead.py --rounds 15 --json "$OUT/host_overhead.json"
    step e2e-8 170 python3 -m st_adapter_fast.cli bench --e2e-only --e2e-clips 8 --e2e-variants "backward floor" \
        reference fast "fast compiled (reduce-overhead)" --out "$E2E"
    cp "$E2E" "$OUT/" 2>/dev/null
    ;;
more)
    info
    build
    use_variants
    step e2e-64 330 python3 -m st_adapter_fast.cli bench --e2e-only --e2e-clips 64 --e2e-variants "backward floor" \
        reference fast "fast + selective" "reference compiled" "fast compiled" "fast compiled + selective" --out "$E2E"
    step e2e-32 150 python3 -m st_adapter_fast.cli bench --e2e-only --e2e-clips 32 --e2e-variants reference fast \
        "fast compiled" --out "$E2E"
    cp "$E2E" "$OUT/" 2>/dev/null
    step bench-bf16 80 python3 -m st_adapter_fast.cli bench --quick --configs vit-b16 --dtypes bfloat16 --no-progress \
        --out "$OUT/bench.json"
    ;;
extra)
    info
    build
    use_variants
    step data-feed 200 python3 benchmarks/data_feed.py --steps 20 --out "$OUT/data_feed_store.json"
    step backbones 120 python3 benchmarks/backbones_gpu.py --out "$OUT/backbones.json"
    step memcheck 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 3 \
        python3 benchmarks/cuda_kernel_sweep.py --parity-only "$OUT/memcheck.jsonl"
    step bench-rest 150 python3 -m st_adapter_fast.cli bench --quick --configs vit-b16 vit-l14 --dtypes float16 \
        --no-progress --out "$OUT/bench.json"
    ;;
*)
    echo "usage: $0 main | more | extra" >&2; exit 2 ;;
esac
