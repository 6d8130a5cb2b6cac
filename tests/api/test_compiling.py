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
