"""End-to-end benchmark: one training step (forward, backward, AdamW) of the authors' video model.

The authors' setting: OpenAI CLIP ViT-B/16 (QuickGELU, `vit_base_patch16_clip_quickgelu_224`), 12
adapters of 384 channels before the MLPs (no activation, as their release), 8 frames of 224 px, frozen
weights in bf16, bf16 autocast, AdamW on adapters and head. Variants, same weights and inputs:

    no adapters                      frozen backbone + head: no backward through the backbone at all
    backward floor                   the frozen backbone with a zero-cost trainable op at each adapter place (a
                                     per-channel scale initialised to one): its forward plus the input-gradient
                                     backward, nothing else; what any adapter implementation at least costs
    reference                        the authors' adapter computation (permute + Conv3d)
    fast                             ours (backend "auto")
    reference compiled               torch.compile of the whole classifier (compile_model), reference adapters
    fast compiled                    torch.compile of the whole classifier, our adapters
    fast compiled (reduce-overhead)  the same with CUDA graphs of the compiled forward and backward (on a GPU)
    fast + checkpointing             ours, every block recomputed in backward (set_checkpointing "full")
    fast + selective                 ours, selective checkpointing of every block (set_checkpointing "selective")
    fast compiled + selective        both

Per variant: step time (median, quartiles and range of synchronised steps), clips/s, peak memory above what
was allocated before the variant (GPU), the peak of live tensor storage during one more step
(measure.LiveTensorBytes: device-independent, so the memory ratios are checked on the CPU too; not for
inductor-compiled variants, whose buffers it cannot see), the dtype the backbone's Linear layers really
computed in (hooks), a profile of where the GPU time of a step goes (backbone, adapters forward, adapters
backward, optimizer) and, compiled, how many graphs inductor refused to run as CUDA graphs.
"""
import contextlib
import copy
import gc
import statistics
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..integrations.checkpointing import set_checkpointing
from ..compiling import compile_model
from ..integrations.timm import build_video_classifier, remove_st_adapters
from ..measure import LiveTensorBytes, compute_dtype_name, linear_compute_dtypes
from ..module import STAdapter
from ..reference import STAdapterReference


class Variant(NamedTuple):
    """adapters: None (none), "scale" (the backward floor's op), or the adapters' backend; checkpointing: a
    set_checkpointing mode; compile_mode: None (eager) or a compile_model mode."""
    adapters: str = "auto"
    checkpointing: str = "none"
    compile_mode: str = None


VARIANT_SPECS = {
    "no adapters": Variant(adapters=None),
    "backward floor": Variant(adapters="scale"),
    "reference": Variant(adapters="reference"),
    "fast": Variant(),
    "reference compiled": Variant(adapters="reference", compile_mode="default"),
    "fast compiled": Variant(compile_mode="default"),
    "fast compiled (reduce-overhead)": Variant(compile_mode="reduce-overhead"),
    "fast + checkpointing": Variant(checkpointing="full"),
    "fast + selective": Variant(checkpointing="selective"),
    "fast compiled + selective": Variant(checkpointing="selective", compile_mode="default"),
}
VARIANTS = tuple(VARIANT_SPECS)
# On a GPU, by default: per batch, the variants that its goals need (each compiled variant compiles for
# a minute or two); the largest batch runs them all. 64 runs only where it fits (else 32 runs them all).
GPU_PLAN = {8: ("no adapters", "backward floor", "reference", "fast", "fast compiled (reduce-overhead)"),
            32: ("backward floor", "reference", "fast", "reference compiled", "fast compiled"),
            64: VARIANTS}
AUTHORS_MODEL = "vit_base_patch16_clip_quickgelu_224"
# On the CPU by default: the authors' architecture (QuickGELU CLIP, 12 blocks, Ca = C / 2) in miniature
CPU_MODEL = dict(model_name=AUTHORS_MODEL, img_size=64, adapter_channels=64,
                 model_kwargs=dict(patch_size=16, embed_dim=128, num_heads=2))


# ------------------------------------------------------------------------------------------- variants


def set_backend(model, backend):
    """Set `backend` on every STAdapter inside `model` (the same weights, another implementation)."""
    for m in model.modules():
        if isinstance(m, STAdapter):
            m.backend = backend


class ChannelScale(nn.Module):
    """The backward floor's trainable op at an adapter's place: `x * scale`, a per-channel scale initialised to
    one (the adapter's call signature; the result in x's dtype, as an adapter's under autocast)."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x, num_frames, grid_size=None):
        return x * self.scale.to(x.dtype)


def replace_adapters_with_scales(model):
    """Every adapter inside `model` replaced by a ChannelScale at its place (same device), in place."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, STAdapterReference):
                setattr(parent, name, ChannelScale(child.fc2.out_features).to(child.fc2.weight.device))
    return model


