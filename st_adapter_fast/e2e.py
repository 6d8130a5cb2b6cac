"""End-to-end benchmark: one training step of a frozen timm ViT with 12 ST-Adapters (pre-MLP, as the
authors' Kinetics-400 model), the authors' adapter computation against ours, same weights and inputs.

The adapted block below is a benchmark-local wrapper (the library's timm integration is separate work).
"""
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from .measure import saved_activation_bytes
from .module import STAdapter


class PreMLPAdapterBlock(nn.Module):
    """A timm ViT block with an adapter on the residual stream between the attention and MLP branches."""

    def __init__(self, block, adapter, num_frames):
        super().__init__()
        self.block, self.adapter, self.num_frames = block, adapter, num_frames

    def forward(self, x, attn_mask=None):
        b = self.block
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x), attn_mask=attn_mask)))
        x = self.adapter(x, self.num_frames)
        return x + b.drop_path2(b.ls2(b.mlp(b.norm2(x))))


def build_video_vit(model_name, num_frames, adapter_channels=384, img_size=224, num_classes=400, backend="auto"):
    """A timm ViT (random init) with an adapter before every MLP; only adapters and head train."""
    import timm
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, img_size=img_size)
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    model.blocks = nn.Sequential(*[
        PreMLPAdapterBlock(block, STAdapter(model.embed_dim, adapter_channels, num_prefix_tokens=model.num_prefix_tokens,
                                            backend=backend), num_frames)
        for block in model.blocks])
    return model


def video_logits(model, video):
    """(B, 3, T, H, W) -> (B, classes): frames through the backbone, class token averaged over time."""
    clips, _, frames, height, width = video.shape
    features = model.forward_features(video.transpose(1, 2).reshape(clips * frames, 3, height, width))
    return model.head(features[:, 0].reshape(clips, frames, -1).mean(1))


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
    base = build_video_vit(model_name, frames, adapter_channels, img_size, backend="reference").to(device)
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
                loss = F.cross_entropy(video_logits(model, video), labels)
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
            saved = saved_activation_bytes(lambda: video_logits(model, video), *model.parameters())
        result["variants"][name] = dict(
            backend=backend, step_ms=statistics.median(times), spread_ms=(min(times), max(times)),
            peak_memory_bytes=torch.cuda.max_memory_allocated() if device == "cuda" else None,
            saved_for_backward_bytes=saved)
        v = result["variants"][name]
        print(f"e2e {model_name} {clips}x{frames} frames: {name:20s} step {v['step_ms']:.1f} ms, saved for backward "
              f"{saved / 2**20:.1f} MiB" + (f", peak {v['peak_memory_bytes'] / 2**30:.2f} GiB" if device == "cuda" else ""),
              flush=True)
    return result
