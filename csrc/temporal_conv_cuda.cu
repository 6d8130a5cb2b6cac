// CUDA kernels. One thread owns VEC adjacent channels of one token of one clip and streams over the
// clip's T frames, holding the kt-frame window of h (and, backward, of the activation's gradient) in
// registers: each element of h and grad_a is read once, with 16-byte loads where alignment allows. The
// next frame's loads are issued before the current frame's arithmetic, so that they are in flight while
// it runs (a thread has little else to hide memory latency with: the backward needs ~160 registers).
// Block: (channel vectors) x (tokens); grid: (channel blocks, token blocks, clips).
#include "temporal_conv.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdlib>

namespace st_adapter_fast {
namespace {

// Threads per block, from a sweep on an H200 (benchmarks/cuda_kernel_sweep.py; ViT-B/16 and ViT-L/14 shapes,
// bf16 and fp16): forward, 128 was 14% faster than 256 on ViT-B/16 and as fast on ViT-L/14; backward, 256
// was 4% faster than 128 on ViT-B/16 (the paper's model) and 8% slower on ViT-L/14.
// ST_ADAPTER_FAST_CUDA_{FWD,BWD}_THREADS override them for such sweeps, up to what the kernels' registers
// allow (the backward holds ~180 registers a thread: 512 threads would ask more registers than a
// multiprocessor has, and the launch would fail).
constexpr int kForwardThreads = 128, kMaxForwardThreads = 512;
constexpr int kBackwardThreads = 256, kMaxBackwardThreads = 256;

int threads_per_block(const char* variable, int fallback, int most) {
  const char* value = std::getenv(variable);
  const int threads = value ? std::atoi(value) : fallback;
  return threads >= 32 ? std::min(threads, most) : fallback;
}

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

template <typename scalar_t, int VEC, typename acc_t>
__device__ __forceinline__ void load(const scalar_t* p, acc_t (&out)[VEC]) {
  const Pack<scalar_t, VEC> pack = *reinterpret_cast<const Pack<scalar_t, VEC>*>(p);
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = acc_t(pack.v[i]);
}

template <typename scalar_t, int VEC, typename acc_t>
__device__ __forceinline__ void store(scalar_t* p, const acc_t (&in)[VEC]) {
  Pack<scalar_t, VEC> pack;
#pragma unroll
  for (int i = 0; i < VEC; ++i) pack.v[i] = scalar_t(in[i]);
  *reinterpret_cast<Pack<scalar_t, VEC>*>(p) = pack;
}

template <int VEC, typename acc_t>
__device__ __forceinline__ void fill(acc_t (&v)[VEC], acc_t value) {
#pragma unroll
  for (int i = 0; i < VEC; ++i) v[i] = value;
}

template <int VEC, typename acc_t>
__device__ __forceinline__ void copy(const acc_t (&from)[VEC], acc_t (&to)[VEC]) {
#pragma unroll
  for (int i = 0; i < VEC; ++i) to[i] = from[i];
}

struct Layout {  // strides of a (frames, N, Ca) tensor, in elements
  int64_t frame, token;
};

struct Tile {  // what one thread works on
  int64_t first_frame;  // of its clip
  int token, channel;   // first of its VEC channels
  bool valid;
};

template <int VEC>
__device__ __forceinline__ Tile this_thread(int num_tokens, int channels, int num_frames) {
  Tile tile;
  tile.channel = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  tile.token = blockIdx.y * blockDim.y + threadIdx.y;
  tile.first_frame = int64_t(blockIdx.z) * num_frames;
  tile.valid = tile.channel < channels && tile.token < num_tokens;
  return tile;
}

// h at frame t of this thread's clip and token, zero outside [0, T).
template <typename scalar_t, int VEC, typename acc_t>
__device__ __forceinline__ void load_frame(const scalar_t* base, Layout layout, const Tile& tile, int t,
                                           int num_frames, acc_t (&out)[VEC]) {
  if (t < 0 || t >= num_frames) {
    fill(out, acc_t(0));
    return;
  }
  load(base + (tile.first_frame + t) * layout.frame + tile.token * layout.token + tile.channel, out);
}

template <typename scalar_t, int KT, int VEC, typename acc_t>
__device__ __forceinline__ void load_taps(const scalar_t* weight, const scalar_t* bias, int channel,
                                          acc_t (&taps)[KT][VEC], acc_t (&b)[VEC]) {
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    b[i] = acc_t(bias[channel + i]);
#pragma unroll
    for (int d = 0; d < KT; ++d) taps[d][i] = acc_t(weight[(channel + i) * KT + d]);
  }
}

template <int KT, int VEC, typename acc_t>
__device__ __forceinline__ void shift_window(acc_t (&window)[KT][VEC]) {
#pragma unroll
  for (int d = 0; d + 1 < KT; ++d)
#pragma unroll
    for (int i = 0; i < VEC; ++i) window[d][i] = window[d + 1][i];
}

template <typename scalar_t, int KT, int VEC>
__global__ void forward_kernel(const scalar_t* __restrict__ h, Layout h_layout, const scalar_t* __restrict__ weight,
                               const scalar_t* __restrict__ bias, scalar_t* __restrict__ out, Layout out_layout,
                               int num_frames, int num_tokens, int channels, Activation act) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int PAD = KT / 2;
  const Tile tile = this_thread<VEC>(num_tokens, channels, num_frames);
  if (!tile.valid) return;
  acc_t taps[KT][VEC], b[VEC], window[KT][VEC], h_next[VEC];  // window[d] = h[t + d - PAD]
  load_taps(weight, bias, tile.channel, taps, b);
#pragma unroll
  for (int d = 0; d < KT; ++d) load_frame(h, h_layout, tile, d - PAD, num_frames, window[d]);
  for (int t = 0; t < num_frames; ++t) {
    load_frame(h, h_layout, tile, t + 1 + PAD, num_frames, h_next);  // in flight during this frame's math
    acc_t value[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      acc_t pre = b[i];
#pragma unroll
      for (int d = 0; d < KT; ++d) pre += taps[d][i] * window[d][i];
      value[i] = activation_forward(pre, act);
    }
    store(out + (tile.first_frame + t) * out_layout.frame + tile.token * out_layout.token + tile.channel, value);
    shift_window(window);
    copy(h_next, window[KT - 1]);
  }
}

