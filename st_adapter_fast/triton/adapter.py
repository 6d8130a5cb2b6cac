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
FUSED_GEMM = os.environ.get("ST_ADAPTER_FAST_FUSED_GEMM", "1") == "1"

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
                   _INTERPRET_CONV_BLOCKS,
                   reset_to_zero=["dwc_part_ptr", "dbc_part_ptr"])
_matmul_residual = _tuned(matmul_residual_kernel, _matmul_configs(), ["K", "NC", "HAS_BIAS"],
                          _INTERPRET_MATMUL_BLOCKS)


def _conv_grid(batch, num_patches, adapter_channels):
    return lambda meta: (triton.cdiv(num_patches, meta["BLOCK_N"]) * triton.cdiv(adapter_channels, meta["BLOCK_CA"]),
                         batch)


def matmul_residual(a, b, bias, residual, out):
    """out = residual + a @ b (+ bias) over rows of (frames, N, .) views; the last stride of each is 1."""
    frames, num_rows, k = a.shape
    nc = b.shape[1]
    dot_dtype, precision = dot_settings(b.dtype)
    m = frames * num_rows
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(nc, meta["BLOCK_NC"]),)
    _matmul_residual(grid, a_ptr=a, b_ptr=b, bias_ptr=bias if bias is not None else b, res_ptr=residual,
                     out_ptr=out, M=m, N=num_rows, K=k, NC=nc,
                     stride_af=a.stride(0), stride_an=a.stride(1), stride_bk=b.stride(0), stride_bn=b.stride(1),
                     stride_rf=residual.stride(0), stride_rn=residual.stride(1),
                     stride_of=out.stride(0), stride_on=out.stride(1),
                     HAS_BIAS=bias is not None, DOT_DTYPE=dot_dtype, DOT_PRECISION=precision)
    return out


def adapter_forward(x, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias,
                    num_frames, num_prefix_tokens, activation, need_h):
    """y, and (when need_h, else an empty tensor) h = fc1(x) of shape (frames, L, Ca), read on patch rows only."""
    frames, num_tokens, channels = x.shape
    P, N = num_prefix_tokens, num_tokens - num_prefix_tokens
    Ca, kt = conv_weight.shape[0], conv_weight.shape[2]
    dtype = fc1_weight.dtype
    x_patch = x[:, P:]
    a = torch.empty((frames, N, Ca), device=x.device, dtype=dtype)
    # h keeps all L rows (prefix rows zero when fused) so that the op returns one fixed layout.
    if FUSED_GEMM:
        h_full = _zero_prefix_buffer(frames, num_tokens, P, Ca, a) if need_h else a.new_empty((0, 1, 1))
    else:  # all L rows through cuBLAS: no slicing copy; the kernel reads the patch rows
        h_full = torch.nn.functional.linear(x.to(dtype), fc1_weight, fc1_bias)
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

    y = torch.empty(x.shape, device=x.device, dtype=torch.promote_types(x.dtype, dtype))
    y[:, :P] = x[:, :P]
    matmul_residual(a, fc2_weight.t(), fc2_bias, x_patch, y[:, P:])
    return y, (h_full if need_h else a.new_empty((0, 1, 1)))


def _zero_prefix_buffer(frames, num_tokens, num_prefix_tokens, channels, like):
    """(frames, L, channels) buffer whose prefix rows are zero: GEMMs over all L rows then need no slicing."""
    buf = torch.empty((frames, num_tokens, channels), device=like.device, dtype=like.dtype)
    buf[:, :num_prefix_tokens].zero_()
    return buf


def adapter_backward(grad_y, x, h, fc1_weight, conv_weight, conv_bias, fc2_weight,
                     num_frames, num_prefix_tokens, activation):
    """Gradients (x, fc1.weight, fc1.bias, conv.weight, conv.bias, fc2.weight, fc2.bias)."""
    frames, num_tokens, channels = x.shape
    P, N = num_prefix_tokens, num_tokens - num_prefix_tokens
    Ca, kt = conv_weight.shape[0], conv_weight.shape[2]
    dtype = fc1_weight.dtype
    batch = frames // num_frames
    grad_y = grad_y if grad_y.stride(-1) == 1 else grad_y.contiguous()

    h = h[:, P:]
    a = _zero_prefix_buffer(frames, num_tokens, P, Ca, h)
    grad_h = _zero_prefix_buffer(frames, num_tokens, P, Ca, h)
    dot_dtype, precision = dot_settings(dtype)
    # One partial per (clip, token block) program, summed below in a fixed order: deterministic.
    grid = _conv_grid(batch, N, Ca)
    max_parts = batch * triton.cdiv(N, MIN_BLOCK_N)
    conv_weight_part = torch.zeros((max_parts, Ca, kt), device=x.device, dtype=torch.float32)
    conv_bias_part = torch.zeros((max_parts, Ca), device=x.device, dtype=torch.float32)
    a_patch, grad_h_patch = a[:, P:], grad_h[:, P:]
    rows_g = grad_y.reshape(-1, channels).to(dtype)
    # Fused: the kernel reads g's patch rows; else it reads grad_a = g @ W2 from one cuBLAS call.
    g_patch = grad_y[:, P:] if FUSED_GEMM else (rows_g @ fc2_weight).view(frames, num_tokens, Ca)[:, P:]
    _conv_bwd(grid, g_ptr=g_patch, w2_ptr=fc2_weight, h_ptr=h, wc_ptr=conv_weight.reshape(Ca, kt).contiguous(),
              bc_ptr=conv_bias, a_ptr=a_patch, gh_ptr=grad_h_patch, dwc_part_ptr=conv_weight_part,
              dbc_part_ptr=conv_bias_part, T=num_frames, N=N, C=channels, CA=Ca,
              stride_gf=g_patch.stride(0), stride_gn=g_patch.stride(1),
              stride_w2_c=fc2_weight.stride(0), stride_w2_ca=fc2_weight.stride(1),
              stride_hf=h.stride(0), stride_hn=h.stride(1), stride_af=a_patch.stride(0), stride_an=a_patch.stride(1),
              stride_ghf=grad_h_patch.stride(0), stride_ghn=grad_h_patch.stride(1),
              KT=kt, ACT=ACTIVATION_CODES[activation], FUSED_GEMM=FUSED_GEMM, DOT_DTYPE=dot_dtype,
              DOT_PRECISION=precision)

    grad_fc2_weight = rows_g.t() @ a.reshape(-1, Ca)
    grad_fc2_bias = grad_y[:, P:].sum((0, 1), dtype=torch.float32).to(dtype)
    grad_fc1_weight = grad_h.reshape(-1, Ca).t() @ x.reshape(-1, channels).to(dtype)
    grad_fc1_bias = grad_h.sum((0, 1), dtype=torch.float32).to(dtype)
    grad_conv_weight = conv_weight_part.sum(0).to(dtype).reshape(conv_weight.shape)
    grad_conv_bias = conv_bias_part.sum(0).to(dtype)

    # Prefix rows of grad_h are zero, so one pass over all L rows gives dx = g there, exactly.
    grad_x = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    matmul_residual(grad_h, fc1_weight, None, grad_y, grad_x)
    return grad_x, grad_fc1_weight, grad_fc1_bias, grad_conv_weight, grad_conv_bias, grad_fc2_weight, grad_fc2_bias
