"""The ST-Adapter op: `st_adapter(...)`, and the registered ops with their autograd.

`st_adapter(...)` is the one entry point: it checks the inputs (validation.py), asks backends.py which
backend runs the call (`choose_backend`, re-exported here), and runs it. Both checks depend only on shapes,
dtypes, devices and settings, so their result is kept per such signature (`_checked_call`): a call that
repeats an earlier one's signature (every training step) pays one dictionary lookup for them.

An eager call of the compiled backends (csrc/) is one call of the C++ op `torch.ops.st_adapter_fast.adapter`,
whose autograd node is C++ too (csrc/adapter_autograd.cpp): forward and backward are one C++ function each
(csrc/adapter.cpp), which also cast the parameters to the compute dtype and make x's compute-dtype copy under
autocast, so that no Python runs between the call and the kernels, nor in backward. The Triton backend runs
the same steps in Python around its kernels (fused.py), through `_EagerKernelAdapter`. Under torch.compile every kernel path
goes through one pair of `torch.library.custom_op`s (`st_adapter_fast::adapter_fwd` / `adapter_bwd`, with a
`kernels` argument) with fake implementations, so torch.compile sees them as opaque nodes with known output
shapes and never breaks the graph on them.
"""
from typing import NamedTuple

import torch

from .activations import activation_op_name, check_activation
from .backends import BACKENDS, interpreting, resolve_backend, choose_backend, warn_once  # noqa: F401
from .fused import adapter_backward, adapter_forward, zero_prefix_copy
from .kernels import compiled
from .reference import adapter_delta, adapter_output
from .validation import AdapterShape, autocast_active, check_adapter_inputs

__all__ = ["st_adapter", "adapter_fwd", "adapter_bwd", "BACKENDS", "choose_backend"]   # the last two: backends.py's


def st_adapter(x, num_frames, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias, *,
               activation="gelu", num_prefix_tokens=1, grid_size=None, backend="auto"):
    """Apply one ST-Adapter to tokens ``x`` of shape (B*T, L, C); returns a new (B*T, L, C) tensor.

    ``y = x`` on the first ``num_prefix_tokens`` tokens of each frame and, on the patch tokens,
    ``y = x + fc2(act(conv(fc1(x))))`` with ``conv`` the depthwise Conv3d over (T, H, W).

    Args:
        x: tokens, frames of one clip consecutive along dim 0; only its last stride must be 1.
        num_frames: T, frames per clip.
        fc1_weight, fc1_bias: (Ca, C), (Ca,).  conv_weight, conv_bias: (Ca, 1, kt, kh, kw), (Ca,).
        fc2_weight, fc2_bias: (C, Ca), (C,).
        activation: "gelu", "quick_gelu" or None.
        num_prefix_tokens: class/register tokens per frame, passed through unchanged.
        grid_size: (H, W) of the patch grid; default: square root of the patch count.
        backend: "auto" (fastest correct path for the device), "triton", "cuda", "cpu" or "reference".

    Under autocast the parameters are cast to the autocast dtype and the result has dtype
    ``promote_types(x.dtype, autocast dtype)``, as the reference gives.

    Prefix tokens pass through exactly (y's prefix rows are x's, x's gradient there is y's), whatever the
    weights hold, inf and NaN included; the weights' gradients do not depend on x's prefix rows.
    Double backward (``create_graph=True``) is exact on every backend: the kernel paths then compute their
    backward with differentiable torch operations (autograd through the reference's formulas) instead of
    the kernels. Under torch.compile it is not supported (torch raises an error).
    """
    params = (fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias)
    call = _checked_call(x, num_frames, params, activation, num_prefix_tokens, grid_size, backend)
    if call.path == "reference" or x.numel() == 0:   # nothing for a kernel to do on an empty batch
        return adapter_output(x, call.shape, *params, activation)
    if x.stride(-1) != 1:
        warn_once(f"st_adapter_fast: x's last dimension is not contiguous (stride != 1); the {call.path} path "
                  "makes a contiguous copy of x first")
        x = x.contiguous()
    if call.path == "triton" or torch.compiler.is_compiling():
        return _registered_op_call(x, params, call)
    return torch.ops.st_adapter_fast.adapter(x, *params, *call.op_config)[0]


