"""Pure-PyTorch ST-Adapter: the authors' computation, written for clarity, not speed.

This is the semantic reference every fast path is tested against: slice off the prefix tokens,
fc1, reshape to (B, Ca, T, H, W), depthwise Conv3d with zero padding k//2, back to the token layout,
activation, fc2, add to the input (out of place).
"""
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .activations import apply_activation, check_activation
from .validation import (as_int, autocast_active, check_adapter_inputs, check_grid_size, check_kernel_size,
                         check_state_dict)


def st_adapter_reference(x, num_frames, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias,
                         *, activation="gelu", num_prefix_tokens=1, grid_size=None):
    """The authors' permute + Conv3d computation; see the package README for the semantics."""
    check_activation(activation)
    shape = check_adapter_inputs(x, num_frames, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight,
                                 fc2_bias, num_prefix_tokens=num_prefix_tokens, grid_size=grid_size,
                                 allow_mixed_dtype=autocast_active(x.device.type))
    return adapter_output(x, shape, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias, activation)


def adapter_output(x, shape, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias, activation):
    """The adapter's output for inputs already checked (`shape` is their `AdapterShape`): x's prefix rows,
    then x + adapter_delta on the patch rows."""
    P = shape.num_prefix_tokens
    h = adapter_delta(x, shape, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias, activation)
    return torch.cat([x[:, :P, :], x[:, P:, :] + h], dim=1)


def adapter_delta(x, shape, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias, activation):
    """What the adapter adds to the patch tokens, (B*T, N, C): fc2(act(conv(fc1(x[:, P:])))), for inputs
    already checked (`shape` is their `AdapterShape`)."""
    B, T, H, W = shape.batch, shape.num_frames, shape.height, shape.width
    P, Ca = shape.num_prefix_tokens, shape.adapter_channels

    h = F.linear(x[:, P:, :], fc1_weight, fc1_bias)                       # (B*T, N, Ca)
    h = h.reshape(B, T, H, W, Ca).permute(0, 4, 1, 2, 3).contiguous()    # (B, Ca, T, H, W)
    padding = tuple(k // 2 for k in shape.kernel_size)
    h = F.conv3d(h, conv_weight, conv_bias, padding=padding, groups=Ca)
    h = h.permute(0, 2, 3, 4, 1).reshape(B * T, H * W, Ca)
    h = apply_activation(h, activation)
    return F.linear(h, fc2_weight, fc2_bias)                             # (B*T, N, C)


class STAdapterReference(nn.Module):
    """ST-Adapter with the authors' parameters (``fc1``, ``conv``, ``fc2``) and init.

    Args:
        in_channels: token width C of the backbone (a positive int).
        adapter_channels: bottleneck width Ca (a positive int).
        kernel_size: depthwise Conv3d kernel (kt, kh, kw), every entry odd; an int k means (k, 1, 1).
        activation: "gelu" (the paper), "quick_gelu", or None (the authors' code release).
        num_prefix_tokens: class/register tokens at the start of each frame, passed through unchanged.
        grid_size: (H, W) of the patch grid; default: square root of the patch count.

    ``forward(x, num_frames, grid_size=None)`` maps (B*T, L, C) -> (B*T, L, C) without writing to ``x``;
    ``grid_size`` there is this call's patch grid (default: the module's), for models that take other image sizes.
    As in the authors' code, ``conv`` and all biases start at zero, so a new adapter is the identity.
    """

    def __init__(self, in_channels, adapter_channels, kernel_size=(3, 1, 1), *, activation="gelu",
                 num_prefix_tokens=1, grid_size=None):
        super().__init__()
        in_channels = as_int("in_channels", in_channels, 1)
        adapter_channels = as_int("adapter_channels", adapter_channels, 1)
        kernel_size = check_kernel_size(kernel_size)
        self.activation = check_activation(activation)
        self.num_prefix_tokens = as_int("num_prefix_tokens", num_prefix_tokens, 0)
        self.grid_size = None if grid_size is None else check_grid_size(grid_size)
        self.fc1 = nn.Linear(in_channels, adapter_channels)
        self.conv = nn.Conv3d(adapter_channels, adapter_channels, kernel_size=kernel_size,
                              padding=tuple(k // 2 for k in kernel_size), groups=adapter_channels)
        self.fc2 = nn.Linear(adapter_channels, in_channels)
        for p in (self.conv.weight, self.conv.bias, self.fc1.bias, self.fc2.bias):
            nn.init.zeros_(p)

    def adapter_params(self):
        """The six parameters in the order the functional API takes them."""
        return (self.fc1.weight, self.fc1.bias, self.conv.weight, self.conv.bias,
                self.fc2.weight, self.fc2.bias)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """As nn.Module's, but everything is checked before the first copy (keys when `strict`, shapes, a
        floating dtype, values not on the meta device, finite values): ValueError / TypeError naming what does
        not fit, and the adapter is unchanged. Tensors of another floating dtype are cast on copy."""
        given = dict(state_dict) if isinstance(state_dict, Mapping) else state_dict
        expected = self.state_dict()
        if not strict and isinstance(given, dict):
            expected = {k: v for k, v in expected.items() if k in given}
        check_state_dict(expected, given, f"{type(self).__name__}.load_state_dict: the state dict")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x, num_frames, grid_size=None):
        return st_adapter_reference(x, num_frames, *self.adapter_params(), activation=self.activation,
                                    num_prefix_tokens=self.num_prefix_tokens,
                                    grid_size=self.grid_size if grid_size is None else grid_size)

    def extra_repr(self):
        return (f"activation={self.activation!r}, num_prefix_tokens={self.num_prefix_tokens}, "
                f"grid_size={self.grid_size}")