def _variant_model(base, plain, name, compile_backend):
    """(module to call, module whose parameters train) for variant `name`, on copies of `base`/`plain`."""
    variant = VARIANT_SPECS[name]
    model = copy.deepcopy(plain if variant.adapters is None else base)
    if variant.adapters == "scale":
        replace_adapters_with_scales(model)
    elif variant.adapters is not None:
        set_backend(model, variant.adapters)
    if variant.checkpointing != "none":
        set_checkpointing(model, variant.checkpointing)
    if variant.compile_mode is None:
        return model, model
    return compile_model(model, variant.compile_mode, backend=compile_backend), model


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


def _fresh_start(device):
    """Nothing of the previous variant left: compiled graphs (dynamo's cache is shared by every compile of the
    classifier's forward, and counts recompilations against a limit), CUDA-graph pools, cached blocks."""
    torch._dynamo.reset()
    gc.collect()   # adapted models hold reference cycles (hooks -> blocks)
    if device == "cuda":
        torch.cuda.empty_cache()


def measure_variant(name, base, plain, video, labels, device, steps, warmup=2, profile_steps=2,
                    compile_backend="inductor"):
    """Timing, memory and profile of one variant's training step (see the module docstring)."""
    variant = VARIANT_SPECS[name]
    _fresh_start(device)
    resting = torch.cuda.memory_allocated() if device == "cuda" else 0
    call, model = _variant_model(base, plain, name, compile_backend)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    step = lambda sync=lambda: None: _train_step(call, optimizer, video, labels, autocast, sync)
    compiled = variant.compile_mode is not None
    skips_before = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]
    # Hooks inside a compiled graph would be traced into it, and removing them would recompile it.
    observe = linear_compute_dtypes(model.backbone) if not compiled else contextlib.nullcontext({})
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
    if not apart and variant.adapters not in (None, "scale"):
        breakdown.update(adapters_forward_ms=None, adapters_backward_ms=None, backbone_ms=None)
    live = None
    if not (compiled and compile_backend == "inductor"):   # inductor's buffers are invisible to the tracker
        with LiveTensorBytes() as tracker:
            step()
        live = tracker.peak_bytes
    median = statistics.median(times)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [median, median, median]
    return dict(step_ms=median, step_ms_quartiles=[quartiles[0], quartiles[2]], step_ms_range=[min(times), max(times)],
                clips_per_s=len(video) / (median / 1e3), peak_memory_bytes=peak, peak_live_bytes=live,
                breakdown_ms=breakdown, backbone_compute_dtype=compute_dtype_name(seen),
                cudagraph_skips=torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] - skips_before
                if compiled else None)


# ------------------------------------------------------------------------------------------- the benchmark


def build_models(device, model_name=AUTHORS_MODEL, frames=8, img_size=224, adapter_channels=384, num_classes=400,
                 model_kwargs=None):
    """(adapted classifier, the same backbone and head without adapters), frozen weights in bf16 on a GPU."""
    backbone_dtype = torch.bfloat16 if device == "cuda" else None
    common = dict(num_frames=frames, dropout=0.0, backbone_dtype=backbone_dtype,
                  model_kwargs=dict(model_kwargs or {}, img_size=img_size),
                  adapter_channels=adapter_channels, placement=("mlp",), activation=None)
    torch.manual_seed(0)
    base = build_video_classifier(model_name, num_classes, **common).to(device)
    plain = remove_st_adapters(copy.deepcopy(base))   # the same backbone and head weights
    plain.backbone.requires_grad_(False)
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
        memory = "".join(f", {label} {v[key] / 2**20:.1f} MiB" for key, label in (
            ("peak_memory_bytes", "peak"), ("peak_live_bytes", "live tensors")) if v[key] is not None)
        log(f"e2e {clips:3d} clips  {name:32s} step {v['step_ms']:8.2f} ms ({v['clips_per_s']:7.1f} clips/s)"
            f"{memory}, backbone in {v['backbone_compute_dtype']}  [{time.perf_counter() - started:.0f} s]")
        after_each()
    return results


class Goal(NamedTuple):
    """`numerator` / `denominator` variant of `quantity` (step_ms, peak_memory_bytes or peak_live_bytes), to be
    `compare` ("<=" / ">=") `bound` at the batches `clips` (None: any batch); bound None: reported only."""
    numerator: str
    denominator: str
    quantity: str = "step_ms"
    compare: str = None
    bound: float = None
    clips: tuple = None


