"""The conv + activation kernels alone, every variant: native parity first, then GPU time against the bytes they
must move, in one GPU call of a few minutes (issue 20). One JSON with `conv_kernels` rows.

    python benchmarks/cuda_kernel_sweep.py [--configs vit-b16 vit-l14] [--dtypes bfloat16 float16] [--json out.json]
                                           [--max-seconds 210] [--ncu] [--triton-configs all|N]
    python benchmarks/cuda_kernel_sweep.py --device cpu --configs smoke   (the code path on the CPU: the compiled
                                           CPU kernels and interpreted Triton; the CUDA variants listed as not run)

What runs, in order, within --max-seconds (what the budget cuts is listed as not timed, never dropped):
1. Parity of every CUDA variant (the extension's table, st_adapter_fast._C.cuda_variants) in a child process, so
   that a variant that faults cannot take the sweep down: bf16, fp16 and fp32, kt = 1, 3, 5, 7, T from 1 to 8,
   partial blocks, patch-row views, the one-element path; outputs NaN-poisoned, against float64. A variant whose
   check crashes the child is marked crashed and the child reruns without it. A failed variant is not timed.
2. The copy bandwidth (st_adapter_fast.bench.benchmark.measure_ceilings: a large device copy, read + write).
3. Each case: every CUDA variant (threads per block unset, then other counts the kernel allows) and each Triton
   config (adapter.sweep_conv_configs(), and the autotuned default), on ViT-B/16 and ViT-L/14 patch-row shapes
   (bench GPU_CONFIGS) in bf16 and fp16: one eager call (parity at that shape against an fp32 torch reference;
   st_adapter_fast._C.last_cuda_launch() says what ran: kernel, vector width, geometry, registers), then GPU time:
   a CUDA graph of 12 calls rotating over 3 sets of tensors (so that no call finds its inputs in L2), replayed,
   median per call. bytes: forward reads h and writes a; backward reads grad_a and h and writes grad_h and a
   (the partial sums are extra, reported as partial_bytes); bandwidth_fraction = bytes / time / copy bandwidth.
4. With --ncu, where `ncu` works: the fastest CUDA variants of each direction and the defaults, re-run alone
   (--single) under `ncu --clock-control none` (speed of light, occupancy, launch statistics, warp states, memory
   workload); skipped, with the reason in the JSON, where ncu is missing or refused.
The last lines name the fastest correct CUDA variant and Triton config of each direction, and an `export` line
that selects the CUDA ones (benchmarks/gpu_session.sh runs the rest of its session with it).
"""
import argparse
import csv
import datetime
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from st_adapter_fast.activations import apply_activation  # noqa: E402
from st_adapter_fast.bench.benchmark import GPU_CONFIGS, measure_ceilings  # noqa: E402

CONFIGS = dict(GPU_CONFIGS, smoke=(1, 4, 17, 32, 16))   # clips, frames, tokens (with the class token), C, Ca
KT, ACTIVATION = 3, "gelu"
WINDOW_THREADS, OTHER_THREADS = (64, 128, 256), (128, 256, 512)
ROTATE, CALLS_PER_GRAPH = 3, 12
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 5e-3, "float64": 1e-10}   # ||out - ref|| / ||ref||
PARITY_CASES = [  # clips, frames per clip, tokens, channels, layout
    (2, 8, 29, 384, "contiguous"), (2, 5, 13, 136, "patch-rows"), (3, 1, 7, 64, "contiguous"),
    (2, 2, 9, 40, "patch-rows"), (2, 3, 5, 33, "contiguous")]
NCU_SECTIONS = ("SpeedOfLight", "Occupancy", "LaunchStats", "WarpStateStats", "MemoryWorkloadAnalysis")
PTXAS_JSON = os.path.join(ROOT, "benchmarks", "results", "ptxas-sm90.json")
PARITY_DEVICE = "cuda"   # where the parity child runs (a test runs its code on the CPU)


def extension():
    from st_adapter_fast.kernels.compiled import EXTENSION
    if EXTENSION.module is None:
        sys.exit(f"the compiled extension is needed: {EXTENSION.error}")
    return EXTENSION.module


def cuda_variants():
    """{"fwd": names, "bwd": names}, as the extension states them (the first is the default)."""
    return {d: tuple(v) for d, v in extension().cuda_variants.items()}


def log(text):
    print(text, flush=True)


# ---- references ----