// Adds each thread's values of one reduction row (VEC channels) over the block's tokens, in a fixed order,
// and writes the block's partial: partials[block][row][channel].
template <int VEC, typename acc_t>
__device__ __forceinline__ void reduce_over_tokens(const acc_t (&values)[VEC], acc_t* shared, acc_t* partial_row,
                                                   const Tile& tile, int channels) {
  const int lane = threadIdx.x * VEC;
  const int width = blockDim.x * VEC;
#pragma unroll
  for (int i = 0; i < VEC; ++i) shared[threadIdx.y * width + lane + i] = values[i];
  __syncthreads();
  if (threadIdx.y == 0 && tile.channel < channels) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      acc_t sum = acc_t(0);
      for (int y = 0; y < blockDim.y; ++y) sum += shared[y * width + lane + i];
      partial_row[tile.channel + i] = sum;
    }
  }
  __syncthreads();
}

template <typename scalar_t, int KT, int VEC>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_a, Layout grad_a_layout,
                                const scalar_t* __restrict__ h, Layout h_layout, const scalar_t* __restrict__ weight,
                                const scalar_t* __restrict__ bias, scalar_t* __restrict__ grad_h,
                                Layout grad_h_layout, scalar_t* __restrict__ a, Layout a_layout,
                                at::opmath_type<scalar_t>* __restrict__ partials, int num_frames, int num_tokens,
                                int channels, Activation act) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int PAD = KT / 2;
  extern __shared__ unsigned char shared_bytes[];
  acc_t* shared = reinterpret_cast<acc_t*>(shared_bytes);
  const Tile tile = this_thread<VEC>(num_tokens, channels, num_frames);

  acc_t taps[KT][VEC], b[VEC], window[KT][VEC], grad_window[KT][VEC];  // grad_window[KT-1-d] = grad_pre[t - d]
  acc_t grad_taps[KT][VEC], grad_bias[VEC], grad_h_sum[VEC];
