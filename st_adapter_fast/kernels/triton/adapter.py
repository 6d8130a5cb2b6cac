"""The Triton kernels as a `fused.ConvKernels` backend: launch wrappers, autotuning, the partial-sum buffer."""
import os

import torch
import triton

from ...activations import ACTIVATION_CODES
from ...fused import ConvKernels, conv_reductions
from . import interpreting
from .common import dot_settings
from .matmul_residual import matmul_residual_kernel
from .temporal_conv import down_conv_act_bwd_kernel, down_conv_act_fwd_kernel

# Whether the fused kernels compute the Ca-wide GEMM next to the conv (x @ W1^T forward, g @ W2 backward)
# or read its result from a cuBLAS call. Both are tested; the default is what measured faster in GPU time
# (H200, ViT-B/16 bf16, CUDA-graph replays: forward 0.256 ms with cuBLAS against 0.337 fused, fwd+bwd 1.017
# against 1.118; benchmarks/results/nvidia-h200.json, rows "triton" and "triton, fused down-projection").
FUSED_GEMM = os.environ.get("ST_ADAPTER_FAST_FUSED_GEMM", "0") == "1"

# Small blocks under the interpreter: fast on the CPU, and small test shapes still span several blocks.
_INTERPRET_CONV_BLOCKS = dict(BLOCK_N=16, BLOCK_CA=32, BLOCK_K=32)
_INTERPRET_MATMUL_BLOCKS = dict(BLOCK_M=32, BLOCK_NC=32, BLOCK_K=32, GROUP_M=4)


MIN_BLOCK_N = 16  # sizes the backward's partial-sum buffer; no config may go below it

# A fixed launch config of the conv kernels, instead of autotuning: "BLOCK_N=64,BLOCK_CA=64,num_warps=4,num_stages=3"
# (BLOCK_K, only read with the fused down-projection, defaults to 64; num_warps to 4, num_stages to 3), from
# ST_ADAPTER_FAST_TRITON_{FWD,BWD}_CONFIG at each call or the `config` argument of the launches below. Used by
# benchmarks/cuda_kernel_sweep.py to time each config alone; unset, the kernels autotune as before.
CONV_CONFIG_ENV = {"fwd": "ST_ADAPTER_FAST_TRITON_FWD_CONFIG", "bwd": "ST_ADAPTER_FAST_TRITON_BWD_CONFIG"}
_CONFIG_DEFAULTS = dict(BLOCK_K=64, num_warps=4, num_stages=3)
_POWER_OF_TWO = ("BLOCK_N", "BLOCK_CA", "BLOCK_K", "num_warps")


def parse_conv_config(text):
    """{'BLOCK_N', 'BLOCK_CA', 'BLOCK_K', 'num_warps', 'num_stages'} from "KEY=VALUE,..." (or a dict of them);
    ValueError naming the problem for unknown keys, missing blocks, or sizes that are not powers of two."""
    if isinstance(text, dict):
        items = dict(text)
    else:
        items = {}
        for part in filter(None, (p.strip() for p in str(text).split(","))):
            key, sep, value = part.partition("=")
            if not sep or not value.strip().lstrip("-").isdigit():
                raise ValueError(f"Triton conv config {text!r}: expected KEY=INTEGER items, got {part!r}")
            items[key.strip()] = int(value)
    config = dict(_CONFIG_DEFAULTS, **items)
    unknown = sorted(set(config) - {"BLOCK_N", "BLOCK_CA", *_CONFIG_DEFAULTS})
    if unknown or not {"BLOCK_N", "BLOCK_CA"} <= set(config):
        raise ValueError(f"Triton conv config {text!r}: needs BLOCK_N and BLOCK_CA, may set BLOCK_K, num_warps, "
                         f"num_stages; unknown: {unknown}")
    for key in _POWER_OF_TWO:
        if config[key] < 1 or config[key] & (config[key] - 1):
            raise ValueError(f"Triton conv config {text!r}: {key} must be a power of two, got {config[key]}")
    if config["BLOCK_N"] < MIN_BLOCK_N or config["BLOCK_CA"] < 16 or config["BLOCK_K"] < 16 or config["num_stages"] < 1:
        raise ValueError(f"Triton conv config {text!r}: BLOCK_N >= {MIN_BLOCK_N}, BLOCK_CA >= 16, BLOCK_K >= 16 and "
                         f"num_stages >= 1 are required")
    return config


def config_text(config):
    return ",".join(f"{k}={config[k]}" for k in ("BLOCK_N", "BLOCK_CA", "BLOCK_K", "num_warps", "num_stages"))


def conv_config(direction, config=None):
    """The fixed config a conv launch of `direction` ("fwd" or "bwd") uses: `config` if given, else the
    environment's, else None (autotuning)."""
    if config is None:
        config = os.environ.get(CONV_CONFIG_ENV[direction]) or None
    return None if config is None else parse_conv_config(config)


def sweep_conv_configs():
    """The configs benchmarks/cuda_kernel_sweep.py times one by one: the autotuning list, then other warp counts,
    pipeline depths and block shapes (tokens x channels per program)."""
    tuned = [parse_conv_config(dict(BLOCK_N=c.kwargs["BLOCK_N"], BLOCK_CA=c.kwargs["BLOCK_CA"], BLOCK_K=c.kwargs["BLOCK_K"],
                                    num_warps=c.num_warps, num_stages=c.num_stages)) for c in _conv_configs()]
    extra = [dict(BLOCK_N=64, BLOCK_CA=64, num_warps=2, num_stages=3), dict(BLOCK_N=64, BLOCK_CA=64, num_warps=4, num_stages=1),
             dict(BLOCK_N=64, BLOCK_CA=64, num_warps=4, num_stages=2), dict(BLOCK_N=16, BLOCK_CA=128, num_warps=4, num_stages=3),
             dict(BLOCK_N=128, BLOCK_CA=32, num_warps=4, num_stages=3), dict(BLOCK_N=32, BLOCK_CA=32, num_warps=2, num_stages=3)]
    return tuned + [parse_conv_config(c) for c in extra]


