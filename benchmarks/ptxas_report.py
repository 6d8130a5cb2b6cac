"""Registers, spills and shared memory of every CUDA conv kernel as ptxas reports them, and what that means on a
Hopper multiprocessor: occupancy and bytes of loads in flight per variant. Needs nvcc, not a GPU.

    python benchmarks/ptxas_report.py                        compile csrc/temporal_conv_cuda.cu for sm_90, write
                                                             benchmarks/results/ptxas-sm90.{txt,json}
    python benchmarks/ptxas_report.py --arch 80 --out DIR/ptxas-sm80
    python benchmarks/ptxas_report.py --log ptxas.log        parse an earlier `nvcc -Xptxas -v` log instead

The compile is setup.py's (torch's include paths and nvcc flags, -O3 -DST_ADAPTER_FAST_WITH_CUDA) with
`-gencode=arch=compute_XX,code=sm_XX -Xptxas -v`. Kernel names are demangled with c++filt (or cu++filt).

Per variant (the extension's table, st_adapter_fast._C.cuda_variants) and dtype, kt, model shape, the launch
a call makes is asked of the extension (_C.cuda_launch_plan: threads per block, dynamic shared memory, vector
width, partial rows; no GPU needed), and from the kernel's registers and the multiprocessor's limits
(sm_90: 65536 registers, allocated per warp in units of 256; 64 warps = 2048 threads; 32 blocks; 228 KB of
shared memory with 1 KB reserved per block) follow the blocks resident per multiprocessor, the resident threads,
and the bytes of loads in flight per multiprocessor: resident threads x the bytes one thread has in flight by its
kernel's structure (the default kernels: the next frame's h, and backward grad_a; async: DEPTH frames of each
ring; frames: every frame of h (and grad_a) a row needs, of which ~1/kt come from DRAM, the rest from L2).
"""
import argparse
import datetime
import json
import math
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

# Per-multiprocessor limits by compute capability (CUDA occupancy calculator values).
LIMITS = {
    "90": dict(registers=65536, register_unit=256, max_registers=255, warps=64, blocks=32, shared=228 * 1024,
               reserved_shared=1024, sms=132),
    "80": dict(registers=65536, register_unit=256, max_registers=255, warps=64, blocks=32, shared=164 * 1024,
               reserved_shared=1024, sms=108),
}
SHAPES = {"vit-b16": dict(clips=32, frames=8, tokens=196, channels=384),
          "vit-l14": dict(clips=16, frames=8, tokens=256, channels=512)}
DTYPES = ("bfloat16", "float16", "float32")
CPP_DTYPES = {"c10::BFloat16": "bfloat16", "c10::Half": "float16", "float": "float32", "double": "float64"}
SOURCE = os.path.join(ROOT, "csrc", "temporal_conv_cuda.cu")


def nvcc_command(arch, output):
    import torch
    from torch.utils import cpp_extension
    try:
        includes = cpp_extension.include_paths(device_type="cuda")
    except TypeError:   # torch before 2.6
        includes = cpp_extension.include_paths(cuda=True)
    cuda_home = cpp_extension.CUDA_HOME or "/usr/local/cuda"
    nvcc = shutil.which("nvcc") or os.path.join(cuda_home, "bin", "nvcc")
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    return ([nvcc, f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", "-O3", "-std=c++20",
             "-DST_ADAPTER_FAST_WITH_CUDA", "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
             f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "--compiler-options", "-fPIC"]
            + list(cpp_extension.COMMON_NVCC_FLAGS) + [f"-I{p}" for p in includes]
            + ["-I" + os.path.join(ROOT, "csrc"), "-c", SOURCE, "-o", output])


