"""End-to-end benchmark: one training step of a frozen timm ViT with 12 ST-Adapters (pre-MLP, as the
authors' Kinetics-400 model), the authors' adapter computation against ours, same weights and inputs.
"""
import copy
import gc
import statistics
import time

import torch
import torch.nn.functional as F

from .integrations.timm import build_video_classifier
from .measure import saved_activation_bytes
from .module import STAdapter


def _set_backend(model, backend):
    for m in model.modules():
        if isinstance(m, STAdapter):
            m.backend = backend


def _measure_variant(base, backend, video, labels, autocast, steps, device):
    """Step time, peak memory and bytes saved for backward, on a copy of `base`. The peak counts what this
    variant allocates (its model copy, optimizer state, activations) above what was allocated before it:
    the base model and inputs, and anything an earlier variant left to the garbage collector."""
    resting = torch.cuda.memory_allocated() if device == "cuda" else 0
    model = copy.deepcopy(base)
    _set_backend(model, backend)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step():
        with autocast:
            loss = F.cross_entropy(model(video), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() - resting if device == "cuda" else None
    with autocast:
        saved = saved_activation_bytes(lambda: model(video), *model.parameters())
    return dict(backend=backend, step_ms=statistics.median(times), spread_ms=(min(times), max(times)),
                peak_memory_bytes=peak, saved_for_backward_bytes=saved)


def _default_backends(device):
    backends = {"reference adapters": "reference", "st-adapter-fast (auto)": "auto"}
    if device == "cuda":
        backends["st-adapter-fast (triton)"] = "triton"
    return backends


def end_to_end(device, quick=False, model_name=None, clips=None, frames=8, img_size=224, adapter_channels=384,
               backends=None, steps=None):
    """Time one training step (forward, backward, AdamW) per adapter backend; bf16 autocast on a GPU."""
    model_name = model_name or ("vit_base_patch16_224" if device == "cuda" else "vit_tiny_patch16_224")
    clips = clips or (8 if device == "cuda" else 1)
    backends = backends or _default_backends(device)
    steps = steps or (3 if quick else 10)
    torch.manual_seed(0)
    base = build_video_classifier(model_name, 400, num_frames=frames, adapter_channels=adapter_channels,
                                  dropout=0.0, model_kwargs=dict(img_size=img_size), backend="reference").to(device)
    video = torch.randn(clips, 3, frames, img_size, img_size, device=device)
    labels = torch.randint(0, 400, (clips,), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    result = dict(model=model_name, clips=clips, frames=frames, img_size=img_size, adapter_channels=adapter_channels,
                  autocast="bfloat16" if device == "cuda" else None, variants={})
    for name, backend in backends.items():
        v = result["variants"][name] = _measure_variant(base, backend, video, labels, autocast, steps, device)
        gc.collect()   # adapted models hold reference cycles (hooks -> blocks); free this one before the next
        print(f"e2e {model_name} {clips}x{frames} frames: {name:20s} step {v['step_ms']:.1f} ms, saved for backward "
              f"{v['saved_for_backward_bytes'] / 2**20:.1f} MiB"
              + (f", peak {v['peak_memory_bytes'] / 2**30:.2f} GiB" if device == "cuda" else ""), flush=True)
    return result
