"""The adapter's forward and backward on the Triton path: fused kernels plus the GEMMs around them.

Tensors come in validated (ops.py); the compute dtype is the parameters' dtype, `x` may differ (autocast).
"""
import os

import torch
import triton

from .common import ACTIVATION_CODES, dot_settings, interpreting
from .matmul_residual import matmul_residual_kernel
from .temporal_conv import down_conv_act_bwd_kernel, down_conv_act_fwd_kernel

# Whether the fused kernels compute the Ca-wide GEMM next to the conv (x @ W1^T forward, g @ W2 backward)
# or read its result from a cuBLAS call. Both are tested; the default is what measured faster (see docs).
FUSED_GEMM = os.environ.get("ST_ADAPTER_FAST_FUSED_GEMM", "0") == "1"

# Small blocks under the interpreter: fast on the CPU, and small test shapes still span several blocks.
_INTERPRET_CONV_BLOCKS = dict(BLOCK_N=16, BLOCK_CA=32, BLOCK_K=32)
_INTERPRET_MATMUL_BLOCKS = dict(BLOCK_M=32, BLOCK_NC=32, BLOCK_K=32, GROUP_M=4)


MIN_BLOCK_N = 16  # sizes the backward's partial-sum buffers; no config may go below it


def _conv_configs():
    shapes = [(64, 64, 64, 4), (32, 128, 64, 4), (64, 128, 64, 8), (128, 64, 64, 8), (32, 64, 64, 4)]
    return [triton.Config(dict(BLOCK_N=bn, BLOCK_CA=bca, BLOCK_K=bk), num_warps=w, num_stages=3)
            for bn, bca, bk, w in shapes]


def _matmul_configs():
    shapes = [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 256, 64, 8, 3),
              (64, 64, 64, 4, 4)]
    return [triton.Config(dict(BLOCK_M=bm, BLOCK_NC=bn, BLOCK_K=bk, GROUP_M=8), num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in shapes]


def _tuned(kernel, configs, key, interpret_blocks, reset_to_zero=None):
    """Autotuned on the GPU (keyed on channel sizes, never on the token count); fixed blocks when interpreting."""
    if interpreting():
        return lambda grid, **kw: kernel[grid](**kw, **interpret_blocks)
    if os.environ.get("ST_ADAPTER_FAST_AUTOTUNE", "1") == "0":
        configs = configs[:1]   # first config only: quick compiles for test runs
    tuned = triton.autotune(configs=configs, key=key, reset_to_zero=reset_to_zero)(kernel)
    return lambda grid, **kw: tuned[grid](**kw)


_conv_fwd = _tuned(down_conv_act_fwd_kernel, _conv_configs(), ["C", "CA", "KT", "ACT", "STORE_H", "FUSED_GEMM"],
                   _INTERPRET_CONV_BLOCKS)
# The partial-sum buffers must start at zero: a config with larger blocks writes fewer partials.
_conv_bwd = _tuned(down_conv_act_bwd_kernel, _conv_configs(), ["C", "CA", "KT", "ACT", "FUSED_GEMM"],
                   _INTERPRET_CONV_BLOCKS, reset_to_zero=["dwc_part_ptr", "dbc_part_ptr", "db1_part_ptr"])
_matmul_residual = _tuned(matmul_residual_kernel, _matmul_configs(), ["K", "NC"], _INTERPRET_MATMUL_BLOCKS)


def _conv_grid(batch, num_patches, adapter_channels):
    return lambda meta: (batch * triton.cdiv(num_patches, meta["BLOCK_N"]) * triton.cdiv(adapter_channels,
                                                                                        meta["BLOCK_CA"]),)


def matmul_residual(a, b, residual, out):
    """out = residual + a @ b over rows of (frames, N, .) tensors; the last stride of each is 1."""
    frames, num_rows, k = a.shape
    nc = b.shape[1]
    dot_dtype, precision = dot_settings(b.dtype)
    m = frames * num_rows
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(nc, meta["BLOCK_NC"]),)
    _matmul_residual(grid, a_ptr=a, b_ptr=b, res_ptr=residual, out_ptr=out, M=m, N=num_rows, K=k, NC=nc,
                     stride_af=a.stride(0), stride_an=a.stride(1), stride_bk=b.stride(0), stride_bn=b.stride(1),
                     stride_rf=residual.stride(0), stride_rn=residual.stride(1),
                     stride_of=out.stride(0), stride_on=out.stride(1),
                     DOT_DTYPE=dot_dtype, DOT_PRECISION=precision)
    return out


# The up-projection's input `a` carries BIAS_COLUMNS extra columns: a 1 on patch rows (0 on prefix rows)
# that meets fc2.bias in the augmented weight, and zero padding that keeps rows 16-byte aligned. Then
# y = x + a_aug @ W2_aug^T is one GEMM (cuBLAS addmm, or the Triton fallback) that leaves the prefix rows
# exactly x, and the bias gradient falls out of the weight gradient's extra column.
BIAS_COLUMNS = 8


