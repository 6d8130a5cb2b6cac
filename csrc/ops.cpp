// Op registration (TORCH_LIBRARY, namespace st_adapter_fast) with CPU, CUDA and Meta implementations,
// and the argument checks every implementation shares.
#include "temporal_conv.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <utility>
#include <vector>

namespace st_adapter_fast {

Activation parse_activation(c10::string_view name) {
  for (const ActivationName& entry : kActivationNames)
    if (name == entry.name) return entry.code;
  SAF_CHECK_VALUE(false, "st_adapter_fast: activation must be 'none', 'gelu' or 'quick_gelu', got '", name, "'");
}

ConvShape check_conv_inputs(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                            int64_t num_frames, const char* op) {
  SAF_CHECK_VALUE(h.dim() == 3, op, ": h must be (frames, tokens, channels), got ", h.sizes());
  SAF_CHECK_VALUE(h.stride(2) == 1 || h.size(2) <= 1, op, ": h's channel stride must be 1, got ", h.strides());
  SAF_CHECK_TYPE(at::isFloatingType(h.scalar_type()), op, ": h must be float32, float64, bfloat16 or float16, got ",
                 h.scalar_type());
  SAF_CHECK_VALUE(weight.dim() == 2, op, ": weight must be (channels, kt), got ", weight.sizes());
  const int64_t channels = h.size(2), kernel_t = weight.size(1);
  SAF_CHECK_VALUE(weight.size(0) == channels, op, ": weight has ", weight.size(0), " channels, h has ", channels);
  SAF_CHECK_VALUE(kernel_t % 2 == 1 && kernel_t <= kMaxKernelT, op, ": kt must be odd and <= ", kMaxKernelT,
                  ", got ", kernel_t);
  SAF_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == channels, op, ": bias must be (", channels, "), got ",
                  bias.sizes());
  SAF_CHECK_TYPE(weight.scalar_type() == h.scalar_type() && bias.scalar_type() == h.scalar_type(), op,
                 ": h, weight and bias must have one dtype, got ", h.scalar_type(), ", ", weight.scalar_type(),
                 ", ", bias.scalar_type());
  SAF_CHECK_VALUE(weight.device() == h.device() && bias.device() == h.device(), op,
                  ": h, weight and bias must be on one device");
  SAF_CHECK_VALUE(num_frames > 0 && h.size(0) % num_frames == 0, op, ": num_frames=", num_frames,
                  " must be positive and divide the frame count ", h.size(0));
  return {h.size(0), h.size(1), channels, kernel_t, num_frames, h.size(0) / num_frames};
}

void check_like_h(const at::Tensor& t, const at::Tensor& h, const char* name, const char* op) {
  SAF_CHECK_VALUE(t.sizes() == h.sizes(), op, ": ", name, " must have h's shape ", h.sizes(), ", got ", t.sizes());
  SAF_CHECK_TYPE(t.scalar_type() == h.scalar_type(), op, ": ", name, " must have h's dtype ", h.scalar_type(),
                 ", got ", t.scalar_type());
  SAF_CHECK_VALUE(t.device() == h.device(), op, ": ", name, " must be on h's device");
  SAF_CHECK_VALUE(t.stride(2) == 1 || t.size(2) <= 1, op, ": ", name, "'s channel stride must be 1, got ",
                  t.strides());
}

namespace {

// [first, last] byte offsets, within its storage, of the elements of t (t has at least one element).
std::pair<int64_t, int64_t> byte_span(const at::Tensor& t) {
  int64_t first = t.storage_offset(), last = t.storage_offset();
  for (int64_t d = 0; d < t.dim(); ++d) {
    const int64_t reach = (t.size(d) - 1) * t.stride(d);
    (reach < 0 ? first : last) += reach;
  }
  const int64_t item = t.element_size();
  return {first * item, last * item + item - 1};
}

}  // namespace

