// The whole adapter, forward and backward, as one op per direction for the compiled backends: the GEMMs through
// ATen (cuBLAS / MKL), the conv + activation through the kernels of this library, so that an adapter call
// crosses from Python into C++ once per direction (host time is what bounds a small-batch step).
//
// The steps mirror st_adapter_fast/fused.py, the Triton backend's Python version of them (see its docstring
// for why each prefix-row guard is there and what it costs); tests/kernels compare both with the reference.
//   forward    h = x @ W1^T + b1 over all L rows; a = act(conv_t(h) + b_conv) on the patch rows (prefix rows 0);
//              y = x + [a | 1] @ [W2 | b2]^T (on the GPU; on the CPU y = x + a @ W2^T, then + b2 on patch rows);
//              y's prefix rows restored from x.
//   backward   grad_a = g @ W2; the conv + activation backward gives grad_h, a and the conv / fc1-bias sums;
//              [grad_W2 | grad_b2] = g^T @ [a | 1]; grad_W1 = grad_h^T @ x (x's prefix rows zero);
//              grad_x = g + grad_h @ W1, prefix rows g's.
// The parameters come in their own dtype and are cast here to the compute dtype (autocast's, or theirs): their
// gradients come back in the compute dtype, and autograd casts them to the parameters' dtype.
#include "adapter.h"
#include "temporal_conv.h"

#include <ATen/ATen.h>
#include <torch/library.h>
#include <torch/version.h>

#include <array>
#include <optional>

// aten::addmm.dtype (low-precision operands, fp32 output in one cuBLAS call) exists from torch 2.8.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#define SAF_HAS_ADDMM_OUT_DTYPE 1
#endif

