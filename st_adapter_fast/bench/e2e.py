"""End-to-end benchmark: one training step (forward, backward, AdamW) of the authors' video model.

The authors' setting: OpenAI CLIP ViT-B/16 (QuickGELU, `vit_base_patch16_clip_quickgelu_224`), 12
adapters of 384 channels before the MLPs (no activation, as their release), 8 frames of 224 px, frozen
weights in bf16, bf16 autocast, AdamW on adapters and head. Variants, same weights and inputs:

    no adapters            frozen backbone + head: the floor (no backward through the backbone at all)
    reference              the authors' adapter computation (permute + Conv3d)
    fast                   ours (backend "auto")
    reference compiled     torch.compile of the whole classifier, reference adapters
    fast compiled          torch.compile of the whole classifier, our adapters
    fast + checkpointing   ours, with timm's activation checkpointing of every block

Per variant: step time (median and spread of synchronised steps), clips/s, peak memory above what was
allocated before the variant, the dtype the backbone's Linear layers really computed in (hooks), and a
profile of where the GPU time of a step goes (backbone, adapters forward, adapters backward, optimizer).
"""
import contextlib
import copy
import gc
import statistics
import time

import torch
import torch.nn.functional as F

from ..integrations.timm import build_video_classifier
from ..measure import compute_dtype_name, linear_compute_dtypes
from ..module import STAdapter

VARIANTS = ("no adapters", "reference", "fast", "reference compiled", "fast compiled", "fast + checkpointing")
EAGER_VARIANTS = tuple(v for v in VARIANTS if "compiled" not in v)
AUTHORS_MODEL = "vit_base_patch16_clip_quickgelu_224"


# ------------------------------------------------------------------------------------------- variants


def set_backend(model, backend):
    """Set `backend` on every STAdapter inside `model` (the same weights, another implementation)."""
    for m in model.modules():
        if isinstance(m, STAdapter):
            m.backend = backend


def _variant_model(base, plain, name, compile_backend):
    """(module to call, module whose parameters train) for variant `name`, on copies of `base`/`plain`."""
    model = copy.deepcopy(plain if name == "no adapters" else base)
    if name != "no adapters":
        set_backend(model, "reference" if name.startswith("reference") else "auto")
    if name == "fast + checkpointing":
        model.backbone.set_grad_checkpointing(True)
    call = torch.compile(model, backend=compile_backend) if "compiled" in name else model
    return call, model


# ------------------------------------------------------------------------------------------- profile


class _AdapterNode(torch.autograd.Function):
    """One autograd node around an adapter call (profiled steps only): the profile then finds all of the
    adapter's backward kernels under this node's name, for the reference's many ops as for ours. The
    inner graph stays on ctx (not save_for_backward: it is no input or output of this node)."""

    @staticmethod
    def forward(ctx, adapter, num_frames, grid_size, x, *params):
        with torch.enable_grad():
            ctx.inputs = [x.detach().requires_grad_(x.requires_grad)] + list(params)
            ctx.y = _unwrapped_forward(adapter, ctx.inputs[0], num_frames, grid_size)
        return ctx.y.detach()

    @staticmethod
    def backward(ctx, grad_y):
        wanted = [t for t in ctx.inputs if t.requires_grad]
        with torch.enable_grad():
            grads = iter(torch.autograd.grad(ctx.y, wanted, grad_y))
        return (None, None, None) + tuple(next(grads) if t.requires_grad else None for t in ctx.inputs)


_unwrapped_forward = STAdapter.forward


@contextlib.contextmanager
def _adapters_as_profiled_nodes():
    """Every STAdapter call runs as one `_AdapterNode` inside a record_function("adapters.forward")."""
    def forward(adapter, x, num_frames, grid_size=None):
        with torch.profiler.record_function("adapters.forward"):
            return _AdapterNode.apply(adapter, num_frames, grid_size, x, *adapter.parameters())

    STAdapter.forward = forward
    try:
        yield
    finally:
        STAdapter.forward = _unwrapped_forward


PHASES = ("step.forward", "step.backward", "step.optimizer")


