// Temporal depthwise conv + activation in the token layout: the compiled kernels' shared declarations.
//
// Tensors are (frames, N, Ca) with frames = clips * T, frames of one clip consecutive, channel stride 1
// (the frame and token strides are free, so the patch rows of a (frames, L, Ca) tensor are passed as a
// view). With PAD = kt / 2 and zero padding in time:
//     pre[t] = bias + sum_d weight[:, d] * h[t + d - PAD]        a[t] = act(pre[t])
// The backward takes grad_a and h, recomputes pre and a, and gives grad_h, the weight and bias
// gradients, and grad_h summed over all rows (the gradient of the bias of the GEMM that produced h).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>
#include <tuple>

namespace st_adapter_fast {

// Error messages are assembled here, numbers with std::to_string, and reach TORCH_CHECK as one string:
// with torch 2.11 on the H100 machine (GCC 13 build), TORCH_CHECK formatting integer arguments through
// c10::str crashed the process instead of raising.
inline void append(std::string& out, const char* part) { out += part; }
inline void append(std::string& out, const std::string& part) { out += part; }
inline void append(std::string& out, c10::string_view part) { out.append(part.data(), part.size()); }
inline void append(std::string& out, int64_t value) { out += std::to_string(value); }
inline void append(std::string& out, int value) { out += std::to_string(value); }
inline void append(std::string& out, at::IntArrayRef values) {
  out += "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  out += "]";
}
inline void append(std::string& out, c10::ScalarType dtype) { out += c10::toString(dtype); }
inline void append(std::string& out, const c10::Device& device) { out += device.str(); }

template <typename... Parts>
std::string message(const Parts&... parts) {
  std::string out;
  (append(out, parts), ...);
  return out;
}

// SAF_CHECK: RuntimeError (what this build or device cannot do). SAF_CHECK_VALUE / SAF_CHECK_TYPE: a bad
// argument, raised in Python as ValueError / TypeError, as the package's Python checks raise them.
#define SAF_CHECK(cond, ...) TORCH_CHECK(cond, ::st_adapter_fast::message(__VA_ARGS__))
#define SAF_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::st_adapter_fast::message(__VA_ARGS__))
#define SAF_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, ::st_adapter_fast::message(__VA_ARGS__))

// What the kernels cover, stated once here and exported by the Python module (python_module.cpp), which the
// package reads instead of restating: temporal kernels with odd kt up to kMaxKernelT, the dtypes the CPU and
// CUDA kernels are instantiated for (their AT_DISPATCH_FLOATING_TYPES_AND2(kBFloat16, kHalf, ...)), and the
// activations by name as the ops take them, with their codes.
constexpr int64_t kMaxKernelT = 7;
constexpr c10::ScalarType kKernelDtypes[] = {c10::kFloat, c10::kDouble, c10::kBFloat16, c10::kHalf};

enum class Activation : int { kNone = 0, kGelu = 1, kQuickGelu = 2 };

// The Python package's activations.ACTIVATION_CODES must be this table (it refuses an extension whose codes
// differ, and a test checks that they agree): the Triton kernels take the same codes.
struct ActivationName {
  const char* name;
  Activation code;
};
constexpr ActivationName kActivationNames[] = {
    {"none", Activation::kNone}, {"gelu", Activation::kGelu}, {"quick_gelu", Activation::kQuickGelu}};

Activation parse_activation(c10::string_view name);

struct ConvShape {
  int64_t frames, num_tokens, channels, kernel_t, num_frames, clips;
};

// Checks h (frames, N, Ca), weight (Ca, kt), bias (Ca) and num_frames; TORCH_CHECK errors name `op`.
ConvShape check_conv_inputs(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                            int64_t num_frames, const char* op);
// A tensor the kernels read or write beside h: same shape, dtype and device, channel stride 1.
void check_like_h(const at::Tensor& t, const at::Tensor& h, const char* name, const char* op);
// An output the kernels write: no two of its elements share memory (a stride 0, or rows that overlap).
void check_no_internal_overlap(const at::Tensor& t, const char* name, const char* op);
// An output `out` and another argument `t` of the call do not share any memory.
void check_no_overlap(const at::Tensor& out, const char* out_name, const at::Tensor& t, const char* name,
                      const char* op);