def _augmented_activation_buffer(frames, num_tokens, num_prefix_tokens, adapter_channels, like):
    """(frames, L, Ca + BIAS_COLUMNS): prefix rows zero, column Ca one on patch rows, padding zero.
    Columns :Ca of the patch rows are left for the conv kernel to write."""
    P, Ca = num_prefix_tokens, adapter_channels
    buf = _zero_prefix_buffer(frames, num_tokens, P, Ca + BIAS_COLUMNS, like)
    buf[:, P:, Ca:].zero_()
    buf[:, P:, Ca] = 1
    return buf


def _augmented_fc2_weight(fc2_weight, fc2_bias):
    channels, Ca = fc2_weight.shape
    w = fc2_weight.new_zeros((channels, Ca + BIAS_COLUMNS))
    w[:, :Ca] = fc2_weight
    w[:, Ca] = fc2_bias
    return w


def _rows(t):
    """(frames, L, C) as a (frames * L, C) view, or None when its strides do not allow one without a copy."""
    frames, num_tokens, channels = t.shape
    if t.stride(2) == 1 and t.stride(1) == channels and t.stride(0) == num_tokens * channels:
        return t.view(frames * num_tokens, channels)
    return None


def _add_matmul(residual, a_rows, weight_t, out_dtype):
    """residual + a @ weight_t over all rows, as out_dtype: one cuBLAS addmm where dtypes and strides
    allow, else the Triton kernel with the residual in its epilogue. Rows where `a` is zero (the prefix
    tokens) come out exactly as the residual."""
    frames, num_tokens, channels = residual.shape
    residual_rows = _rows(residual)
    if residual_rows is not None and residual.dtype == a_rows.dtype == out_dtype:
        return torch.addmm(residual_rows, a_rows, weight_t).view(frames, num_tokens, channels)
    out = torch.empty(residual.shape, device=residual.device, dtype=out_dtype)
    return matmul_residual(a_rows.view(frames, num_tokens, -1), weight_t, residual, out)