class _Call(NamedTuple):
    """What the checks of a call found: its sizes, the backend path, the compute dtype, and the fallback
    warning that choosing the path gave (repeated on every call, where warn_once keeps it to one)."""

    shape: AdapterShape
    path: str
    compute_dtype: torch.dtype
    activation: str            # as the ops spell it
    fallback_warning: str | None

    @property
    def op_config(self):
        """The C++ adapter ops' (num_frames, num_prefix_tokens, activation, compute_dtype) arguments."""
        return self.shape.num_frames, self.shape.num_prefix_tokens, self.activation, self.compute_dtype


_CHECKED_CALLS = {}   # call signature -> _Call
_MAX_CHECKED_CALLS = 1024


def _checked_call(x, num_frames, params, activation, num_prefix_tokens, grid_size, backend):
    """The `_Call` of these arguments: checked in full (validation.py, backends.py), or found by the
    signature of an earlier call that passed the same checks."""
    device_type = x.device.type if isinstance(x, torch.Tensor) else "cpu"
    autocast_dtype = torch.get_autocast_dtype(device_type) if autocast_active(device_type) else None
    key = _signature(x, num_frames, params, activation, num_prefix_tokens, grid_size, backend, autocast_dtype)
    call = _CHECKED_CALLS.get(key) if key is not None else None
    if call is None:
        call = _check_call(x, num_frames, params, activation, num_prefix_tokens, grid_size, backend, autocast_dtype)
        if key is not None:
            if len(_CHECKED_CALLS) >= _MAX_CHECKED_CALLS:
                _CHECKED_CALLS.clear()
            _CHECKED_CALLS[key] = call
    if call.fallback_warning is not None:
        warn_once(call.fallback_warning, stacklevel=4)   # the line that called st_adapter
    return call


def _check_call(x, num_frames, params, activation, num_prefix_tokens, grid_size, backend, autocast_dtype):
    check_activation(activation)
    shape = check_adapter_inputs(x, num_frames, *params, num_prefix_tokens=num_prefix_tokens,
                                 grid_size=grid_size, allow_mixed_dtype=autocast_dtype is not None)
    compute_dtype = autocast_dtype or params[0].dtype
    path, fallback_warning = resolve_backend(backend, x, compute_dtype, shape.kernel_size)
    return _Call(shape, path, compute_dtype, activation_op_name(activation), fallback_warning)


def _signature(x, num_frames, params, activation, num_prefix_tokens, grid_size, backend, autocast_dtype):
    """Everything the checks of a call depend on, hashable; None where it cannot be had (arguments that are
    not tensors, unhashable values, torch.compile's symbolic sizes): such a call is checked in full. Types
    are part of it, so that e.g. num_frames=True is refused as the checks refuse it, not taken for 1."""
    if torch.compiler.is_compiling():
        return None
    try:
        key = (x.shape, x.dtype, x.device, type(num_frames), num_frames, type(num_prefix_tokens), num_prefix_tokens,
               type(grid_size), None if grid_size is None else tuple((type(s), s) for s in grid_size), activation,
               backend, autocast_dtype, compiled.EXTENSION, interpreting(),
               *[(p.shape, p.dtype, p.device) for p in params])
        hash(key)
    except (AttributeError, TypeError):
        return None
    return key


def _registered_op_call(x, params, call):
    """The Triton path, and every kernel path under torch.compile: parameters cast and x's zero-prefix copy made
    in Python (differentiably, so that a double backward reaches x through it), then the registered op."""
    compute_dtype = call.compute_dtype
    num_frames, num_prefix_tokens = call.shape.num_frames, call.shape.num_prefix_tokens
    # The kernels index parameters as contiguous (they are tiny: a copy of a strided view costs nothing).
    params = tuple(p.to(compute_dtype).contiguous() for p in params)
    # What the GEMMs read of x, in the compute dtype: x itself, or (autocast) a copy whose prefix rows are
    # zero (see fused.py).
    x_low = None if x.dtype == compute_dtype else zero_prefix_copy(x, compute_dtype, num_prefix_tokens)
    need_h = torch.is_grad_enabled() and any(t.requires_grad for t in (x,) + params)
    kernels = "triton" if call.path == "triton" else "compiled"
    args = (x, x_low, *params, num_frames, num_prefix_tokens, call.activation, need_h, kernels)
    if torch.compiler.is_compiling():
        return adapter_fwd(*args)[0]
    return _EagerKernelAdapter.apply(*args)


