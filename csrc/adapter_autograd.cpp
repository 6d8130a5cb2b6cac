// The op `st_adapter_fast::adapter`: the adapter with its gradients, for eager calls of the compiled backends.
// Forward and backward are each one call of adapter.cpp, and the autograd node is C++ (a
// torch::autograd::Function): between the Python call and the kernels nothing runs in Python, forward or
// backward, which is what keeps a small-batch training step's host time low.
//
// Saved for backward: what the GEMMs read of x (x itself, or under autocast its compute-dtype copy x_low) and
// h, besides the parameters; the conv and the activation are recomputed from h. x_low is a second output of the
// op, saved as an output: a double backward differentiates through it, and its gradient reaches x (patch rows).
//
// Double backward (a backward with create_graph=True, i.e. grad mode on inside backward): the gradients are
// then the backward's formulas written with differentiable ATen ops (`differentiable_gradients`), so that a
// second backward differentiates them; no autograd call is nested inside this node's backward (the saved x_low
// is this node's own output: a nested pass that reached it would wait on the node it runs in).
#include "adapter.h"
#include "temporal_conv.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>
#include <vector>

namespace st_adapter_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr int kParams = 6;   // fc1.weight, fc1.bias, conv.weight, conv.bias, fc2.weight, fc2.bias

// t (clips, T, N, channels) shifted by `offset` frames within each clip, zero outside: out[:, t] = t[:, t + offset].
at::Tensor shift_frames(const at::Tensor& padded, int64_t pad, int64_t offset, int64_t num_frames) {
  return padded.slice(1, pad + offset, pad + offset + num_frames);
}

at::Tensor pad_frames(const at::Tensor& t, int64_t pad) { return at::constant_pad_nd(t, {0, 0, 0, 0, pad, pad}); }

// act'(c), as differentiable ATen ops.
at::Tensor activation_grad(const at::Tensor& c, Activation act) {
  if (act == Activation::kGelu)
    return 0.5 * (1 + at::erf(c * kInvSqrt2)) + c * at::exp(-0.5 * c * c) * kInvSqrt2Pi;
  if (act == Activation::kQuickGelu) {
    const at::Tensor s = at::sigmoid(c * kQuickGeluAlpha);
    return s + c * kQuickGeluAlpha * s * (1 - s);
  }
  return at::ones_like(c);
}

// The seven gradients written out with differentiable ATen ops (the backward's formulas, with the conv as kt
// shifted products), for a backward that is itself recorded: a double backward then differentiates these,
// and its second derivatives are the reference's. x_gemm is what the forward's GEMMs read (x, or the op's own
// output x_low, through which autograd reaches x in a later pass); nothing here calls autograd recursively.
variable_list differentiable_gradients(const at::Tensor& grad_y, const at::Tensor& x_gemm, const variable_list& params,
                                       int64_t num_frames, int64_t P, Activation act, at::ScalarType dtype) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  variable_list p;
  for (const auto& t : params) p.push_back(t.scalar_type() == dtype ? t : t.to(dtype));
  const int64_t frames = x_gemm.size(0), N = x_gemm.size(1) - P, C = x_gemm.size(2), Ca = p[0].size(0);
  const int64_t clips = frames / num_frames, kt = p[2].size(2), pad = kt / 2;
  const at::Tensor taps = p[2].reshape({Ca, kt});
  const at::Tensor x = x_gemm.slice(1, P).reshape({clips, num_frames, N, C});
  const at::Tensor g = grad_y.slice(1, P).to(dtype).reshape({clips, num_frames, N, C});

  const at::Tensor h = at::linear(x, p[0], p[1]);
  const at::Tensor h_padded = pad_frames(h, pad);
  at::Tensor c = p[3].expand({clips, num_frames, N, Ca});
  for (int64_t d = 0; d < kt; ++d) c = c + taps.select(1, d) * shift_frames(h_padded, pad, d - pad, num_frames);
  const at::Tensor a = act == Activation::kGelu ? at::gelu(c)
                       : act == Activation::kQuickGelu ? c * at::sigmoid(c * kQuickGeluAlpha) : c;

  const at::Tensor grad_a = at::matmul(g, p[4]);
  const at::Tensor grad_c = grad_a * activation_grad(c, act);
  const at::Tensor grad_c_padded = pad_frames(grad_c, pad);
  at::Tensor grad_h = at::zeros_like(h);
  std::vector<at::Tensor> grad_taps;
  for (int64_t d = 0; d < kt; ++d) {
    grad_h = grad_h + taps.select(1, d) * shift_frames(grad_c_padded, pad, pad - d, num_frames);
    grad_taps.push_back((grad_c * shift_frames(h_padded, pad, d - pad, num_frames)).sum({0, 1, 2}));
  }
  const auto rows = [](const at::Tensor& t) { return t.reshape({-1, t.size(-1)}); };
  variable_list grads(kParams + 1);
  const at::Tensor grad_x_patch = g + at::matmul(grad_h, p[0]);
  grads[0] = at::cat({grad_y.slice(1, 0, P), grad_x_patch.reshape({frames, N, C}).to(grad_y.scalar_type())}, 1);
  grads[1] = at::mm(rows(grad_h).t(), rows(x));
  grads[2] = grad_h.sum({0, 1, 2});
  grads[3] = at::stack(grad_taps, 1).reshape(p[2].sizes());
  grads[4] = grad_c.sum({0, 1, 2});
  grads[5] = at::mm(rows(g).t(), rows(a));
  grads[6] = g.sum({0, 1, 2});
  return grads;
}