def _breakdown(prof, steps, use_cuda):
    """Per-step time of each part of a step, from a profile of `steps` steps whose phases ran in
    record_function ranges PHASES, each ending with a synchronisation, and whose adapters ran as
    _AdapterNode (forward inside "adapters.forward"). On a GPU: kernel time, each kernel counted in the
    phase whose host range it started in (backward's kernels come from autograd's own thread); on the
    CPU: host time."""
    from torch.autograd import DeviceType
    events = prof.events()
    host = [e for e in events if e.device_type == DeviceType.CPU]
    ranges = lambda name: [e for e in host if e.name == name]
    if use_cuda:
        kernels = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]

        def phase_ms(name):
            windows = [(e.time_range.start, e.time_range.end) for e in ranges(name)]
            return sum(k.time_range.elapsed_us() for k in kernels
                       if any(start <= k.time_range.start <= end for start, end in windows)) / 1e3
        inside_ms = lambda name: sum(e.device_time_total for e in ranges(name)) / 1e3
    else:
        phase_ms = inside_ms = lambda name: sum(e.cpu_time_total for e in ranges(name)) / 1e3
    forward, backward, optimizer = (phase_ms(name) / steps for name in PHASES)
    adapters_forward = inside_ms("adapters.forward") / steps
    adapters_backward = inside_ms("_AdapterNodeBackward") / steps
    return dict(total_ms=forward + backward + optimizer, forward_ms=forward, backward_ms=backward,
                optimizer_ms=optimizer, adapters_forward_ms=adapters_forward, adapters_backward_ms=adapters_backward,
                backbone_ms=forward + backward - adapters_forward - adapters_backward)


# ------------------------------------------------------------------------------------------- one variant


def _train_step(call, optimizer, video, labels, autocast, sync=lambda: None):
    """One training step; `sync` ends each phase (profiled steps: kernels then fall inside their range)."""
    with torch.profiler.record_function(PHASES[0]):
        with autocast:
            loss = F.cross_entropy(call(video), labels)
        sync()
    with torch.profiler.record_function(PHASES[1]):
        loss.backward()
        sync()
    with torch.profiler.record_function(PHASES[2]):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()


def _synchronize(device):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _time_steps(step, steps, device):
    sync = _synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _profile(step, steps, device, profile_adapters):
    activities = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with (_adapters_as_profiled_nodes() if profile_adapters else contextlib.nullcontext()), \
            torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step(sync=_synchronize(device))
    return _breakdown(prof, steps, device == "cuda")


def measure_variant(name, base, plain, video, labels, device, steps, warmup=2, profile_steps=2,
                    compile_backend="inductor"):
    """Timing, memory and profile of one variant's training step (see the module docstring)."""
    resting = torch.cuda.memory_allocated() if device == "cuda" else 0
    call, model = _variant_model(base, plain, name, compile_backend)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    step = lambda sync=lambda: None: _train_step(call, optimizer, video, labels, autocast, sync)
    # Hooks inside a compiled graph would be traced into it, and removing them would recompile it.
    observe = linear_compute_dtypes(model.backbone) if "compiled" not in name else contextlib.nullcontext({})
    with observe as seen:
        step()   # the first step: compilation, autotuning, optimizer state
    for _ in range(warmup - 1):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = _time_steps(step, steps, device)
    peak = torch.cuda.max_memory_allocated() - resting if device == "cuda" else None
    # Adapters are told apart in eager variants only: compiled graphs fuse them into the model, and a
    # checkpointed block recomputes them inside its own backward.
    apart = name in ("reference", "fast")
    breakdown = _profile(step, profile_steps, device, profile_adapters=apart)
    if not apart and name != "no adapters":
        breakdown.update(adapters_forward_ms=None, adapters_backward_ms=None, backbone_ms=None)
    median = statistics.median(times)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [median, median, median]
    return dict(step_ms=median, step_ms_quartiles=[quartiles[0], quartiles[2]], step_ms_range=[min(times), max(times)],
                clips_per_s=len(video) / (median / 1e3), peak_memory_bytes=peak, breakdown_ms=breakdown,
                backbone_compute_dtype=compute_dtype_name(seen))


# ------------------------------------------------------------------------------------------- the benchmark


def build_models(device, model_name=AUTHORS_MODEL, frames=8, img_size=224, adapter_channels=384, num_classes=400):
    """(adapted classifier, the same backbone and head without adapters), frozen weights in bf16 on a GPU."""
    backbone_dtype = torch.bfloat16 if device == "cuda" else None
    common = dict(num_frames=frames, dropout=0.0, backbone_dtype=backbone_dtype, model_kwargs=dict(img_size=img_size),
                  adapter_channels=adapter_channels, placement=("mlp",), activation=None)
    torch.manual_seed(0)
    base = build_video_classifier(model_name, num_classes, **common).to(device)
    plain = build_video_classifier(model_name, num_classes, layers=[], **common).to(device)
    plain.load_state_dict(base.state_dict(), strict=False)   # the same backbone and head weights
    return base, plain


def _largest_clips_that_fit(peak_per_clip, resting, choices=(64, 32)):
    if not torch.cuda.is_available() or peak_per_clip is None:
        return choices[-1]
    free = torch.cuda.get_device_properties(0).total_memory * 0.9 - resting
    return next((c for c in choices if c * peak_per_clip < free), choices[-1])


