"""End-to-end benchmark: one training step of a frozen timm ViT with 12 ST-Adapters (pre-MLP, as the
authors' Kinetics-400 model), the authors' adapter computation against ours, same weights and inputs.
"""
import copy
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


def end_to_end(device, quick=False, model_name=None, clips=None, frames=8, img_size=224, adapter_channels=384,
               backends=None, steps=None):
    """Time one training step (forward, backward, AdamW) per adapter backend; bf16 autocast on a GPU."""
    model_name = model_name or ("vit_base_patch16_224" if device == "cuda" else "vit_tiny_patch16_224")
    clips = clips or (8 if device == "cuda" else 1)
    backends = backends or {"reference adapters": "reference", "st-adapter-fast": "auto"}
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
        with autocast:
            saved = saved_activation_bytes(lambda: model(video), *model.parameters())
        result["variants"][name] = dict(
            backend=backend, step_ms=statistics.median(times), spread_ms=(min(times), max(times)),
            peak_memory_bytes=torch.cuda.max_memory_allocated() if device == "cuda" else None,
            saved_for_backward_bytes=saved)
        v = result["variants"][name]
        print(f"e2e {model_name} {clips}x{frames} frames: {name:20s} step {v['step_ms']:.1f} ms, saved for backward "
              f"{saved / 2**20:.1f} MiB" + (f", peak {v['peak_memory_bytes'] / 2**30:.2f} GiB" if device == "cuda" else ""),
              flush=True)
    return result
