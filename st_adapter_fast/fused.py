"""The adapter's forward and backward around a fused conv + activation kernel, in Python: the Triton backend's.

The Ca-wide GEMMs run in cuBLAS (torch), the temporal conv + activation (and, backward, its gradients) in one
kernel pass in the token layout, supplied as a `ConvKernels` (kernels/triton/adapter.py). The compiled
backends run the same steps in C++ (csrc/adapter.cpp), one call per direction.

Tensors come in validated (ops.py); the compute dtype is the parameters' dtype, `x` may differ (autocast).

Prefix tokens are isolated exactly, whatever the weights or x's prefix rows hold (inf and NaN included).
The GEMMs run over all L rows of each frame (a (frames * L, .) view needs no copy; the patch rows alone
allow no 2-d view) with zeroed prefix rows on one side; 0 * inf = NaN would then leak into the prefix rows
of the result, or into a sum over rows. What each guard costs, in extra bytes moved per call (ViT-B/16,
frames = 256, L = 197, P = 1, C = 768, bf16; measure on a GPU before changing them):
  - y's prefix rows are copied from x after the up-projection (`_restore_prefix`): P * frames * C elements
    read and written, 0.4 + 0.4 MB (0.8 + 0.8 MB for an fp32 residual under autocast).
  - grad_x's prefix rows are copied from grad_y after the input-gradient GEMM: the same, 0.8 MB.
  - fc1's weight gradient sums x's rows against grad_h, whose prefix rows are zero: x's prefix rows must be
    finite zeros there. Under autocast x is cast to the compute dtype anyway (`zero_prefix_copy`, made in
    ops.py); that copy writes zeros on the prefix rows instead of x's, at no extra cost. When x already has
    the compute dtype and P > 0, backward makes that copy itself: frames * N * C elements read and
    frames * L * C written, 77.1 + 77.5 MB, plus the same 77.5 MB held until fc1's weight gradient is done.
  Launches: each prefix copy is one more small kernel per direction, and a zero-prefix copy is two (zero
  the prefix rows, copy the patch rows) where the autocast cast was one: host time where a step is
  launch-bound (eager fwd + bwd on a GPU).
  Prefix rows of grad_y are not isolated from the fc2 gradients (grad_fc2 = g^T @ a over all rows): a
  non-finite gradient on the class token reaches the weights, as it reaches everything upstream anyway.
"""
import functools

import torch

# Where the backend folds fc2's bias into the GEMM (kernels.fold_fc2_bias), the up-projection's input `a`
# carries BIAS_COLUMNS extra columns: a 1 on patch rows (0 on prefix rows) that meets fc2.bias in the
# augmented weight, and zero padding that keeps rows 16-byte aligned. Then y = x + a_aug @ W2_aug^T is one
# GEMM that leaves the prefix rows x (exactly once _restore_prefix has run), and the bias gradient falls
# out of the weight gradient's extra column. On the CPU the 8 extra columns cost MKL ~15% on those GEMMs
# (K = 392 instead of 384), more than a separate bias add, so there the bias is added to the patch rows and
# summed in backward.
BIAS_COLUMNS = 8


class ConvKernels:
    """What a kernel backend provides. Tensors of shape (frames, N, Ca) are views with channel stride 1.

    - conv_act_forward(x_patch, fc1_weight, fc1_bias, conv_weight, conv_bias, h, a, num_frames, activation,
      store_h): writes a = act(conv(h) + conv_bias). With `fused_gemm`, h is computed inside from x_patch
      and fc1 (and written only when store_h); otherwise it is read.
    - conv_act_backward(g_patch, fc2_weight, h, conv_weight, conv_bias, a, grad_h, num_frames, activation):
      writes grad_h and the recomputed a; returns the gradients of conv.weight (as (Ca, kt)), conv.bias
      and fc1.bias in the compute dtype, from per-block partial sums in one layout for every backend (see
      `conv_reductions`). g_patch is grad_a, or with `fused_gemm` grad_y (grad_a computed inside).
    - matmul_residual(a, b, residual, out): out = residual + a @ b for the dtype mixes torch.addmm refuses.
    - fold_fc2_bias(device): whether fc2's bias rides in the GEMM as an extra column (see BIAS_COLUMNS).
    conv_weight is (Ca, kt), contiguous.
    """
    fused_gemm = False

    def fold_fc2_bias(self, device):
        return True


