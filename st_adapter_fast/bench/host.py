"""Host work of one adapter call: the time the CPU spends issuing a forward + backward, and the ATen ops it
dispatches, for each backend against the reference, in fp32 and under bf16 autocast.

At small batches a training step is bound by this host work, not by the GPU. On tiny CPU tensors (C=16,
Ca=8, 2 clips x 4 frames, 5 tokens) the arithmetic is negligible, so the time measured is the Python, autograd
and dispatcher work around it: a device-independent proxy for the host time of a GPU call. It is the thread's
CPU time (`time.thread_time`: what other processes do on the machine does not count), in rounds that
alternate the order of the backends; each round gives a ratio to the reference, and the median of those
ratios is the figure (a busy machine disturbs it far less than two back-to-back runs). torch runs on one
thread here: waking intra-op threads for tiny tensors is noise, not host work.

On a GPU the same is measured on the given config with wall time (no synchronisation inside a call, the GPU
idle before it), next to the kernels launched, from torch.profiler.

    python benchmarks/host_overhead.py [--rounds 30] [--json out.json]    (the script wraps `main`)
"""
import argparse
import collections
import contextlib
import json
import os
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..measure import one_torch_thread
from .benchmark import GPU_CONFIGS, adapter_inputs, case_step

MODES = {"fp32": None, "bf16 autocast": torch.bfloat16}
REFERENCE = "reference"
# (clips, frames, tokens, C, Ca): 1 class token and a 2 x 2 grid
TINY = (2, 4, 5, 16, 8)


class _CountOps(TorchDispatchMode):
    """Counts the ATen ops dispatched while it is on, by name."""

    def __init__(self):
        super().__init__()
        self.names = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names[str(func.overloadpacket).replace("aten.", "")] += 1
        self.views += func.is_view
        return func(*args, **(kwargs or {}))


def dispatched_ops(step):
    """({op name: count}, how many of them are views) of the ATen ops one call of `step` dispatches, our C++
    ops' inner ops included. Views (slice, view, t, ...) allocate and launch nothing."""
    with _CountOps() as counter:
        counter.views = 0
        step()
    return dict(counter.names.most_common()), counter.views


def make_step(backend, mode, x, params, grad_y, num_frames):
    """One forward + backward of `st_adapter` on `backend` in `mode`, gradients returned (not accumulated),
    as a training step's are."""
    from ..ops import st_adapter
    dtype = MODES[mode]
    fn = lambda x_, T, *p: st_adapter(x_, T, *p, backend=backend)
    inner = case_step(fn, "fwd+bwd", x, params, grad_y, num_frames)
    if dtype is None:
        return inner

    def under_autocast():
        with torch.autocast(x.device.type, dtype=dtype):
            return inner()
    return under_autocast


def _clock(device):
    return time.thread_time if device == "cpu" else time.perf_counter


def alternating_rounds(steps, rounds, calls, device):
    """{name: [us per call, one per round]}: every step `calls` times a round, in an order that rotates."""
    clock, names = _clock(device), list(steps)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if device == "cuda":
                torch.cuda.synchronize()
            start = clock()
            for _ in range(calls):
                steps[name]()
            times[name].append((clock() - start) / calls * 1e6)
    return times


def quartiles(values):
    q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return dict(median=median, q1=q1, q3=q3)


def measure(backends, device="cpu", config=None, rounds=30, calls=50, progress=print):
    """The results: per mode, per backend, host us per forward + backward (median and quartiles over rounds),
    the ops dispatched, and the per-round ratio to the reference (median and quartiles)."""
    shape = TINY if config is None else GPU_CONFIGS[config]
    dtype = torch.float32
    x, params, grad_y = adapter_inputs(*shape, device, dtype)
    num_frames = shape[1]
    names = list(dict.fromkeys(list(backends) + [REFERENCE]))
    results = {}
    with one_torch_thread() if device == "cpu" else contextlib.nullcontext():
        for mode in MODES:
            steps = {b: make_step(b, mode, x, params, grad_y, num_frames) for b in names}
            for step in steps.values():   # warm-up: caches, autotuning, lazy initialisation
                for _ in range(5):
                    step()
            ops = {b: dispatched_ops(step) for b, step in steps.items()}
            times = alternating_rounds(steps, rounds, calls, device)
            rows = {}
            for b in names:
                by_name, views = ops[b]
                row = dict(host_us=quartiles(times[b]), ops=sum(by_name.values()), view_ops=views, ops_by_name=by_name)
                if b != REFERENCE:
                    row["ratio_to_reference"] = quartiles([t / r for t, r in zip(times[b], times[REFERENCE])])
                rows[b] = row
                ratio = row.get("ratio_to_reference")
                progress(f"{mode:14s} {b:10s} host {row['host_us']['median']:8.1f} us/call  {row['ops']:4d} ops ({row['view_ops']} views)"
                         + (f"  ratio to reference {ratio['median']:.3f} (quartiles {ratio['q1']:.3f}-"
                            f"{ratio['q3']:.3f})" if ratio else ""))
            results[mode] = rows
    return dict(shape=dict(zip(("clips", "frames", "tokens", "channels", "adapter_channels"), shape)),
                rounds=rounds, calls_per_round=calls, clock="thread CPU time" if device == "cpu" else "wall time",
                threads=1 if device == "cpu" else torch.get_num_threads(), results=results)


def gpu_launches(backends, config):
    """{backend: {mode: kernels launched by one forward + backward, by kind}} on the GPU, from torch.profiler."""
    from torch.autograd import DeviceType
    x, params, grad_y = adapter_inputs(*GPU_CONFIGS[config], "cuda", torch.float32)
    out = {}
    for backend in backends:
        out[backend] = {}
        for mode in MODES:
            step = make_step(backend, mode, x, params, grad_y, GPU_CONFIGS[config][1])
            step()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                step()
                torch.cuda.synchronize()
            names = [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]
            out[backend][mode] = dict(total=len(names), names=collections.Counter(names).most_common(40))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cpu, and cuda too when there is a GPU")
    parser.add_argument("--config", default="vit-b16", help="the GPU measurement's config (bench's GPU configs)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=50, help="calls per backend per round")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be at least 1")
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    from ..backends import available_on
    out = dict(torch=torch.__version__, package=os.path.dirname(os.path.dirname(__file__)))
    for device in devices:
        backends = [c.name for c in available_on(device) if c.name != REFERENCE]
        print(f"== {device}: {', '.join(backends)} against the reference")
        config = None if device == "cpu" else args.config
        out[device] = measure(backends, device, config, args.rounds, args.calls)
        if device == "cuda":
            out[device]["device_name"] = torch.cuda.get_device_name()
            out[device]["launches"] = gpu_launches(backends + [REFERENCE], args.config)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out