#pragma unroll
  for (int d = 0; d < KT; ++d) {
    fill(grad_taps[d], acc_t(0));
    fill(grad_window[d], acc_t(0));
  }
  fill(grad_bias, acc_t(0));
  fill(grad_h_sum, acc_t(0));
  if (tile.valid) {
    acc_t ga_next[VEC], h_next[VEC];
    load_taps(weight, bias, tile.channel, taps, b);
#pragma unroll
    for (int d = 0; d < KT; ++d) load_frame(h, h_layout, tile, d - PAD, num_frames, window[d]);
    load_frame(grad_a, grad_a_layout, tile, 0, num_frames, ga_next);
    // Step t computes grad_pre[t]; grad_h[t - PAD] needs grad_pre up to t, so it is written PAD steps late.
    for (int t = 0; t < num_frames + PAD; ++t) {
      acc_t grad_pre[VEC], ga[VEC];
      copy(ga_next, ga);
      // The next frame's loads, in flight during this frame's math (zeros past the clip's end).
      load_frame(grad_a, grad_a_layout, tile, t + 1, num_frames, ga_next);
      load_frame(h, h_layout, tile, t + 1 + PAD, num_frames, h_next);
      if (t < num_frames) {
        acc_t value[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          acc_t pre = b[i], slope;
#pragma unroll
          for (int d = 0; d < KT; ++d) pre += taps[d][i] * window[d][i];
          activation_forward_and_grad(pre, act, value[i], slope);
          grad_pre[i] = ga[i] * slope;
          grad_bias[i] += grad_pre[i];
#pragma unroll
          for (int d = 0; d < KT; ++d) grad_taps[d][i] += grad_pre[i] * window[d][i];
        }
        store(a + (tile.first_frame + t) * a_layout.frame + tile.token * a_layout.token + tile.channel, value);
      } else {
        fill(grad_pre, acc_t(0));
      }
      shift_window(grad_window);
#pragma unroll
      for (int i = 0; i < VEC; ++i) grad_window[KT - 1][i] = grad_pre[i];
      const int s = t - PAD;
      if (s >= 0) {
        acc_t gh[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          acc_t sum = acc_t(0);
#pragma unroll
          for (int d = 0; d < KT; ++d) sum += taps[d][i] * grad_window[KT - 1 - d][i];  // grad_pre[t - d]
          gh[i] = sum;
          grad_h_sum[i] += sum;
        }
        store(grad_h + (tile.first_frame + s) * grad_h_layout.frame + tile.token * grad_h_layout.token +
                  tile.channel, gh);
      }
      shift_window(window);
      copy(h_next, window[KT - 1]);
    }
  }
  // Every thread takes part in the block's reductions (invalid ones with zeros).
  acc_t* block_partial = partials + (int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * (KT + 2) * channels;
#pragma unroll
  for (int d = 0; d < KT; ++d) reduce_over_tokens(grad_taps[d], shared, block_partial + d * channels, tile, channels);
  reduce_over_tokens(grad_bias, shared, block_partial + KT * channels, tile, channels);
  reduce_over_tokens(grad_h_sum, shared, block_partial + (KT + 1) * channels, tile, channels);
}

// Vector width in bytes for a kt: 16-byte vectors for short kernels; 8 bytes for kt >= 5, where the
// backward's per-thread windows and gradient accumulators (about 4 * kt * VEC values) would spill.
constexpr int vector_bytes(int kt) { return kt <= 3 ? 16 : 8; }

template <typename scalar_t, int KT>
constexpr int wide_vector() {
  return vector_bytes(KT) / sizeof(scalar_t) > 0 ? int(vector_bytes(KT) / sizeof(scalar_t)) : 1;
}

// Whether every tensor allows vectors of `bytes`: data pointer, frame and token strides, and row width.
bool aligned_for(int64_t bytes, std::initializer_list<const at::Tensor*> tensors) {
  for (const at::Tensor* t : tensors) {
    const int64_t elem = t->element_size();
    if (reinterpret_cast<uintptr_t>(t->data_ptr()) % bytes) return false;
    if ((t->stride(0) * elem) % bytes || (t->stride(1) * elem) % bytes || (t->size(2) * elem) % bytes) return false;
  }
  return true;
}

// Elements per thread: the widest vector alignment allows, else 1.
int vector_width(int64_t kt, std::initializer_list<const at::Tensor*> tensors) {
  const int64_t elem = (*tensors.begin())->element_size();
  const int64_t bytes = vector_bytes(int(kt));
  return bytes >= elem && aligned_for(bytes, tensors) ? int(bytes / elem) : 1;
}

struct LaunchShape {
  dim3 grid, block;
};

LaunchShape launch_shape(const ConvShape& s, int vec, int threads) {
  const int64_t vectors = (s.channels + vec - 1) / vec;
  const int bx = int(std::min<int64_t>(vectors, std::min(64, threads)));
  const int by = std::max(1, threads / bx);
  const int64_t grid_x = (vectors + bx - 1) / bx, grid_y = (s.num_tokens + by - 1) / by;
  SAF_CHECK(s.clips <= 65535 && grid_y <= 65535, "st_adapter_fast: ", s.clips, " clips x ", s.num_tokens,
              " tokens exceed the CUDA kernels' grid limits (65535 clips)");
  return {dim3(unsigned(grid_x), unsigned(grid_y), unsigned(s.clips)), dim3(bx, by)};
}