def conv_reductions(partials, dtype):
    """(conv.weight's gradient (Ca, kt), conv.bias's (Ca), fc1.bias's (Ca)) in `dtype`, from the per-block
    partial sums of a conv backward kernel, fp32, laid out (blocks, kt + 2, Ca): rows 0..kt-1 the weight
    gradient per tap, row kt the conv bias's, row kt + 1 grad_h summed (the bias of the GEMM that made h).
    Summed over blocks by one torch reduction, in a fixed order: deterministic. The compiled kernels write
    the same layout and sum and split it the same way in C++ (csrc/ops.cpp, split_reductions), since their
    registered ops return the three gradients. Copies, never views of one buffer: op outputs must not alias."""
    sums = partials.sum(0)
    kt = sums.shape[0] - 2
    return sums[:kt].t().contiguous().to(dtype), sums[kt].to(dtype, copy=True), sums[kt + 1].to(dtype, copy=True)


def _zero_prefix_buffer(frames, num_tokens, num_prefix_tokens, channels, like):
    """(frames, L, channels) buffer whose prefix rows are zero: GEMMs over all L rows then need no slicing."""
    buf = torch.empty((frames, num_tokens, channels), device=like.device, dtype=like.dtype)
    buf[:, :num_prefix_tokens].zero_()
    return buf


def zero_prefix_copy(x, dtype, num_prefix_tokens):
    """A contiguous copy of x (frames, L, C) in `dtype` with its first `num_prefix_tokens` rows of each frame
    zero: what the GEMMs over all L rows read of x, so that x's prefix rows (finite or not) add nothing to
    sums over rows. One pass over x (differentiable: a slice copy)."""
    out = x.new_empty(x.shape, dtype=dtype)
    out[:, :num_prefix_tokens] = 0
    out[:, num_prefix_tokens:] = x[:, num_prefix_tokens:]
    return out


def _restore_prefix(out, source, num_prefix_tokens):
    """out[:, :P] = source[:, :P] (cast to out's dtype): prefix rows exact even where a GEMM over all rows
    met a non-finite weight in their zero rows (0 * inf = NaN). P * frames * C elements read and written."""
    if num_prefix_tokens:
        out[:, :num_prefix_tokens] = source[:, :num_prefix_tokens]


# Small constant tensors, made once per shape, dtype and device and never written: each saves a kernel
# launch per call (an eager adapter call is bound by its launches' host time on a GPU). Not kept when made
# during CUDA graph capture (torch.compile's reduce-overhead mode): memory allocated there belongs to the
# graph's private pool, and a tensor kept from it would be overwritten by later replays of other graphs.
def _constant(make, *key):
    if key[-1].type == "cuda" and torch.cuda.is_current_stream_capturing():
        return make(*key)
    return _kept(make, *key)


@functools.lru_cache(maxsize=128)
def _kept(make, *key):
    return make(*key)


def _make_bias_columns(num_tokens, num_prefix_tokens, dtype, device):
    """(L, BIAS_COLUMNS): a 1 in the first column of the patch rows, zeros elsewhere (prefix rows included)."""
    columns = torch.zeros((num_tokens, BIAS_COLUMNS), dtype=dtype, device=device)
    columns[num_prefix_tokens:, 0] = 1
    return columns


def _make_zero_columns(rows, count, dtype, device):
    return torch.zeros((rows, count), dtype=dtype, device=device)


def _activation_buffer(frames, num_tokens, num_prefix_tokens, adapter_channels, fold_bias, like):
    """(frames, L, Ca [+ BIAS_COLUMNS when fold_bias]): prefix rows zero; with the bias columns, column Ca
    one on patch rows and the padding zero. Columns :Ca of the patch rows are left for the conv kernel.
    Two launches at most: the prefix rows' first Ca columns, then every row's bias columns."""
    P, Ca = num_prefix_tokens, adapter_channels
    buf = torch.empty((frames, num_tokens, Ca + (BIAS_COLUMNS if fold_bias else 0)), device=like.device,
                      dtype=like.dtype)
    if P:
        buf[:, :P, :Ca].zero_()
    if fold_bias:
        buf[:, :, Ca:] = _constant(_make_bias_columns, num_tokens, P, like.dtype, like.device)
    return buf