# ---------------------------------------------------------------------------------------------------
# Registered ops (kernel paths). Arguments arrive validated from st_adapter().

def _forward_impl(x, x_low, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias, num_frames,
                  num_prefix_tokens, activation, need_h, kernels):
    if kernels == "compiled":
        y, h, _ = torch.ops.st_adapter_fast.adapter_forward(x, x_low, fc1_weight, fc1_bias, conv_weight, conv_bias,
                                                            fc2_weight, fc2_bias, num_frames, num_prefix_tokens,
                                                            activation, fc1_weight.dtype, need_h)
        return y, h
    with torch.autocast(x.device.type, enabled=False):
        return adapter_forward(_triton_kernels(kernels), x, x_low, fc1_weight, fc1_bias, conv_weight, conv_bias,
                               fc2_weight, fc2_bias, num_frames, num_prefix_tokens, activation, need_h)


def _backward_impl(grad_y, x, h, fc1_weight, conv_weight, conv_bias, fc2_weight, num_frames, num_prefix_tokens,
                   activation, x_prefix_zeroed, kernels):
    if kernels == "compiled":
        return torch.ops.st_adapter_fast.adapter_backward(grad_y, x, h, fc1_weight, conv_weight, conv_bias, fc2_weight,
                                                          num_frames, num_prefix_tokens, activation, fc1_weight.dtype,
                                                          x_prefix_zeroed, [True] * 7)
    with torch.autocast(x.device.type, enabled=False):
        return adapter_backward(_triton_kernels(kernels), grad_y, x, h, fc1_weight, conv_weight, conv_bias, fc2_weight,
                                num_frames, num_prefix_tokens, activation, x_prefix_zeroed)


def _triton_kernels(name):
    """The Triton kernels as a fused.ConvKernels (imported on first use: importing them imports triton)."""
    if name != "triton":
        raise ValueError(f"unknown kernels {name!r}")
    from .kernels.triton.adapter import TRITON_KERNELS
    return TRITON_KERNELS


@torch.library.custom_op("st_adapter_fast::adapter_fwd", mutates_args=())
def adapter_fwd(x: torch.Tensor, x_low: torch.Tensor | None, fc1_weight: torch.Tensor, fc1_bias: torch.Tensor,
                conv_weight: torch.Tensor, conv_bias: torch.Tensor, fc2_weight: torch.Tensor, fc2_bias: torch.Tensor,
                num_frames: int, num_prefix_tokens: int, activation: str, need_h: bool,
                kernels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, h): the adapter output and, for backward when need_h, fc1's output (B*T, L, Ca) (else an empty
    tensor). x_low: x as the GEMMs read it, when x is not in the compute dtype (see st_adapter), else None."""
    return _forward_impl(x, x_low, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias, num_frames,
                         num_prefix_tokens, activation, need_h, kernels)


@adapter_fwd.register_fake
def _(x, x_low, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias, num_frames, num_prefix_tokens,
      activation, need_h, kernels):
    frames, num_tokens, _ = x.shape
    dtype = fc1_weight.dtype
    h_shape = (frames, num_tokens, fc1_weight.shape[0]) if need_h else (0, 1, 1)
    y = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, dtype))
    return y, x.new_empty(h_shape, dtype=dtype)


@torch.library.custom_op("st_adapter_fast::adapter_bwd", mutates_args=())
def adapter_bwd(grad_y: torch.Tensor, x: torch.Tensor, h: torch.Tensor, fc1_weight: torch.Tensor,
                conv_weight: torch.Tensor, conv_bias: torch.Tensor, fc2_weight: torch.Tensor, num_frames: int,
                num_prefix_tokens: int, activation: str, x_prefix_zeroed: bool, kernels: str) -> tuple[
                    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of adapter_fwd's y w.r.t. (x, fc1.weight, fc1.bias, conv.weight, conv.bias, fc2.weight, fc2.bias);
    x is what the forward's GEMMs read (x or x_low)."""
    return _backward_impl(grad_y, x, h, fc1_weight, conv_weight, conv_bias, fc2_weight, num_frames,
                          num_prefix_tokens, activation, x_prefix_zeroed, kernels)


