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