def _augmented_fc2_weight(fc2_weight, fc2_bias):
    """[fc2.weight | fc2.bias | zero padding] (C, Ca + BIAS_COLUMNS), in one launch. Not cached across calls:
    a cache keyed on the parameters' version counters would go stale when they are changed through
    `.data`, which does not count as a change."""
    channels = fc2_weight.shape[0]
    padding = _constant(_make_zero_columns, channels, BIAS_COLUMNS - 1, fc2_weight.dtype, fc2_weight.device)
    return torch.cat([fc2_weight, fc2_bias[:, None], padding], dim=1)


def _rows(t):
    """(frames, L, C) as a (frames * L, C) view, or None when its strides do not allow one without a copy."""
    frames, num_tokens, channels = t.shape
    if t.stride(2) == 1 and t.stride(1) == channels and t.stride(0) == num_tokens * channels:
        return t.view(frames * num_tokens, channels)
    return None


# torch.addmm(..., out_dtype=torch.float32) on bf16/fp16 operands (torch >= 2.8, CUDA): the autocast case,
# where the residual stream is fp32 and the adapter computes in low precision, in one cuBLAS call.
_HAS_ADDMM_OUT_DTYPE = hasattr(torch.ops.aten.addmm, "dtype")


def _add_matmul(kernels, residual, a_rows, weight_t, out_dtype):
    """residual + a @ weight_t over all rows, as out_dtype: one torch.addmm where dtypes and strides allow
    (an fp32 residual with low-precision operands included, on CUDA), else the backend's matmul_residual.
    Rows where `a` is zero (the prefix tokens) come out as the residual if `weight_t` is finite."""
    frames, num_tokens, channels = residual.shape
    residual_rows = _rows(residual)
    if residual_rows is not None and residual.dtype == a_rows.dtype == out_dtype:
        return torch.addmm(residual_rows, a_rows, weight_t).view(frames, num_tokens, channels)
    if (residual_rows is not None and _HAS_ADDMM_OUT_DTYPE and residual.is_cuda
            and residual.dtype == out_dtype == torch.float32 and a_rows.dtype in (torch.bfloat16, torch.float16)):
        return torch.addmm(residual_rows, a_rows, weight_t, out_dtype=torch.float32).view(frames, num_tokens,
                                                                                          channels)
    out = torch.empty(residual.shape, device=residual.device, dtype=out_dtype)
    return kernels.matmul_residual(a_rows.view(frames, num_tokens, -1), weight_t, residual, out)


def adapter_forward(kernels, x, x_low, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias,
                    num_frames, num_prefix_tokens, activation, need_h):
    """(y, h). x is the residual; the GEMMs read x_low, x's `zero_prefix_copy` in the compute dtype, or x
    itself when x_low is None (x already in the compute dtype). When need_h (else an empty tensor): h =
    fc1(x) of shape (frames, L, Ca), read on patch rows only, for backward."""
    frames, num_tokens, channels = x.shape
    P = num_prefix_tokens
    Ca = conv_weight.shape[0]
    x_gemm = x if x_low is None else x_low
    fold_bias = kernels.fold_fc2_bias(x.device)
    a_buf = _activation_buffer(frames, num_tokens, P, Ca, fold_bias, fc1_weight)
    a = a_buf[:, P:, :Ca]
    # h keeps all L rows (prefix rows zero when fused) so that the op returns one fixed layout.
    if kernels.fused_gemm:
        h_full = _zero_prefix_buffer(frames, num_tokens, P, Ca, a) if need_h else a.new_empty((0, 1, 1))
        h = h_full[:, P:] if need_h else a  # not written when not stored
    else:  # all L rows through one GEMM: no slicing copy; the kernel reads the patch rows
        h_full = torch.nn.functional.linear(x_gemm, fc1_weight, fc1_bias)
        h = h_full[:, P:]
    kernels.conv_act_forward(x_patch=x_gemm[:, P:], fc1_weight=fc1_weight, fc1_bias=fc1_bias,
                             conv_weight=conv_weight.reshape(Ca, -1).contiguous(), conv_bias=conv_bias, h=h, a=a,
                             num_frames=num_frames, activation=activation, store_h=need_h)
    up_weight = _augmented_fc2_weight(fc2_weight, fc2_bias) if fold_bias else fc2_weight
    y = _add_matmul(kernels, x, a_buf.view(frames * num_tokens, -1), up_weight.t(),
                    torch.promote_types(x.dtype, fc1_weight.dtype))
    if not fold_bias:
        y[:, P:] += fc2_bias
    _restore_prefix(y, x, P)
    return y, (h_full if need_h else a.new_empty((0, 1, 1)))