def _conv_configs():
    # Wide channel blocks let the fused down-projection read each x row fewer times (Ca / BLOCK_CA).
    shapes = [(64, 64, 64, 4), (32, 128, 64, 4), (64, 128, 64, 8), (128, 64, 64, 8), (32, 64, 64, 4),
              (32, 256, 64, 8)]
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
# The partial-sum buffer must start at zero: a config with larger blocks writes fewer partials.
_conv_bwd = _tuned(down_conv_act_bwd_kernel, _conv_configs(), ["C", "CA", "KT", "ACT", "FUSED_GEMM"],
                   _INTERPRET_CONV_BLOCKS, reset_to_zero=["part_ptr"])
_matmul_residual = _tuned(matmul_residual_kernel, _matmul_configs(), ["K", "NC"], _INTERPRET_MATMUL_BLOCKS)


# The compiled kernel of the last fixed-config launch per kernel name (its n_regs / n_spills, for the sweep).
LAST_FIXED_LAUNCH = {}


def _fixed(kernel, config):
    """A conv kernel launched with one config (no autotuning)."""
    blocks = {k: config[k] for k in ("BLOCK_N", "BLOCK_CA", "BLOCK_K")}

    def launch(grid, **kw):
        LAST_FIXED_LAUNCH[kernel.__name__] = kernel[grid](**kw, **blocks, num_warps=config["num_warps"],
                                                          num_stages=config["num_stages"])
    return launch


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


class TritonKernels(ConvKernels):
    """Conv + activation (optionally with the Ca-wide GEMM fused in) and the residual GEMM, in Triton."""

    @property
    def fused_gemm(self):  # read at call time: tests and benchmarks switch it
        return FUSED_GEMM

    def conv_act_forward(self, *, x_patch, fc1_weight, fc1_bias, conv_weight, conv_bias, h, a, num_frames,
                         activation, store_h, config=None):
        frames, num_patches, channels = x_patch.shape
        Ca, kt = conv_weight.shape
        dot_dtype, precision = dot_settings(fc1_weight.dtype)
        fixed = conv_config("fwd", config)
        launch = _fixed(down_conv_act_fwd_kernel, fixed) if fixed else _conv_fwd
        launch(_conv_grid(frames // num_frames, num_patches, Ca),
                  x_ptr=x_patch, w1_ptr=fc1_weight, b1_ptr=fc1_bias, wc_ptr=conv_weight, bc_ptr=conv_bias, h_ptr=h,
                  a_ptr=a, T=num_frames, N=num_patches, C=channels, CA=Ca,
                  stride_xf=x_patch.stride(0), stride_xn=x_patch.stride(1),
                  stride_w1_ca=fc1_weight.stride(0), stride_w1_c=fc1_weight.stride(1),
                  stride_hf=h.stride(0), stride_hn=h.stride(1), stride_af=a.stride(0), stride_an=a.stride(1),
                  KT=kt, ACT=ACTIVATION_CODES[activation], STORE_H=store_h, FUSED_GEMM=self.fused_gemm,
                  DOT_DTYPE=dot_dtype, DOT_PRECISION=precision)

    def conv_act_backward(self, *, g_patch, fc2_weight, h, conv_weight, conv_bias, a, grad_h, num_frames,
                          activation, config=None):
        frames, num_patches, Ca = h.shape
        kt = conv_weight.shape[1]
        batch = frames // num_frames
        fixed = conv_config("bwd", config)
        # One row block of partials per (clip, token block) program, summed in a fixed order: deterministic.
        # Autotuned, the block size is known only inside the launch: rows for the smallest, zeroed. With a fixed
        # config every row is written (each program its own, all channel blocks together every column).
        if fixed:
            partials = torch.empty((batch * triton.cdiv(num_patches, fixed["BLOCK_N"]), kt + 2, Ca), device=h.device,
                                   dtype=torch.float32)
            launch = _fixed(down_conv_act_bwd_kernel, fixed)
        else:
            max_parts = batch * triton.cdiv(num_patches, MIN_BLOCK_N)
            partials = torch.zeros((max_parts, kt + 2, Ca), device=h.device, dtype=torch.float32)
            launch = _conv_bwd
        dot_dtype, precision = dot_settings(h.dtype)
        launch(_conv_grid(batch, num_patches, Ca),
                  g_ptr=g_patch, w2_ptr=fc2_weight, h_ptr=h, wc_ptr=conv_weight, bc_ptr=conv_bias, a_ptr=a,
                  gh_ptr=grad_h, part_ptr=partials, T=num_frames, N=num_patches, C=fc2_weight.shape[0], CA=Ca,
                  stride_gf=g_patch.stride(0), stride_gn=g_patch.stride(1),
                  stride_w2_c=fc2_weight.stride(0), stride_w2_ca=fc2_weight.stride(1),
                  stride_hf=h.stride(0), stride_hn=h.stride(1), stride_af=a.stride(0), stride_an=a.stride(1),
                  stride_ghf=grad_h.stride(0), stride_ghn=grad_h.stride(1),
                  KT=kt, ACT=ACTIVATION_CODES[activation], FUSED_GEMM=self.fused_gemm, DOT_DTYPE=dot_dtype,
                  DOT_PRECISION=precision)
        return conv_reductions(partials, h.dtype)

    def matmul_residual(self, a, b, residual, out):
        return matmul_residual(a, b, residual, out)


TRITON_KERNELS = TritonKernels()
