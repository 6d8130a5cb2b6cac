// CPU kernels: at::parallel_for over fixed blocks of (clip, tokens); channel loops innermost, contiguous,
// written for the compiler to vectorise; accumulation in float (double for double inputs). The activation
// is a template parameter so that its loops have no branch and vectorise, erf and exp included (below).
#include "temporal_conv.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__) && defined(__x86_64__)
// glibc's libmvec has vector versions of these (linked with -lmvec); its math.h declares them only under
// -ffast-math, which we do not want, so the declarations are repeated. With them GCC vectorises the
// activation loops instead of calling erff/expf once per element (3-4x faster GELU).
extern "C" float erff(float) __attribute__((simd("notinbranch")));
extern "C" float expf(float) __attribute__((simd("notinbranch")));
#endif

namespace st_adapter_fast {
namespace {

// Work is split into blocks of this many tokens of one clip. The backward's reductions keep one partial
// per block, so the block size (not the thread count) fixes their summation order.
constexpr int64_t kTokensPerBlock = 8;

// Blocks per parallel task: enough that a task has ~32K elements of work, so that small calls run on the
// calling thread (waking OpenMP's threads costs more than they save there, and far more on a busy machine).
int64_t blocks_per_task(const ConvShape& s) {
  constexpr int64_t kMinElementsPerTask = 1 << 15;
  const int64_t per_block = std::max<int64_t>(1, s.num_frames * kTokensPerBlock * s.channels);
  return std::max<int64_t>(1, kMinElementsPerTask / per_block);
}

template <typename T>
struct RowView {  // (frames, N, Ca) tensor with channel stride 1
  T* data;
  int64_t frame_stride, token_stride;
  T* row(int64_t frame, int64_t token) const { return data + frame * frame_stride + token * token_stride; }
};

template <typename T>
RowView<T> rows_of(const at::Tensor& t) {
  return {static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1)};
}

// Taps as (kt, Ca) so that the channel loop reads them contiguously.
template <typename scalar_t, typename acc_t>
std::vector<acc_t> taps_by_offset(const at::Tensor& weight) {
  const int64_t channels = weight.size(0), kt = weight.size(1);
  const scalar_t* w = weight.data_ptr<scalar_t>();
  std::vector<acc_t> taps(kt * channels);
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t d = 0; d < kt; ++d) taps[d * channels + c] = acc_t(w[c * kt + d]);
  return taps;
}

template <typename scalar_t, typename acc_t>
std::vector<acc_t> to_acc(const at::Tensor& v) {
  const scalar_t* p = v.data_ptr<scalar_t>();
  return std::vector<acc_t>(p, p + v.numel());
}

// pre[c] = bias[c] + sum over taps of taps[d][c] * h[t + d - pad][c], for one token of one clip.
template <typename scalar_t, typename acc_t>
void conv_at(const RowView<const scalar_t>& h, int64_t first_frame, int64_t token, int64_t t, const ConvShape& s,
             const std::vector<acc_t>& taps, const std::vector<acc_t>& bias, acc_t* pre) {
  const int64_t channels = s.channels, pad = s.kernel_t / 2;
  for (int64_t c = 0; c < channels; ++c) pre[c] = bias[c];
  for (int64_t d = 0; d < s.kernel_t; ++d) {
    const int64_t src = t + d - pad;
    if (src < 0 || src >= s.num_frames) continue;
    const scalar_t* hr = h.row(first_frame + src, token);
    const acc_t* w = taps.data() + d * channels;
    for (int64_t c = 0; c < channels; ++c) pre[c] += w[c] * acc_t(hr[c]);
  }
}

template <typename scalar_t, Activation act>
void forward_kernel(const at::Tensor& h_t, const at::Tensor& weight, const at::Tensor& bias_t, const at::Tensor& out_t,
                    const ConvShape& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto taps = taps_by_offset<scalar_t, acc_t>(weight);
  const auto bias = to_acc<scalar_t, acc_t>(bias_t);
  const RowView<const scalar_t> h = rows_of<const scalar_t>(h_t);
  const RowView<scalar_t> out = rows_of<scalar_t>(out_t);
  const int64_t blocks_per_clip = (s.num_tokens + kTokensPerBlock - 1) / kTokensPerBlock;
  at::parallel_for(0, s.clips * blocks_per_clip, blocks_per_task(s), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> pre(s.channels);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first_frame = (block / blocks_per_clip) * s.num_frames;
      const int64_t token_begin = (block % blocks_per_clip) * kTokensPerBlock;
      const int64_t token_end = std::min(token_begin + kTokensPerBlock, s.num_tokens);
      for (int64_t n = token_begin; n < token_end; ++n) {
        for (int64_t t = 0; t < s.num_frames; ++t) {
          conv_at(h, first_frame, n, t, s, taps, bias, pre.data());
          scalar_t* __restrict o = out.row(first_frame + t, n);
          const acc_t* __restrict p = pre.data();
          for (int64_t c = 0; c < s.channels; ++c) o[c] = scalar_t(activation_forward(p[c], act));
        }
      }
    }
  });
}

