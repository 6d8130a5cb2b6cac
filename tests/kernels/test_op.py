"""Public API: input errors, backend choice and its warnings, module behaviour."""
import warnings

import numpy as np
import pytest
import torch

import st_adapter_fast as saf
from st_adapter_fast import backends, ops
from st_adapter_fast.kernels import compiled
from conftest import DEVICE
from st_adapter_fast.bench.parity import random_inputs


def call(x=None, num_frames=2, params=None, **kwargs):
    x_default, params_default = random_inputs(2, 2, 5, 8, 4, (3, 1, 1))
    x = x_default if x is None else x
    params = list(params_default if params is None else params)
    return saf.st_adapter(x, num_frames, *params, **kwargs)


def params_with(index, value):
    _, params = random_inputs(2, 2, 5, 8, 4, (3, 1, 1))
    params = list(params)
    params[index] = value
    return params


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(x=torch.randn(4, 5)), ValueError, "x must have shape"),
    (dict(x=torch.randn(4, 5, 8).numpy()), TypeError, "x must be a torch.Tensor"),
    (dict(num_frames=3), ValueError, "num_frames"),
    (dict(num_frames=0), ValueError, "num_frames"),
    (dict(x=torch.randn(4, 5, 9, dtype=torch.float64)), ValueError, "fc1_weight.*C=9"),
    (dict(params=params_with(0, torch.randn(4, 9, dtype=torch.float64))), ValueError, "fc1_weight"),
    (dict(params=params_with(1, torch.randn(5, dtype=torch.float64))), ValueError, "fc1_bias"),
    (dict(params=params_with(2, torch.randn(4, 1, 2, 1, 1, dtype=torch.float64))), ValueError, "odd"),
    (dict(params=params_with(2, torch.randn(4, 1, 3, 1, dtype=torch.float64))), ValueError, "conv_weight"),
    (dict(params=params_with(3, torch.randn(3, dtype=torch.float64))), ValueError, "conv_bias"),
    (dict(params=params_with(4, torch.randn(8, 5, dtype=torch.float64))), ValueError, "fc2_weight"),
    (dict(params=params_with(5, torch.randn(7, dtype=torch.float64))), ValueError, "fc2_bias"),
    (dict(x=torch.randn(4, 6, 8, dtype=torch.float64)), ValueError, "grid_size.*not a square"),
    (dict(grid_size=(2, 3)), ValueError, "grid_size"),
    (dict(num_prefix_tokens=5), ValueError, "num_prefix_tokens"),
    (dict(num_prefix_tokens=-1), ValueError, "num_prefix_tokens"),
    (dict(x=torch.randn(4, 5, 8, dtype=torch.float32)), TypeError, "x is torch.float32"),
    (dict(params=params_with(5, torch.randn(8, dtype=torch.float32))), TypeError, "fc2_bias is torch.float32"),
    (dict(x=torch.randint(0, 3, (4, 5, 8))), TypeError, "unsupported dtype"),
    (dict(params=params_with(0, torch.randn(4, 8, dtype=torch.float64, device="meta"))), ValueError, "device"),
    (dict(activation="relu"), ValueError, "activation"),
    (dict(backend="fast"), ValueError, "backend"),
])
def test_bad_input_raises_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        call(**kwargs)


@pytest.mark.parametrize("backend", ["cuda", "cpu"])
def test_compiled_backends_without_the_extension_say_so(backend, monkeypatch):
    monkeypatch.setattr(compiled, "EXTENSION", compiled.Extension(None, "the compiled extension st_adapter_fast._C is "
                                                                      "not available (test)"))
    with pytest.raises(RuntimeError, match="compiled extension"):
        call(backend=backend)


def test_compiled_backends_reject_what_they_cannot_run():
    x, params = random_inputs(2, 2, 5, 8, 4, (3, 3, 3))
    with pytest.raises(ValueError, match="kernel_size"):
        saf.st_adapter(x, 2, *params, backend="cpu")
    x, params = random_inputs(2, 2, 5, 8, 4, (3, 1, 1))
    with pytest.raises(ValueError, match="runs on cuda tensors"):
        saf.st_adapter(x, 2, *params, backend="cuda")


def test_auto_without_the_extension_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(compiled, "EXTENSION", compiled.Extension(None, "the compiled extension is not available (test)"))
    monkeypatch.setattr(backends, "_warned", set())
    x, params = random_inputs(2, 2, 5, 8, 4, (3, 1, 1))
    with pytest.warns(UserWarning, match="compiled extension is not available"):
        assert ops.choose_backend("auto", x, torch.float32, (3, 1, 1)) == "reference"


def test_triton_backend_rejects_what_it_cannot_run():
    x, params = random_inputs(2, 2, 5, 8, 4, (3, 3, 3), device=DEVICE)
    with pytest.raises(ValueError, match="kernel_size"):
        saf.st_adapter(x.float(), 2, *[p.float() for p in params], backend="triton")
    x, params = random_inputs(2, 2, 5, 8, 4, (3, 1, 1), device=DEVICE)
    with pytest.raises(ValueError, match="dtype"):
        saf.st_adapter(x, 2, *params, backend="triton")   # float64


def test_auto_on_cpu_uses_the_compiled_cpu_kernels_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, params = random_inputs(2, 2, 5, 8, 4, (3, 1, 1))
        assert ops.choose_backend("auto", x, torch.float32, (3, 1, 1)) == "cpu"


