// The whole adapter per direction (adapter.cpp) and its autograd (adapter_autograd.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

namespace st_adapter_fast {

// (y, h, x_low): the adapter's output; fc1's output over all L rows when need_h (else empty), which backward
// needs; and x's zero-prefix copy in the compute dtype when the op made one (x in another dtype, no x_gemm
// given; else empty), which the GEMMs read and backward needs. x_gemm: that copy made by the caller.
std::tuple<at::Tensor, at::Tensor, at::Tensor> adapter_forward(
    const at::Tensor& x, const std::optional<at::Tensor>& x_gemm, const at::Tensor& fc1_weight,
    const at::Tensor& fc1_bias, const at::Tensor& conv_weight, const at::Tensor& conv_bias,
    const at::Tensor& fc2_weight, const at::Tensor& fc2_bias, int64_t num_frames, int64_t num_prefix_tokens,
    c10::string_view activation, at::ScalarType compute_dtype, bool need_h);

// The gradients of (x, fc1.weight, fc1.bias, conv.weight, conv.bias, fc2.weight, fc2.bias) for y's gradient;
// x is what the forward's GEMMs read (x, or x_low: then x_prefix_zeroed), h what it returned. Unwanted ones
// (needs[i] false) may be undefined. Gradients come in the compute dtype, but for those summed in fp32 (the
// conv's, fc1's and, on the CPU, fc2's bias), which come in the parameters' dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> adapter_backward(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h, const at::Tensor& fc1_weight,
    const at::Tensor& conv_weight, const at::Tensor& conv_bias, const at::Tensor& fc2_weight, int64_t num_frames,
    int64_t num_prefix_tokens, c10::string_view activation, at::ScalarType compute_dtype, bool x_prefix_zeroed,
    std::array<bool, 7> needs);

}  // namespace st_adapter_fast