void check_no_internal_overlap(const at::Tensor& t, const char* name, const char* op) {
  // Sufficient for no overlap: with the dimensions of size > 1 sorted by |stride|, each stride steps over
  // everything the smaller ones span. Layouts it refuses that do not overlap (interleavings) are not what
  // the kernels are for.
  if (t.numel() == 0) return;
  std::vector<std::pair<int64_t, int64_t>> dims;   // (|stride|, size)
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) > 1) dims.emplace_back(std::abs(t.stride(d)), t.size(d));
  std::sort(dims.begin(), dims.end());
  int64_t span = 1;   // elements covered by the smaller dimensions
  for (const auto& [stride, size] : dims) {
    SAF_CHECK_VALUE(stride >= span, op, ": ", name, " has elements that share memory (sizes ", t.sizes(),
                    ", strides ", t.strides(), "); pass a tensor without a stride 0 or overlapping rows");
    span = stride * (size - 1) + span;
  }
}

void check_no_overlap(const at::Tensor& out, const char* out_name, const at::Tensor& t, const char* name,
                      const char* op) {
  if (out.numel() == 0 || t.numel() == 0 || !out.storage().is_alias_of(t.storage())) return;
  const auto [out_first, out_last] = byte_span(out);
  const auto [first, last] = byte_span(t);
  SAF_CHECK_VALUE(out_last < first || last < out_first, op, ": ", out_name, " overlaps ", name,
                  " in memory; the kernels write ", out_name, " while reading ", name,
                  ", so pass a separate tensor");
}

namespace {

struct CheckedCall {
  ConvShape shape;
  Activation act;
};

// Every check of a forward call (real or Meta); `out` may be null (the functional op).
CheckedCall check_forward_call(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                               int64_t num_frames, c10::string_view activation, const at::Tensor* out,
                               const char* op) {
  const ConvShape shape = check_conv_inputs(h, weight, bias, num_frames, op);
  if (out) {
    check_like_h(*out, h, "out", op);
    check_no_internal_overlap(*out, "out", op);
    check_no_overlap(*out, "out", h, "h", op);
    check_no_overlap(*out, "out", weight, "weight", op);
    check_no_overlap(*out, "out", bias, "bias", op);
  }
  return {shape, parse_activation(activation)};
}

// Every check of a backward call (real or Meta); grad_h and a may be null (the functional op).
CheckedCall check_backward_call(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight,
                                const at::Tensor& bias, int64_t num_frames, c10::string_view activation,
                                const at::Tensor* grad_h, const at::Tensor* a, const char* op) {
  const ConvShape shape = check_conv_inputs(h, weight, bias, num_frames, op);
  check_like_h(grad_a, h, "grad_a", op);
  if (grad_h) check_like_h(*grad_h, h, "grad_h", op);
  if (a) check_like_h(*a, h, "a", op);
  if (grad_h && a) {
    const std::pair<const at::Tensor*, const char*> outputs[] = {{grad_h, "grad_h"}, {a, "a"}};
    const std::pair<const at::Tensor*, const char*> inputs[] = {
        {&grad_a, "grad_a"}, {&h, "h"}, {&weight, "weight"}, {&bias, "bias"}};
    for (const auto& [out, out_name] : outputs) {
      check_no_internal_overlap(*out, out_name, op);
      for (const auto& [in, in_name] : inputs) check_no_overlap(*out, out_name, *in, in_name, op);
    }
    check_no_overlap(*grad_h, "grad_h", *a, "a", op);
  }
  return {shape, parse_activation(activation)};
}

}  // namespace

void run_conv_act_forward(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& out, const ConvShape& shape, Activation act) {
  if (h.numel() == 0) return;
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  if (h.is_cuda()) {
#ifdef ST_ADAPTER_FAST_WITH_CUDA
    conv_act_forward_cuda(h, w, b, out, shape, act);
    return;
#else
    SAF_CHECK(false, "st_adapter_fast: this build of the extension has no CUDA kernels");
#endif
  }
  SAF_CHECK(h.is_cpu(), "st_adapter_fast: no kernel for device ", h.device());
  conv_act_forward_cpu(h, w, b, out, shape, act);
}

at::Tensor run_conv_act_backward(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight,
                                 const at::Tensor& bias, const at::Tensor& grad_h, const at::Tensor& a,
                                 const ConvShape& shape, Activation act) {
  if (h.numel() == 0)
    return at::zeros({shape.kernel_t + 2, shape.channels}, weight.options().dtype(at::toOpMathType(h.scalar_type())));
  const at::Tensor w = weight.contiguous(), b = bias.contiguous();
  if (h.is_cuda()) {
#ifdef ST_ADAPTER_FAST_WITH_CUDA
    return conv_act_backward_cuda(grad_a, h, w, b, grad_h, a, shape, act);
#else
    SAF_CHECK(false, "st_adapter_fast: this build of the extension has no CUDA kernels");
#endif
  }
  SAF_CHECK(h.is_cpu(), "st_adapter_fast: no kernel for device ", h.device());
  return conv_act_backward_cpu(grad_a, h, w, b, grad_h, a, shape, act);
}

