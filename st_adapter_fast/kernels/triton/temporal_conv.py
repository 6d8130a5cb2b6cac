"""Fused down-projection + temporal depthwise conv + activation, forward and backward, in Triton.

Both kernels work in the token layout. One program owns a block of BLOCK_N patch tokens and
BLOCK_CA adapter channels of one clip and streams over its T frames. The temporal conv (kernel
(KT, 1, 1), zero padding KT//2) is then a sum over a window of KT tiles held in registers:

    c[t] = conv_bias + sum_{d=-PAD..PAD} w[d + PAD] * h[t + d]          PAD = KT // 2

The window is kept in seven named tiles (offsets -3..3, so KT <= 7: MAX_KERNEL_T in __init__.py); only
the 2*PAD+1 around the centre are used, the rest stay constant zeros that the compiler drops.
"""
import triton
import triton.language as tl

from .common import activation_fwd, activation_fwd_and_grad


@triton.jit
def _program_tile(N, CA, T, BLOCK_N: tl.constexpr, BLOCK_CA: tl.constexpr):
    """This program's clip, token block and channel block, in a 1-d grid of B * blocks programs.

    The channel block varies fastest, so programs reading the same rows run side by side (L2 reuse).
    Returns (clip, token block, first frame row, token offsets (int64), channel offsets, token mask,
    channel mask, tile mask).
    """
    num_ca_blocks = tl.cdiv(CA, BLOCK_CA)
    blocks_per_clip = tl.cdiv(N, BLOCK_N) * num_ca_blocks
    pid = tl.program_id(0).to(tl.int64)
    clip = pid // blocks_per_clip
    pid_n = (pid % blocks_per_clip) // num_ca_blocks
    pid_ca = (pid % blocks_per_clip) % num_ca_blocks
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_ca = pid_ca * BLOCK_CA + tl.arange(0, BLOCK_CA)
    n_mask = offs_n < N
    ca_mask = offs_ca < CA
    return clip, pid_n, clip * T, offs_n, offs_ca, n_mask, ca_mask, n_mask[:, None] & ca_mask[None, :]


@triton.jit
def _push(m3, m2, m1, z, p1, p2, p3, new, PAD: tl.constexpr):
    """Slide the window (offsets -PAD..PAD) one frame on: drop offset -PAD, put `new` at +PAD."""
    if PAD >= 3:
        m3 = m2
    if PAD >= 2:
        m2 = m1
    if PAD >= 1:
        m1 = z
        z = p1
    else:
        z = new
    if PAD >= 2:
        p1 = p2
    elif PAD == 1:
        p1 = new
    if PAD >= 3:
        p2 = p3
        p3 = new
    elif PAD == 2:
        p2 = new
    return m3, m2, m1, z, p1, p2, p3


@triton.jit
def _load_taps(wc_ptr, offs_ca, ca_mask, KT: tl.constexpr):
    """Conv weights (Ca, KT) as seven per-channel vectors for offsets -3..3 (zeros outside -PAD..PAD)."""
    PAD: tl.constexpr = KT // 2
    ptrs = wc_ptr + offs_ca * KT + PAD
    zero = tl.zeros(offs_ca.shape, tl.float32)
    w_m3, w_m2, w_m1, w_p1, w_p2, w_p3 = zero, zero, zero, zero, zero, zero
    w_z = tl.load(ptrs, mask=ca_mask, other=0.0).to(tl.float32)
    if PAD >= 1:
        w_m1 = tl.load(ptrs - 1, mask=ca_mask, other=0.0).to(tl.float32)
        w_p1 = tl.load(ptrs + 1, mask=ca_mask, other=0.0).to(tl.float32)
    if PAD >= 2:
        w_m2 = tl.load(ptrs - 2, mask=ca_mask, other=0.0).to(tl.float32)
        w_p2 = tl.load(ptrs + 2, mask=ca_mask, other=0.0).to(tl.float32)
    if PAD >= 3:
        w_m3 = tl.load(ptrs - 3, mask=ca_mask, other=0.0).to(tl.float32)
        w_p3 = tl.load(ptrs + 3, mask=ca_mask, other=0.0).to(tl.float32)
    return w_m3, w_m2, w_m1, w_z, w_p1, w_p2, w_p3


@triton.jit
def _window_sum(m3, m2, m1, z, p1, p2, p3, w_m3, w_m2, w_m1, w_z, w_p1, w_p2, w_p3, PAD: tl.constexpr):
    """sum_d w[d] * window[d] over the active offsets; weights are per channel (columns)."""
    acc = z * w_z[None, :]
    if PAD >= 1:
        acc += m1 * w_m1[None, :] + p1 * w_p1[None, :]
    if PAD >= 2:
        acc += m2 * w_m2[None, :] + p2 * w_p2[None, :]
    if PAD >= 3:
        acc += m3 * w_m3[None, :] + p3 * w_p3[None, :]
    return acc


