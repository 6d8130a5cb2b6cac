"""The reference against an independent re-implementation of the authors' adapter, and gradcheck."""
import math

import pytest
import torch
from torch import nn

import st_adapter_fast as saf
from st_adapter_fast.reference import STAdapterReference, st_adapter_reference
from st_adapter_fast.bench.parity import random_inputs


class AuthorsAdapter(nn.Module):
    """The adapter of the authors' release (models_adapter.py), written again from its description:
    class token at index 0, square grid, permute to (B, Ca, T, H, W), depthwise Conv3d, no activation,
    the result added in place into the patch tokens."""

    def __init__(self, in_channels, adapter_channels, kernel_size):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, adapter_channels)
        self.conv = nn.Conv3d(adapter_channels, adapter_channels, kernel_size=kernel_size, stride=(1, 1, 1),
                              padding=tuple(k // 2 for k in kernel_size), groups=adapter_channels)
        self.fc2 = nn.Linear(adapter_channels, in_channels)
        for p in (self.conv.weight, self.conv.bias, self.fc1.bias, self.fc2.bias):
            nn.init.constant_(p, 0.0)

    def forward(self, x, T):
        BT, L, C = x.size()
        B = BT // T
        Ca = self.conv.in_channels
        H = W = round(math.sqrt(L - 1))
        assert L - 1 == H * W
        x_id = x
        x = x[:, 1:, :]
        x = self.fc1(x)
        x = x.view(B, T, H, W, Ca).permute(0, 4, 1, 2, 3).contiguous()
        x = self.conv(x)
        x = x.permute(0, 2, 3, 4, 1).contiguous().view(BT, L - 1, Ca)
        x = self.fc2(x)
        x_id[:, 1:, :] += x
        return x_id


@pytest.mark.parametrize("kernel_size", [(3, 1, 1), (1, 3, 3), (3, 3, 3), (5, 1, 1)])
def test_matches_authors_adapter_after_load_state_dict(kernel_size):
    torch.manual_seed(0)
    authors = AuthorsAdapter(48, 24, kernel_size).double()
    with torch.no_grad():
        for p in authors.parameters():      # their init zeroes conv and biases; that would hide bugs
            p.normal_(0, 0.3)
    for cls in (STAdapterReference, saf.STAdapter):
        ours = cls(48, 24, kernel_size, activation=None).double()
        ours.load_state_dict(authors.state_dict())
        x = torch.randn(2 * 4, 1 + 9, 48, dtype=torch.float64)
        y = ours(x, 4)
        expected = authors(x.clone(), 4)
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_same_state_dict_keys_and_shapes_as_authors():
    authors = AuthorsAdapter(768, 384, (3, 1, 1))
    ours = saf.STAdapter(768, 384)
    assert {k: v.shape for k, v in authors.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}


def test_new_adapter_is_identity():
    x = torch.randn(6, 17, 32)
    for cls in (STAdapterReference, saf.STAdapter):
        torch.testing.assert_close(cls(32, 8)(x, 3), x, rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["gelu", "quick_gelu", None])
@pytest.mark.parametrize("kernel_size, prefix, grid", [((3, 1, 1), 1, (2, 2)), ((3, 3, 3), 0, (2, 3)),
                                                       ((1, 1, 1), 2, (1, 3))])
def test_gradcheck_reference(activation, kernel_size, prefix, grid):
    x, params = random_inputs(2, 3, prefix + grid[0] * grid[1], 6, 4, kernel_size)
    inputs = [t.requires_grad_() for t in (x, *params)]
    fn = lambda x_, *p: st_adapter_reference(x_, 3, *p, activation=activation, num_prefix_tokens=prefix,
                                             grid_size=grid)
    assert torch.autograd.gradcheck(fn, inputs)


def test_reference_is_out_of_place():
    x, params = random_inputs(2, 3, 10, 8, 4, (3, 1, 1))
    before = x.clone()
    st_adapter_reference(x, 3, *params)
    assert torch.equal(x, before)
