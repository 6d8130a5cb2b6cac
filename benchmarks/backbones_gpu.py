"""Every library's backbone on the GPU: exactness in half precision and one training step per library.

    python benchmarks/backbones_gpu.py --out backbones.json [--clips 8] [--steps 10]

ViT-B/16-sized random-weight backbones of timm (OpenAI CLIP with QuickGELU), Hugging Face (CLIP, DINOv2,
DINOv3) and open_clip (ViT-B-16-quickgelu), 12 adapters of 384 channels before every MLP, 8 frames of 224 px:

- exactness: with adapters at their identity init, and with them disabled, the backbone's image features are
  exactly the plain backbone's, in float16 and bfloat16 (CUDA kernels, cuBLAS): mismatching elements counted;
- step: one training step (forward, backward, AdamW) of the VideoClassifier, frozen weights in bf16 under bf16
  autocast: median step time and peak memory, so that each library's hooks can be compared with timm's.

Needs a GPU and the [hf] and [open_clip] extras; writes JSON to --out.
"""
import argparse
import copy
import json
import statistics
import time

import torch
import torch.nn.functional as F

import st_adapter_fast as saf
from st_adapter_fast.integrations.backbones import backbone_type, create_backbone

VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=224, patch_size=16)
BACKBONES = {
    "timm CLIP": ("vit_base_patch16_clip_quickgelu_224", {}),
    "hf CLIP": ("hf:clip", dict(VIT_B, intermediate_size=3072, hidden_act="quick_gelu")),
    "hf DINOv2": ("hf:dinov2", VIT_B),
    "hf DINOv3": ("hf:dinov3_vit", dict(VIT_B, intermediate_size=3072, num_register_tokens=4)),
    "open_clip": ("open_clip:ViT-B-16-quickgelu", {}),
}


def exactness(spec, kwargs, dtype, images):
    """Elements of the image features that differ from the plain backbone's: adapters at init, disabled."""
    torch.manual_seed(0)
    plain = create_backbone(spec, **kwargs).eval().to(images.device, dtype)
    model = saf.add_st_adapters(copy.deepcopy(plain), 384, placement="mlp", num_frames=8, activation=None)
    model.to(dtype)
    features = backbone_type(plain).library.features
    with torch.no_grad():
        expected = features(plain, images.to(dtype))
        at_init = features(model, images.to(dtype))
        with saf.disable_adapters(model):
            disabled = features(model, images.to(dtype))
    return dict(elements=expected.numel(), at_init_differ=int((at_init != expected).sum()),
                disabled_differ=int((disabled != expected).sum()))


def training_step(spec, kwargs, clips, steps, device="cuda", size=224):
    """Median ms and peak memory (GPU) of one training step of the VideoClassifier."""
    model = saf.build_video_classifier(spec, 400, num_frames=8, adapter_channels=384, activation=None,
                                       dropout=0.0, backbone_dtype=torch.bfloat16, model_kwargs=kwargs,
                                       seed=0).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    video = torch.randn(clips, 3, 8, size, size, device=device)
    labels = torch.randint(0, 400, (clips,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times = []
    for i in range(steps + 2):   # two warm-up steps
        if i == 2 and device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(video), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return dict(step_ms=statistics.median(times[2:]), peak_memory_gib=peak)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--clips", type=int, default=8, help="clips per training step (8 frames each)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per library")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    torch.manual_seed(1)
    images = torch.randn(64, 3, 224, 224, device="cuda")
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, clips=args.clips, backbones={})
    for name, (spec, kwargs) in BACKBONES.items():
        entry = result["backbones"][name] = dict(spec=spec)
        for dtype in (torch.float16, torch.bfloat16):
            entry[str(dtype).replace("torch.", "")] = exactness(spec, kwargs, dtype, images)
        entry.update(training_step(spec, kwargs, args.clips, args.steps))
        torch.cuda.empty_cache()
        print(name, json.dumps(entry), flush=True)
        with open(args.out, "w") as f:   # after each backbone: partial results survive a time limit
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
