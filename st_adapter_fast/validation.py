"""Input checks shared by every entry point (the op, the reference module).

Everything a kernel relies on is checked here, before any kernel runs, and a bad input gets a
``TypeError``/``ValueError`` that names the argument and says what was expected.
"""
import operator
from dataclasses import dataclass

import torch

from .backends import SUPPORTED_DTYPES


@dataclass(frozen=True)
class AdapterShape:
    """Sizes of one adapter call: B clips of T frames, L = P prefix + N = H*W patch tokens."""

    batch: int
    num_frames: int
    num_tokens: int
    num_prefix_tokens: int
    height: int
    width: int
    channels: int
    adapter_channels: int
    kernel_size: tuple


def as_int(name, value, minimum):
    """`value` as an int (``operator.index``: Python and numpy integers, a SymInt under torch.compile),
    at least `minimum`; bool, float and other types are refused with an error naming `name`."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not isinstance(value, torch.SymInt):
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _is_temporal(kernel_size):
    return kernel_size is not None and tuple(kernel_size[1:]) == (1, 1)


def resolve_grid(num_patches, grid_size, kernel_size=None):
    """(H, W) of the patch grid: `grid_size` if given, else the square root of the patch count.

    `num_patches` may be a SymInt (torch.compile with a dynamic token count): the square root is then
    symbolic and torch.compile guards on the count being square. Under torch.export with a dynamic token
    count a squareness guard cannot hold for every count, so for a temporal `kernel_size` (kt, 1, 1),
    whose result does not depend on H and W, the grid is taken as (N, 1) without that check.
    """
    if grid_size is None:
        if (isinstance(num_patches, torch.SymInt) and _is_temporal(kernel_size)
                and torch.compiler.is_exporting()):
            return num_patches, 1
        side = torch.sym_int(torch.sym_sqrt(num_patches))   # exact for perfect squares below 2**52
        if side * side != num_patches:
            raise ValueError(
                f"grid_size: {num_patches} patch tokens is not a square number; pass grid_size=(H, W) "
                "with H * W equal to the number of patch tokens")
        return side, side
    height, width = check_grid_size(grid_size)
    if height * width != num_patches:
        raise ValueError(
            f"grid_size={tuple(grid_size)} holds {height * width} patches but x has {num_patches} "
            "patch tokens (L - num_prefix_tokens)")
    return height, width


def check_module(model, name):
    """TypeError unless `model` is a torch.nn.Module, naming it as `name` (e.g. "convert's model")."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")


def check_grid_size(grid_size):
    """`grid_size` as a pair (H, W) of positive ints; ValueError / TypeError naming it otherwise."""
    if not isinstance(grid_size, (tuple, list)) or len(grid_size) != 2:
        raise ValueError(f"grid_size must be a pair of positive ints (H, W), got {grid_size!r}")
    return tuple(as_int("grid_size", s, 1) for s in grid_size)


def check_kernel_size(kernel_size):
    """A 3-tuple of positive odd ints (the zero padding k//2 keeps sizes only for odd k); an int k is (k, 1, 1)."""
    if not isinstance(kernel_size, (tuple, list, torch.Size)):
        kernel_size = (as_int("kernel_size", kernel_size, 1), 1, 1)
    if len(kernel_size) != 3:
        raise ValueError(f"kernel_size must be 3 positive ints (kt, kh, kw), got {tuple(kernel_size)!r}")
    kernel_size = tuple(as_int("kernel_size", k, 1) for k in kernel_size)
    if any(k % 2 == 0 for k in kernel_size):
        raise ValueError(f"kernel_size must be odd in every dimension (zero padding k//2), got {kernel_size}")
    return kernel_size