// Device kernels: write `out` (and, backward, `grad_h`, `a`). The backward returns the reductions as one
// (kt + 2, Ca) tensor in the accumulation dtype (fp32; fp64 for double): rows 0..kt-1 the weight gradient
// per tap, row kt the bias gradient, row kt+1 grad_h summed. Each block of work writes its own partial
// sums, which are then added in a fixed order: results do not depend on thread counts or timing.
void conv_act_forward_cpu(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& out, const ConvShape& shape, Activation act);
at::Tensor conv_act_backward_cpu(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight,
                                 const at::Tensor& bias, const at::Tensor& grad_h, const at::Tensor& a,
                                 const ConvShape& shape, Activation act);
#ifdef ST_ADAPTER_FAST_WITH_CUDA
void conv_act_forward_cuda(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& out, const ConvShape& shape, Activation act);
at::Tensor conv_act_backward_cuda(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight,
                                  const at::Tensor& bias, const at::Tensor& grad_h, const at::Tensor& a,
                                  const ConvShape& shape, Activation act);
#endif

// The device kernels above for h's device, without the ops' argument checks (the caller has checked): the
// forward writes `out`; the backward writes grad_h and a and returns the (kt + 2, Ca) sums of its partials.
void run_conv_act_forward(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& out, const ConvShape& shape, Activation act);
at::Tensor run_conv_act_backward(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight,
                                 const at::Tensor& bias, const at::Tensor& grad_h, const at::Tensor& a,
                                 const ConvShape& shape, Activation act);
// The sums as the three gradients (weight (Ca, kt), bias, grad_h summed) in weight's dtype, as copies.
std::tuple<at::Tensor, at::Tensor, at::Tensor> split_reductions(const at::Tensor& sums, const at::Tensor& weight);

// The ops as registered (see ops.cpp); callable from C++ directly or through the dispatcher.
at::Tensor temporal_conv_act(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                             int64_t num_frames, c10::string_view activation);
void temporal_conv_act_out(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                           int64_t num_frames, c10::string_view activation, const at::Tensor& out);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> temporal_conv_act_backward(
    const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
    int64_t num_frames, c10::string_view activation);
std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_conv_act_backward_out(
    const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
    int64_t num_frames, c10::string_view activation, const at::Tensor& grad_h, const at::Tensor& a);

// ---- activation math, shared by the CPU and CUDA kernels (acc_t is float or double) ----

#if defined(__CUDACC__)
#define SAF_INLINE __host__ __device__ __forceinline__
#else
#define SAF_INLINE inline
#endif

constexpr double kQuickGeluAlpha = 1.702;                      // quick_gelu(c) = c * sigmoid(1.702 c), as CLIP
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

template <typename acc_t>
SAF_INLINE acc_t erf_(acc_t v) {
#if defined(__CUDA_ARCH__)
  return erf(v);
#else
  return std::erf(v);
#endif
}

template <typename acc_t>
SAF_INLINE acc_t exp_(acc_t v) {
#if defined(__CUDA_ARCH__)
  return exp(v);
#else
  return std::exp(v);
#endif
}

// GELU's cdf and quick_gelu's sigmoid, computed one way for forward and backward, so that the backward's
// recomputed activation equals the forward's bit for bit.
template <typename acc_t>
SAF_INLINE acc_t gelu_cdf(acc_t c) { return acc_t(0.5) * (acc_t(1) + erf_(c * acc_t(kInvSqrt2))); }

template <typename acc_t>
SAF_INLINE acc_t quick_gelu_sigmoid(acc_t c) { return acc_t(1) / (acc_t(1) + exp_(-acc_t(kQuickGeluAlpha) * c)); }

template <typename acc_t>
SAF_INLINE acc_t activation_forward(acc_t c, Activation act) {
  if (act == Activation::kGelu) return c * gelu_cdf(c);
  if (act == Activation::kQuickGelu) return c * quick_gelu_sigmoid(c);
  return c;
}

// act(c) into value, act'(c) into grad.
template <typename acc_t>
SAF_INLINE void activation_forward_and_grad(acc_t c, Activation act, acc_t& value, acc_t& grad) {
  if (act == Activation::kGelu) {
    const acc_t cdf = gelu_cdf(c);
    const acc_t pdf = exp_(acc_t(-0.5) * c * c) * acc_t(kInvSqrt2Pi);
    value = c * cdf;
    grad = cdf + c * pdf;
  } else if (act == Activation::kQuickGelu) {
    const acc_t s = quick_gelu_sigmoid(c);
    value = c * s;
    grad = s + c * acc_t(kQuickGeluAlpha) * s * (acc_t(1) - s);
  } else {
    value = c;
    grad = acc_t(1);
  }
}

}  // namespace st_adapter_fast