def adapter_forward(x, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias,
                    num_frames, num_prefix_tokens, activation, need_h):
    """(y, h, x_low). When need_h (else empty tensors): h = fc1(x) of shape (frames, L, Ca), read on patch rows
    only, and, if x's dtype is not the compute dtype (autocast), x_low = x in the compute dtype: what the
    backward needs of x, at the size the reference keeps."""
    frames, num_tokens, channels = x.shape
    P, N = num_prefix_tokens, num_tokens - num_prefix_tokens
    Ca, kt = conv_weight.shape[0], conv_weight.shape[2]
    dtype = fc1_weight.dtype
    x_patch = x[:, P:]
    # cuBLAS's fc1 needs x in the compute dtype, and backward keeps that copy (a no-op when dtypes agree).
    x_low = x.to(dtype) if (need_h or not FUSED_GEMM) else x
    a_aug = _augmented_activation_buffer(frames, num_tokens, P, Ca, fc1_weight)
    a = a_aug[:, P:, :Ca]
    # h keeps all L rows (prefix rows zero when fused) so that the op returns one fixed layout.
    if FUSED_GEMM:
        h_full = _zero_prefix_buffer(frames, num_tokens, P, Ca, a) if need_h else a.new_empty((0, 1, 1))
    else:  # all L rows through cuBLAS: no slicing copy; the kernel reads the patch rows
        h_full = torch.nn.functional.linear(x_low, fc1_weight, fc1_bias)
    h = h_full[:, P:] if h_full.numel() else h_full
    dot_dtype, precision = dot_settings(dtype)
    _conv_fwd(_conv_grid(frames // num_frames, N, Ca),
              x_ptr=x_patch, w1_ptr=fc1_weight, b1_ptr=fc1_bias, wc_ptr=conv_weight.reshape(Ca, kt).contiguous(),
              bc_ptr=conv_bias, h_ptr=h, a_ptr=a, T=num_frames, N=N, C=channels, CA=Ca,
              stride_xf=x_patch.stride(0), stride_xn=x_patch.stride(1),
              stride_w1_ca=fc1_weight.stride(0), stride_w1_c=fc1_weight.stride(1),
              stride_hf=h.stride(0), stride_hn=h.stride(1), stride_af=a.stride(0), stride_an=a.stride(1),
              KT=kt, ACT=ACTIVATION_CODES[activation], STORE_H=need_h, FUSED_GEMM=FUSED_GEMM, DOT_DTYPE=dot_dtype,
              DOT_PRECISION=precision)

    y = _add_matmul(x, a_aug.view(frames * num_tokens, Ca + BIAS_COLUMNS),
                    _augmented_fc2_weight(fc2_weight, fc2_bias).t(), torch.promote_types(x.dtype, dtype))
    empty = lambda: a.new_empty((0, 1, 1))  # distinct tensors: op outputs must not alias
    return y, (h_full if need_h else empty()), (x_low if need_h and x.dtype != dtype else empty())


def _zero_prefix_buffer(frames, num_tokens, num_prefix_tokens, channels, like):
    """(frames, L, channels) buffer whose prefix rows are zero: GEMMs over all L rows then need no slicing."""
    buf = torch.empty((frames, num_tokens, channels), device=like.device, dtype=like.dtype)
    buf[:, :num_prefix_tokens].zero_()
    return buf


def adapter_backward(grad_y, x, h, fc1_weight, conv_weight, conv_bias, fc2_weight,
                     num_frames, num_prefix_tokens, activation):
    """Gradients (x, fc1.weight, fc1.bias, conv.weight, conv.bias, fc2.weight, fc2.bias); x may be the
    forward's x_low, and the gradient of x comes in grad_y's dtype (autograd casts it to x's)."""
    frames, num_tokens, channels = x.shape
    P, N = num_prefix_tokens, num_tokens - num_prefix_tokens
    Ca, kt = conv_weight.shape[0], conv_weight.shape[2]
    dtype = fc1_weight.dtype
    batch = frames // num_frames
    grad_y = grad_y if grad_y.stride(-1) == 1 else grad_y.contiguous()
    rows_g = grad_y.reshape(-1, channels).to(dtype)

    h = h[:, P:]
    a_aug = _augmented_activation_buffer(frames, num_tokens, P, Ca, h)
    a = a_aug[:, P:, :Ca]
    grad_h = _zero_prefix_buffer(frames, num_tokens, P, Ca, h)
    grad_h_patch = grad_h[:, P:]
    # Fused: the kernel reads g's patch rows; else it reads grad_a = g @ W2 from one cuBLAS call.
    g_patch = grad_y[:, P:] if FUSED_GEMM else (rows_g @ fc2_weight).view(frames, num_tokens, Ca)[:, P:]
    # One partial per (clip, token block) program, summed below in a fixed order: deterministic.
    max_parts = batch * triton.cdiv(N, MIN_BLOCK_N)
    conv_weight_part = torch.zeros((max_parts, Ca, kt), device=x.device, dtype=torch.float32)
    conv_bias_part = torch.zeros((max_parts, Ca), device=x.device, dtype=torch.float32)
    fc1_bias_part = torch.zeros((max_parts, Ca), device=x.device, dtype=torch.float32)
    dot_dtype, precision = dot_settings(dtype)
    _conv_bwd(_conv_grid(batch, N, Ca),
              g_ptr=g_patch, w2_ptr=fc2_weight, h_ptr=h, wc_ptr=conv_weight.reshape(Ca, kt).contiguous(),
              bc_ptr=conv_bias, a_ptr=a, gh_ptr=grad_h_patch, dwc_part_ptr=conv_weight_part,
              dbc_part_ptr=conv_bias_part, db1_part_ptr=fc1_bias_part, T=num_frames, N=N, C=channels, CA=Ca,
              stride_gf=g_patch.stride(0), stride_gn=g_patch.stride(1),
              stride_w2_c=fc2_weight.stride(0), stride_w2_ca=fc2_weight.stride(1),
              stride_hf=h.stride(0), stride_hn=h.stride(1), stride_af=a.stride(0), stride_an=a.stride(1),
              stride_ghf=grad_h_patch.stride(0), stride_ghn=grad_h_patch.stride(1),
              KT=kt, ACT=ACTIVATION_CODES[activation], FUSED_GEMM=FUSED_GEMM, DOT_DTYPE=dot_dtype,
              DOT_PRECISION=precision)

    # Column Ca of a_aug is 1 on patch rows, so that column of the product is fc2.bias's gradient.
    grad_fc2_aug = rows_g.t() @ a_aug.view(frames * num_tokens, Ca + BIAS_COLUMNS)
    grad_fc2_weight, grad_fc2_bias = grad_fc2_aug[:, :Ca].contiguous(), grad_fc2_aug[:, Ca].contiguous()
    grad_fc1_weight = grad_h.view(-1, Ca).t() @ x.reshape(-1, channels).to(dtype)
    grad_fc1_bias = fc1_bias_part.sum(0).to(dtype)
    grad_conv_weight = conv_weight_part.sum(0).to(dtype).reshape(conv_weight.shape)
    grad_conv_bias = conv_bias_part.sum(0).to(dtype)
    # Prefix rows of grad_h are zero, so over all L rows dx = g there, exactly.
    grad_x = _add_matmul(grad_y, grad_h.view(-1, Ca), fc1_weight, grad_y.dtype)
    return grad_x, grad_fc1_weight, grad_fc1_bias, grad_conv_weight, grad_conv_bias, grad_fc2_weight, grad_fc2_bias