def autocast_active(device_type):
    """Whether autocast is on for `device_type`; False for devices autocast does not know (e.g. meta)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _check_tensor(name, t, shape):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_adapter_inputs(x, num_frames, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight,
                         fc2_bias, *, num_prefix_tokens, grid_size, allow_mixed_dtype=False):
    """Validate one adapter call and return its `AdapterShape`.

    `allow_mixed_dtype` lets `x` differ in dtype from the parameters (autocast: the parameters
    are already in the autocast dtype, `x` keeps its own as the residual).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x must have shape (B*T, L, C), got {x.dim()} dims with shape {tuple(x.shape)}")
    num_frames = as_int("num_frames", num_frames, 1)
    frames, num_tokens, channels = x.shape
    if frames % num_frames != 0:
        raise ValueError(f"num_frames: x.shape[0] = B*T = {frames} is not divisible by num_frames={num_frames}")
    num_prefix_tokens = as_int("num_prefix_tokens", num_prefix_tokens, 0)
    if num_prefix_tokens >= num_tokens:
        raise ValueError(
            f"num_prefix_tokens must be an int in [0, L={num_tokens}) (at least one patch token), "
            f"got {num_prefix_tokens!r}")
    if not isinstance(fc1_weight, torch.Tensor) or fc1_weight.dim() != 2:
        raise ValueError("fc1_weight must be a 2-d tensor of shape (adapter_channels, C)")
    adapter_channels = fc1_weight.shape[0]
    if adapter_channels < 1:
        raise ValueError(f"fc1_weight has shape {tuple(fc1_weight.shape)}: adapter_channels (its first "
                         "dimension) must be at least 1")
    if fc1_weight.shape[1] != channels:
        raise ValueError(
            f"fc1_weight: x has C={channels} channels but fc1_weight has shape {tuple(fc1_weight.shape)} "
            f"(expected ({adapter_channels}, {channels}))")
    _check_tensor("fc1_bias", fc1_bias, (adapter_channels,))
    if not isinstance(conv_weight, torch.Tensor) or conv_weight.dim() != 5:
        raise ValueError("conv_weight must be a 5-d tensor of shape (adapter_channels, 1, kt, kh, kw)")
    kernel_size = check_kernel_size(tuple(conv_weight.shape[2:]))
    _check_tensor("conv_weight", conv_weight, (adapter_channels, 1) + kernel_size)
    _check_tensor("conv_bias", conv_bias, (adapter_channels,))
    _check_tensor("fc2_weight", fc2_weight, (channels, adapter_channels))
    _check_tensor("fc2_bias", fc2_bias, (channels,))

    params = dict(fc1_weight=fc1_weight, fc1_bias=fc1_bias, conv_weight=conv_weight, conv_bias=conv_bias,
                  fc2_weight=fc2_weight, fc2_bias=fc2_bias)
    for name, t in dict(x=x, **params).items():
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}: all tensors must share a device")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} has unsupported dtype {t.dtype}; expected one of {SUPPORTED_DTYPES}")
    for name, t in params.items():
        if t.dtype != fc1_weight.dtype:
            raise TypeError(f"{name} is {t.dtype} but fc1_weight is {fc1_weight.dtype}: parameters must share a dtype")
    if x.dtype != fc1_weight.dtype and not allow_mixed_dtype:
        raise TypeError(
            f"x is {x.dtype} but the adapter parameters are {fc1_weight.dtype}; cast one of them or run "
            "under torch.autocast")

    height, width = resolve_grid(num_tokens - num_prefix_tokens, grid_size, kernel_size)
    return AdapterShape(batch=frames // num_frames, num_frames=num_frames, num_tokens=num_tokens,
                        num_prefix_tokens=num_prefix_tokens, height=height, width=width, channels=channels,
                        adapter_channels=adapter_channels, kernel_size=kernel_size)


def check_state_dict(expected, given, source):
    """ValueError naming `source` unless `given` ({name: tensor}) has exactly `expected`'s keys (a model's
    state_dict()), each with its shape, a floating dtype where the model's tensor is floating, values (not on the
    meta device) and finite values; TypeError if it is not a dict of str -> tensor. Everything is checked before
    a caller copies anything."""
    if not isinstance(given, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in given.items()):
        raise TypeError(f"{source}: expected a dict of str -> torch.Tensor, got {type(given).__name__}"
                        + _first_bad_item(given))
    problems = []
    missing, unexpected = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    for name in sorted(expected.keys() & given.keys()):
        want, got = expected[name], given[name]
        if got.shape != want.shape:
            problems.append(f"{name} has shape {tuple(got.shape)}, the model's {tuple(want.shape)}")
        elif want.is_floating_point() and not got.is_floating_point():
            problems.append(f"{name} has dtype {got.dtype}, the model's is floating point ({want.dtype})")
        elif got.device.type == "meta":
            problems.append(f"{name} is on the meta device (it has no values)")
        elif got.is_floating_point() and not bool(torch.isfinite(got).all()):
            problems.append(f"{name} holds non-finite values")
    if problems:
        raise ValueError(f"{source} does not fit the model: " + "; ".join(problems))


def _first_bad_item(given):
    if not isinstance(given, dict):
        return ""
    for key, value in given.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            return f" (e.g. {key!r}: {type(value).__name__})"
    return ""


def _some(names, shown=5):
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
