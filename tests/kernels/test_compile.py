"""torch.compile(fullgraph=True) of a model that uses STAdapter: no graph break, same results as eager."""
import pytest
import torch
from torch import nn

import st_adapter_fast as saf
from conftest import DEVICE


class TinyVideoBlock(nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.norm = nn.LayerNorm(24)
        self.adapter = saf.STAdapter(24, 12, backend=backend)
        self.proj = nn.Linear(24, 24)

    def forward(self, x):
        return self.proj(self.adapter(self.norm(x), 3))


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=pytest.mark.triton), "reference",
                                     pytest.param("auto", marks=pytest.mark.compiled)])
def test_compile_fullgraph_matches_eager(backend, tmp_path, monkeypatch):
    # A fresh inductor cache: cached graphs do not see changes to the ops' fake implementations.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyVideoBlock(backend).to(DEVICE)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(6, 1 + 9, 24, device=DEVICE, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)

    y_eager = model(x)
    y_eager.square().sum().backward()
    grads_eager = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]
    x.grad = None
    model.zero_grad()

    y = compiled(x)
    y.square().sum().backward()
    grads = [x.grad] + [p.grad for p in model.parameters()]
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-5)
    for g, g_eager in zip(grads, grads_eager):
        torch.testing.assert_close(g, g_eager, rtol=1e-4, atol=1e-4)


def random_adapter(backend, channels=16, adapter_channels=8):
    torch.manual_seed(0)
    adapter = saf.STAdapter(channels, adapter_channels, backend=backend).to(DEVICE)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.3)
    reference = saf.STAdapterReference(channels, adapter_channels).to(DEVICE)
    reference.load_state_dict(adapter.state_dict())
    return adapter, reference


COMPILE_BACKENDS = [pytest.param("triton", marks=pytest.mark.triton), "reference",
                    pytest.param("auto", marks=pytest.mark.compiled)]


@pytest.mark.parametrize("dynamic", [None, True])
@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_compile_across_token_and_frame_counts(backend, dynamic, tmp_path, monkeypatch):
    """Without grid_size: 4x4+1 then 5x5+1 tokens (the second call makes the token count dynamic), other
    frame counts and batches; forward and gradients as eager's reference. The reference path's graphs
    (conv3d, permutes) take inductor minutes to build for the CPU, so it is traced with aot_eager: what
    failed here was tracing (dynamo, fake tensors), not code generation."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    adapter, reference = random_adapter(backend)
    compile_backend = "aot_eager" if backend == "reference" and DEVICE == "cpu" else "inductor"
    compiled = torch.compile(adapter, fullgraph=True, dynamic=dynamic, backend=compile_backend)
    for side, frames, batch in [(4, 3, 2), (5, 3, 2), (3, 2, 3), (6, 4, 1)]:
        x = torch.randn(batch * frames, side * side + 1, 16, device=DEVICE, requires_grad=True)
        y = compiled(x, frames)
        (grad_x,) = torch.autograd.grad(y.square().sum(), x)
        y_ref = reference(x, frames)
        (grad_x_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grad_x, grad_x_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", pytest.param("auto", marks=pytest.mark.compiled)])
def test_export_with_dynamic_batch_and_token_count(backend):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.adapter = random_adapter(backend)[0]

        def forward(self, x):
            return self.adapter(x, 4)

    model = Model()
    # The reference's reshapes specialise a batch of 1 clip (torch's 0/1 specialisation): it exports for 2 up.
    min_clips = 2 if backend == "reference" else 1
    clips, tokens = torch.export.Dim("clips", min=min_clips, max=64), torch.export.Dim("tokens", min=3, max=1025)
    exported = torch.export.export(model, (torch.randn(2 * 4, 4 * 4 + 1, 16, device=DEVICE),),
                                   dynamic_shapes=({0: 4 * clips, 1: tokens},))
    for batch, side in [(3, 5), (min_clips, 7), (2, 2)]:
        x = torch.randn(batch * 4, side * side + 1, 16, device=DEVICE)
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.compiled
def test_double_backward_under_compile_raises_a_clear_error(tmp_path, monkeypatch):
    """torch.compile's autograd (AOTAutograd) does not support double backward: an error, not wrong gradients."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    adapter = torch.compile(random_adapter("auto")[0], fullgraph=True)
    x = torch.randn(6, 10, 16, device=DEVICE, requires_grad=True)
    with pytest.raises(RuntimeError, match="double backward"):
        (grad_x,) = torch.autograd.grad(adapter(x, 3).sum(), x, create_graph=True)
        grad_x.square().sum().backward()