template <typename scalar_t, Activation act>
at::Tensor backward_kernel(const at::Tensor& grad_a_t, const at::Tensor& h_t, const at::Tensor& weight,
                           const at::Tensor& bias_t, const at::Tensor& grad_h_t, const at::Tensor& a_t,
                           const ConvShape& s) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto taps = taps_by_offset<scalar_t, acc_t>(weight);
  const auto bias = to_acc<scalar_t, acc_t>(bias_t);
  const RowView<const scalar_t> grad_a = rows_of<const scalar_t>(grad_a_t), h = rows_of<const scalar_t>(h_t);
  const RowView<scalar_t> grad_h = rows_of<scalar_t>(grad_h_t), a = rows_of<scalar_t>(a_t);
  const int64_t channels = s.channels, kt = s.kernel_t, pad = kt / 2, frames = s.num_frames;
  const int64_t blocks_per_clip = (s.num_tokens + kTokensPerBlock - 1) / kTokensPerBlock;
  const int64_t num_blocks = s.clips * blocks_per_clip;
  // Per block: kt rows of weight gradient, then the bias gradient, then grad_h summed.
  std::vector<acc_t> partials(num_blocks * (kt + 2) * channels, acc_t(0));

  at::parallel_for(0, num_blocks, blocks_per_task(s), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> pre(channels), grad_pre(frames * channels);
    for (int64_t block = begin; block < end; ++block) {
      acc_t* part = partials.data() + block * (kt + 2) * channels;
      acc_t* grad_bias = part + kt * channels;
      acc_t* grad_h_sum = part + (kt + 1) * channels;
      const int64_t first_frame = (block / blocks_per_clip) * frames;
      const int64_t token_begin = (block % blocks_per_clip) * kTokensPerBlock;
      const int64_t token_end = std::min(token_begin + kTokensPerBlock, s.num_tokens);
      for (int64_t n = token_begin; n < token_end; ++n) {
        // Recompute the conv and activation; gradient through the activation; weight and bias gradients.
        for (int64_t t = 0; t < frames; ++t) {
          conv_at(h, first_frame, n, t, s, taps, bias, pre.data());
          const scalar_t* __restrict ga = grad_a.row(first_frame + t, n);
          scalar_t* __restrict ar = a.row(first_frame + t, n);
          acc_t* __restrict gp = grad_pre.data() + t * channels;
          const acc_t* __restrict p = pre.data();
          acc_t* __restrict gb = grad_bias;
          for (int64_t c = 0; c < channels; ++c) {
            acc_t value, slope;
            activation_forward_and_grad(p[c], act, value, slope);
            ar[c] = scalar_t(value);
            gp[c] = acc_t(ga[c]) * slope;
            gb[c] += gp[c];
          }
          for (int64_t d = 0; d < kt; ++d) {
            const int64_t src = t + d - pad;
            if (src < 0 || src >= frames) continue;
            const scalar_t* hr = h.row(first_frame + src, n);
            acc_t* gw = part + d * channels;
            for (int64_t c = 0; c < channels; ++c) gw[c] += gp[c] * acc_t(hr[c]);
          }
        }
        // grad_h[t'] = sum over taps of taps[d] * grad_pre[t' - d + pad] (the transposed conv).
        for (int64_t t = 0; t < frames; ++t) {
          for (int64_t c = 0; c < channels; ++c) pre[c] = acc_t(0);
          for (int64_t d = 0; d < kt; ++d) {
            const int64_t src = t - d + pad;
            if (src < 0 || src >= frames) continue;
            const acc_t* gp = grad_pre.data() + src * channels;
            const acc_t* w = taps.data() + d * channels;
            for (int64_t c = 0; c < channels; ++c) pre[c] += w[c] * gp[c];
          }
          scalar_t* gh = grad_h.row(first_frame + t, n);
          for (int64_t c = 0; c < channels; ++c) {
            gh[c] = scalar_t(pre[c]);
            grad_h_sum[c] += pre[c];
          }
        }
      }
    }
  });

  // Fixed-order sum of the per-block partials.
  at::Tensor sums = at::zeros({kt + 2, channels}, weight.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* out = sums.data_ptr<acc_t>();
  for (int64_t block = 0; block < num_blocks; ++block) {
    const acc_t* part = partials.data() + block * (kt + 2) * channels;
    for (int64_t i = 0; i < (kt + 2) * channels; ++i) out[i] += part[i];
  }
  return sums;
}

}  // namespace

// Calls fn(activation tag) with the runtime activation as a compile-time constant.
template <typename Fn>
void with_activation(Activation act, Fn&& fn) {
  switch (act) {
    case Activation::kNone: fn(std::integral_constant<Activation, Activation::kNone>{}); break;
    case Activation::kGelu: fn(std::integral_constant<Activation, Activation::kGelu>{}); break;
    case Activation::kQuickGelu: fn(std::integral_constant<Activation, Activation::kQuickGelu>{}); break;
  }
}

void conv_act_forward_cpu(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& out, const ConvShape& shape, Activation act) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "temporal_conv_act_cpu", [&] {
    with_activation(act, [&](auto act_tag) {
      forward_kernel<scalar_t, decltype(act_tag)::value>(h, weight, bias, out, shape);
    });
  });
}

at::Tensor conv_act_backward_cpu(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight,
                                 const at::Tensor& bias, const at::Tensor& grad_h, const at::Tensor& a,
                                 const ConvShape& shape, Activation act) {
  at::Tensor sums;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "temporal_conv_act_backward_cpu", [&] {
    with_activation(act, [&](auto act_tag) {
      sums = backward_kernel<scalar_t, decltype(act_tag)::value>(grad_a, h, weight, bias, grad_h, a, shape);
    });
  });
  return sums;
}

}  // namespace st_adapter_fast