GOALS = {   # the whole-step issue's goals (authors' K400 model, bf16, H100/H200; the live-bytes one on the CPU)
    "fast / backward floor": Goal("fast", "backward floor", compare="<=", bound=1.10),
    "reference / fast": Goal("reference", "fast", compare=">=", bound=1.35, clips=(64,)),
    "reference / fast compiled": Goal("reference", "fast compiled", compare=">=", bound=2.0, clips=(32, 64)),
    "reference compiled / fast compiled": Goal("reference compiled", "fast compiled", compare=">=", bound=1.2,
                                               clips=(32, 64)),
    "reference / fast compiled (reduce-overhead)": Goal("reference", "fast compiled (reduce-overhead)", compare=">=",
                                                        bound=2.0, clips=(8,)),
    "peak: fast + selective / reference": Goal("fast + selective", "reference", "peak_memory_bytes", "<=", 0.7),
    "step: fast + selective / fast": Goal("fast + selective", "fast", compare="<=", bound=1.08),
    "peak: fast compiled + selective / reference": Goal("fast compiled + selective", "reference", "peak_memory_bytes",
                                                        "<=", 0.6),
    "reference / fast compiled + selective": Goal("reference", "fast compiled + selective", compare=">=", bound=1.5),
    "live tensors: fast + selective / reference": Goal("fast + selective", "reference", "peak_live_bytes", "<=", 0.7),
    "reference / no adapters": Goal("reference", "no adapters"),
    "peak: fast / reference": Goal("fast", "reference", "peak_memory_bytes"),
    "peak: fast + checkpointing / fast": Goal("fast + checkpointing", "fast", "peak_memory_bytes"),
    "step: fast + checkpointing / fast": Goal("fast + checkpointing", "fast"),
}


def goals(variants, clips):
    """{goal name: {value, goal, met}} for the GOALS that apply at `clips` and whose variants were measured
    (`variants`: {name: measure_variant's result}); met is None where the goal has no bound."""
    out = {}
    for name, goal in GOALS.items():
        if goal.clips is not None and clips not in goal.clips:
            continue
        values = [variants.get(v, {}).get(goal.quantity) for v in (goal.numerator, goal.denominator)]
        if not all(values):
            continue
        value = values[0] / values[1]
        met = None if goal.bound is None else (value <= goal.bound if goal.compare == "<=" else value >= goal.bound)
        out[name] = dict(value=value, goal=None if goal.bound is None else f"{goal.compare} {goal.bound}", met=met)
    return out


def end_to_end(device, quick=False, model_name=None, clips=None, frames=8, img_size=None, adapter_channels=None,
               variants=None, steps=None, compile_backend="inductor", log=print, on_progress=None, model_kwargs=None):
    """Run the benchmark; returns the JSON-ready result. On a GPU by default: the authors' model at 8, 32 and the
    largest of 64 / 32 clips that fits, the variants of GPU_PLAN; on the CPU: CPU_MODEL (the authors'
    architecture in miniature) at 2 clips, every variant. `clips`: an int or a list of batches to run
    instead, each with `variants` (default: all). `on_progress(result)` is called with the result so far
    after each variant (a long run's partial results survive it)."""
    on_gpu = device == "cuda"
    defaults = dict(model_name=AUTHORS_MODEL, img_size=224, adapter_channels=384) if on_gpu else CPU_MODEL
    model_name = model_name or defaults["model_name"]
    custom_model = model_name != defaults["model_name"]
    img_size = img_size or (224 if custom_model else defaults["img_size"])
    adapter_channels = adapter_channels or (384 if custom_model else defaults["adapter_channels"])
    model_kwargs = model_kwargs if model_kwargs is not None else ({} if custom_model else defaults.get("model_kwargs"))
    steps = steps or (3 if quick else (10 if on_gpu else 5))
    base, plain = build_models(device, model_name, frames, img_size, adapter_channels, model_kwargs=model_kwargs)
    with linear_compute_dtypes(base.backbone) as seen, torch.no_grad(), \
            torch.autocast(device, dtype=torch.bfloat16, enabled=on_gpu):
        base(torch.zeros(1, 3, frames, img_size, img_size, device=device))
    result = dict(model=model_name, model_kwargs=model_kwargs or {}, frames=frames, img_size=img_size,
                  adapter_channels=adapter_channels, blocks=len(base.backbone.blocks), placement="pre-MLP, every block",
                  backbone_weights_dtype="bfloat16" if on_gpu else "float32",
                  autocast="bfloat16" if on_gpu else None, backbone_compute_dtype=compute_dtype_name(seen),
                  compile_backend=compile_backend, steps=steps, by_clips={}, goal_checks={})

    def run(n, names):
        by_clips = result["by_clips"][str(n)] = {}
        result.update(clips=n, variants=by_clips)

        def after_each():
            checks = result["goal_checks"][str(n)] = goals(by_clips, n)
            result["goals"] = {name: check["value"] for name, check in checks.items()}   # of the latest batch
            if on_progress:
                on_progress(result)
        return run_config(base, plain, n, names, device, frames, img_size, steps, compile_backend, log, by_clips,
                          after_each)

    if clips is not None or not on_gpu:
        for n in [clips] if isinstance(clips, int) else (clips or [2]):
            run(n, variants or VARIANTS)
        return result
    resting = torch.cuda.memory_allocated()
    plan = {n: [v for v in names if variants is None or v in variants] for n, names in GPU_PLAN.items()}
    small = run(8, plan[8])
    per_clip = max(v["peak_memory_bytes"] for v in small.values()) / 8
    largest = _largest_clips_that_fit(per_clip, resting)
    for n in (32, 64) if largest == 64 else (32,):
        run(n, plan[64] if n == largest else plan[n])
    return result