def reference_conv_act(h, weight, bias, num_frames, activation=ACTIVATION):
    """The temporal conv + activation of (frames, N, Ca) tensors by shifts, in h's dtype (autograd: gradients)."""
    frames, n, ca = h.shape
    kt = weight.shape[1]
    clips = h.reshape(frames // num_frames, num_frames, n, ca)
    padded = F.pad(clips, (0, 0, 0, 0, kt // 2, kt // 2))
    c = bias + sum(padded[:, j:j + num_frames] * weight[:, j] for j in range(kt))
    return apply_activation(c.reshape(frames, n, ca), activation)


def reference(t, dtype=torch.float32):
    """Forward and backward results of the reference in `dtype`: a, grad_h, grad_weight, grad_bias, grad_h_sum."""
    leaves = [x.to(dtype).requires_grad_() for x in (t["h"][0], t["weight"], t["bias"])]
    a = reference_conv_act(*leaves, t["frames"])
    a.backward(t["grad_a"][0].to(dtype))
    return dict(a=a.detach(), grad_h=leaves[0].grad, grad_weight=leaves[1].grad, grad_bias=leaves[2].grad,
                grad_h_sum=leaves[0].grad.sum((0, 1)))


def relative_error(got, want):
    got, want = got.double(), want.double()
    if not torch.isfinite(got).all():
        return math.inf
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


# ---- tensors and calls ----

def tensors(config, dtype, device, sets=ROTATE, seed=0):
    """`sets` sets of patch-row views (the rows 1: of (frames, L, Ca) tensors, as the adapter passes them)."""
    clips, frames, tokens, _, ca = CONFIGS[config]
    gen = torch.Generator(device=device).manual_seed(seed)   # drawn where they live: ~0.3 G values per config

    def view():
        return torch.randn(clips * frames, tokens, ca, generator=gen, device=device).to(dtype)[:, 1:]
    t = {name: [view() for _ in range(sets)] for name in ("h", "grad_a", "out", "grad_h", "a")}
    t["weight"] = (0.5 * torch.randn(ca, KT, generator=gen, device=device)).to(dtype)
    t["bias"] = (0.1 * torch.randn(ca, generator=gen, device=device)).to(dtype)
    t["frames"] = frames
    return t


def cuda_call(direction, t, i):
    ops = torch.ops.st_adapter_fast
    if direction == "fwd":
        return lambda: ops.temporal_conv_act_out(t["h"][i], t["weight"], t["bias"], t["frames"], ACTIVATION, t["out"][i])
    return lambda: ops.temporal_conv_act_backward_out(t["grad_a"][i], t["h"][i], t["weight"], t["bias"], t["frames"],
                                                      ACTIVATION, t["grad_h"][i], t["a"][i])


def triton_call(direction, t, i, config):
    from st_adapter_fast.kernels.triton.adapter import TRITON_KERNELS
    if direction == "fwd":
        return lambda: TRITON_KERNELS.conv_act_forward(
            x_patch=t["h"][i], fc1_weight=t["weight"], fc1_bias=t["bias"], conv_weight=t["weight"], conv_bias=t["bias"],
            h=t["h"][i], a=t["out"][i], num_frames=t["frames"], activation=ACTIVATION, store_h=False, config=config)
    return lambda: TRITON_KERNELS.conv_act_backward(
        g_patch=t["grad_a"][i], fc2_weight=t["weight"], h=t["h"][i], conv_weight=t["weight"], conv_bias=t["bias"],
        a=t["a"][i], grad_h=t["grad_h"][i], num_frames=t["frames"], activation=ACTIVATION, config=config)


def check_call(direction, call, t, ref):
    """Run `call` once on set 0 with poisoned outputs: the worst relative error of its results against `ref`."""
    for name in ("out", "grad_h", "a"):
        t[name][0].fill_(float("nan"))
    result = call()
    if direction == "fwd":
        return relative_error(t["out"][0], ref["a"])
    grads = list(result)
    errors = [relative_error(t["a"][0], ref["a"]), relative_error(t["grad_h"][0], ref["grad_h"])]
    errors += [relative_error(g, ref[k]) for g, k in zip(grads, ("grad_weight", "grad_bias", "grad_h_sum"))]
    return max(errors)


def graph_us(calls):
    """GPU microseconds per call: a CUDA graph of CALLS_PER_GRAPH calls (rotating over `calls`), median replay."""
    import triton.testing
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for k in range(CALLS_PER_GRAPH):
            calls[k % len(calls)]()
    ms = triton.testing.do_bench(graph.replay, warmup=20, rep=80, return_mode="median")
    del graph
    return ms * 1e3 / CALLS_PER_GRAPH


def cpu_us(calls):
    calls[0]()
    samples = []
    for k in range(3):
        start = time.perf_counter()
        calls[k % len(calls)]()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


# ---- 1. parity of every CUDA variant, in a child process ----

def parity_child(out_path, skip):
    """--parity-only: checks every CUDA variant natively; writes one JSON line per (direction, variant)."""
    _C = extension()
    ops = torch.ops.st_adapter_fast
    gen = torch.Generator().manual_seed(0)
    with open(out_path, "a") as out:
        for direction, names in cuda_variants().items():
            for variant in names:
                if f"{direction}:{variant}" in skip:
                    continue
                log(f"CHECKING {direction}:{variant}")
                os.environ[_C.cuda_variant_env[direction]] = variant
                worst, failures, checks, ran = 0.0, [], 0, set()
                for dtype in (torch.bfloat16, torch.float16, torch.float32):
                    for kt in (1, 3, 5, 7):
                        for clips, frames, tokens, channels, layout in PARITY_CASES:
                            def view():
                                if layout == "patch-rows":
                                    return torch.randn(clips * frames, tokens + 1, channels, generator=gen).to(PARITY_DEVICE, dtype)[:, 1:]
                                return torch.randn(clips * frames, tokens, channels, generator=gen).to(PARITY_DEVICE, dtype)
                            h, grad_a = view(), view()
                            weight = (0.5 * torch.randn(channels, kt, generator=gen)).to(PARITY_DEVICE, dtype)
                            bias = (0.1 * torch.randn(channels, generator=gen)).to(PARITY_DEVICE, dtype)
                            t = dict(h=[h], grad_a=[grad_a], out=[view()], grad_h=[view()], a=[view()], weight=weight,
                                     bias=bias, frames=frames)
                            ref = reference(t, torch.float64)
                            call = cuda_call(direction, t, 0)
                            error = check_call(direction, call, t, ref)
                            if PARITY_DEVICE == "cuda":
                                torch.cuda.synchronize()   # a fault shows here, after this variant's CHECKING line
                            checks += 1
                            ran.add(_C.last_cuda_launch().get("ran"))
                            worst = max(worst, error) if error < math.inf else math.inf
                            if not error <= TOLERANCE[str(dtype).split(".")[1]]:
                                failures.append(f"{dtype} kt={kt} T={frames} N={tokens} Ca={channels} {layout}: "
                                                f"relative error {error:.2e}")
                os.environ.pop(_C.cuda_variant_env[direction])
                line = dict(direction=direction, variant=variant, ok=not failures, checks=checks, max_error=worst,
                            failures=failures[:10], ran=sorted(r for r in ran if r))
                out.write(json.dumps(line) + "\n")
                out.flush()
                log(f"PARITY {direction}:{variant} {'ok' if not failures else 'FAILED'} {checks} checks, "
                    f"max relative error {worst:.2e}" + (f"; e.g. {failures[0]}" if failures else ""))


def run_parity(deadline):
    """Runs the parity child (again without a variant that crashed it): {(direction, variant): result}."""
    import tempfile
    results, skip = {}, []
    path = tempfile.mktemp(suffix=".jsonl")
    for attempt in range(4):
        budget = max(20.0, min(150.0, deadline - time.monotonic() - 60))
        command = [sys.executable, os.path.abspath(__file__), "--parity-only", path]
        if skip:
            command += ["--skip", *skip]
        try:
            child = subprocess.run(command, capture_output=True, text=True, timeout=budget)
            output, code = child.stdout + child.stderr, child.returncode
        except subprocess.TimeoutExpired as expired:
            output = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
            code = "timeout"
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    r = json.loads(line)
                    results[(r["direction"], r["variant"])] = r
        for line in output.splitlines():
            if line.startswith("PARITY"):
                log(line)
        if code == 0:
            break
        checking = [line.split()[1] for line in output.splitlines() if line.startswith("CHECKING")]
        culprit = checking[-1] if checking else None
        if code == "timeout" or culprit is None or tuple(culprit.split(":")) in results:
            log(f"parity child ended with {code} (not after a variant's check): {output[-1500:]}")
            break
        direction, variant = culprit.split(":")
        results[(direction, variant)] = dict(direction=direction, variant=variant, ok=False, crashed=True,
                                             failures=[f"the check crashed the process (exit {code}): "
                                                       f"{output.strip().splitlines()[-1] if output.strip() else ''}"])
        log(f"PARITY {culprit} CRASHED (exit {code}); rerunning the checks without it")
        skip.append(culprit)
    if os.path.exists(path):
        os.remove(path)
    return results


# ---- 3. timing ----

def ptxas_registers():
    """{(direction, variant, dtype, shape): registers} from the committed ptxas report (kt = 3), if any."""
    try:
        with open(PTXAS_JSON) as f:
            rows = json.load(f)["variants"]
    except (OSError, ValueError, KeyError):
        return {}
    return {(r["direction"], r["variant"], r["dtype"], r["shape"]): r["registers"] for r in rows if r["kt"] == KT}


def triton_registers(direction):
    from st_adapter_fast.kernels.triton import adapter
    name = "down_conv_act_fwd_kernel" if direction == "fwd" else "down_conv_act_bwd_kernel"
    compiled = adapter.LAST_FIXED_LAUNCH.get(name)
    return getattr(compiled, "n_regs", None), getattr(compiled, "n_spills", None)


def plan_cases(args, device, variants):
    """(priority, family, direction, config, dtype, name, threads): what to time, most telling first."""
    cases = []
    first = (args.configs[0], args.dtypes[0])
    for c_i, config in enumerate(args.configs):
        for d_i, dtype in enumerate(args.dtypes):
            lead = (config, dtype) == first
            for direction, names in variants.items():
                if device == "cpu":   # the compiled CPU kernels: what the op runs on CPU tensors
                    cases.append((0, "cpu", direction, config, dtype, "compiled", None))
                for name in names:
                    cases.append((0 if lead else 1, "cuda", direction, config, dtype, name, None))
                    for threads in (WINDOW_THREADS if name.startswith("window") else OTHER_THREADS):
                        cases.append((2 if lead else 3, "cuda", direction, config, dtype, name, threads))
                if args.triton:
                    for name in ["autotuned"] + triton_config_names(args):
                        cases.append((4 if lead else 5, "triton", direction, config, dtype, name, None))
    return sorted(cases, key=lambda c: c[0])


def triton_config_names(args):
    from st_adapter_fast.kernels.triton.adapter import config_text, sweep_conv_configs
    names = [config_text(c) for c in sweep_conv_configs()]
    return names if args.triton_configs == "all" else names[:int(args.triton_configs)]


def time_cases(args, device, bandwidth, parity, deadline, rows):
    _C = extension()
    variants = cuda_variants()
    registers_ptxas = ptxas_registers()
    data, refs = {}, {}
    measure = graph_us if device == "cuda" else cpu_us
    seen = set()   # (direction, config, dtype, name, actual threads): a thread request the kernel capped is no new case
    stopped = None
    for priority, family, direction, config, dtype_name, name, threads in plan_cases(args, device, variants):
        row = dict(family=family, variant=name, direction=direction, config=config, dtype=dtype_name,
                   default=(name == variants[direction][0] and threads is None) if family == "cuda"
                   else name in ("autotuned", "compiled"),
                   threads=threads, us=None, bytes=None, bandwidth_fraction=None, registers=None)
        if family == "cuda" and device != "cuda":
            row.update(status="not run: no CUDA device")
            if threads is None:
                rows.append(row)
            continue
        if family == "cuda" and not parity.get((direction, name), {}).get("ok", False):
            if threads is None:
                row.update(status="parity failed" if (direction, name) in parity else "parity not checked",
                           parity=parity.get((direction, name)))
                rows.append(row)
            continue
        if stopped or time.monotonic() > deadline:
            stopped = stopped or f"--max-seconds {args.max_seconds} reached after {time.monotonic() - START:.0f} s"
            row.update(status="not timed: " + stopped)
            rows.append(row)
            continue
        key = (config, dtype_name)
        if key not in data:
            data[key] = tensors(config, getattr(torch, dtype_name), device)
            refs[key] = reference(data[key], torch.float32 if device == "cuda" else torch.float64)
        t, ref = data[key], refs[key]
        size = t["h"][0].numel() * t["h"][0].element_size()
        moved = (2 if direction == "fwd" else 4) * size
        env = {}
        if family in ("cuda", "cpu"):
            if family == "cuda":
                env[_C.cuda_variant_env[direction]] = name
            if threads:
                env[f"ST_ADAPTER_FAST_CUDA_{direction.upper()}_THREADS"] = str(threads)
            calls = [cuda_call(direction, t, i) for i in range(len(t["h"]))]
        else:
            calls = [triton_call(direction, t, i, None if name == "autotuned" else name) for i in range(len(t["h"]))]
        os.environ.update(env)
        try:
            error = check_call(direction, calls[0], t, ref)
            launch = _C.last_cuda_launch() if family == "cuda" and hasattr(_C, "last_cuda_launch") else {}
            if family == "cuda":
                actual = (direction, config, dtype_name, name, launch.get("threads"))
                if threads is not None and actual in seen:
                    continue   # the kernel capped the request to a count already timed
                seen.add(actual)
                row["threads"] = launch.get("threads")
                row["registers"] = launch.get("registers")
                row["registers_ptxas"] = registers_ptxas.get((direction, name, dtype_name, config))
                row["kernel_config"] = {k: launch.get(k) for k in (
                    "ran", "kernel", "vec", "vector_bytes", "depth", "inflight_bytes", "block", "grid",
                    "shared_bytes", "blocks_per_sm", "partial_rows", "local_bytes", "max_threads")}
                if launch.get("partial_rows"):
                    row["partial_bytes"] = 2 * launch["partial_rows"] * (KT + 2) * t["weight"].shape[0] * 4
            elif family == "triton":
                row["kernel_config"] = {"config": name}
                if name != "autotuned":
                    row["registers"], row["spills"] = triton_registers(direction)
            row["parity_error"] = error
            if not error <= TOLERANCE[dtype_name]:
                row.update(status=f"parity failed at this shape (relative error {error:.2e})")
                rows.append(row)
                log(f"{config:8s} {dtype_name:9s} {direction} {family:6s} {name:30s} PARITY FAILED {error:.2e}")
                continue
            us = measure(calls)
        except Exception as error:   # a launch the configuration cannot make, say: reported, the sweep goes on
            row.update(status=f"error: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
            rows.append(row)
            log(f"{config:8s} {dtype_name:9s} {direction} {family:6s} {name:30s} ERROR {row['status']}")
            continue
        finally:
            for k in env:
                os.environ.pop(k, None)
        row.update(status="timed", us=us, bytes=moved, bandwidth_fraction=moved / (us * 1e-6) / bandwidth)
        rows.append(row)
        log(f"{config:8s} {dtype_name:9s} {direction} {family:6s} {name:30s} threads {str(row['threads']):>4s} "
            f"regs {str(row['registers']):>4s}  {us:8.1f} us  {row['bandwidth_fraction']:6.1%} of copy bandwidth")
    return stopped


# ---- recommendations ----

def recommend(rows, variants, first):
    """Per direction and family: the fastest correct choice, by the geometric mean over (config, dtype) of its
    speed relative to the default (cases where both were timed)."""
    timed = [r for r in rows if r["status"] == "timed"]
    out = {}
    for direction in variants:
        for family in ("cuda", "triton"):
            mine = [r for r in timed if r["direction"] == direction and r["family"] == family]
            defaults = {(r["config"], r["dtype"]): r["us"] for r in mine if r["default"]}
            choices = {}
            for r in mine:
                if (r["config"], r["dtype"]) in defaults:
                    choices.setdefault((r["variant"], r["threads"] if family == "cuda" else None, r["default"]),
                                       []).append(defaults[(r["config"], r["dtype"])] / r["us"])
            if not choices:
                continue
            complete = max(len(v) for v in choices.values())
            ranked = sorted(((math.exp(statistics.mean(map(math.log, v))), k) for k, v in choices.items()
                             if len(v) == complete), reverse=True)
            speedup, (name, threads, is_default) = ranked[0]
            lead = min((r for r in mine if r["variant"] == name and (family != "cuda" or r["threads"] == threads)),
                       key=lambda r: ((r["config"], r["dtype"]) != first, r["config"], r["dtype"]))
            out[f"{direction}:{family}"] = dict(variant=name, threads=threads, default=is_default, speedup=speedup,
                                                cases=complete, us=lead["us"], config=lead["config"],
                                                dtype=lead["dtype"], bandwidth_fraction=lead["bandwidth_fraction"])
    return out


# ---- 4. ncu ----

def ncu_pass(args, rows, recommended, deadline):
    tool = shutil.which("ncu")
    if tool is None:
        return {"skipped": "ncu is not on the PATH"}
    config, dtype = args.configs[0], args.dtypes[0]
    picks = []
    for direction in ("fwd", "bwd"):
        timed = sorted((r for r in rows if r["status"] == "timed" and r["family"] == "cuda" and r["direction"] == direction
                        and r["config"] == config and r["dtype"] == dtype), key=lambda r: r["us"])
        chosen = timed[:args.ncu_count] + [r for r in timed if r["default"]]
        for r in chosen:
            pick = (direction, r["variant"], r["threads"])
            if pick not in picks:
                picks.append(pick)
    results = {}
    for direction, variant, threads in picks:
        if time.monotonic() + 45 > deadline:
            results[f"{direction}:{variant}:{threads}"] = {"skipped": "no time left in --max-seconds"}
            continue
        command = [tool, "--clock-control", "none", "--target-processes", "all", "--kernel-name-base", "demangled",
                   "--kernel-name", "regex:conv_cuda::", "--launch-skip", "2", "--launch-count", "1", "--csv",
                   "--page", "raw"]
        for section in NCU_SECTIONS:
            command += ["--section", section]
        command += [sys.executable, os.path.abspath(__file__), "--single", f"{direction}:{variant}:{threads or 0}",
                    "--configs", config, "--dtypes", dtype]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=min(90, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            results[f"{direction}:{variant}:{threads}"] = {"skipped": "ncu timed out"}
            continue
        metrics = parse_ncu_csv(done.stdout)
        if not metrics:
            reason = (done.stdout + done.stderr).strip().splitlines()[-3:]
            results[f"{direction}:{variant}:{threads}"] = {"skipped": f"ncu gave no metrics (exit {done.returncode}): "
                                                                      + " | ".join(reason)}
            if "ERR_NVGPUCTRPERM" in done.stdout + done.stderr or "LibraryNotLoaded" in done.stdout + done.stderr:
                return dict(results, skipped="ncu cannot read the counters here: " + " | ".join(reason))
            continue
        results[f"{direction}:{variant}:{threads}"] = dict(highlights=ncu_highlights(metrics), metrics=metrics)
        log(f"ncu {direction} {variant} threads {threads}: {ncu_highlights(metrics)}")
    return results


def parse_ncu_csv(text):
    """The raw page's metrics of the first profiled kernel: {name: value (float where numeric) with unit}."""
    lines = [line for line in text.splitlines() if line.startswith('"')]
    if len(lines) < 3:
        return {}
    table = list(csv.reader(io.StringIO("\n".join(lines))))
    header, units, values = table[0], table[1], table[2]
    out = {}
    for name, unit, value in zip(header, units, values):
        try:
            number = float(value.replace(",", ""))
        except ValueError:
            number = value
        out[name] = number if not unit else {"value": number, "unit": unit}
    return out


def ncu_highlights(metrics):
    def value(name):
        v = metrics.get(name)
        return v["value"] if isinstance(v, dict) else v
    stalls = {k.split("stalled_")[1].split("_per")[0]: value(k) for k in metrics
              if k.startswith("smsp__average_warps_issue_stalled_") and k.endswith("_per_issue_active.ratio")}
    top = sorted(((v, k) for k, v in stalls.items() if isinstance(v, float)), reverse=True)[:4]
    return dict(duration=value("gpu__time_duration.sum"),
                dram_throughput_pct=value("gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed")
                or value("dram__throughput.avg.pct_of_peak_sustained_elapsed"),
                memory_throughput_pct=value("gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed"),
                achieved_occupancy_pct=value("sm__warps_active.avg.pct_of_peak_sustained_active"),
                registers=value("launch__registers_per_thread"),
                top_stalls={k: v for v, k in top})


def single(args):
    """--single DIRECTION:VARIANT:THREADS: a few calls of one CUDA variant alone (what ncu profiles)."""
    _C = extension()
    direction, variant, threads = args.single.split(":")
    os.environ[_C.cuda_variant_env[direction]] = variant
    if int(threads):
        os.environ[f"ST_ADAPTER_FAST_CUDA_{direction.upper()}_THREADS"] = threads
    t = tensors(args.configs[0], getattr(torch, args.dtypes[0]), "cuda", sets=1)
    call = cuda_call(direction, t, 0)
    for _ in range(4):
        call()
    torch.cuda.synchronize()


# ---- main ----

START = time.monotonic()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=None, help="default: vit-b16 vit-l14 (cuda), smoke (cpu)")
    parser.add_argument("--dtypes", nargs="*", default=None, help="default: bfloat16 float16 (cuda), float32 (cpu)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--max-seconds", type=float, default=210.0,
                        help="stop timing past this many seconds from the start (what is left is listed as not timed)")
    parser.add_argument("--triton", action=argparse.BooleanOptionalAction, default=True, help="time the Triton configs")
    parser.add_argument("--triton-configs", default="all", help="'all', or the first N of adapter.sweep_conv_configs()")
    parser.add_argument("--ncu", action="store_true", help="profile the fastest variants with ncu afterwards")
    parser.add_argument("--ncu-count", type=int, default=2, help="fastest CUDA variants per direction to profile")
    parser.add_argument("--parity-only", metavar="JSONL", help=argparse.SUPPRESS)
    parser.add_argument("--skip", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--single", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.configs = args.configs or (["vit-b16", "vit-l14"] if args.device == "cuda" else ["smoke"])
    args.dtypes = args.dtypes or (["bfloat16", "float16"] if args.device == "cuda" else ["float32"])
    if args.parity_only:
        return parity_child(args.parity_only, set(args.skip))
    if args.single:
        return single(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: use --device cpu for the smoke path")
    start = time.monotonic()
    deadline = start + args.max_seconds - (60 if args.ncu else 10)   # time kept for ncu and writing
    _C = extension()
    variants = cuda_variants()
    result = dict(device=torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
                  torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
                  date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                  command=" ".join(["benchmarks/cuda_kernel_sweep.py"] + (argv if argv is not None else sys.argv[1:])),
                  kt=KT, activation=ACTIVATION, cuda_variants=variants,
                  cuda_variant_info={d: dict(v) for d, v in _C.cuda_variant_info.items()}, max_seconds=args.max_seconds)
    try:
        import triton
        result["triton"] = triton.__version__
    except ImportError:
        args.triton = False
    if args.device == "cuda":
        result["multiprocessors"] = torch.cuda.get_device_properties(0).multi_processor_count
        log(f"{result['device']}: {result['multiprocessors']} SMs, torch {torch.__version__}, "
            f"triton {result.get('triton')}; parity of every CUDA variant first")
        parity = run_parity(start + args.max_seconds)
    else:
        parity = {}
    result["parity"] = [dict(v) for v in parity.values()]
    if args.device == "cuda":
        import triton.testing
        bench = lambda fn: (triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median"), None)
    else:
        bench = lambda fn: (cpu_us([fn]) / 1e3, None)
    bandwidth, _ = measure_ceilings(args.device, bench)
    result["copy_bandwidth_Bps"] = bandwidth
    log(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write)")
    rows = []
    stopped = time_cases(args, args.device, bandwidth, parity, deadline, rows)
    result.update(conv_kernels=rows, stopped_early=stopped)
    recommended = recommend(rows, variants, (args.configs[0], args.dtypes[0]))
    result["recommended"] = recommended
    if args.ncu and args.device == "cuda":
        result["ncu"] = ncu_pass(args, rows, recommended, start + args.max_seconds - 5)
    elif args.ncu:
        result["ncu"] = {"skipped": "no CUDA device"}
    result["elapsed_s"] = time.monotonic() - start
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    if stopped:
        log(f"stopped timing: {stopped}; {sum(r['status'].startswith('not timed') for r in rows)} cases not timed")
    for key, r in recommended.items():
        log(f"fastest correct {key.replace(':', ' ')}: {r['variant']}" + (f" threads {r['threads']}" if r["threads"] else "")
            + f" ({r['speedup']:.2f}x the default over {r['cases']} config/dtype cases; {r['us']:.1f} us, "
              f"{r['bandwidth_fraction']:.1%} of copy bandwidth at {r['config']} {r['dtype']})")
    exports = []
    for direction in ("fwd", "bwd"):
        r = recommended.get(f"{direction}:cuda")
        if r:
            exports.append(f"{_C.cuda_variant_env[direction]}={r['variant']}")
            if r["threads"]:
                exports.append(f"ST_ADAPTER_FAST_CUDA_{direction.upper()}_THREADS={r['threads']}")
    if exports:
        log("recommended: export " + " ".join(exports))
    return result


if __name__ == "__main__":
    main()
