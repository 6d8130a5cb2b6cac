"""compile_model: one graph where dynamo can trace one (a warning and graph breaks where it cannot), the
modes, and the model's attributes through the wrapper. aot_eager keeps these quick (no code generation)."""
import pytest
import torch

import st_adapter_fast as saf
from st_adapter_fast.compiling import BACKEND_VARIABLE, CompiledModel


class Breaks(torch.nn.Module):
    """A model dynamo cannot trace as one graph."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
        self.label = "breaks"

    def forward(self, x):
        y = self.linear(x)
        torch._dynamo.graph_break()
        return y.relu()


@pytest.fixture(autouse=True)
def fresh_dynamo(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()


def test_a_graph_break_falls_back_with_a_warning_and_the_same_result():
    model = Breaks()
    compiled = saf.compile_model(model, backend="aot_eager")
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match="Breaks does not compile as one graph.*graph breaks"):
        y = compiled(x)
    torch.testing.assert_close(y, model(x))
    assert not compiled.fullgraph
    torch.testing.assert_close(compiled(x), model(x))   # no second warning, no error


def test_the_wrapper_is_the_model_for_attributes_and_keeps_its_parameters():
    model = Breaks()
    compiled = saf.compile_model(model, backend="aot_eager")
    assert isinstance(compiled, CompiledModel) and compiled.module is model
    assert compiled.label == "breaks" and compiled.linear is model.linear
    assert list(compiled.state_dict()) == ["module.linear.weight", "module.linear.bias"]
    assert [p for p in compiled.parameters()] == [p for p in model.parameters()]


def test_modes_are_checked_and_reduce_overhead_warns_off_a_gpu(monkeypatch):
    with pytest.raises(ValueError, match="mode must be one of default, reduce-overhead, max-autotune, got 'fast'"):
        saf.compile_model(Breaks(), mode="fast")
    with pytest.warns(UserWarning, match="reduce-overhead captures CUDA graphs.*on cpu"):
        compiled = saf.compile_model(torch.nn.Linear(4, 4), mode="reduce-overhead", backend="aot_eager")
    torch.testing.assert_close(compiled(torch.ones(2, 4)), compiled.module(torch.ones(2, 4)))
    monkeypatch.setenv(BACKEND_VARIABLE, "eager")
    assert saf.compile_model(Breaks()).backend == "eager"
    assert saf.compile_model(Breaks(), backend="aot_eager").backend == "aot_eager"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_reduce_overhead_training_captures_cuda_graphs_and_matches_eager(backend):
    """On a GPU: a few training steps of a small adapted classifier (bf16 autocast, selective checkpointing)
    compiled with reduce-overhead: every graph runs as a CUDA graph (no skip: the op syncs nowhere, takes no
    CPU tensor, branches on no data) and the losses and gradients are eager's. The op's per-shape constant
    caches start empty, as in a fresh process, so that they are first made inside the compiled step."""
    from st_adapter_fast import fused
    from st_adapter_fast.integrations.timm import build_video_classifier
    fused._kept.cache_clear()

    def run(compiled):
        torch.manual_seed(0)
        model = build_video_classifier("vit_base_patch16_clip_quickgelu_224", 5, num_frames=4, adapter_channels=32,
                                       backend=backend, dropout=0.0, backbone_dtype=torch.bfloat16, activation=None,
                                       model_kwargs=dict(img_size=64, patch_size=16, depth=2, embed_dim=64,
                                                         num_heads=2)).cuda()
        saf.set_checkpointing(model, "selective")
        call = saf.compile_model(model, "reduce-overhead", backend="inductor") if compiled else model
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        video, labels = torch.randn(2, 3, 4, 64, 64, device="cuda"), torch.tensor([1, 3], device="cuda")
        losses = []
        for _ in range(4):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(call(video).float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        return losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled_losses, compiled_state = run(compiled=True)
    assert counters["inductor"]["cudagraph_skips"] == 0 and not counters["graph_break"]
    eager_losses, eager_state = run(compiled=False)
    assert compiled_losses == pytest.approx(eager_losses, rel=2e-2)
    for name in eager_state:
        torch.testing.assert_close(compiled_state[name], eager_state[name], rtol=5e-2, atol=5e-3, msg=name)
