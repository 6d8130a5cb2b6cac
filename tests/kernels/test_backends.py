"""The capability table (backends.py): what it reads from the kernels themselves, and an extension that does
not match the package refused like a missing one."""
import types
import warnings

import pytest
import torch

import st_adapter_fast as saf
from st_adapter_fast import activations, backends
from st_adapter_fast.bench.parity import random_inputs
from st_adapter_fast.kernels import compiled
from st_adapter_fast.kernels import triton as triton_kernels


@pytest.mark.compiled
def test_the_extension_states_the_package_activation_codes():
    module, error = compiled.EXTENSION
    assert module is not None, error
    assert dict(module.activation_codes) == activations.ACTIVATION_CODES
    assert set(activations.ACTIVATION_CODES) == {activations.activation_op_name(a) for a in activations.ACTIVATIONS}


@pytest.mark.compiled
def test_compiled_capabilities_are_what_the_extension_states():
    module = compiled.EXTENSION.module
    for name in ("cpu", "cuda"):
        capability = backends.capability(name)
        assert capability.max_kernel_t == module.max_kernel_t
        assert capability.dtypes == tuple(module.dtypes)
        assert capability.devices == (name,)
    assert set(module.dtypes) == {torch.float32, torch.float64, torch.bfloat16, torch.float16}
    x = torch.empty(4, 5, 8)
    assert backends.capability("cpu").why_not(x, torch.float32, (module.max_kernel_t, 1, 1)) is None
    assert "kt <= " in backends.capability("cpu").why_not(x, torch.float32, (module.max_kernel_t + 2, 1, 1))


def test_triton_and_reference_capabilities():
    triton = backends.capability("triton")
    assert triton.max_kernel_t == triton_kernels.MAX_KERNEL_T and triton.dtypes == triton_kernels.DTYPES
    assert ("cpu" in triton.devices) == triton_kernels.interpreting()
    reference = backends.capability("reference")
    assert reference.devices is None and reference.max_kernel_t is None and reference.available
    assert reference.dtypes == backends.SUPPORTED_DTYPES
    assert [c.name for c in backends.capabilities()] == list(backends.TABLE_ORDER)
    with pytest.raises(ValueError, match="backend"):
        backends.capability("auto")


def test_an_extension_with_other_activation_codes_is_refused_like_a_missing_one(monkeypatch):
    stale = types.SimpleNamespace(activation_codes={"none": 0, "quick_gelu": 1, "gelu": 2}, with_cuda=False,
                                  max_kernel_t=7, dtypes=(torch.float32,))
    refused = compiled.checked_extension(stale)
    assert refused.module is None and "activation codes" in refused.error and "reinstall" in refused.error
    older = compiled.checked_extension(types.SimpleNamespace(with_cuda=False))   # built before it stated them
    assert older.module is None and "states none" in older.error
    monkeypatch.setattr(compiled, "EXTENSION", refused)
    monkeypatch.setattr(backends, "_warned", set())
    assert not compiled.extension_info()["available"]
    x, params = random_inputs(2, 2, 5, 8, 4, (3, 1, 1))
    with pytest.raises(RuntimeError, match="activation codes"):
        saf.st_adapter(x, 2, *params, backend="cpu")
    with pytest.warns(UserWarning, match="falling back.*activation codes"):
        assert backends.choose_backend("auto", x, torch.float32, (3, 1, 1)) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(saf.st_adapter(x, 2, *params), saf.st_adapter(x, 2, *params, backend="reference"))


def test_available_on_lists_what_runs_on_a_device(monkeypatch):
    names = lambda device: [c.name for c in backends.available_on(device)]
    monkeypatch.setattr(backends, "interpreting", lambda: False)
    assert "triton" not in names("cpu") and names("cpu")[0] == "reference"
    monkeypatch.setattr(backends, "interpreting", lambda: True)
    assert "triton" in names("cpu")
    monkeypatch.setattr(compiled, "EXTENSION", compiled.Extension(None, "not installed (test)"))
    assert "cpu" not in names("cpu") and "cuda" not in names("cuda")