def test_auto_falls_back_with_one_warning_when_fused_path_cannot_run(monkeypatch):
    x = torch.empty(4, 5, 8)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))   # a CUDA tensor, as far as it asks
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.warns(UserWarning, match="falling back"):
        assert ops.choose_backend("auto", x, torch.float32, (3, 3, 3)) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.choose_backend("auto", x, torch.float32, (3, 3, 3)) == "reference"


def test_module_constructor_checks():
    with pytest.raises(ValueError, match="odd"):
        saf.STAdapter(8, 4, (2, 1, 1))
    with pytest.raises(ValueError, match="activation"):
        saf.STAdapter(8, 4, activation="tanh")
    with pytest.raises(ValueError, match="backend"):
        saf.STAdapter(8, 4, backend="fastest")
    assert saf.STAdapter(8, 4, 3).conv.kernel_size == (3, 1, 1)


def test_module_parameters_and_repr():
    m = saf.STAdapter(768, 384, num_prefix_tokens=1)
    assert isinstance(m.fc1, torch.nn.Linear) and isinstance(m.fc2, torch.nn.Linear)
    assert m.conv.groups == 384 and m.conv.weight.shape == (384, 1, 3, 1, 1)
    assert sum(p.numel() for p in m.parameters()) == 768 * 384 * 2 + 384 * 3 + 384 + 384 + 768
    assert "backend='auto'" in repr(m)


@pytest.mark.parametrize("num_frames", [np.int64(2), np.int32(2), np.uint8(2), torch.tensor(2)], ids=repr)
def test_num_frames_takes_any_integer(num_frames):
    """operator.index semantics: numpy integers (and 0-d integer tensors) work as ints."""
    x, params = random_inputs(2, 2, 5, 8, 4, (3, 1, 1))
    expected = saf.st_adapter(x, 2, *params)
    for backend in ("auto", "reference"):
        torch.testing.assert_close(saf.st_adapter(x, num_frames, *params, backend=backend), expected)
    assert torch.equal(saf.STAdapter(8, 4).double()(x, num_frames), x)


@pytest.mark.parametrize("num_frames", [True, 2.0, np.float64(2.0), "2", None], ids=repr)
def test_num_frames_refuses_non_integers(num_frames):
    with pytest.raises(TypeError, match="num_frames must be an int"):
        call(num_frames=num_frames)


@pytest.mark.parametrize("adapter_channels", [0, -3])
def test_adapter_channels_must_be_positive(adapter_channels):
    for cls in (saf.STAdapter, saf.STAdapterReference):
        with pytest.raises(ValueError, match="adapter_channels"):
            cls(8, adapter_channels)
    with pytest.raises(ValueError, match="in_channels"):
        saf.STAdapter(adapter_channels, 4)
    with pytest.raises(TypeError, match="adapter_channels"):
        saf.STAdapter(8, 4.0)
    x, params = random_inputs(2, 2, 5, 8, 1, (3, 1, 1))
    params = [p[:0] if p.shape[0] == 1 else p[:, :0] if p.dim() == 2 else p for p in params]   # Ca = 0
    with pytest.raises(ValueError, match="adapter_channels"):
        saf.st_adapter(x, 2, *params)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_meta_tensors_give_shapes(backend):
    """Shape inference and deferred init: a forward (and backward) on meta tensors."""
    with torch.device("meta"):
        adapter = saf.STAdapter(768, 384, backend=backend)
        x = torch.empty(2 * 8, 197, 768, requires_grad=True)
    y = adapter(x, 8)
    assert y.device.type == "meta" and y.shape == x.shape and y.dtype == x.dtype
    y.sum().backward()
    assert adapter.fc1.weight.grad.shape == (384, 768) and x.grad.shape == x.shape
    with torch.autocast("cpu", dtype=torch.bfloat16):   # autocast on another device: no error on meta
        assert adapter(x, 8).shape == x.shape


@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
def test_meta_tensors_with_a_kernel_backend_say_why_not(backend):
    with torch.device("meta"):
        adapter = saf.STAdapter(16, 8, backend=backend)
        x = torch.empty(6, 10, 16)
    with pytest.raises((ValueError, RuntimeError), match="meta"):
        adapter(x, 3)


def test_conv_reductions_sum_and_split_the_one_partial_sum_layout():
    """(blocks, kt + 2, Ca) partials: rows 0..kt-1 the weight taps, row kt the conv bias, row kt + 1 the fc1 bias."""
    from st_adapter_fast.fused import conv_reductions
    partials = torch.arange(4 * 5 * 6, dtype=torch.float32).view(4, 5, 6)   # 4 blocks, kt = 3, Ca = 6
    weight, conv_bias, fc1_bias = conv_reductions(partials, torch.bfloat16)
    sums = partials.sum(0)
    assert weight.shape == (6, 3) and weight.is_contiguous() and weight.dtype == torch.bfloat16
    assert torch.equal(weight, sums[:3].t().to(torch.bfloat16))
    assert torch.equal(conv_bias, sums[3].to(torch.bfloat16)) and torch.equal(fc1_bias, sums[4].to(torch.bfloat16))
    outputs = conv_reductions(partials, torch.float32)   # op outputs: no two may share memory
    assert len({t.untyped_storage().data_ptr() for t in outputs}) == 3
