"""out = residual + A @ B over the rows of token tensors, in Triton: the fallback for cuBLAS's addmm.

Serves the up-projection in forward (y = x + a_aug @ W2_aug^T, the bias inside the augmented operands)
and the input gradient in backward (dx = g + grad_h @ W1) when addmm cannot: the residual has another
dtype than the product (autocast's fp32 residual stream) or strides that allow no 2-d view. Rows are the
(frame, token) pairs of (frames, N, .) tensors addressed through frame and token strides; the residual is
read and the output written in their own dtypes.
"""
import triton
import triton.language as tl


@triton.jit
def _row_offsets(rows, N, stride_f, stride_n):
    rows64 = rows.to(tl.int64)
    return (rows64 // N) * stride_f + (rows64 % N) * stride_n


@triton.jit
def matmul_residual_kernel(
        a_ptr, b_ptr, res_ptr, out_ptr,
        M, N, K, NC,
        stride_af, stride_an, stride_bk, stride_bn,
        stride_rf, stride_rn, stride_of, stride_on,
        DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_NC: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """out[r, :NC] = res[r] + A[r, :K] @ B[:K, :NC], r over M = frames * N rows.

    Programs are grouped GROUP_M row blocks at a time so that neighbours share B and A through L2.
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_nc = tl.cdiv(NC, BLOCK_NC)
    group = pid // (GROUP_M * num_nc)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_nc)) % group_size
    pid_nc = (pid % (GROUP_M * num_nc)) // group_size

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_nc * BLOCK_NC + tl.arange(0, BLOCK_NC)
    row_mask = rows < M
    col_mask = cols < NC
    offs_k = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + _row_offsets(rows, N, stride_af, stride_an)

    acc = tl.zeros((BLOCK_M, BLOCK_NC), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < K
        a = tl.load(a_rows[:, None] + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptr + k[:, None] * stride_bk + cols[None, :] * stride_bn,
                    mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        acc = tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)

    mask = row_mask[:, None] & col_mask[None, :]
    res = tl.load(res_ptr + _row_offsets(rows, N, stride_rf, stride_rn)[:, None] + cols[None, :], mask=mask)
    out = res.to(tl.float32) + acc
    tl.store(out_ptr + _row_offsets(rows, N, stride_of, stride_on)[:, None] + cols[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask)