@triton.jit
def _rows_times_matrix(rows_ptr, mat_ptr, n_mask, offs_ca, ca_mask, C, stride_mat_ca, stride_mat_c,
                       BLOCK_N: tl.constexpr, BLOCK_CA: tl.constexpr, BLOCK_K: tl.constexpr,
                       DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """fp32 (BLOCK_N, BLOCK_CA) tile of rows (BLOCK_N, C) @ mat[:, ca] where mat[ca, c] sits at
    mat_ptr + ca * stride_mat_ca + c * stride_mat_c; rows_ptr points at each row's channel 0."""
    acc = tl.zeros((BLOCK_N, BLOCK_CA), tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, C, BLOCK_K):
        k = k0 + offs_k
        k_mask = k < C
        rows = tl.load(rows_ptr[:, None] + k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        mat = tl.load(mat_ptr + offs_ca[None, :] * stride_mat_ca + k[:, None] * stride_mat_c,
                      mask=k_mask[:, None] & ca_mask[None, :], other=0.0)
        acc = tl.dot(rows.to(DOT_DTYPE), mat.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def down_conv_act_fwd_kernel(
        x_ptr, w1_ptr, b1_ptr, wc_ptr, bc_ptr, h_ptr, a_ptr,
        T, N, C, CA,
        stride_xf, stride_xn, stride_w1_ca, stride_w1_c,
        stride_hf, stride_hn, stride_af, stride_an,
        KT: tl.constexpr, ACT: tl.constexpr, STORE_H: tl.constexpr, FUSED_GEMM: tl.constexpr,
        DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_CA: tl.constexpr, BLOCK_K: tl.constexpr):
    """h = x @ W1^T + b1 (stored if STORE_H), a = act(conv_t(h) + bc) (stored), for one clip's block.
    With FUSED_GEMM off, h was computed beforehand (cuBLAS) and is read instead.

    Grid: (B * cdiv(N, BLOCK_N) * cdiv(CA, BLOCK_CA),), see _program_tile.
    """
    PAD: tl.constexpr = KT // 2
    clip, pid_n, first_frame, offs_n64, offs_ca, n_mask, ca_mask, tile_mask = _program_tile(N, CA, T, BLOCK_N,
                                                                                            BLOCK_CA)

    b1 = tl.load(b1_ptr + offs_ca, mask=ca_mask, other=0.0).to(tl.float32)
    bc = tl.load(bc_ptr + offs_ca, mask=ca_mask, other=0.0).to(tl.float32)
    w_m3, w_m2, w_m1, w_z, w_p1, w_p2, w_p3 = _load_taps(wc_ptr, offs_ca, ca_mask, KT)

    zero = tl.zeros((BLOCK_N, BLOCK_CA), tl.float32)
    m3, m2, m1, z, p1, p2, p3 = zero, zero, zero, zero, zero, zero, zero
    # Step s computes h[s] (zero past the last frame) and emits frame s - PAD.
    for s in range(0, T + PAD):
        h_new = zero
        if s < T:
            frame = first_frame + s
            h_ptrs = h_ptr + frame * stride_hf + offs_n64[:, None] * stride_hn + offs_ca[None, :]
            if FUSED_GEMM:
                x_rows = x_ptr + frame * stride_xf + offs_n64 * stride_xn
                acc = _rows_times_matrix(x_rows, w1_ptr, n_mask, offs_ca, ca_mask, C, stride_w1_ca,
                                         stride_w1_c, BLOCK_N, BLOCK_CA, BLOCK_K, DOT_DTYPE, DOT_PRECISION)
                # Round h as stored, so that forward and the backward's recomputation see the same h.
                h_io = (acc + b1[None, :]).to(h_ptr.dtype.element_ty)
                if STORE_H:
                    tl.store(h_ptrs, h_io, mask=tile_mask)
            else:
                h_io = tl.load(h_ptrs, mask=tile_mask, other=0.0)
            h_new = h_io.to(tl.float32)
        m3, m2, m1, z, p1, p2, p3 = _push(m3, m2, m1, z, p1, p2, p3, h_new, PAD)
        if s >= PAD:
            c = _window_sum(m3, m2, m1, z, p1, p2, p3, w_m3, w_m2, w_m1, w_z, w_p1, w_p2, w_p3, PAD)
            a = activation_fwd(c + bc[None, :], ACT)
            out_frame = first_frame + s - PAD
            a_ptrs = a_ptr + out_frame * stride_af + offs_n64[:, None] * stride_an + offs_ca[None, :]
            tl.store(a_ptrs, a.to(a_ptr.dtype.element_ty), mask=tile_mask)


@triton.jit
def _load_h(h_ptr, first_frame, t, T, stride_hf, stride_hn, offs_n64, offs_ca, tile_mask):
    """fp32 tile of h at frame t of the clip, zeros when t is outside 0..T-1 (the conv's padding)."""
    ptrs = h_ptr + (first_frame + t) * stride_hf + offs_n64[:, None] * stride_hn + offs_ca[None, :]
    inside = (t >= 0) & (t < T)
    return tl.load(ptrs, mask=tile_mask & inside, other=0.0).to(tl.float32)


@triton.jit
def down_conv_act_bwd_kernel(
        g_ptr, w2_ptr, h_ptr, wc_ptr, bc_ptr, a_ptr, gh_ptr, part_ptr,
        T, N, C, CA,
        stride_gf, stride_gn, stride_w2_c, stride_w2_ca,
        stride_hf, stride_hn, stride_af, stride_an, stride_ghf, stride_ghn,
        KT: tl.constexpr, ACT: tl.constexpr, FUSED_GEMM: tl.constexpr,
        DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_CA: tl.constexpr, BLOCK_K: tl.constexpr):
    """From g = dL/dy (patch rows) and the saved h, for one clip's block:

        grad_a[t] = g[t] @ W2[:, ca]          grad_c[t] = grad_a[t] * act'(c[t])     (c recomputed from h)
        grad_h[s] = sum_d w[PAD - d] * grad_c[s + d]                                (the conv's transpose)
        a[t] = act(c[t]) (stored, for fc2's weight gradient)
        per-program partial sums of dL/dconv_weight, dL/dconv_bias and dL/dfc1_bias (fp32) into
        part_ptr, laid out as fused.conv_reductions takes them (summed there in a fixed order: deterministic)
    With FUSED_GEMM off, g_ptr holds grad_a itself (one cuBLAS call beforehand).

    Grid as the forward's. The window holds grad_c; h tiles are re-read (from cache) as needed.
    """
    PAD: tl.constexpr = KT // 2
    clip, pid_n, first_frame, offs_n64, offs_ca, n_mask, ca_mask, tile_mask = _program_tile(N, CA, T, BLOCK_N,
                                                                                            BLOCK_CA)

    bc = tl.load(bc_ptr + offs_ca, mask=ca_mask, other=0.0).to(tl.float32)
    w_m3, w_m2, w_m1, w_z, w_p1, w_p2, w_p3 = _load_taps(wc_ptr, offs_ca, ca_mask, KT)

    zero_vec = tl.zeros((BLOCK_CA,), tl.float32)
    dw_m3, dw_m2, dw_m1, dw_z, dw_p1, dw_p2, dw_p3 = (zero_vec, zero_vec, zero_vec, zero_vec, zero_vec,
                                                      zero_vec, zero_vec)
    dbc = zero_vec
    db1 = zero_vec
    zero = tl.zeros((BLOCK_N, BLOCK_CA), tl.float32)
    m3, m2, m1, z, p1, p2, p3 = zero, zero, zero, zero, zero, zero, zero
    # Step u computes grad_c[t] for t = u - PAD and emits grad_h[s] for s = u - 2 * PAD.
    for u in range(0, T + 2 * PAD):
        t = u - PAD
        gc = zero
        if (t >= 0) & (t < T):
            frame = first_frame + t
            if FUSED_GEMM:
                g_rows = g_ptr + frame * stride_gf + offs_n64 * stride_gn
                grad_a = _rows_times_matrix(g_rows, w2_ptr, n_mask, offs_ca, ca_mask, C, stride_w2_ca,
                                            stride_w2_c, BLOCK_N, BLOCK_CA, BLOCK_K, DOT_DTYPE, DOT_PRECISION)
            else:  # g_ptr holds grad_a = g @ W2, with strides (stride_gf, stride_gn)
                grad_a = tl.load(g_ptr + frame * stride_gf + offs_n64[:, None] * stride_gn + offs_ca[None, :],
                                 mask=tile_mask, other=0.0).to(tl.float32)
            h_z = _load_h(h_ptr, first_frame, t, T, stride_hf, stride_hn, offs_n64, offs_ca, tile_mask)
            c = h_z * w_z[None, :] + bc[None, :]
            h_m1, h_p1, h_m2, h_p2, h_m3, h_p3 = zero, zero, zero, zero, zero, zero
            if PAD >= 1:
                h_m1 = _load_h(h_ptr, first_frame, t - 1, T, stride_hf, stride_hn, offs_n64, offs_ca, tile_mask)
                h_p1 = _load_h(h_ptr, first_frame, t + 1, T, stride_hf, stride_hn, offs_n64, offs_ca, tile_mask)
                c += h_m1 * w_m1[None, :] + h_p1 * w_p1[None, :]
            if PAD >= 2:
                h_m2 = _load_h(h_ptr, first_frame, t - 2, T, stride_hf, stride_hn, offs_n64, offs_ca, tile_mask)
                h_p2 = _load_h(h_ptr, first_frame, t + 2, T, stride_hf, stride_hn, offs_n64, offs_ca, tile_mask)
                c += h_m2 * w_m2[None, :] + h_p2 * w_p2[None, :]
            if PAD >= 3:
                h_m3 = _load_h(h_ptr, first_frame, t - 3, T, stride_hf, stride_hn, offs_n64, offs_ca, tile_mask)
                h_p3 = _load_h(h_ptr, first_frame, t + 3, T, stride_hf, stride_hn, offs_n64, offs_ca, tile_mask)
                c += h_m3 * w_m3[None, :] + h_p3 * w_p3[None, :]
            a, da = activation_fwd_and_grad(c, ACT)
            a_ptrs = a_ptr + frame * stride_af + offs_n64[:, None] * stride_an + offs_ca[None, :]
            tl.store(a_ptrs, a.to(a_ptr.dtype.element_ty), mask=tile_mask)
            # Rows and channels outside the block loaded as zeros, so they add nothing to the sums.
            gc = grad_a * da
            dbc += tl.sum(gc, axis=0)
            dw_z += tl.sum(gc * h_z, axis=0)
            if PAD >= 1:
                dw_m1 += tl.sum(gc * h_m1, axis=0)
                dw_p1 += tl.sum(gc * h_p1, axis=0)
            if PAD >= 2:
                dw_m2 += tl.sum(gc * h_m2, axis=0)
                dw_p2 += tl.sum(gc * h_p2, axis=0)
            if PAD >= 3:
                dw_m3 += tl.sum(gc * h_m3, axis=0)
                dw_p3 += tl.sum(gc * h_p3, axis=0)
        m3, m2, m1, z, p1, p2, p3 = _push(m3, m2, m1, z, p1, p2, p3, gc, PAD)
        s = u - 2 * PAD
        if s >= 0:
            # The transpose of the conv: the same window sum with the taps mirrored.
            gh = _window_sum(m3, m2, m1, z, p1, p2, p3, w_p3, w_p2, w_p1, w_z, w_m1, w_m2, w_m3, PAD)
            db1 += tl.sum(gh, axis=0)
            gh_ptrs = gh_ptr + (first_frame + s) * stride_ghf + offs_n64[:, None] * stride_ghn + offs_ca[None, :]
            tl.store(gh_ptrs, gh.to(gh_ptr.dtype.element_ty), mask=tile_mask)

    # This program's partials: rows of a (programs over clip and token block, KT + 2, CA) buffer, the
    # layout of the compiled kernels too: rows 0..KT-1 the weight gradient per tap, row KT the conv bias's,
    # row KT + 1 grad_h summed (fc1 bias's). The caller sums them over programs (fused.conv_reductions).
    first_row = (clip * tl.cdiv(N, BLOCK_N) + pid_n) * (KT + 2)
    tap_z = part_ptr + (first_row + PAD) * CA + offs_ca   # the row of the centre tap (offset 0)
    tl.store(tap_z, dw_z, mask=ca_mask)
    if PAD >= 1:
        tl.store(tap_z - CA, dw_m1, mask=ca_mask)
        tl.store(tap_z + CA, dw_p1, mask=ca_mask)
    if PAD >= 2:
        tl.store(tap_z - 2 * CA, dw_m2, mask=ca_mask)
        tl.store(tap_z + 2 * CA, dw_p2, mask=ca_mask)
    if PAD >= 3:
        tl.store(tap_z - 3 * CA, dw_m3, mask=ca_mask)
        tl.store(tap_z + 3 * CA, dw_p3, mask=ca_mask)
    tl.store(part_ptr + (first_row + KT) * CA + offs_ca, dbc, mask=ca_mask)
    tl.store(part_ptr + (first_row + KT + 1) * CA + offs_ca, db1, mask=ca_mask)
