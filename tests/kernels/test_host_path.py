"""The compiled backends' host path: checks kept per call signature (and still made where a call differs), the
whole-adapter C++ op `st_adapter_fast::adapter` with its C++ autograd, and what it dispatches."""
import warnings

import pytest
import torch

import st_adapter_fast as saf
from st_adapter_fast import backends, ops
from st_adapter_fast.bench import host
from st_adapter_fast.bench.parity import random_inputs
from st_adapter_fast.kernels import compiled

pytestmark = pytest.mark.compiled
adapter_op = torch.ops.st_adapter_fast.adapter


def inputs(dtype=torch.float32, requires_grad=True):
    x, params = random_inputs(2, 3, 7, 12, 8, (3, 1, 1))
    return (x.to(dtype).requires_grad_(requires_grad),
            [p.to(dtype).requires_grad_(requires_grad) for p in params])


def test_a_call_that_differs_from_a_checked_one_is_checked_again():
    x, params = inputs()
    saf.st_adapter(x, 3, *params, grid_size=(2, 3), backend="cpu")   # this signature is now known
    with pytest.raises(TypeError, match="num_frames"):
        saf.st_adapter(x, True, *params, grid_size=(2, 3), backend="cpu")   # True == 1, but not an int
    with pytest.raises(ValueError, match="device"):
        saf.st_adapter(x, 3, *params[:5], params[5].to("meta"), grid_size=(2, 3), backend="cpu")
    with pytest.raises(TypeError, match="fc2_bias"):
        saf.st_adapter(x, 3, *params[:5], params[5].double(), grid_size=(2, 3), backend="cpu")
    with pytest.raises(ValueError, match="grid_size"):
        saf.st_adapter(x, 3, *params, grid_size=[3, 3], backend="cpu")
    with pytest.raises(TypeError, match="grid_size"):
        saf.st_adapter(x, 3, *params, grid_size=(2.0, 3), backend="cpu")


def test_the_backend_choice_follows_the_installation_not_the_first_call(monkeypatch):
    x, params = inputs()
    saf.st_adapter(x, 3, *params, grid_size=(2, 3))   # auto -> cpu, kept
    monkeypatch.setattr(compiled, "EXTENSION", compiled.Extension(None, "not installed (test)"))
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.warns(UserWarning, match="falling back to the .*reference.*not installed"):
        saf.st_adapter(x, 3, *params, grid_size=(2, 3))
    monkeypatch.setattr(backends, "_warned", set())   # the same call again: its fallback warns again, once
    with pytest.warns(UserWarning, match="falling back"):
        saf.st_adapter(x, 3, *params, grid_size=(2, 3))
    with pytest.raises(RuntimeError, match="not installed"):
        saf.st_adapter(x, 3, *params, grid_size=(2, 3), backend="cpu")