def adapter_backward(kernels, grad_y, x, h, fc1_weight, conv_weight, conv_bias, fc2_weight,
                     num_frames, num_prefix_tokens, activation, x_prefix_zeroed):
    """Gradients (x, fc1.weight, fc1.bias, conv.weight, conv.bias, fc2.weight, fc2.bias). x is what the
    forward's GEMMs read (x or x_low, in the compute dtype; `x_prefix_zeroed` says whether its prefix rows
    are zero); the gradient of x comes in grad_y's dtype (autograd casts it to x's)."""
    frames, num_tokens, channels = x.shape
    P = num_prefix_tokens
    Ca = conv_weight.shape[0]
    dtype = fc1_weight.dtype
    grad_y = grad_y if grad_y.stride(-1) == 1 else grad_y.contiguous()
    rows_g = grad_y.reshape(-1, channels).to(dtype)

    h = h[:, P:]
    fold_bias = kernels.fold_fc2_bias(x.device)
    a_buf = _activation_buffer(frames, num_tokens, P, Ca, fold_bias, h)
    grad_h = _zero_prefix_buffer(frames, num_tokens, P, Ca, h)
    # Fused: the kernel reads g's patch rows; else it reads grad_a = g @ W2 from one GEMM.
    g_patch = grad_y[:, P:] if kernels.fused_gemm else (rows_g @ fc2_weight).view(frames, num_tokens, Ca)[:, P:]
    grad_conv_weight, grad_conv_bias, grad_fc1_bias = kernels.conv_act_backward(
        g_patch=g_patch, fc2_weight=fc2_weight, h=h, conv_weight=conv_weight.reshape(Ca, -1).contiguous(),
        conv_bias=conv_bias, a=a_buf[:, P:, :Ca], grad_h=grad_h[:, P:], num_frames=num_frames, activation=activation)

    grad_fc2 = rows_g.t() @ a_buf.view(frames * num_tokens, -1)
    if fold_bias:  # column Ca of a_buf is 1 on patch rows, so that column of the product is fc2.bias's gradient
        grad_fc2_weight, grad_fc2_bias = grad_fc2[:, :Ca].contiguous(), grad_fc2[:, Ca].contiguous()
    else:
        grad_fc2_weight = grad_fc2
        grad_fc2_bias = grad_y[:, P:].sum((0, 1), dtype=torch.promote_types(dtype, torch.float32)).to(dtype)
    # A sum over all rows whose grad_h prefix rows are zero: x's prefix rows must be zero too (see the top).
    x_rows = x if x_prefix_zeroed or P == 0 else zero_prefix_copy(x, dtype, P)
    grad_fc1_weight = grad_h.view(-1, Ca).t() @ x_rows.reshape(-1, channels)
    del x_rows
    grad_x = _add_matmul(kernels, grad_y, grad_h.view(-1, Ca), fc1_weight, grad_y.dtype)
    _restore_prefix(grad_x, grad_y, P)   # grad_h's zero prefix rows met fc1.weight: exact only if it is finite
    return (grad_x, grad_fc1_weight, grad_fc1_bias, grad_conv_weight.reshape(conv_weight.shape), grad_conv_bias,
            grad_fc2_weight, grad_fc2_bias)
