"""Host work and launches of one adapter call: for each backend, the kernels launched and the host time
of one forward + backward (and of a forward alone), from torch.profiler.

    python benchmarks/host_overhead.py [--config vit-b16] [--dtype bfloat16] [--backends cuda triton] [--json out.json]

Kernels are counted by kind (GEMM, our conv kernels, memset/fill, copy, other): every launch costs host
time and, on a GPU, a gap in the stream, so the small ones are worth removing. Host time is the wall time of
the call without synchronising (the GPU is idle first, so the call does not wait for it), median of 20.
"""
import argparse
import collections
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import st_adapter_fast as saf  # noqa: E402
from st_adapter_fast.bench.benchmark import CPU_CONFIGS, GPU_CONFIGS, adapter_inputs, case_step  # noqa: E402


def kind(name):
    lowered = name.lower()
    if any(k in lowered for k in ("gemm", "nvjet", "cutlass", "sm90_xmma", "splitk")):
        return "gemm"
    if any(k in lowered for k in ("temporal_conv", "forward_kernel", "backward_kernel", "conv_act")):
        return "conv kernels"
    if "fill" in lowered or "memset" in lowered:
        return "memset/fill"
    if "copy" in lowered or "memcpy" in lowered:
        return "copy"
    return "other"


def launches(step, device):
    from torch.autograd import DeviceType
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        step()
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    if device == "cuda":
        names = [e.name for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    else:  # no kernels on the CPU: the aten ops that would launch one, counted at the top of each op's stack
        names = [e.name for e in events if e.name.startswith("aten::") and (e.cpu_parent is None or
                                                                            not e.cpu_parent.name.startswith("aten::"))]
    counts = collections.Counter(kind(n) for n in names)
    return dict(total=len(names), by_kind=dict(counts), names=collections.Counter(names).most_common(30))


def host_us(step, device, repeats=20):
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e6)
    if device == "cuda":
        torch.cuda.synchronize()
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="vit-b16")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--backends", nargs="*", default=None, help="default: cuda triton reference on a GPU")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backends = args.backends or (["cuda", "triton", "reference"] if device == "cuda" else ["cpu", "reference"])
    shape = (GPU_CONFIGS if device == "cuda" else CPU_CONFIGS)[args.config]
    x, params, grad_y = adapter_inputs(*shape, device, getattr(torch, args.dtype))
    frames = shape[1]
    results = {}
    for backend in backends:
        fn = lambda x_, T, *p, backend=backend: saf.st_adapter(x_, T, *p, backend=backend)
        forward, forward_backward = (case_step(fn, mode, x, params, grad_y, frames) for mode in ("fwd", "fwd+bwd"))
        for step in (forward, forward_backward, forward, forward_backward):   # warm-up: autotuning, caches
            step()
        results[backend] = {mode: dict(launches(step, device), host_us=host_us(step, device))
                            for mode, step in (("fwd", forward), ("fwd+bwd", forward_backward))}
        for mode, r in results[backend].items():
            print(f"{backend:10s} {mode:8s} {r['total']:3d} launches {r['by_kind']}  host {r['host_us']:7.0f} us",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
                           package=os.path.dirname(saf.__file__), config=args.config, dtype=args.dtype,
                           results=results), f, indent=1)


if __name__ == "__main__":
    main()