def test_the_kept_checks_stay_bounded():
    x, params = inputs(requires_grad=False)
    for frames in (1, 3):
        for tokens in range(2, 2 + ops._MAX_CHECKED_CALLS // 2 + 5):
            saf.st_adapter(torch.randn(6, tokens, 12), frames, *params, num_prefix_tokens=1,
                           grid_size=(tokens - 1, 1), backend="cpu")
    assert len(ops._CHECKED_CALLS) <= ops._MAX_CHECKED_CALLS


@pytest.mark.parametrize("autocast", [False, True])
def test_the_op_with_its_cpp_autograd_matches_the_reference(autocast):
    """The public op through the C++ node: every gradient against the reference's, also when only some
    inputs want one (the others come back as None, not computed)."""
    x, params = inputs()
    grad_y = torch.randn_like(x)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = saf.st_adapter(x, 3, *params, grid_size=(2, 3), backend="cpu")
        y_ref = saf.st_adapter(x, 3, *params, grid_size=(2, 3), backend="reference")
    assert y.dtype == y_ref.dtype == torch.float32 and "AdapterFunction" in y.grad_fn.name()
    tolerance = 2e-2 if autocast else 1e-5   # ||ours - reference|| / ||reference||; both bf16 under autocast
    close = lambda a, b: (a - b).norm() <= tolerance * b.norm()
    assert close(y, y_ref)
    got = torch.autograd.grad(y, [x, *params], grad_y)
    want = torch.autograd.grad(y_ref, [x, *params], grad_y)
    for g, w, p in zip(got, want, [x, *params]):
        assert g.dtype == p.dtype and close(g, w)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y_again = saf.st_adapter(x, 3, *params, grid_size=(2, 3), backend="cpu")
    assert torch.equal(torch.autograd.grad(y_again, [x], grad_y)[0], got[0])   # x's alone, the same


def test_reductions_come_in_the_parameters_dtype_without_a_detour_through_bf16():
    """Under autocast the conv's and the biases' gradients are summed in fp32 and given to fp32 parameters as
    such (not rounded to bf16 on the way): closer to the float64 truth than a bf16 rounding allows."""
    x, params = inputs()
    grad_y = torch.randn_like(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = saf.st_adapter(x, 3, *params, grid_size=(2, 3), backend="cpu")
    grads = torch.autograd.grad(y, params, grad_y)
    for index in (1, 3):   # fc1.bias, conv.bias
        assert not torch.equal(grads[index], grads[index].bfloat16().float())


def test_no_grad_and_inference_mode_record_nothing():
    x, params = inputs()
    with torch.no_grad():
        assert saf.st_adapter(x, 3, *params, grid_size=(2, 3), backend="cpu").grad_fn is None
    with torch.inference_mode():
        y = saf.st_adapter(x, 3, *params, grid_size=(2, 3), backend="cpu")
    torch.testing.assert_close(y, saf.st_adapter(x, 3, *params, grid_size=(2, 3), backend="reference").detach())


@pytest.mark.parametrize("case, match", [
    (lambda x, p: adapter_op(x[0], *p, 3, 1, "gelu", torch.float32), "x must be"),
    (lambda x, p: adapter_op(x, p[0].t(), *p[1:], 3, 1, "gelu", torch.float32), "fc1_weight"),
    (lambda x, p: adapter_op(x, *p, 4, 1, "gelu", torch.float32), "num_frames"),
    (lambda x, p: adapter_op(x, *p, 3, 7, "gelu", torch.float32), "num_prefix_tokens"),
    (lambda x, p: adapter_op(x, *p, 3, 1, "relu", torch.float32), "activation"),
    (lambda x, p: adapter_op(x, *p[:4], p[4][:, :3], p[5], 3, 1, "gelu", torch.float32), "fc2_weight"),
])
def test_the_op_called_directly_refuses_bad_input(case, match):
    x, params = inputs()
    with pytest.raises((ValueError, TypeError), match=match):
        case(x, params)


def test_double_backward_under_autocast_reaches_x():
    """Under autocast the GEMMs read x's bf16 copy, which the op returns as a second output: a gradient
    penalty differentiates through it back to x, as the reference's does."""
    x, params = inputs()

    def penalty_grads(backend):
        leaves = [t.detach().requires_grad_() for t in (x, *params)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = saf.st_adapter(leaves[0], 3, *leaves[1:], grid_size=(2, 3), backend=backend)
        grads = torch.autograd.grad(y.square().sum(), leaves, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads), leaves, materialize_grads=True)

    for ours, ref in zip(penalty_grads("cpu"), penalty_grads("reference")):
        assert ours.norm() > 0
        assert (ours - ref).norm() <= 5e-2 * ref.norm()


def test_the_host_benchmark_runs_and_counts_what_each_backend_dispatches():
    """benchmarks/host_overhead.py's measurement, smoke-tested (no timing asserted): its fields, and that the
    compiled path dispatches fewer ATen ops that allocate or compute than the reference does."""
    out = host.measure(["cpu"], rounds=2, calls=2, progress=lambda line: None)
    assert set(out["results"]) == set(host.MODES) and out["clock"] == "thread CPU time"
    for mode, rows in out["results"].items():
        ours, ref = rows["cpu"], rows["reference"]
        assert set(ours["ratio_to_reference"]) == {"median", "q1", "q3"} and ours["host_us"]["median"] > 0
        assert ours["ops"] - ours["view_ops"] < ref["ops"] - ref["view_ops"], mode
        assert "convolution" not in ours["ops_by_name"] and "convolution" in ref["ops_by_name"]


def test_eager_calls_warn_nothing():
    x, params = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saf.st_adapter(x, 3, *params, grid_size=(2, 3), backend="cpu").sum().backward()
