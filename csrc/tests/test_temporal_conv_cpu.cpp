// The CPU kernels against naive loops, through the C++ API and through the dispatcher (as a libtorch
// user would call the registered op). Exit status 0 when every check passes.
#include "temporal_conv.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <string>

using namespace st_adapter_fast;

namespace {

int failures = 0;

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what) {
  const double err = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  const double scale = want.to(at::kDouble).abs().max().item<double>() + 1e-30;
  const bool ok = err <= tol * scale;
  std::printf("%-52s max abs error %.3e (scale %.3e) %s\n", what.c_str(), err, scale, ok ? "ok" : "FAIL");
  failures += !ok;
}

double act_value(double c, Activation act) {
  double value, grad;
  activation_forward_and_grad(c, act, value, grad);
  return value;
}

double act_grad(double c, Activation act) {
  double value, grad;
  activation_forward_and_grad(c, act, value, grad);
  return grad;
}

// The conv, activation and all gradients as plain loops in double over (clip, t, token, channel).
struct Naive {
  at::Tensor a, grad_h, grad_weight, grad_bias;
};

Naive naive(const at::Tensor& h_in, const at::Tensor& w_in, const at::Tensor& b_in, const at::Tensor& ga_in,
            int64_t T, Activation act) {
  auto h = h_in.to(at::kDouble).contiguous(), w = w_in.to(at::kDouble).contiguous();
  auto b = b_in.to(at::kDouble), ga = ga_in.to(at::kDouble).contiguous();
  const int64_t F = h.size(0), N = h.size(1), C = h.size(2), K = w.size(1), P = K / 2;
  auto H = h.accessor<double, 3>(), G = ga.accessor<double, 3>();
  auto W = w.accessor<double, 2>();
  auto B = b.accessor<double, 1>();
  Naive out{at::zeros_like(h), at::zeros_like(h), at::zeros_like(w), at::zeros_like(b)};
  auto A = out.a.accessor<double, 3>(), GH = out.grad_h.accessor<double, 3>();
  auto GW = out.grad_weight.accessor<double, 2>();
  auto GB = out.grad_bias.accessor<double, 1>();
  for (int64_t clip = 0; clip < F / T; ++clip)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c) {
          double pre = B[c];
          for (int64_t d = 0; d < K; ++d)
            if (t + d - P >= 0 && t + d - P < T) pre += W[c][d] * H[clip * T + t + d - P][n][c];
          A[clip * T + t][n][c] = act_value(pre, act);
          const double grad_pre = G[clip * T + t][n][c] * act_grad(pre, act);
          GB[c] += grad_pre;
          for (int64_t d = 0; d < K; ++d)
            if (t + d - P >= 0 && t + d - P < T) {
              GW[c][d] += grad_pre * H[clip * T + t + d - P][n][c];
              GH[clip * T + t + d - P][n][c] += grad_pre * W[c][d];
            }
        }
  return out;
}

void check_case(at::ScalarType dtype, int64_t clips, int64_t T, int64_t N, int64_t C, int64_t K, Activation act,
                const char* act_name, double tol) {
  const auto opts = at::TensorOptions().dtype(dtype);
  const at::Tensor h = at::randn({clips * T, N, C}, opts), w = at::randn({C, K}, opts) * 0.5;
  const at::Tensor b = at::randn({C}, opts) * 0.2, ga = at::randn({clips * T, N, C}, opts);
  const Naive want = naive(h, w, b, ga, T, act);
  const std::string tag = std::string(c10::toString(dtype)) + " T=" + std::to_string(T) + " N=" +
                          std::to_string(N) + " C=" + std::to_string(C) + " kt=" + std::to_string(K) + " " + act_name;
  expect_close(temporal_conv_act(h, w, b, T, act_name), want.a, tol, tag + " a");
  auto [grad_h, a, grad_weight, grad_bias, grad_h_sum] = temporal_conv_act_backward(ga, h, w, b, T, act_name);
  expect_close(grad_h, want.grad_h, tol, tag + " grad_h");
  expect_close(a, want.a, tol, tag + " a (backward)");
  expect_close(grad_weight, want.grad_weight, tol, tag + " grad_weight");
  expect_close(grad_bias, want.grad_bias, tol, tag + " grad_bias");
  expect_close(grad_h_sum, want.grad_h.sum({0, 1}), tol, tag + " grad_h summed");
}

void check_dispatcher_call() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("st_adapter_fast::temporal_conv_act", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                  c10::string_view)>();
  const at::Tensor h = at::randn({6, 5, 8}), w = at::randn({8, 3}), b = at::randn({8});
  expect_close(op.call(h, w, b, 3, "gelu"), temporal_conv_act(h, w, b, 3, "gelu"), 0, "dispatcher call");
}

}  // namespace

int main() {
  at::manual_seed(0);
  check_case(at::kDouble, 2, 8, 13, 33, 3, Activation::kGelu, "gelu", 1e-12);
  check_case(at::kDouble, 3, 1, 9, 7, 5, Activation::kQuickGelu, "quick_gelu", 1e-12);
  check_case(at::kDouble, 1, 3, 17, 10, 7, Activation::kNone, "none", 1e-12);
  check_case(at::kFloat, 2, 5, 11, 40, 3, Activation::kGelu, "gelu", 1e-5);
  check_case(at::kBFloat16, 2, 4, 7, 24, 3, Activation::kGelu, "gelu", 3e-2);
  check_dispatcher_call();
  std::printf(failures ? "%d check(s) FAILED\n" : "all checks passed\n", failures);
  return failures ? 1 : 0;
}