def compile_log(arch):
    """nvcc's ptxas output for csrc/temporal_conv_cuda.cu (and the command that made it)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        command = nvcc_command(arch, os.path.join(tmp, "kernels.o"))
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"nvcc failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout + result.stderr, command


def demangle(names):
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out))


def parse_ptxas(log):
    """One entry per kernel instantiation: kernel, dtype, kt, vec, depth, registers, spills, stack, static smem."""
    entries, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = m.group(1)
            entries[current] = dict(mangled=current)
            continue
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            current = m.group(1)
            entries.setdefault(current, dict(mangled=current))
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            entries[current].update(stack_bytes=int(m.group(1)), spill_stores=int(m.group(2)),
                                    spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            entries[current]["registers"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            entries[current]["static_shared_bytes"] = int(s.group(1)) if s else 0
    names = demangle(list(entries))
    kernels = []
    for mangled, e in entries.items():
        m = re.search(r"conv_cuda::(\w+)<([^>]*)>", names[mangled])
        if not m or "registers" not in e:
            continue
        args = [a.strip() for a in m.group(2).split(",")]
        kernels.append(dict(kernel=m.group(1), dtype=CPP_DTYPES.get(args[0], args[0]), kt=int(args[1]),
                            vec=int(args[2]), depth=int(args[3]) if len(args) > 3 else 0,
                            registers=e["registers"], spill_stores=e.get("spill_stores", 0),
                            spill_loads=e.get("spill_loads", 0), stack_bytes=e.get("stack_bytes", 0),
                            static_shared_bytes=e.get("static_shared_bytes", 0)))
    return sorted(kernels, key=lambda k: (k["kernel"], k["dtype"], k["kt"], k["vec"], k["depth"]))


def occupancy(registers, threads, shared_bytes, limits):
    """Blocks per multiprocessor and what limits them (registers, warps, blocks or shared memory)."""
    warps = math.ceil(threads / 32)
    per_warp = math.ceil(registers * 32 / limits["register_unit"]) * limits["register_unit"]
    by = {"registers": (limits["registers"] // per_warp) // warps if per_warp else limits["blocks"],
          "warps": limits["warps"] // warps,
          "blocks": limits["blocks"],
          "shared memory": limits["shared"] // (shared_bytes + limits["reserved_shared"])}
    limiter = min(by, key=by.get)
    return by[limiter], limiter


def max_threads_for(registers, limits):
    per_warp = math.ceil(registers * 32 / limits["register_unit"]) * limits["register_unit"]
    return min(1024, (limits["registers"] // per_warp) * 32)


def variant_rows(kernels, arch):
    """Each (direction, variant, dtype, kt, shape): the kernel it launches and what that gives per multiprocessor."""
    import torch
    from st_adapter_fast import _C
    if not getattr(_C, "with_cuda", False) or not hasattr(_C, "cuda_launch_plan"):
        print("the extension was built without CUDA: no launch plans, kernels only", file=sys.stderr)
        return []
    limits = LIMITS[arch]
    by_key = {(k["kernel"], k["dtype"], k["kt"], k["vec"], k["depth"]): k for k in kernels}
    rows = []
    for direction, names in _C.cuda_variants.items():
        for variant in names:
            for dtype in DTYPES:
                for kt in (1, 3, 5, 7):
                    for shape_name, shape in SHAPES.items():
                        plan_args = (direction, variant, getattr(torch, dtype), kt, shape["channels"], shape["tokens"],
                                     shape["frames"], shape["clips"])
                        plan = _C.cuda_launch_plan(*plan_args)
                        k = by_key.get((plan["kernel"], dtype, kt, plan["vec"], plan["depth"]))
                        if k is None:
                            print(f"no ptxas entry for {plan['kernel']} {dtype} kt={kt} vec={plan['vec']}",
                                  file=sys.stderr)
                            continue
                        # The kernel's own thread limit (registers; __launch_bounds__ for window_capped), then the
                        # launch as the extension would make it on a device of `sms` multiprocessors.
                        most = 256 if plan["kernel"] == "backward_kernel_capped" else max_threads_for(k["registers"], limits)
                        plan = _C.cuda_launch_plan(*plan_args, max_threads=most)
                        shared = plan["shared_bytes"] + k["static_shared_bytes"]
                        blocks, limiter = occupancy(k["registers"], plan["threads"], shared, limits)
                        plan = _C.cuda_launch_plan(*plan_args, max_threads=most,
                                                   resident_blocks=max(1, blocks) * limits["sms"])
                        resident = blocks * plan["threads"]
                        rows.append(dict(
                            direction=direction, variant=variant, default=variant == _C.cuda_default_variants[direction],
                            ran=plan["ran"], dtype=dtype, kt=kt, shape=shape_name, kernel=plan["kernel"],
                            vec=plan["vec"], vector_bytes=plan["vector_bytes"], depth=plan["depth"],
                            threads=plan["threads"], block=list(plan["block"]), grid=list(plan["grid"]),
                            registers=k["registers"], spill_stores=k["spill_stores"], spill_loads=k["spill_loads"],
                            stack_bytes=k["stack_bytes"], shared_bytes_per_block=shared, blocks_per_sm=blocks,
                            limited_by=limiter, resident_threads=resident,
                            occupancy=resident / (limits["warps"] * 32),
                            inflight_bytes_per_thread=plan["inflight_bytes"],
                            inflight_bytes_per_sm=resident * plan["inflight_bytes"],
                            partial_rows=plan["partial_rows"],
                            partial_bytes=2 * plan["partial_rows"] * (kt + 2) * shape["channels"] * 4))
    return rows


def table(rows, kernels, arch, header):
    lines = [header, ""]
    lines.append(f"Per variant at kt = 3 (the paper's kernel), sm_{arch} limits, default threads per block:")
    cols = ("dir", "variant", "dtype", "shape", "kernel", "vec B", "depth", "threads", "regs", "spill st/ld",
            "smem/blk", "blk/SM", "limit", "thr/SM", "occ", "load B/thr", "in flight/SM", "partials")
    fmt = "{:<4} {:<14} {:<9} {:<8} {:<23} {:>5} {:>5} {:>7} {:>4} {:>11} {:>8} {:>6} {:<13} {:>6} {:>4} {:>10} {:>12} {:>9}"
    lines.append(fmt.format(*cols))
    for r in rows:
        if r["kt"] != 3 or r["dtype"] == "float32":
            continue
        lines.append(fmt.format(
            r["direction"], r["variant"] + ("*" if r["default"] else ""), r["dtype"], r["shape"], r["kernel"],
            r["vector_bytes"], r["depth"] or "", r["threads"], r["registers"],
            f"{r['spill_stores']}/{r['spill_loads']}", f"{r['shared_bytes_per_block'] / 1024:.1f}K", r["blocks_per_sm"],
            r["limited_by"], r["resident_threads"], f"{r['occupancy']:.0%}", r["inflight_bytes_per_thread"],
            f"{r['inflight_bytes_per_sm'] / 1024:.1f} KB", f"{r['partial_bytes'] / 1e6:.1f} MB" if r["direction"] == "bwd" else ""))
    lines += ["", "* the default. in flight/SM = threads/SM x load B/thr (bytes of loads one thread has in flight by its",
              "kernel's structure); partials = bytes of the backward's (rows, kt + 2, Ca) fp32 partial sums, written then read",
              "(besides the 154 MB (ViT-B/16) or 134 MB (ViT-L/14) the backward must move).",
              "", "Every kernel instantiation (registers, spill stores/loads in bytes, stack frame, static shared memory):"]
    kfmt = "{:<24} {:<9} {:>2} {:>3} {:>5} {:>4} {:>11} {:>6} {:>6}"
    lines.append(kfmt.format("kernel", "dtype", "kt", "vec", "depth", "regs", "spill st/ld", "stack", "smem"))
    for k in kernels:
        lines.append(kfmt.format(k["kernel"], k["dtype"], k["kt"], k["vec"], k["depth"] or "", k["registers"],
                                 f"{k['spill_stores']}/{k['spill_loads']}", k["stack_bytes"], k["static_shared_bytes"]))
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="90", choices=sorted(LIMITS), help="compute capability (default 90)")
    parser.add_argument("--out", help="output path without extension (default benchmarks/results/ptxas-smXX)")
    parser.add_argument("--log", help="parse this `nvcc -Xptxas -v` log instead of compiling")
    args = parser.parse_args(argv)
    out = args.out or os.path.join(ROOT, "benchmarks", "results", f"ptxas-sm{args.arch}")
    if args.log:
        with open(args.log) as f:
            log, command = f.read(), None
    else:
        log, command = compile_log(args.arch)
    kernels = parse_ptxas(log)
    if not kernels:
        sys.exit("no kernel entries found in the ptxas output")
    rows = variant_rows(kernels, args.arch)
    version = subprocess.run([shutil.which("nvcc") or "nvcc", "--version"], capture_output=True, text=True).stdout
    nvcc_version = (re.findall(r"release [\d.]+, V[\d.]+", version) or ["?"])[0]
    date = datetime.date.today().isoformat()
    header = (f"ptxas report, sm_{args.arch}, nvcc {nvcc_version}, {date}: csrc/temporal_conv_cuda.cu "
              f"(python benchmarks/ptxas_report.py --arch {args.arch})")
    result = dict(arch=f"sm_{args.arch}", nvcc=nvcc_version, date=date, limits=LIMITS[args.arch], shapes=SHAPES,
                  command=" ".join(command[:2] + ["-Xptxas", "-v", "..."]) if command else None,
                  kernels=kernels, variants=rows)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    text = table(rows, kernels, args.arch, header)
    with open(out + ".txt", "w") as f:
        f.write(text)
    print(text.split("\n\nEvery kernel")[0])
    print(f"wrote {out}.json and {out}.txt ({len(kernels)} kernels, {len(rows)} variant rows)")
    return result


if __name__ == "__main__":
    main()