class AdapterFunction : public torch::autograd::Function<AdapterFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& fc1_weight,
                               const at::Tensor& fc1_bias, const at::Tensor& conv_weight, const at::Tensor& conv_bias,
                               const at::Tensor& fc2_weight, const at::Tensor& fc2_bias, int64_t num_frames,
                               int64_t num_prefix_tokens, const std::string& activation, at::ScalarType compute_dtype) {
    auto [y, h, x_low] = adapter_forward(x, std::nullopt, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight,
                                         fc2_bias, num_frames, num_prefix_tokens, activation, compute_dtype, true);
    const bool made_x_low = x.scalar_type() != compute_dtype;
    ctx->save_for_backward(
        {made_x_low ? x_low : x, h, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias});
    ctx->saved_data["num_frames"] = num_frames;
    ctx->saved_data["num_prefix_tokens"] = num_prefix_tokens;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["compute_dtype"] = static_cast<int64_t>(compute_dtype);
    ctx->saved_data["made_x_low"] = made_x_low;
    ctx->set_materialize_grads(false);
    if (!made_x_low) ctx->mark_non_differentiable({x_low});
    return {y, x_low};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x_gemm = saved[0];
    const variable_list params(saved.begin() + 2, saved.end());
    const int64_t num_frames = ctx->saved_data["num_frames"].toInt();
    const int64_t P = ctx->saved_data["num_prefix_tokens"].toInt();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const auto dtype = static_cast<at::ScalarType>(ctx->saved_data["compute_dtype"].toInt());
    const bool made_x_low = ctx->saved_data["made_x_low"].toBool();
    const at::Tensor& grad_y = grad_outputs[0];
    const at::Tensor& grad_x_low = grad_outputs[1];

    variable_list grads(kParams + 1 + 4);   // x, the parameters, then the 4 non-tensor arguments
    if (grad_y.defined() && at::GradMode::is_enabled()) {   // create_graph=True: a recorded backward
      const variable_list found =
          differentiable_gradients(grad_y, x_gemm, params, num_frames, P, parse_activation(activation), dtype);
      for (size_t i = 0; i < found.size(); ++i)
        if (ctx->needs_input_grad(i)) grads[i] = found[i];
    } else if (grad_y.defined()) {
      std::array<bool, 7> needs;
      for (size_t i = 0; i < needs.size(); ++i) needs[i] = ctx->needs_input_grad(i);
      auto found = adapter_backward(grad_y, x_gemm, saved[1], params[0], params[2], params[3], params[4], num_frames, P,
                                    activation, dtype, made_x_low, needs);
      grads[0] = std::get<0>(found), grads[1] = std::get<1>(found), grads[2] = std::get<2>(found);
      grads[3] = std::get<3>(found), grads[4] = std::get<4>(found), grads[5] = std::get<5>(found);
      grads[6] = std::get<6>(found);
    }
    if (grad_x_low.defined() && ctx->needs_input_grad(0)) {   // only in a double backward: x_low's rows are x's
      const int64_t N = grad_x_low.size(1) - P;
      const at::Tensor extra = at::cat({at::zeros_like(grad_x_low.slice(1, 0, P)), grad_x_low.slice(1, P, P + N)}, 1);
      grads[0] = grads[0].defined() ? grads[0] + extra : extra;
    }
    return grads;
  }
};

bool any_requires_grad(std::initializer_list<std::reference_wrapper<const at::Tensor>> tensors) {
  for (const at::Tensor& t : tensors)
    if (t.requires_grad()) return true;
  return false;
}

std::tuple<at::Tensor, at::Tensor> adapter_without_grad(
    const at::Tensor& x, const at::Tensor& fc1_weight, const at::Tensor& fc1_bias, const at::Tensor& conv_weight,
    const at::Tensor& conv_bias, const at::Tensor& fc2_weight, const at::Tensor& fc2_bias, int64_t num_frames,
    int64_t num_prefix_tokens, c10::string_view activation, at::ScalarType compute_dtype) {
  auto [y, h, x_low] = adapter_forward(x, std::nullopt, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight,
                                       fc2_bias, num_frames, num_prefix_tokens, activation, compute_dtype, false);
  return {y, x_low};
}

std::tuple<at::Tensor, at::Tensor> adapter_with_grad(
    const at::Tensor& x, const at::Tensor& fc1_weight, const at::Tensor& fc1_bias, const at::Tensor& conv_weight,
    const at::Tensor& conv_bias, const at::Tensor& fc2_weight, const at::Tensor& fc2_bias, int64_t num_frames,
    int64_t num_prefix_tokens, c10::string_view activation, at::ScalarType compute_dtype) {
  if (!at::GradMode::is_enabled() ||
      !any_requires_grad({x, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias})) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return adapter_without_grad(x, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight, fc2_bias, num_frames,
                                num_prefix_tokens, activation, compute_dtype);
  }
  const variable_list out = AdapterFunction::apply(x, fc1_weight, fc1_bias, conv_weight, conv_bias, fc2_weight,
                                                   fc2_bias, num_frames, num_prefix_tokens, std::string(activation),
                                                   compute_dtype);
  return {out[0], out[1]};
}

}  // namespace
}  // namespace st_adapter_fast

TORCH_LIBRARY_IMPL(st_adapter_fast, Autograd, m) { m.impl("adapter", &st_adapter_fast::adapter_with_grad); }

TORCH_LIBRARY_IMPL(st_adapter_fast, CompositeExplicitAutograd, m) {
  m.impl("adapter", &st_adapter_fast::adapter_without_grad);
}