// The (kt + 2, Ca) sums of the per-block partials (rows: the weight gradient per tap, the bias gradient, grad_h
// summed) as the three gradients; the Triton backend's partials have the same layout and Python's
// fused.conv_reductions splits them the same way.
std::tuple<at::Tensor, at::Tensor, at::Tensor> split_reductions(const at::Tensor& sums, const at::Tensor& weight) {
  const int64_t kt = weight.size(1);
  const auto dtype = weight.scalar_type();
  // Copies (copy=true), never views of `sums`: op outputs must not alias each other.
  return {sums.slice(0, 0, kt).t().to(dtype, false, true).contiguous(), sums[kt].to(dtype, false, true),
          sums[kt + 1].to(dtype, false, true)};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> reductions_meta(const at::Tensor& weight) {
  return {at::empty_like(weight, at::MemoryFormat::Contiguous), weight.new_empty({weight.size(0)}),
          weight.new_empty({weight.size(0)})};
}

}  // namespace

void temporal_conv_act_out(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                           int64_t num_frames, c10::string_view activation, const at::Tensor& out) {
  const CheckedCall call =
      check_forward_call(h, weight, bias, num_frames, activation, &out, "st_adapter_fast::temporal_conv_act_out");
  run_conv_act_forward(h, weight, bias, out, call.shape, call.act);
}