Layout layout_of(const at::Tensor& t) { return {t.stride(0), t.stride(1)}; }

// Calls fn(kt_tag, vec_tag) with the runtime kt and vector width as compile-time constants.
template <typename scalar_t, typename Fn>
void with_kernel_params(int64_t kt, int vec, Fn&& fn) {
  auto with_kt = [&](auto kt_tag) {
    constexpr int KT = decltype(kt_tag)::value;
    constexpr int wide = wide_vector<scalar_t, KT>();
    if (vec == wide) fn(kt_tag, std::integral_constant<int, wide>{});
    else fn(kt_tag, std::integral_constant<int, 1>{});
  };
  static_assert(kMaxKernelT == 7, "the cases below instantiate kt = 1, 3, 5, 7: add one for a larger kMaxKernelT");
  switch (kt) {
    case 1: with_kt(std::integral_constant<int, 1>{}); break;
    case 3: with_kt(std::integral_constant<int, 3>{}); break;
    case 5: with_kt(std::integral_constant<int, 5>{}); break;
    case 7: with_kt(std::integral_constant<int, 7>{}); break;
    default: SAF_CHECK(false, "st_adapter_fast: kt must be 1, 3, 5 or 7, got ", kt);
  }
}

}  // namespace

void conv_act_forward_cuda(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& out, const ConvShape& s, Activation act) {
  const c10::cuda::CUDAGuard guard(h.device());
  const int vec = vector_width(s.kernel_t, {&h, &out});
  const LaunchShape launch = launch_shape(s, vec, threads_per_block("ST_ADAPTER_FAST_CUDA_FWD_THREADS", kForwardThreads, kMaxForwardThreads));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "temporal_conv_act_cuda", [&] {
    with_kernel_params<scalar_t>(s.kernel_t, vec, [&](auto kt_tag, auto vec_tag) {
      constexpr int KT = decltype(kt_tag)::value, VEC = decltype(vec_tag)::value;
      forward_kernel<scalar_t, KT, VEC><<<launch.grid, launch.block, 0, stream>>>(
          h.data_ptr<scalar_t>(), layout_of(h), weight.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
          out.data_ptr<scalar_t>(), layout_of(out), int(s.num_frames), int(s.num_tokens), int(s.channels), act);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor conv_act_backward_cuda(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight,
                                  const at::Tensor& bias, const at::Tensor& grad_h, const at::Tensor& a,
                                  const ConvShape& s, Activation act) {
  const c10::cuda::CUDAGuard guard(h.device());
  const int vec = vector_width(s.kernel_t, {&grad_a, &h, &grad_h, &a});
  const LaunchShape launch = launch_shape(s, vec, threads_per_block("ST_ADAPTER_FAST_CUDA_BWD_THREADS", kBackwardThreads, kMaxBackwardThreads));
  const auto acc_type = at::toOpMathType(h.scalar_type());
  const int64_t num_blocks = int64_t(launch.grid.y) * launch.grid.z;
  // Every (block, row, channel) is written by exactly one thread, so no zeroing is needed.
  at::Tensor partials = at::empty({num_blocks, s.kernel_t + 2, s.channels}, h.options().dtype(acc_type));
  const size_t shared_bytes = size_t(launch.block.x) * launch.block.y * vec * at::elementSize(acc_type);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "temporal_conv_act_backward_cuda", [&] {
    with_kernel_params<scalar_t>(s.kernel_t, vec, [&](auto kt_tag, auto vec_tag) {
      constexpr int KT = decltype(kt_tag)::value, VEC = decltype(vec_tag)::value;
      backward_kernel<scalar_t, KT, VEC><<<launch.grid, launch.block, shared_bytes, stream>>>(
          grad_a.data_ptr<scalar_t>(), layout_of(grad_a), h.data_ptr<scalar_t>(), layout_of(h),
          weight.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), grad_h.data_ptr<scalar_t>(), layout_of(grad_h),
          a.data_ptr<scalar_t>(), layout_of(a), partials.data_ptr<at::opmath_type<scalar_t>>(), int(s.num_frames),
          int(s.num_tokens), int(s.channels), act);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // The sum over blocks runs in ATen's reduction, whose order is fixed for a given shape.
  return partials.sum(0);
}

}  // namespace st_adapter_fast
