"""The path users train on: mixed precision that really reaches the backbone, and activation
checkpointing through the adapters on every backend."""
import pytest
import torch
from torch.utils.checkpoint import checkpoint

import st_adapter_fast as saf
from conftest import DEVICE
from st_adapter_fast.integrations.timm import build_video_classifier
from st_adapter_fast.measure import linear_compute_dtypes
from st_adapter_fast.bench.parity import rel_err

timm = pytest.importorskip("timm")
DEPTH = 2
TINY = dict(img_size=32, patch_size=8, depth=DEPTH, embed_dim=48, num_heads=3)   # 4 x 4 patches


def classifier(**kwargs):
    torch.manual_seed(0)
    model = build_video_classifier("vit_tiny_patch16_224", 5, num_frames=2, adapter_channels=16, dropout=0.0,
                                   model_kwargs=TINY, placement=("attn", "mlp"), **kwargs)
    with torch.no_grad():   # random non-zero adapters: the default init is the identity
        for name, p in model.named_parameters():
            if ".st_adapter_" in name:
                p.normal_(0, 0.2)
    return model


def backbone_linear_count():
    return 4 * DEPTH   # qkv, proj, fc1, fc2 per block


@pytest.mark.parametrize("backbone_dtype", [None, torch.bfloat16])
def test_outer_autocast_reaches_every_backbone_linear(backbone_dtype):
    model = classifier(backbone_dtype=backbone_dtype)
    video = torch.randn(2, 3, 2, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16), linear_compute_dtypes(model.backbone) as seen:
        model(video)
    assert seen == {"bfloat16": backbone_linear_count()}


def test_backbone_dtype_alone_runs_the_backbone_in_it_and_fp32_stays_fp32():
    video = torch.randn(2, 3, 2, 32, 32)
    for backbone_dtype, expected in ((torch.bfloat16, "bfloat16"), (None, "float32")):
        model = classifier(backbone_dtype=backbone_dtype)
        with linear_compute_dtypes(model.backbone) as seen:
            logits = model(video)
        assert seen == {expected: backbone_linear_count()} and logits.dtype == torch.float32


def loss_and_adapter_grads(model, video, labels):
    loss = torch.nn.functional.cross_entropy(model(video).float(), labels)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if ".st_adapter_" in n}


def test_bf16_training_agrees_with_fp32_within_bf16_tolerance():
    video, labels = torch.randn(2, 3, 2, 32, 32), torch.tensor([1, 3])
    loss32, grads32 = loss_and_adapter_grads(classifier(), video, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, grads16 = loss_and_adapter_grads(classifier(backbone_dtype=torch.bfloat16), video, labels)
    assert rel_err(loss16, loss32) < 2e-2
    assert grads16.keys() == grads32.keys() and len(grads32) == 2 * DEPTH * 6
    errors = {n: rel_err(grads16[n], grads32[n]) for n in grads32}
    assert max(errors.values()) < 5e-2, errors


BACKENDS = ["reference", pytest.param(DEVICE, marks=pytest.mark.compiled),
            pytest.param("triton", marks=pytest.mark.triton)]


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_adapter_under_torch_utils_checkpoint(backend, use_reentrant):
    torch.manual_seed(0)
    adapter = saf.STAdapter(24, 12, backend=backend).to(DEVICE)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2 * 3, 1 + 9, 24, device=DEVICE, requires_grad=True)
    grad_y = torch.randn_like(x)

    def gradients(run):
        x.grad = None
        adapter.zero_grad()
        run().backward(grad_y)
        return [x.grad.clone()] + [p.grad.clone() for p in adapter.parameters()]

    plain = gradients(lambda: adapter(x, 3))
    checkpointed = gradients(lambda: checkpoint(adapter, x, 3, use_reentrant=use_reentrant))
    for a, b in zip(checkpointed, plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_timm_grad_checkpointing_gives_the_same_gradients(backend):
    video, labels = torch.randn(2, 3, 2, 32, 32, device=DEVICE), torch.tensor([1, 3], device=DEVICE)
    results = []
    for enabled in (False, True):
        model = classifier(backend=backend).to(DEVICE)
        model.backbone.set_grad_checkpointing(enabled)
        results.append(loss_and_adapter_grads(model, video, labels))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss)
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