@adapter_bwd.register_fake
def _(grad_y, x, h, fc1_weight, conv_weight, conv_bias, fc2_weight, num_frames, num_prefix_tokens, activation,
      x_prefix_zeroed, kernels):
    ca, c = fc1_weight.shape
    new = lambda *shape: fc1_weight.new_empty(shape)
    return (torch.empty_like(grad_y), new(ca, c), new(ca), torch.empty_like(conv_weight), new(ca), new(c, ca), new(c))


def _save_for_backward(ctx, inputs, h):
    (x, x_low, *params, num_frames, num_prefix_tokens, activation, need_h, kernels) = inputs
    if need_h:
        # What the GEMMs read of x (x itself, or x_low under autocast) and h are all that is kept besides the
        # parameters; the conv and the activation are recomputed from h.
        ctx.save_for_backward(x if x_low is None else x_low, h, *params)
        ctx.config = (num_frames, num_prefix_tokens, activation, x_low is not None, kernels)


def _differentiable_gradients(grad_y, x, params, num_frames, num_prefix_tokens, activation):
    """The seven gradients as differentiable torch computations, for a backward that is itself recorded
    (create_graph=True): autograd, with create_graph, through the reference's formulas on the saved inputs
    (x here is what the GEMMs read: x, or x_low, which autograd connects to x). Second derivatives are then
    those of the reference. The kernels' temporal kernels need no grid: it is taken as (N, 1)."""
    P = num_prefix_tokens
    frames, num_tokens, channels = x.shape
    shape = AdapterShape(batch=frames // num_frames, num_frames=num_frames, num_tokens=num_tokens,
                         num_prefix_tokens=P, height=num_tokens - P, width=1, channels=channels,
                         adapter_channels=params[0].shape[0], kernel_size=tuple(params[2].shape[2:]))
    inputs = (x, *params)
    wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        delta = adapter_delta(x, shape, *params, activation)
        found = torch.autograd.grad(delta, [inputs[i] for i in wanted], grad_y[:, P:].to(delta.dtype),
                                    create_graph=True, allow_unused=True)
    grads = [None] * len(inputs)
    for i, g in zip(wanted, found):
        grads[i] = g
    if grads[0] is not None:   # y = x + delta on the patch rows: the identity's gradient, then delta's
        grads[0] = torch.cat([grad_y[:, :P], grad_y[:, P:] + grads[0][:, P:].to(grad_y.dtype)], dim=1)
    return grads


def _gradients(ctx, grad_y, backward_fn):
    """Gradients for every input of adapter_fwd (None for x_low and the non-tensor arguments)."""
    saved = ctx.saved_tensors   # read once: activation checkpointing allows one unpacking per backward
    if not saved:
        raise RuntimeError("st_adapter_fast: backward through an adapter call made without gradients enabled")
    x, h, *params = saved
    num_frames, num_prefix_tokens, activation, x_prefix_zeroed, kernels = ctx.config
    if torch.is_grad_enabled():   # create_graph=True: the backward is recorded, so it must be differentiable
        grads = _differentiable_gradients(grad_y, x, params, num_frames, num_prefix_tokens, activation)
    else:
        fc1_weight, _, conv_weight, conv_bias, fc2_weight, _ = params
        grads = backward_fn(grad_y, x, h, fc1_weight, conv_weight, conv_bias, fc2_weight, num_frames,
                            num_prefix_tokens, activation, x_prefix_zeroed, kernels)
    grad_x, *grad_params = grads
    return (grad_x, None, *grad_params, None, None, None, None, None)


def _setup_context(ctx, inputs, output):
    _, h = output
    _save_for_backward(ctx, inputs, h)
    ctx.mark_non_differentiable(h)


adapter_fwd.register_autograd(lambda ctx, grad_y, _grad_h: _gradients(ctx, grad_y, adapter_bwd),
                              setup_context=_setup_context)


class _EagerKernelAdapter(torch.autograd.Function):
    """The registered ops' forward and backward without the custom-op dispatch, which costs several
    hundred microseconds of host time per training step; st_adapter() uses it outside torch.compile."""

    @staticmethod
    def forward(ctx, *inputs):
        y, h = _forward_impl(*inputs)
        _save_for_backward(ctx, inputs, h)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return _gradients(ctx, grad_y, _backward_impl)