at::Tensor temporal_conv_act(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                             int64_t num_frames, c10::string_view activation) {
  const CheckedCall call =
      check_forward_call(h, weight, bias, num_frames, activation, nullptr, "st_adapter_fast::temporal_conv_act");
  at::Tensor out = at::empty(h.sizes(), h.options());
  run_conv_act_forward(h, weight, bias, out, call.shape, call.act);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_conv_act_backward_out(
    const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
    int64_t num_frames, c10::string_view activation, const at::Tensor& grad_h, const at::Tensor& a) {
  const auto [shape, act] = check_backward_call(grad_a, h, weight, bias, num_frames, activation, &grad_h, &a,
                                                "st_adapter_fast::temporal_conv_act_backward_out");
  return split_reductions(run_conv_act_backward(grad_a, h, weight, bias, grad_h, a, shape, act), weight);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> temporal_conv_act_backward(
    const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
    int64_t num_frames, c10::string_view activation) {
  at::Tensor grad_h = at::empty(h.sizes(), h.options()), a = at::empty(h.sizes(), h.options());
  auto [grad_weight, grad_bias, grad_h_sum] =
      temporal_conv_act_backward_out(grad_a, h, weight, bias, num_frames, activation, grad_h, a);
  return {grad_h, a, grad_weight, grad_bias, grad_h_sum};
}

// ---- Meta: shapes and dtypes only, for torch.compile and fake tensors ----
namespace {

at::Tensor temporal_conv_act_meta(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                                  int64_t num_frames, c10::string_view activation) {
  check_forward_call(h, weight, bias, num_frames, activation, nullptr, "st_adapter_fast::temporal_conv_act");
  return at::empty(h.sizes(), h.options());
}

void temporal_conv_act_out_meta(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                                int64_t num_frames, c10::string_view activation, const at::Tensor& out) {
  check_forward_call(h, weight, bias, num_frames, activation, &out, "st_adapter_fast::temporal_conv_act_out");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_conv_act_backward_out_meta(
    const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
    int64_t num_frames, c10::string_view activation, const at::Tensor& grad_h, const at::Tensor& a) {
  check_backward_call(grad_a, h, weight, bias, num_frames, activation, &grad_h, &a,
                      "st_adapter_fast::temporal_conv_act_backward_out");
  return reductions_meta(weight);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> temporal_conv_act_backward_meta(
    const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
    int64_t num_frames, c10::string_view activation) {
  check_backward_call(grad_a, h, weight, bias, num_frames, activation, nullptr, nullptr,
                      "st_adapter_fast::temporal_conv_act_backward");
  auto [grad_weight, grad_bias, grad_h_sum] = reductions_meta(weight);
  return {at::empty(h.sizes(), h.options()), at::empty(h.sizes(), h.options()), grad_weight, grad_bias, grad_h_sum};
}

}  // namespace
}  // namespace st_adapter_fast

TORCH_LIBRARY(st_adapter_fast, m) {
  m.def("temporal_conv_act(Tensor h, Tensor weight, Tensor bias, int num_frames, str activation) -> Tensor");
  m.def("temporal_conv_act_out(Tensor h, Tensor weight, Tensor bias, int num_frames, str activation, "
        "Tensor(a!) out) -> ()");
  m.def("temporal_conv_act_backward(Tensor grad_a, Tensor h, Tensor weight, Tensor bias, int num_frames, "
        "str activation) -> (Tensor grad_h, Tensor a, Tensor grad_weight, Tensor grad_bias, Tensor grad_h_sum)");
  m.def("temporal_conv_act_backward_out(Tensor grad_a, Tensor h, Tensor weight, Tensor bias, int num_frames, "
        "str activation, Tensor(a!) grad_h, Tensor(b!) a) -> (Tensor grad_weight, Tensor grad_bias, "
        "Tensor grad_h_sum)");
  // The whole adapter with its gradients (csrc/adapter_autograd.cpp): y, and x's compute-dtype copy when it made
  // one (x in another dtype than compute_dtype: autocast), else an empty tensor.
  m.def("adapter(Tensor x, Tensor fc1_weight, Tensor fc1_bias, Tensor conv_weight, Tensor conv_bias, "
        "Tensor fc2_weight, Tensor fc2_bias, int num_frames, int num_prefix_tokens, str activation, "
        "ScalarType compute_dtype) -> (Tensor y, Tensor x_low)");
  // The same per direction, without autograd (csrc/adapter.cpp), for torch.compile's registered ops: needs[i]
  // says whether the i-th gradient is wanted (an unwanted one may come back as None).
  m.def("adapter_forward(Tensor x, Tensor? x_gemm, Tensor fc1_weight, Tensor fc1_bias, Tensor conv_weight, "
        "Tensor conv_bias, Tensor fc2_weight, Tensor fc2_bias, int num_frames, int num_prefix_tokens, str activation, "
        "ScalarType compute_dtype, bool need_h) -> (Tensor y, Tensor h, Tensor x_low)");
  m.def("adapter_backward(Tensor grad_y, Tensor x, Tensor h, Tensor fc1_weight, Tensor conv_weight, "
        "Tensor conv_bias, Tensor fc2_weight, int num_frames, int num_prefix_tokens, str activation, "
        "ScalarType compute_dtype, bool x_prefix_zeroed, bool[7] needs) -> (Tensor grad_x, Tensor grad_fc1_weight, "
        "Tensor grad_fc1_bias, Tensor grad_conv_weight, Tensor grad_conv_bias, Tensor grad_fc2_weight, "
        "Tensor grad_fc2_bias)");
}

#define SAF_REGISTER_DEVICE_IMPLS(m)                                              \
  m.impl("temporal_conv_act", &st_adapter_fast::temporal_conv_act);               \
  m.impl("temporal_conv_act_out", &st_adapter_fast::temporal_conv_act_out);       \
  m.impl("temporal_conv_act_backward", &st_adapter_fast::temporal_conv_act_backward); \
  m.impl("temporal_conv_act_backward_out", &st_adapter_fast::temporal_conv_act_backward_out)

TORCH_LIBRARY_IMPL(st_adapter_fast, CPU, m) { SAF_REGISTER_DEVICE_IMPLS(m); }

#ifdef ST_ADAPTER_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(st_adapter_fast, CUDA, m) { SAF_REGISTER_DEVICE_IMPLS(m); }
#endif

TORCH_LIBRARY_IMPL(st_adapter_fast, Meta, m) {
  m.impl("temporal_conv_act", &st_adapter_fast::temporal_conv_act_meta);
  m.impl("temporal_conv_act_out", &st_adapter_fast::temporal_conv_act_out_meta);
  m.impl("temporal_conv_act_backward", &st_adapter_fast::temporal_conv_act_backward_meta);
  m.impl("temporal_conv_act_backward_out", &st_adapter_fast::temporal_conv_act_backward_out_meta);
}