namespace st_adapter_fast {
namespace {

// fused.BIAS_COLUMNS: the extra columns of `a` that carry fc2's bias through the up-projection GEMM (a 1 on
// patch rows, then zero padding that keeps rows 16-byte aligned).
constexpr int64_t kBiasColumns = 8;

// On the GPU fc2's bias rides in the GEMM; on the CPU the extra columns cost MKL more than a separate add.
bool fold_fc2_bias(const at::Tensor& x) { return x.is_cuda(); }

// (slice, not narrow: one dispatched op instead of two, in a function whose cost is its dispatches)
at::Tensor patch_rows(const at::Tensor& t, int64_t P) { return t.slice(1, P); }

// t in `dtype`; t itself (no op dispatched) when it has it.
at::Tensor cast(const at::Tensor& t, at::ScalarType dtype) { return t.scalar_type() == dtype ? t : t.to(dtype); }

// The conv's taps as (Ca, kt), contiguous, in `dtype`.
at::Tensor conv_taps(const at::Tensor& conv_weight, at::ScalarType dtype) {
  return cast(conv_weight, dtype).reshape({conv_weight.size(0), conv_weight.size(2)}).contiguous();
}

// x (frames, L, C) in `dtype`, contiguous, with its first P rows of each frame zero: what a GEMM over all rows
// reads of x, so that x's prefix rows (finite or not) add nothing to sums over rows.
at::Tensor zero_prefix_copy(const at::Tensor& x, at::ScalarType dtype, int64_t P) {
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(dtype));
  if (P) out.slice(1, 0, P).zero_();
  patch_rows(out, P).copy_(patch_rows(x, P));
  return out;
}

// (frames, L, Ca [+ kBiasColumns]) with zero prefix rows and, when folding, the bias columns set; the first Ca
// columns of the patch rows are left for the conv kernel.
at::Tensor activation_buffer(int64_t frames, int64_t L, int64_t P, int64_t Ca, bool fold, const at::TensorOptions& options) {
  at::Tensor buf = at::empty({frames, L, Ca + (fold ? kBiasColumns : 0)}, options);
  if (P) buf.slice(1, 0, P).slice(2, 0, Ca).zero_();
  if (fold) {
    at::Tensor columns = buf.slice(2, Ca, Ca + kBiasColumns);
    columns.zero_();
    patch_rows(columns, P).select(2, 0).fill_(1);
  }
  return buf;
}

at::Tensor zero_prefix_buffer(int64_t frames, int64_t L, int64_t P, int64_t channels, const at::TensorOptions& options) {
  at::Tensor buf = at::empty({frames, L, channels}, options);
  if (P) buf.slice(1, 0, P).zero_();
  return buf;
}

// Whether a (frames, L, C) tensor is a (frames * L, C) matrix without a copy.
bool viewable_as_rows(const at::Tensor& t) {
  return t.stride(2) == 1 && t.stride(1) == t.size(2) && t.stride(0) == t.size(1) * t.size(2);
}

// residual + a_rows @ weight_t over all rows, as out_dtype, in one GEMM where dtypes and strides allow.
at::Tensor add_matmul(const at::Tensor& residual, const at::Tensor& a_rows, const at::Tensor& weight_t,
                      at::ScalarType out_dtype) {
  const int64_t channels = residual.size(2);
  const bool rows = viewable_as_rows(residual);
  if (rows && residual.scalar_type() == out_dtype && a_rows.scalar_type() == out_dtype)
    return at::addmm(residual.view({-1, channels}), a_rows, weight_t).view(residual.sizes());
#ifdef SAF_HAS_ADDMM_OUT_DTYPE
  const bool low = a_rows.scalar_type() == at::kBFloat16 || a_rows.scalar_type() == at::kHalf;
  if (rows && residual.is_cuda() && residual.scalar_type() == at::kFloat && out_dtype == at::kFloat && low)
    return at::addmm(residual.view({-1, channels}), a_rows, weight_t, at::kFloat).view(residual.sizes());
#endif
  at::Tensor out = at::empty(residual.sizes(), residual.options().dtype(out_dtype));
  at::add_out(out, residual, at::mm(a_rows, weight_t).view(residual.sizes()));
  return out;
}

void restore_prefix(at::Tensor& out, const at::Tensor& source, int64_t P) {
  if (P) out.slice(1, 0, P).copy_(source.slice(1, 0, P));
}

// What the registered ops can be given by any caller (the Python op validates before calling, with errors that
// name its arguments; these keep a direct call from reaching a kernel with a wrong shape).
struct AdapterSizes {
  int64_t frames, L, C, Ca, P;
};

AdapterSizes check_adapter_call(const at::Tensor& x, const at::Tensor& fc1_weight, const at::Tensor& conv_weight,
                                const at::Tensor& fc2_weight, int64_t num_frames, int64_t P,
                                at::ScalarType compute_dtype, const char* op) {
  SAF_CHECK_VALUE(x.dim() == 3 && (x.stride(2) == 1 || x.size(2) <= 1), op,
                  ": x must be (frames, tokens, channels) with channel stride 1, got sizes ", x.sizes());
  const int64_t frames = x.size(0), L = x.size(1), C = x.size(2);
  SAF_CHECK_VALUE(fc1_weight.dim() == 2 && fc1_weight.size(1) == C, op, ": fc1_weight must be (Ca, ", C, ")");
  const int64_t Ca = fc1_weight.size(0);
  SAF_CHECK_VALUE(fc2_weight.dim() == 2 && fc2_weight.size(0) == C && fc2_weight.size(1) == Ca, op,
                  ": fc2_weight must be (", C, ", ", Ca, ")");
  SAF_CHECK_VALUE(conv_weight.dim() == 5 && conv_weight.size(0) == Ca && conv_weight.size(1) == 1 &&
                      conv_weight.size(3) == 1 && conv_weight.size(4) == 1,
                  op, ": conv_weight must be (", Ca, ", 1, kt, 1, 1)");
  SAF_CHECK_VALUE(P >= 0 && P < L, op, ": num_prefix_tokens must be in [0, ", L, ")");
  SAF_CHECK_VALUE(num_frames > 0 && frames % num_frames == 0, op, ": num_frames must divide ", frames);
  SAF_CHECK_TYPE(at::isFloatingType(compute_dtype), op, ": compute_dtype must be a floating-point dtype");
  return {frames, L, C, Ca, P};
}

ConvShape conv_shape(const AdapterSizes& s, const at::Tensor& conv_taps, int64_t num_frames, const char* op) {
  SAF_CHECK_VALUE(conv_taps.size(1) % 2 == 1 && conv_taps.size(1) <= kMaxKernelT, op, ": kt must be odd and <= ",
                  kMaxKernelT);
  return {s.frames, s.L - s.P, s.Ca, conv_taps.size(1), num_frames, s.frames / num_frames};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> adapter_forward(
    const at::Tensor& x, const std::optional<at::Tensor>& x_gemm, const at::Tensor& fc1_weight,
    const at::Tensor& fc1_bias, const at::Tensor& conv_weight, const at::Tensor& conv_bias,
    const at::Tensor& fc2_weight, const at::Tensor& fc2_bias, int64_t num_frames, int64_t num_prefix_tokens,
    c10::string_view activation, at::ScalarType compute_dtype, bool need_h) {
  constexpr const char* op = "st_adapter_fast::adapter_forward";
  // The gradients are this library's (csrc/adapter_autograd.cpp, ops.py): nothing inside is recorded by
  // autograd, and grad mode is off, so that a dispatch mode watching these ops (selective activation
  // checkpointing's policy) knows they are not autograd's to save.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::NoGradGuard no_grad;
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);   // dtypes are chosen here
  const auto s = check_adapter_call(x, fc1_weight, conv_weight, fc2_weight, num_frames, num_prefix_tokens,
                                    compute_dtype, op);
  const Activation act = parse_activation(activation);
  const int64_t P = s.P, Ca = s.Ca;
  const auto options = x.options().dtype(compute_dtype);
  const at::Tensor w1 = cast(fc1_weight, compute_dtype), b1 = cast(fc1_bias, compute_dtype);
  const at::Tensor taps = conv_taps(conv_weight, compute_dtype), conv_b = cast(conv_bias, compute_dtype).contiguous();
  const at::Tensor w2 = cast(fc2_weight, compute_dtype), b2 = cast(fc2_bias, compute_dtype);

  // What the GEMMs read of x: given, or x itself, or (x in another dtype: autocast) its zero-prefix copy.
  at::Tensor x_low;
  at::Tensor x_rows = x;
  if (x_gemm.has_value()) {
    x_rows = *x_gemm;
  } else if (x.scalar_type() != compute_dtype) {
    x_low = zero_prefix_copy(x, compute_dtype, P);
    x_rows = x_low;
  }
  SAF_CHECK_VALUE(x_rows.sizes() == x.sizes() && x_rows.scalar_type() == compute_dtype, op,
                  ": x_gemm must have x's shape and the compute dtype");

  const bool fold = fold_fc2_bias(x);
  at::Tensor a_buf = activation_buffer(s.frames, s.L, P, Ca, fold, options);
  at::Tensor h = at::linear(x_rows, w1, b1);   // all L rows in one GEMM; the kernel reads the patch rows
  run_conv_act_forward(patch_rows(h, P), taps, conv_b, patch_rows(a_buf, P).slice(2, 0, Ca),
                       conv_shape(s, taps, num_frames, op), act);
  const at::Tensor up_weight =
      fold ? at::cat({w2, b2.unsqueeze(1), at::zeros({s.C, kBiasColumns - 1}, options)}, 1) : w2;
  at::Tensor y = add_matmul(x, a_buf.view({s.frames * s.L, -1}), up_weight.t(),
                            c10::promoteTypes(x.scalar_type(), compute_dtype));
  if (!fold) patch_rows(y, P).add_(b2);
  restore_prefix(y, x, P);
  if (!need_h) h = at::empty({0, 1, 1}, options);
  if (!x_low.defined()) x_low = at::empty({0}, options);
  return {y, h, x_low};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> adapter_backward(
    const at::Tensor& grad_y_in, const at::Tensor& x, const at::Tensor& h_full, const at::Tensor& fc1_weight,
    const at::Tensor& conv_weight, const at::Tensor& conv_bias, const at::Tensor& fc2_weight, int64_t num_frames,
    int64_t num_prefix_tokens, c10::string_view activation, at::ScalarType compute_dtype, bool x_prefix_zeroed,
    std::array<bool, 7> needs) {
  constexpr const char* op = "st_adapter_fast::adapter_backward";
  // The gradients are this library's (csrc/adapter_autograd.cpp, ops.py): nothing inside is recorded by
  // autograd, and grad mode is off, so that a dispatch mode watching these ops (selective activation
  // checkpointing's policy) knows they are not autograd's to save.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::NoGradGuard no_grad;
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto s = check_adapter_call(x, fc1_weight, conv_weight, fc2_weight, num_frames, num_prefix_tokens,
                                    compute_dtype, op);
  SAF_CHECK_VALUE(grad_y_in.sizes() == x.sizes(), op, ": grad_y must have x's shape");
  SAF_CHECK_VALUE(h_full.dim() == 3 && h_full.size(0) == s.frames && h_full.size(1) == s.L && h_full.size(2) == s.Ca &&
                      h_full.scalar_type() == compute_dtype,
                  op, ": h must be what adapter_forward returned with need_h");
  const Activation act = parse_activation(activation);
  const int64_t P = s.P, Ca = s.Ca, C = s.C;
  const auto options = x.options().dtype(compute_dtype);
  const at::Tensor w1 = cast(fc1_weight, compute_dtype), w2 = cast(fc2_weight, compute_dtype);
  const at::Tensor taps = conv_taps(conv_weight, compute_dtype), conv_b = cast(conv_bias, compute_dtype).contiguous();
  const at::Tensor grad_y = grad_y_in.stride(-1) == 1 ? grad_y_in : grad_y_in.contiguous();
  const at::Tensor rows_g = cast(grad_y.reshape({-1, C}), compute_dtype);

  const bool fold = fold_fc2_bias(x);
  at::Tensor a_buf = activation_buffer(s.frames, s.L, P, Ca, fold, options);
  at::Tensor grad_h = zero_prefix_buffer(s.frames, s.L, P, Ca, options);
  const at::Tensor grad_a = at::mm(rows_g, w2).view({s.frames, s.L, Ca});
  const at::Tensor sums = run_conv_act_backward(patch_rows(grad_a, P), patch_rows(h_full, P), taps, conv_b,
                                                patch_rows(grad_h, P), patch_rows(a_buf, P).slice(2, 0, Ca),
                                                conv_shape(s, taps, num_frames, op), act);
  // The fp32 sums go straight to the parameters' dtype (under autocast fp32, not through the compute dtype).
  auto [grad_conv_weight, grad_conv_bias, grad_fc1_bias] = split_reductions(sums, cast(taps, conv_weight.scalar_type()));

  at::Tensor grad_fc2_weight, grad_fc2_bias;
  if (needs[5] || needs[6]) {
    const at::Tensor grad_fc2 = at::mm(rows_g.t(), a_buf.view({s.frames * s.L, -1}));
    if (fold) {   // column Ca of a_buf is 1 on patch rows: that column of the product is fc2.bias's gradient
      grad_fc2_weight = grad_fc2.slice(1, 0, Ca).contiguous();
      grad_fc2_bias = grad_fc2.select(1, Ca).contiguous();
    } else {
      grad_fc2_weight = grad_fc2;
      grad_fc2_bias = cast(patch_rows(grad_y, P).sum({0, 1}, false, c10::promoteTypes(compute_dtype, at::kFloat)),
                           fc2_weight.scalar_type());
    }
  }
  at::Tensor grad_fc1_weight;
  if (needs[1]) {   // a sum over all rows whose grad_h prefix rows are zero: x's prefix rows must be zero too
    const at::Tensor x_rows = x_prefix_zeroed || P == 0 ? x : zero_prefix_copy(x, compute_dtype, P);
    grad_fc1_weight = at::mm(grad_h.view({-1, Ca}).t(), x_rows.reshape({-1, C}));
  }
  at::Tensor grad_x;
  if (needs[0]) {
    grad_x = add_matmul(grad_y, grad_h.view({-1, Ca}), w1, grad_y.scalar_type());
    restore_prefix(grad_x, grad_y, P);   // grad_h's zero prefix rows met fc1.weight: exact only if it is finite
  }
  return {grad_x, grad_fc1_weight, grad_fc1_bias, grad_conv_weight.reshape(conv_weight.sizes()), grad_conv_bias,
          grad_fc2_weight, grad_fc2_bias};
}

}  // namespace st_adapter_fast

TORCH_LIBRARY_IMPL(st_adapter_fast, CompositeExplicitAutograd, m) {
  m.impl("adapter_forward", &st_adapter_fast::adapter_forward);
  m.impl("adapter_backward", &st_adapter_fast::adapter_backward);
}