def run_config(base, plain, clips, variants, device, frames, img_size, steps, compile_backend, log=print,
               results=None, after_each=lambda: None):
    """{variant: measurements} for one batch of `clips` clips (fewer warm-up and profiled steps on the CPU,
    where this is a smoke run), filled into `results` as they come, calling `after_each()` after each."""
    repeats = dict(warmup=2, profile_steps=2) if device == "cuda" else dict(warmup=1, profile_steps=1)
    torch.manual_seed(1)
    video = torch.randn(clips, 3, frames, img_size, img_size, device=device)
    labels = torch.randint(0, base.head.out_features, (clips,), device=device)
    results = {} if results is None else results
    for name in variants:
        started = time.perf_counter()
        results[name] = v = measure_variant(name, base, plain, video, labels, device, steps,
                                            compile_backend=compile_backend, **repeats)
        gc.collect()   # adapted models hold reference cycles (hooks -> blocks); free this one before the next
        peak = f", peak {v['peak_memory_bytes'] / 2**30:.2f} GiB" if v["peak_memory_bytes"] is not None else ""
        log(f"e2e {clips:3d} clips  {name:22s} step {v['step_ms']:8.2f} ms ({v['clips_per_s']:7.1f} clips/s){peak}, "
            f"backbone in {v['backbone_compute_dtype']}  [{time.perf_counter() - started:.0f} s]")
        after_each()
    return results


def goals(variants):
    """The training-path issue's ratios, where the variants they need were measured."""
    step = lambda n: variants[n]["step_ms"] if n in variants else None
    peak = lambda n: variants[n]["peak_memory_bytes"] if n in variants else None
    ratio = lambda a, b: a / b if a and b else None
    return {"reference / fast (goal >= 1.25)": ratio(step("reference"), step("fast")),
            "fast / no adapters (goal <= 1.15)": ratio(step("fast"), step("no adapters")),
            "reference compiled / fast compiled (goal >= 1.10)": ratio(step("reference compiled"), step("fast compiled")),
            "peak fast / reference (goal <= 0.85)": ratio(peak("fast"), peak("reference")),
            "checkpointing: peak / without": ratio(peak("fast + checkpointing"), peak("fast")),
            "checkpointing: step / without": ratio(step("fast + checkpointing"), step("fast"))}


def end_to_end(device, quick=False, model_name=None, clips=None, frames=8, img_size=224, adapter_channels=384,
               variants=None, steps=None, compile_backend="inductor", log=print, on_progress=None):
    """Run the benchmark; returns the JSON-ready result. On a GPU: the authors' model at 8 clips (eager
    variants) and at the largest of 64 / 32 clips that fits (all variants); on the CPU: `model_name`
    (default a tiny ViT) at `clips` (default 1), every variant, as a smoke run. `on_progress(result)` is
    called with the result so far after each variant (a long run's partial results survive it)."""
    on_gpu = device == "cuda"
    model_name = model_name or (AUTHORS_MODEL if on_gpu else "vit_tiny_patch16_224")
    steps = steps or (3 if quick else (10 if on_gpu else 2))
    base, plain = build_models(device, model_name, frames, img_size, adapter_channels)
    with linear_compute_dtypes(base.backbone) as seen, torch.no_grad(), \
            torch.autocast(device, dtype=torch.bfloat16, enabled=on_gpu):
        base(torch.zeros(1, 3, frames, img_size, img_size, device=device))
    result = dict(model=model_name, frames=frames, img_size=img_size, adapter_channels=adapter_channels,
                  placement="12 x pre-MLP" if model_name == AUTHORS_MODEL else "pre-MLP, every block",
                  backbone_weights_dtype="bfloat16" if on_gpu else "float32",
                  autocast="bfloat16" if on_gpu else None, backbone_compute_dtype=compute_dtype_name(seen),
                  by_clips={})
    def run(n, names):
        by_clips = result["by_clips"][str(n)] = {}
        result.update(clips=n, variants=by_clips)

        def after_each():
            result["goals"] = goals(by_clips)
            if on_progress:
                on_progress(result)
        return run_config(base, plain, n, names, device, frames, img_size, steps, compile_backend, log, by_clips,
                          after_each)

    if clips is not None or not on_gpu:
        run(clips or 1, variants or VARIANTS)
    else:
        resting = torch.cuda.memory_allocated()
        small = run(8, [v for v in (variants or VARIANTS) if v in EAGER_VARIANTS])
        per_clip = max(v["peak_memory_bytes"] for v in small.values()) / 8
        run(_largest_clips_that_fit(per_clip, resting), variants or VARIANTS)
    return result
