// The CUDA conv + activation kernels, every variant (cuda_variants.h), and the host-side choice of kernel and
// launch geometry. Included by temporal_conv_cuda.cu (nvcc) and by csrc/tests/emulate_cuda_kernels.cpp, which
// defines SAF_EMULATE and runs these same kernels on the CPU, one block at a time with its threads as
// coroutines (cp.async completing as late as the wait counts allow), so that their indexing is tested on a
// machine without a GPU. Nothing here touches at::Tensor or the CUDA runtime: the launcher passed in does.
//
// Layout: tensors (frames, N, Ca) with frames = clips * T, channel stride 1, free frame and token strides
// (Layout). PAD = kt / 2. Forward: a[t] = act(bias + sum_d w[d] h[t + d - PAD]). Backward, from grad_a and h:
// grad_pre[t] = grad_a[t] act'(pre[t]); grad_h[s] = sum_d w[d] grad_pre[s + PAD - d]; a recomputed and stored;
// per-block fp32 partial sums, rows 0..kt-1 sum_t grad_pre[t] h[t + d - PAD], row kt sum grad_pre, row kt + 1
// sum grad_h, laid out (blocks, kt + 2, Ca) and added in a fixed order by the caller. Every variant sums the
// taps in the order d = 0..kt-1 from the bias (forward) or from zero (grad_h), in fp32 (fp64 for double).
#pragma once

#include "cuda_variants.h"
#include "temporal_conv.h"

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace st_adapter_fast {
namespace conv_cuda {

// ---- primitives: dynamic shared memory and cp.async (the emulator supplies its own) ----

template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
#if defined(SAF_EMULATE)
  return reinterpret_cast<T*>(emulation::shared_memory());
#else
  extern __shared__ __align__(16) unsigned char saf_dynamic_shared[];
  return reinterpret_cast<T*>(saf_dynamic_shared);
#endif
}

template <int BYTES>
struct alignas(BYTES) Chunk {
  unsigned char bytes[BYTES];
};

// Copies BYTES (4, 8 or 16) from global to shared memory without a register in between: the data lands
// later; async_commit closes a group of such copies, async_wait<N> waits until at most the N most recent
// groups of this thread are pending. The data is visible to the issuing thread only (no barrier needed).
template <int BYTES>
__device__ __forceinline__ void async_copy(void* shared_dst, const void* global_src) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(SAF_EMULATE)
  emulation::async_copy(shared_dst, global_src, BYTES);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
  if constexpr (BYTES == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global_src) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(global_src), "n"(BYTES) : "memory");
#else
  *reinterpret_cast<Chunk<BYTES>*>(shared_dst) = *reinterpret_cast<const Chunk<BYTES>*>(global_src);
#endif
}

__device__ __forceinline__ void async_commit() {
#if defined(SAF_EMULATE)
  emulation::async_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void async_wait() {
#if defined(SAF_EMULATE)
  emulation::async_wait(N);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// ---- vectors of channels ----

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

template <typename scalar_t, int VEC, typename acc_t>
__device__ __forceinline__ void unpack(const Pack<scalar_t, VEC>& pack, acc_t (&out)[VEC]) {
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = acc_t(pack.v[i]);
}

// VEC accumulator values from shared memory, in chunks of at most 16 bytes (p is aligned to VEC values).
template <int VEC, typename acc_t>
__device__ __forceinline__ void load_shared(const acc_t* p, acc_t (&out)[VEC]) {
  constexpr int PER = (16 / int(sizeof(acc_t))) < VEC ? (16 / int(sizeof(acc_t))) : VEC;
#pragma unroll
  for (int c = 0; c < VEC / PER; ++c) {
    const Pack<acc_t, PER> pack = *reinterpret_cast<const Pack<acc_t, PER>*>(p + c * PER);
#pragma unroll
    for (int i = 0; i < PER; ++i) out[c * PER + i] = pack.v[i];
  }
}

struct Layout {  // strides of a (frames, N, Ca) tensor, in elements
  int64_t frame, token;
};

template <typename scalar_t>
struct ForwardArgs {
  const scalar_t* h;
  Layout h_layout;
  const scalar_t* weight;  // (Ca, kt), contiguous
  const scalar_t* bias;
  scalar_t* out;
  Layout out_layout;
  int num_frames, num_tokens, channels, clips;
  Activation act;
};

template <typename scalar_t>
struct BackwardArgs {
  const scalar_t* grad_a;
  Layout grad_a_layout;
  const scalar_t* h;
  Layout h_layout;
  const scalar_t* weight;
  const scalar_t* bias;
  scalar_t* grad_h;
  Layout grad_h_layout;
  scalar_t* a;
  Layout a_layout;
  at::opmath_type<scalar_t>* partials;  // (partial rows, kt + 2, Ca)
  int num_frames, num_tokens, channels, clips;
  Activation act;
};

// ==== the default kernels ("window"): the kernels as they were before the variants ====
// One thread owns VEC adjacent channels of one token of one clip and streams over the clip's T frames,
// holding the kt-frame window of h (and, backward, of the activation's gradient) in registers: each element of
// h and grad_a is read once, with 16-byte loads where alignment allows. The next frame's loads are issued
// before the current frame's arithmetic, so that they are in flight while it runs (a thread has little else to
// hide memory latency with: the backward needs ~180 registers). Block: (channel vectors) x (tokens); grid:
// (channel blocks, token blocks, clips).

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
__global__ void forward_kernel(const ForwardArgs<scalar_t> args) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int PAD = KT / 2;
  const scalar_t* __restrict__ h = args.h;
  const scalar_t* __restrict__ weight = args.weight;
  const scalar_t* __restrict__ bias = args.bias;
  scalar_t* __restrict__ out = args.out;
  const Layout h_layout = args.h_layout, out_layout = args.out_layout;
  const int num_frames = args.num_frames;
  const Activation act = args.act;
  const Tile tile = this_thread<VEC>(args.num_tokens, args.channels, num_frames);
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

// Adds each thread's values of one reduction row (VEC channels) over the block's rows of threads (y), in a fixed
// order, and writes the block's partial: partial_row[channel]. `channel` is the thread's first channel.
template <int VEC, typename acc_t>
__device__ __forceinline__ void reduce_over_tokens(const acc_t (&values)[VEC], acc_t* shared, acc_t* partial_row,
                                                   int channel, int channels) {
  const int lane = threadIdx.x * VEC;
  const int width = blockDim.x * VEC;
#pragma unroll
  for (int i = 0; i < VEC; ++i) shared[threadIdx.y * width + lane + i] = values[i];
  __syncthreads();
  if (threadIdx.y == 0 && channel < channels) {
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      acc_t sum = acc_t(0);
      for (int y = 0; y < blockDim.y; ++y) sum += shared[y * width + lane + i];
      partial_row[channel + i] = sum;
    }
  }
  __syncthreads();
}

// All kt + 2 reduction rows of a block: grad_taps, grad_bias, grad_h_sum into partials[row].
template <int KT, int VEC, typename acc_t>
__device__ __forceinline__ void write_partials(const acc_t (&grad_taps)[KT][VEC], const acc_t (&grad_bias)[VEC],
                                               const acc_t (&grad_h_sum)[VEC], acc_t* shared, acc_t* partials,
                                               int64_t row, int channel, int channels) {
  acc_t* block_partial = partials + row * (KT + 2) * channels;
#pragma unroll
  for (int d = 0; d < KT; ++d) reduce_over_tokens(grad_taps[d], shared, block_partial + d * channels, channel, channels);
  reduce_over_tokens(grad_bias, shared, block_partial + KT * channels, channel, channels);
  reduce_over_tokens(grad_h_sum, shared, block_partial + (KT + 1) * channels, channel, channels);
}

template <typename scalar_t, int KT, int VEC>
__device__ __forceinline__ void backward_window(const BackwardArgs<scalar_t>& args) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int PAD = KT / 2;
  const scalar_t* __restrict__ grad_a = args.grad_a;
  const scalar_t* __restrict__ h = args.h;
  const scalar_t* __restrict__ weight = args.weight;
  const scalar_t* __restrict__ bias = args.bias;
  scalar_t* __restrict__ grad_h = args.grad_h;
  scalar_t* __restrict__ a = args.a;
  acc_t* __restrict__ partials = args.partials;
  const Layout grad_a_layout = args.grad_a_layout, h_layout = args.h_layout, grad_h_layout = args.grad_h_layout,
               a_layout = args.a_layout;
  const int num_frames = args.num_frames, channels = args.channels;
  const Activation act = args.act;
  acc_t* shared = dynamic_shared<acc_t>();
  const Tile tile = this_thread<VEC>(args.num_tokens, channels, num_frames);

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
  write_partials(grad_taps, grad_bias, grad_h_sum, shared, partials, int64_t(blockIdx.z) * gridDim.y + blockIdx.y,
                 tile.channel, channels);
}

template <typename scalar_t, int KT, int VEC>
__global__ void backward_kernel(const BackwardArgs<scalar_t> args) {
  backward_window<scalar_t, KT, VEC>(args);
}

// "window_capped": the same code with a register cap (at most 65536 / (2 * 256) = 128 per thread).
constexpr int kCappedThreads = 256, kCappedMinBlocks = 2;

template <typename scalar_t, int KT, int VEC>
__global__ void __launch_bounds__(kCappedThreads, kCappedMinBlocks) backward_kernel_capped(const BackwardArgs<scalar_t> args) {
  backward_window<scalar_t, KT, VEC>(args);
}

// ==== pieces of the new variants ====

// The conv taps and bias of the block's channels in shared memory, as acc_t: [KT + 1][blockDim.x * VEC], the
// last row the bias (zeros past the last channel). Loaded by all threads; ends with a barrier.
template <typename scalar_t, int KT, int VEC, typename acc_t>
__device__ __forceinline__ void stage_taps(const scalar_t* weight, const scalar_t* bias, int channels, acc_t* taps_s) {
  const int width = blockDim.x * VEC, first = blockIdx.x * width;
  const int nthreads = blockDim.x * blockDim.y, tid = threadIdx.y * blockDim.x + threadIdx.x;
  for (int i = tid; i < width; i += nthreads) {
    const int c = first + i;
    const bool inside = c < channels;
#pragma unroll
    for (int d = 0; d < KT; ++d) taps_s[d * width + i] = inside ? acc_t(weight[int64_t(c) * KT + d]) : acc_t(0);
    taps_s[KT * width + i] = inside ? acc_t(bias[c]) : acc_t(0);
  }
  __syncthreads();
}

// Bytes of the taps' shared memory, rounded up to 16 so that what follows is 16-byte aligned.
template <typename acc_t>
constexpr size_t taps_shared_bytes(int kt, int width) {
  return (size_t(kt + 1) * width * sizeof(acc_t) + 15) / 16 * 16;
}

// The persistent kernels' work: items (clip, group of blockDim.y tokens), clip-major; block row blockIdx.y takes
// items blockIdx.y, blockIdx.y + gridDim.y, ... with its channel block blockIdx.x throughout. A thread walks the
// frames of its items one after another: position p of its walk is frame p % T of its (p / T)-th item. A Walk is
// such a position, advanced one frame at a time (positions before 0 or past the end are not `live`).
struct Walk {
  int pos;     // in the thread's walk
  int item;    // global item index
  int frame;   // within the clip
  int token;   // this thread's token in the item
  int row;     // clip * T + frame: the tensor row
  int slot;    // pos modulo the ring size it is used with
  bool valid;  // live, and the thread's token (and channels: `channel_ok`) exist
};

// (32-bit positions, items and rows: the host refuses tensors with 2^31 frames or items for these kernels.)
struct WalkPlan {
  int num_frames, num_tokens, groups;  // groups = token groups per clip
  int items;                           // clips * groups
  int length;                          // positions in this thread's walk: (its items) * T
  bool channel_ok;
};

__device__ __forceinline__ WalkPlan walk_plan(int num_frames, int num_tokens, int clips, bool channel_ok) {
  WalkPlan plan;
  plan.num_frames = num_frames;
  plan.num_tokens = num_tokens;
  plan.groups = (num_tokens + int(blockDim.y) - 1) / int(blockDim.y);
  plan.items = clips * plan.groups;
  const int first = int(blockIdx.y), stride = int(gridDim.y);
  const int mine = first < plan.items ? (plan.items - 1 - first) / stride + 1 : 0;
  plan.length = mine * num_frames;
  plan.channel_ok = channel_ok;
  return plan;
}

__device__ __forceinline__ void walk_locate(Walk& w, const WalkPlan& plan) {  // item fields from w.item
  const int clip = w.item / plan.groups;
  w.token = (w.item - clip * plan.groups) * int(blockDim.y) + int(threadIdx.y);
  w.row = clip * plan.num_frames + w.frame;
  w.valid = w.pos >= 0 && w.pos < plan.length && plan.channel_ok && w.token < plan.num_tokens;
}

// The walk at position `pos` (may be negative: before the start), its ring slot pos mod `ring`.
__device__ __forceinline__ Walk walk_at(int pos, const WalkPlan& plan, int ring) {
  Walk w;
  w.pos = pos;
  const int p = pos < 0 ? 0 : pos;
  w.item = int(blockIdx.y) + (p / plan.num_frames) * int(gridDim.y);
  w.frame = p % plan.num_frames;
  w.slot = ((pos % ring) + ring) % ring;
  walk_locate(w, plan);
  return w;
}

__device__ __forceinline__ void walk_advance(Walk& w, const WalkPlan& plan, int ring) {
  w.slot = w.slot + 1 == ring ? 0 : w.slot + 1;
  ++w.pos;
  if (w.pos <= 0) {  // still before the start, or now at it: position 0 is frame 0 of the first item
    w.frame = 0;
    w.item = int(blockIdx.y);
    walk_locate(w, plan);
    return;
  }
  if (++w.frame == plan.num_frames) {
    w.frame = 0;
    w.item += int(gridDim.y);
    walk_locate(w, plan);
  } else {
    ++w.row;  // the same item: `valid` stays (the length is a whole number of items)
  }
}

template <int RING>
__device__ __forceinline__ int ring_offset(int slot, int delta) {  // (slot + delta) mod RING, |delta| < RING
  int s = slot + delta;
  if (s < 0) s += RING;
  if (s >= RING) s -= RING;
  return s;
}

// Per-thread rings in shared memory: slot s of thread tid at ring[s * nthreads + tid], so that a warp's
// accesses to one slot are consecutive (no bank conflicts).
template <typename scalar_t, int VEC>
struct Ring {
  Pack<scalar_t, VEC>* base;
  int nthreads, tid;
  __device__ __forceinline__ Pack<scalar_t, VEC>* at(int slot) const { return base + slot * nthreads + tid; }
};

template <typename scalar_t, int VEC>
__device__ __forceinline__ void issue(const Ring<scalar_t, VEC>& ring, int slot, const scalar_t* src) {
  async_copy<int(sizeof(scalar_t)) * VEC>(ring.at(slot), src);
}

// ==== forward "async": h through a per-thread cp.async ring, DEPTH frames ahead, on a persistent grid ====
// Step k of a thread issues the copy of walk position k + DEPTH, waits for position k, and computes position
// c = k - PAD from ring slots c - PAD .. c + PAD (frames of another item, or outside the clip, count as zero).
// The ring holds positions k - 2 PAD .. k + DEPTH: KT + DEPTH slots.
template <int KT, int DEPTH>
struct AsyncForwardShape {
  static constexpr int kRing = KT + DEPTH;
};

template <typename scalar_t, int KT, int VEC, int DEPTH>
__global__ void forward_async_kernel(const ForwardArgs<scalar_t> args) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int PAD = KT / 2, RING = AsyncForwardShape<KT, DEPTH>::kRing;
  const int T = args.num_frames, width = blockDim.x * VEC;
  const int local = threadIdx.x * VEC, channel = blockIdx.x * width + local;
  acc_t* taps_s = dynamic_shared<acc_t>();
  stage_taps<scalar_t, KT, VEC>(args.weight, args.bias, args.channels, taps_s);
  const Ring<scalar_t, VEC> ring{reinterpret_cast<Pack<scalar_t, VEC>*>(
                                     dynamic_shared<unsigned char>() + taps_shared_bytes<acc_t>(KT, width)),
                                 int(blockDim.x * blockDim.y), int(threadIdx.y * blockDim.x + threadIdx.x)};
  const WalkPlan plan = walk_plan(T, args.num_tokens, args.clips, channel < args.channels);
  const Layout hl = args.h_layout, ol = args.out_layout;
  auto h_at = [&](const Walk& w) { return args.h + int64_t(w.row) * hl.frame + int64_t(w.token) * hl.token + channel; };

  Walk ahead = walk_at(0, plan, RING), at = walk_at(-PAD, plan, RING);
#pragma unroll
  for (int p = 0; p < DEPTH; ++p) {
    if (ahead.valid) issue(ring, ahead.slot, h_at(ahead));
    async_commit();
    walk_advance(ahead, plan, RING);
  }
  const int steps = plan.length + PAD;
  for (int k = 0; k < steps; ++k) {
    if (ahead.valid) issue(ring, ahead.slot, h_at(ahead));  // position k + DEPTH
    async_commit();
    walk_advance(ahead, plan, RING);
    async_wait<DEPTH>();  // positions <= k have landed
    if (at.valid) {
      acc_t pre[VEC], value[VEC];
      load_shared<VEC>(taps_s + KT * width + local, pre);  // the bias
#pragma unroll
      for (int d = 0; d < KT; ++d) {
        const int f = at.frame + d - PAD;
        if (f >= 0 && f < T) {
          acc_t hv[VEC], tap[VEC];
          unpack(*ring.at(ring_offset<RING>(at.slot, d - PAD)), hv);
          load_shared<VEC>(taps_s + d * width + local, tap);
#pragma unroll
          for (int i = 0; i < VEC; ++i) pre[i] += tap[i] * hv[i];
        }
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) value[i] = activation_forward(pre[i], args.act);
      store(args.out + int64_t(at.row) * ol.frame + int64_t(at.token) * ol.token + channel, value);
    }
    walk_advance(at, plan, RING);
  }
  async_wait<0>();
}

// ==== forward "frames": one thread per output frame ====
// Rows (clip, token, frame), frame fastest, so that a block's neighbouring rows share their h frames (L2).
// A grid-stride loop over rows; the kt loads of a row are issued together.
template <typename scalar_t, int KT, int VEC>
__global__ void forward_frames_kernel(const ForwardArgs<scalar_t> args) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int PAD = KT / 2;
  const int T = args.num_frames, N = args.num_tokens;
  const int channel = (blockIdx.x * blockDim.x + threadIdx.x) * VEC;
  if (channel >= args.channels) return;
  acc_t taps[KT][VEC], b[VEC];
  load_taps(args.weight, args.bias, channel, taps, b);
  const int64_t rows = int64_t(args.clips) * N * T;
  const Layout hl = args.h_layout, ol = args.out_layout;
  for (int64_t r = int64_t(blockIdx.y) * blockDim.y + threadIdx.y; r < rows; r += int64_t(gridDim.y) * blockDim.y) {
    const int t = int(r % T);
    const int64_t rest = r / T;
    const int token = int(rest % N);
    const int64_t first_row = (rest / N) * T;  // the clip's frame 0
    const scalar_t* base = args.h + first_row * hl.frame + int64_t(token) * hl.token + channel;
    Pack<scalar_t, VEC> hp[KT];
#pragma unroll
    for (int d = 0; d < KT; ++d) {
      const int f = t + d - PAD;
      if (f >= 0 && f < T) hp[d] = *reinterpret_cast<const Pack<scalar_t, VEC>*>(base + f * hl.frame);
    }
    acc_t value[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      acc_t pre = b[i];
#pragma unroll
      for (int d = 0; d < KT; ++d) {
        const int f = t + d - PAD;
        if (f >= 0 && f < T) pre += taps[d][i] * acc_t(hp[d].v[i]);
      }
      value[i] = activation_forward(pre, args.act);
    }
    store(args.out + (first_row + t) * ol.frame + int64_t(token) * ol.token + channel, value);
  }
}

// ==== backward "async" / "async8": h and grad_a through per-thread cp.async rings, persistent grid ====
// Step k issues walk position k + DEPTH (h and grad_a of that frame), waits for position k, computes grad_pre at
// c = k - PAD (needs h at c - PAD .. c + PAD = up to k, and grad_a at c) and stores a there, then grad_h at
// s = k - 2 PAD (needs grad_pre at s - PAD .. s + PAD = up to c, held in registers). Rings: h positions
// k - 2 PAD .. k + DEPTH (KT + DEPTH slots), grad_a positions k - PAD .. k + DEPTH (PAD + DEPTH + 1 slots).
template <int KT, int DEPTH>
struct AsyncBackwardShape {
  static constexpr int kRingH = KT + DEPTH, kRingG = KT / 2 + DEPTH + 1;
};

template <typename scalar_t, int KT, int VEC, int DEPTH>
__global__ void backward_async_kernel(const BackwardArgs<scalar_t> args) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int PAD = KT / 2, RING_H = AsyncBackwardShape<KT, DEPTH>::kRingH,
                RING_G = AsyncBackwardShape<KT, DEPTH>::kRingG;
  const int T = args.num_frames, width = blockDim.x * VEC, nthreads = blockDim.x * blockDim.y;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int local = threadIdx.x * VEC, channel = blockIdx.x * width + local;
  acc_t* taps_s = dynamic_shared<acc_t>();
  stage_taps<scalar_t, KT, VEC>(args.weight, args.bias, args.channels, taps_s);
  unsigned char* rings = dynamic_shared<unsigned char>() + taps_shared_bytes<acc_t>(KT, width);
  const Ring<scalar_t, VEC> ring_h{reinterpret_cast<Pack<scalar_t, VEC>*>(rings), nthreads, tid};
  const Ring<scalar_t, VEC> ring_g{ring_h.base + RING_H * nthreads, nthreads, tid};
  const WalkPlan plan = walk_plan(T, args.num_tokens, args.clips, channel < args.channels);
  const Layout hl = args.h_layout, gl = args.grad_a_layout, al = args.a_layout, ghl = args.grad_h_layout;

  // Walks: `ahead` the copies (slots of both rings kept apart), `at` grad_pre's position, `late` grad_h's.
  Walk ahead = walk_at(0, plan, RING_H), at = walk_at(-PAD, plan, RING_H), late = walk_at(-2 * PAD, plan, 1);
  int ahead_g = 0, at_g = ((-PAD % RING_G) + RING_G) % RING_G;  // the same positions modulo RING_G
  auto issue_ahead = [&]() {
    if (ahead.valid) {
      const int64_t row = ahead.row, tok = ahead.token;
      issue(ring_h, ahead.slot, args.h + row * hl.frame + tok * hl.token + channel);
      issue(ring_g, ahead_g, args.grad_a + row * gl.frame + tok * gl.token + channel);
    }
    async_commit();
    walk_advance(ahead, plan, RING_H);
    ahead_g = ahead_g + 1 == RING_G ? 0 : ahead_g + 1;
  };

  acc_t grad_window[KT][VEC];  // grad_window[KT-1-d] = grad_pre at position at.pos - d (after this step's push)
  acc_t grad_taps[KT][VEC], grad_bias[VEC], grad_h_sum[VEC];
#pragma unroll
  for (int d = 0; d < KT; ++d) {
    fill(grad_taps[d], acc_t(0));
    fill(grad_window[d], acc_t(0));
  }
  fill(grad_bias, acc_t(0));
  fill(grad_h_sum, acc_t(0));

#pragma unroll
  for (int p = 0; p < DEPTH; ++p) issue_ahead();
  const int steps = plan.length + 2 * PAD;
  for (int k = 0; k < steps; ++k) {
    issue_ahead();        // position k + DEPTH
    async_wait<DEPTH>();  // positions <= k have landed
    acc_t grad_pre[VEC];
    fill(grad_pre, acc_t(0));
    if (at.valid) {
      acc_t pre[VEC], ga[VEC], value[VEC];
      load_shared<VEC>(taps_s + KT * width + local, pre);  // the bias
#pragma unroll
      for (int d = 0; d < KT; ++d) {
        const int f = at.frame + d - PAD;
        if (f >= 0 && f < T) {
          acc_t hv[VEC], tap[VEC];
          unpack(*ring_h.at(ring_offset<RING_H>(at.slot, d - PAD)), hv);
          load_shared<VEC>(taps_s + d * width + local, tap);
#pragma unroll
          for (int i = 0; i < VEC; ++i) pre[i] += tap[i] * hv[i];
        }
      }
      unpack(*ring_g.at(at_g), ga);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        acc_t slope;
        activation_forward_and_grad(pre[i], args.act, value[i], slope);
        grad_pre[i] = ga[i] * slope;
        grad_bias[i] += grad_pre[i];
      }
      store(args.a + int64_t(at.row) * al.frame + int64_t(at.token) * al.token + channel, value);
      // The weight gradient reads the window's frames again from the ring rather than holding them.
#pragma unroll
      for (int d = 0; d < KT; ++d) {
        const int f = at.frame + d - PAD;
        if (f >= 0 && f < T) {
          acc_t hv[VEC];
          unpack(*ring_h.at(ring_offset<RING_H>(at.slot, d - PAD)), hv);
#pragma unroll
          for (int i = 0; i < VEC; ++i) grad_taps[d][i] += grad_pre[i] * hv[i];
        }
      }
    }
    shift_window(grad_window);
#pragma unroll
    for (int i = 0; i < VEC; ++i) grad_window[KT - 1][i] = grad_pre[i];
    if (late.valid) {  // grad_h at late = at - PAD: grad_pre at at - d is frame late.frame + PAD - d
      acc_t gh[VEC];
      fill(gh, acc_t(0));
#pragma unroll
      for (int d = 0; d < KT; ++d) {
        const int f = late.frame + PAD - d;
        if (f >= 0 && f < T) {
          acc_t tap[VEC];
          load_shared<VEC>(taps_s + d * width + local, tap);
#pragma unroll
          for (int i = 0; i < VEC; ++i) gh[i] += tap[i] * grad_window[KT - 1 - d][i];
        }
      }
#pragma unroll
      for (int i = 0; i < VEC; ++i) grad_h_sum[i] += gh[i];
      store(args.grad_h + int64_t(late.row) * ghl.frame + int64_t(late.token) * ghl.token + channel, gh);
    }
    walk_advance(at, plan, RING_H);
    at_g = at_g + 1 == RING_G ? 0 : at_g + 1;
    walk_advance(late, plan, 1);
  }
  async_wait<0>();
  __syncthreads();  // every thread is done with its rings: the reductions reuse that memory
  write_partials(grad_taps, grad_bias, grad_h_sum, reinterpret_cast<acc_t*>(rings), args.partials, blockIdx.y,
                 channel, args.channels);
}

// ==== backward "frames": one thread per output frame, persistent grid ====
// Item rows (token of the group, frame), frame fastest; thread y takes rows y, y + blockDim.y, ... (T of them).
// For frame t it loads grad_a at t - PAD .. t + PAD and h at t - 2 PAD .. t + 2 PAD at once, recomputes
// grad_pre at t - PAD .. t + PAD (kt activations), and writes a[t] and grad_h[t].
template <typename scalar_t, int KT, int VEC>
__global__ void backward_frames_kernel(const BackwardArgs<scalar_t> args) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int PAD = KT / 2, HW = 2 * KT - 1;  // h frames t - 2 PAD .. t + 2 PAD
  const int T = args.num_frames, N = args.num_tokens, width = blockDim.x * VEC;
  const int local = threadIdx.x * VEC, channel = blockIdx.x * width + local;
  const bool channel_ok = channel < args.channels;
  acc_t* taps_s = dynamic_shared<acc_t>();
  stage_taps<scalar_t, KT, VEC>(args.weight, args.bias, args.channels, taps_s);
  const int by = blockDim.y, groups = (N + by - 1) / by;
  const int64_t items = int64_t(args.clips) * groups;
  const Layout hl = args.h_layout, gl = args.grad_a_layout, al = args.a_layout, ghl = args.grad_h_layout;

  acc_t grad_taps[KT][VEC], grad_bias[VEC], grad_h_sum[VEC];
#pragma unroll
  for (int d = 0; d < KT; ++d) fill(grad_taps[d], acc_t(0));
  fill(grad_bias, acc_t(0));
  fill(grad_h_sum, acc_t(0));

  for (int64_t item = blockIdx.y; item < items; item += gridDim.y) {
    const int64_t clip = item / groups;
    const int first_token = int(item - clip * groups) * by;
    for (int r = threadIdx.y; r < by * T; r += by) {
      const int token = first_token + r / T, t = r % T;
      if (!channel_ok || token >= N) continue;
      const int64_t first_row = clip * T;
      const scalar_t* h_base = args.h + first_row * hl.frame + int64_t(token) * hl.token + channel;
      const scalar_t* g_base = args.grad_a + first_row * gl.frame + int64_t(token) * gl.token + channel;
      Pack<scalar_t, VEC> hp[HW], gp[KT];
#pragma unroll
      for (int e = 0; e < HW; ++e) {
        const int f = t + e - 2 * PAD;
        if (f >= 0 && f < T) hp[e] = *reinterpret_cast<const Pack<scalar_t, VEC>*>(h_base + f * hl.frame);
      }
#pragma unroll
      for (int e = 0; e < KT; ++e) {
        const int f = t + e - PAD;
        if (f >= 0 && f < T) gp[e] = *reinterpret_cast<const Pack<scalar_t, VEC>*>(g_base + f * gl.frame);
      }
      acc_t grad_pre[KT][VEC], value[VEC];  // grad_pre[e] at frame t + e - PAD
#pragma unroll
      for (int e = 0; e < KT; ++e) {
        const int u = t + e - PAD;
        if (u < 0 || u >= T) {
          fill(grad_pre[e], acc_t(0));
          continue;
        }
        acc_t pre[VEC], ga[VEC];
        load_shared<VEC>(taps_s + KT * width + local, pre);
#pragma unroll
        for (int d = 0; d < KT; ++d) {
          const int f = u + d - PAD;  // h index e + d in hp
          if (f >= 0 && f < T) {
            acc_t tap[VEC], hv[VEC];
            load_shared<VEC>(taps_s + d * width + local, tap);
            unpack(hp[e + d], hv);
#pragma unroll
            for (int i = 0; i < VEC; ++i) pre[i] += tap[i] * hv[i];
          }
        }
        unpack(gp[e], ga);
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
          acc_t v, slope;
          activation_forward_and_grad(pre[i], args.act, v, slope);
          grad_pre[e][i] = ga[i] * slope;
          if (e == PAD) value[i] = v;
        }
      }
      store(args.a + (first_row + t) * al.frame + int64_t(token) * al.token + channel, value);
      acc_t gh[VEC];
      fill(gh, acc_t(0));
#pragma unroll
      for (int d = 0; d < KT; ++d) {  // grad_pre at t + PAD - d is grad_pre[KT - 1 - d]
        acc_t tap[VEC];
        load_shared<VEC>(taps_s + d * width + local, tap);
#pragma unroll
        for (int i = 0; i < VEC; ++i) gh[i] += tap[i] * grad_pre[KT - 1 - d][i];
      }
      store(args.grad_h + (first_row + t) * ghl.frame + int64_t(token) * ghl.token + channel, gh);
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        grad_bias[i] += grad_pre[PAD][i];
        grad_h_sum[i] += gh[i];
      }
#pragma unroll
      for (int d = 0; d < KT; ++d) {
        const int f = t + d - PAD;  // h index d + PAD in hp
        if (f >= 0 && f < T) {
          acc_t hv[VEC];
          unpack(hp[d + PAD], hv);
#pragma unroll
          for (int i = 0; i < VEC; ++i) grad_taps[d][i] += grad_pre[PAD][i] * hv[i];
        }
      }
    }
  }
  __syncthreads();  // the reductions reuse the taps' shared memory
  write_partials(grad_taps, grad_bias, grad_h_sum, taps_s, args.partials, blockIdx.y, channel, args.channels);
}

// ==== host side: which kernel, which vector width, which launch geometry ====

struct Geometry {
  dim3 grid, block;
  size_t shared_bytes = 0;
  int64_t partial_rows = 0;  // backward: rows of the partial-sum buffer the kernel writes
};

// What a launch ran, for the launch record (cuda_variants.h). inflight_bytes: the default kernels load the next
// frame (h; backward grad_a too) during the current one; async: DEPTH frames ahead per ring; frames: every
// frame a row needs at once (kt of h forward; kt of grad_a and 2 kt - 1 of h backward, mostly L2 hits).
struct KernelNote {
  const char* ran;     // the variant whose kernel ran
  const char* reason;  // why it differs from the one asked for ("" when it does not)
  const char* kernel;  // the kernel template's name
  int kt, vec, vector_bytes, depth;
  int inflight_bytes;  // bytes of loads a thread has in flight at once, by the kernel's structure (see above)
};

// The default kernels' block sizes, from a sweep on an H200 (benchmarks/cuda_kernel_sweep.py; ViT-B/16 and
// ViT-L/14 shapes, bf16 and fp16): forward, 128 was 14% faster than 256 on ViT-B/16 and as fast on ViT-L/14;
// backward, 256 was 4% faster than 128 on ViT-B/16 (the paper's model) and 8% slower on ViT-L/14.
// ST_ADAPTER_FAST_CUDA_{FWD,BWD}_THREADS override them for such sweeps, up to what the kernels' registers
// allow (the default backward holds ~180 registers a thread: 512 threads would ask more registers than a
// multiprocessor has, and the launch would fail). The other variants are capped by their kernel's own limit.
constexpr int kForwardThreads = 128, kMaxForwardThreads = 512;
constexpr int kBackwardThreads = 256, kMaxBackwardThreads = 256;

// Vector width in bytes for a kt: 16-byte vectors for short kernels; 8 bytes for kt >= 5, where the
// backward's per-thread windows and gradient accumulators (about 4 * kt * VEC values) would spill.
constexpr int vector_bytes(int kt) { return kt <= 3 ? 16 : 8; }

constexpr int forward_vector_bytes(ForwardVariant v, int kt) {
  return v == ForwardVariant::kFrames ? 8 : vector_bytes(kt);
}

constexpr int backward_vector_bytes(BackwardVariant v, int kt) {
  switch (v) {
    case BackwardVariant::kWindow8:
    case BackwardVariant::kAsync8:
    case BackwardVariant::kFrames: return 8;
    default: return vector_bytes(kt);
  }
}

constexpr int kForwardAsyncDepth = 4, kBackwardAsyncDepth = 3, kBackwardAsync8Depth = 4;

// Elements per thread for `bytes`-wide vectors of scalar_t when the tensors allow `aligned_bytes`, else 1.
template <typename scalar_t>
constexpr int vector_elements(int bytes, int aligned_bytes) {
  return bytes >= int(sizeof(scalar_t)) && bytes <= aligned_bytes ? bytes / int(sizeof(scalar_t)) : 1;
}

// (channel vectors) x (tokens) blocks of about `threads`; grid over channel blocks, token blocks, clips.
struct BlockShape {
  int bx, by, channel_blocks;
};

inline BlockShape block_shape(int64_t channels, int vec, int threads) {
  const int64_t vectors = (channels + vec - 1) / vec;
  const int bx = int(std::min<int64_t>(vectors, std::min(64, threads)));
  const int by = std::max(1, threads / bx);
  return {bx, by, int((vectors + bx - 1) / bx)};
}

inline Geometry launch_shape(int64_t channels, int64_t num_tokens, int64_t clips, int vec, int threads) {
  const BlockShape b = block_shape(channels, vec, threads);
  const int64_t grid_y = (num_tokens + b.by - 1) / b.by;
  SAF_CHECK(clips <= 65535 && grid_y <= 65535, "st_adapter_fast: ", clips, " clips x ", num_tokens,
            " tokens exceed the CUDA kernels' grid limits (65535 clips)");
  Geometry g;
  g.grid = dim3(unsigned(b.channel_blocks), unsigned(grid_y), unsigned(clips));
  g.block = dim3(unsigned(b.bx), unsigned(b.by));
  return g;
}

// A persistent grid: (channel blocks) x (as many block rows as the device holds at once, at most one per item).
template <typename Launcher>
Geometry persistent_shape(Launcher& launcher, const void* kernel, const char* name, const BlockShape& b,
                          int64_t items, int64_t num_frames, size_t shared_bytes) {
  SAF_CHECK(items * num_frames < (int64_t(1) << 31), "st_adapter_fast: the CUDA kernel ", name, " counts (clip, ",
            "token group, frame) in 32 bits: ", items, " items of ", num_frames, " frames are too many; use the default ",
            "variant");
  const int resident = launcher.resident_blocks(kernel, b.bx * b.by, shared_bytes);
  SAF_CHECK(resident > 0, "st_adapter_fast: the CUDA kernel ", name, " cannot run ", b.bx * b.by,
            "-thread blocks with ", int64_t(shared_bytes), " bytes of shared memory on this device; set fewer threads");
  Geometry g;
  g.grid = dim3(unsigned(b.channel_blocks),
                unsigned(std::max<int64_t>(1, std::min<int64_t>(items, std::max(1, resident / b.channel_blocks)))));
  g.block = dim3(unsigned(b.bx), unsigned(b.by));
  g.shared_bytes = shared_bytes;
  g.partial_rows = g.grid.y;  // one partial row per block row (backward)
  return g;
}

// Threads per block for a new variant's kernel: the environment's (0: unset) or the variant's, within the
// kernel's own limit.
template <typename Launcher>
int variant_threads(Launcher& launcher, const void* kernel, int requested, int fallback) {
  const int threads = requested >= 32 ? requested : fallback;
  return std::max(32, std::min(threads, launcher.max_threads(kernel)));
}

// Calls fn(kt_tag) with the runtime kt as a compile-time constant.
template <typename Fn>
void with_kt(int64_t kt, Fn&& fn) {
  static_assert(kMaxKernelT == 7, "the cases below instantiate kt = 1, 3, 5, 7: add one for a larger kMaxKernelT");
  switch (kt) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 3: fn(std::integral_constant<int, 3>{}); break;
    case 5: fn(std::integral_constant<int, 5>{}); break;
    case 7: fn(std::integral_constant<int, 7>{}); break;
    default: SAF_CHECK(false, "st_adapter_fast: kt must be 1, 3, 5 or 7, got ", kt);
  }
}

template <typename scalar_t, int BYTES>
constexpr int wide() {
  return BYTES / int(sizeof(scalar_t)) > 0 ? BYTES / int(sizeof(scalar_t)) : 1;
}

// Does a variant's kernel exist for this dtype and vector width? (float64 and the one-element path run the
// default kernels.)
template <typename scalar_t>
constexpr bool variant_instantiated(int vec) {
  return !std::is_same_v<scalar_t, double> && vec > 1;
}

// Forward: launches `requested` (or the default kernel where it has no kernel for the call).
// aligned_bytes: the widest vector (16, 8, 4, 2 or 1 bytes) every tensor's pointer, strides and rows allow.
template <typename scalar_t, typename Launcher>
void run_forward(ForwardVariant requested, const ForwardArgs<scalar_t>& args, int64_t kt, int aligned_bytes,
                 int threads_env, Launcher& launcher) {
  using acc_t = at::opmath_type<scalar_t>;
  ForwardVariant v = requested;
  const char* reason = "";
  int bytes = forward_vector_bytes(v, int(kt));
  if (v != ForwardVariant::kWindow && !variant_instantiated<scalar_t>(vector_elements<scalar_t>(bytes, aligned_bytes))) {
    reason = std::is_same_v<scalar_t, double> ? "float64 runs the default kernels"
                                              : "alignment allows no vector of the variant's width";
    v = ForwardVariant::kWindow;
    bytes = forward_vector_bytes(v, int(kt));
  }
  const int vec = vector_elements<scalar_t>(bytes, aligned_bytes);
  const char* ran = kForwardVariants[int(v)].name;
  with_kt(kt, [&](auto kt_tag) {
    constexpr int KT = decltype(kt_tag)::value;
    if (v == ForwardVariant::kWindow) {
      constexpr int W = wide<scalar_t, vector_bytes(KT)>();
      const int threads = threads_env >= 32 ? std::min(threads_env, kMaxForwardThreads) : kForwardThreads;
      const Geometry g = launch_shape(args.channels, args.num_tokens, args.clips, vec, threads);
      if (vec == W)
        launcher.launch(&forward_kernel<scalar_t, KT, W>, g, args, KernelNote{ran, reason, "forward_kernel", KT, W, W * int(sizeof(scalar_t)), 0, W * int(sizeof(scalar_t))});
      else
        launcher.launch(&forward_kernel<scalar_t, KT, 1>, g, args, KernelNote{ran, reason, "forward_kernel", KT, 1, int(sizeof(scalar_t)), 0, int(sizeof(scalar_t))});
      return;
    }
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (v == ForwardVariant::kAsync) {
        constexpr int VEC = wide<scalar_t, forward_vector_bytes(ForwardVariant::kAsync, KT)>(), D = kForwardAsyncDepth;
        auto* kernel = &forward_async_kernel<scalar_t, KT, VEC, D>;
        const int threads = variant_threads(launcher, (const void*)kernel, threads_env, kForwardVariants[int(v)].threads);
        const BlockShape b = block_shape(args.channels, VEC, threads);
        const size_t shared = taps_shared_bytes<acc_t>(KT, b.bx * VEC) +
                              size_t(AsyncForwardShape<KT, D>::kRing) * b.bx * b.by * VEC * sizeof(scalar_t);
        const int64_t items = int64_t(args.clips) * ((args.num_tokens + b.by - 1) / b.by);
        Geometry g = persistent_shape(launcher, (const void*)kernel, "forward_async_kernel", b, items, args.num_frames, shared);
        g.partial_rows = 0;  // (the forward writes no partial sums)
        launcher.launch(kernel, g, args, KernelNote{ran, reason, "forward_async_kernel", KT, VEC, VEC * int(sizeof(scalar_t)), D, D * VEC * int(sizeof(scalar_t))});
      } else {  // kFrames
        constexpr int VEC = wide<scalar_t, forward_vector_bytes(ForwardVariant::kFrames, KT)>();
        auto* kernel = &forward_frames_kernel<scalar_t, KT, VEC>;
        const int threads = variant_threads(launcher, (const void*)kernel, threads_env, kForwardVariants[int(v)].threads);
        const BlockShape b = block_shape(args.channels, VEC, threads);
        const int64_t rows = int64_t(args.clips) * args.num_tokens * args.num_frames;
        Geometry g;
        g.grid = dim3(unsigned(b.channel_blocks), unsigned(std::min<int64_t>(65535, (rows + b.by - 1) / b.by)));
        g.block = dim3(unsigned(b.bx), unsigned(b.by));
        launcher.launch(kernel, g, args, KernelNote{ran, reason, "forward_frames_kernel", KT, VEC, VEC * int(sizeof(scalar_t)), 0, KT * VEC * int(sizeof(scalar_t))});
      }
    }
  });
}

// Backward: plans the launch of `requested` (or the default kernel where it has no kernel for the call), asks
// `alloc_partials(rows)` for the (rows, kt + 2, Ca) partial-sum buffer the kernel then writes in full, launches.
template <typename scalar_t, typename Launcher, typename Alloc>
void run_backward(BackwardVariant requested, BackwardArgs<scalar_t> args, int64_t kt, int aligned_bytes,
                  int threads_env, Launcher& launcher, Alloc&& alloc_partials) {
  using acc_t = at::opmath_type<scalar_t>;
  BackwardVariant v = requested;
  const char* reason = "";
  int bytes = backward_vector_bytes(v, int(kt));
  if (v != BackwardVariant::kWindow && !variant_instantiated<scalar_t>(vector_elements<scalar_t>(bytes, aligned_bytes))) {
    reason = std::is_same_v<scalar_t, double> ? "float64 runs the default kernels"
                                              : "alignment allows no vector of the variant's width";
    v = BackwardVariant::kWindow;
    bytes = backward_vector_bytes(v, int(kt));
  }
  const int vec = vector_elements<scalar_t>(bytes, aligned_bytes);
  const char* ran = kBackwardVariants[int(v)].name;
  auto run_window = [&](auto kernel, int kvec, int threads, const char* name, int kt_value) {
    Geometry g = launch_shape(args.channels, args.num_tokens, args.clips, kvec, threads);
    g.shared_bytes = size_t(g.block.x) * g.block.y * kvec * sizeof(acc_t);
    g.partial_rows = int64_t(g.grid.y) * g.grid.z;
    args.partials = alloc_partials(g.partial_rows);
    const int vb = kvec * int(sizeof(scalar_t));  // grad_a and h of the next frame
    launcher.launch(kernel, g, args, KernelNote{ran, reason, name, kt_value, kvec, vb, 0, 2 * vb});
  };
  with_kt(kt, [&](auto kt_tag) {
    constexpr int KT = decltype(kt_tag)::value;
    if (v == BackwardVariant::kWindow) {
      constexpr int W = wide<scalar_t, vector_bytes(KT)>();
      const int threads = threads_env >= 32 ? std::min(threads_env, kMaxBackwardThreads) : kBackwardThreads;
      if (vec == W) run_window(&backward_kernel<scalar_t, KT, W>, W, threads, "backward_kernel", KT);
      else run_window(&backward_kernel<scalar_t, KT, 1>, 1, threads, "backward_kernel", KT);
      return;
    }
    if constexpr (!std::is_same_v<scalar_t, double>) {  // vec > 1 below
      if (v == BackwardVariant::kWindow8) {
        constexpr int W = wide<scalar_t, backward_vector_bytes(BackwardVariant::kWindow8, KT)>();
        auto* kernel = &backward_kernel<scalar_t, KT, W>;
        const int threads = variant_threads(launcher, (const void*)kernel, threads_env, kBackwardVariants[int(v)].threads);
        run_window(kernel, W, threads, "backward_kernel", KT);
      } else if (v == BackwardVariant::kWindowCapped) {
        constexpr int W = wide<scalar_t, backward_vector_bytes(BackwardVariant::kWindowCapped, KT)>();
        auto* kernel = &backward_kernel_capped<scalar_t, KT, W>;
        const int threads = variant_threads(launcher, (const void*)kernel, threads_env, kBackwardVariants[int(v)].threads);
        run_window(kernel, W, threads, "backward_kernel_capped", KT);
      } else if (v == BackwardVariant::kAsync || v == BackwardVariant::kAsync8) {
        auto go = [&](auto vec_tag, auto depth_tag) {
          constexpr int VEC = decltype(vec_tag)::value, D = decltype(depth_tag)::value;
          auto* kernel = &backward_async_kernel<scalar_t, KT, VEC, D>;
          const int threads = variant_threads(launcher, (const void*)kernel, threads_env, kBackwardVariants[int(v)].threads);
          const BlockShape b = block_shape(args.channels, VEC, threads);
          using Shape = AsyncBackwardShape<KT, D>;
          const size_t rings = size_t(Shape::kRingH + Shape::kRingG) * b.bx * b.by * VEC * sizeof(scalar_t);
          const size_t reduce = size_t(b.bx) * b.by * VEC * sizeof(acc_t);
          const size_t shared = taps_shared_bytes<acc_t>(KT, b.bx * VEC) + std::max(rings, reduce);
          const int64_t items = int64_t(args.clips) * ((args.num_tokens + b.by - 1) / b.by);
          const Geometry g = persistent_shape(launcher, (const void*)kernel, "backward_async_kernel", b, items, args.num_frames, shared);
          args.partials = alloc_partials(g.partial_rows);
          launcher.launch(kernel, g, args, KernelNote{ran, reason, "backward_async_kernel", KT, VEC, VEC * int(sizeof(scalar_t)), D, 2 * D * VEC * int(sizeof(scalar_t))});
        };
        if (v == BackwardVariant::kAsync)
          go(std::integral_constant<int, wide<scalar_t, backward_vector_bytes(BackwardVariant::kAsync, KT)>()>{},
             std::integral_constant<int, kBackwardAsyncDepth>{});
        else
          go(std::integral_constant<int, wide<scalar_t, backward_vector_bytes(BackwardVariant::kAsync8, KT)>()>{},
             std::integral_constant<int, kBackwardAsync8Depth>{});
      } else {  // kFrames
        constexpr int VEC = wide<scalar_t, backward_vector_bytes(BackwardVariant::kFrames, KT)>();
        auto* kernel = &backward_frames_kernel<scalar_t, KT, VEC>;
        const int threads = variant_threads(launcher, (const void*)kernel, threads_env, kBackwardVariants[int(v)].threads);
        const BlockShape b = block_shape(args.channels, VEC, threads);
        const size_t shared = std::max(taps_shared_bytes<acc_t>(KT, b.bx * VEC), size_t(b.bx) * b.by * VEC * sizeof(acc_t));
        const int64_t items = int64_t(args.clips) * ((args.num_tokens + b.by - 1) / b.by);
        const Geometry g = persistent_shape(launcher, (const void*)kernel, "backward_frames_kernel", b, items, args.num_frames, shared);
        args.partials = alloc_partials(g.partial_rows);
        launcher.launch(kernel, g, args, KernelNote{ran, reason, "backward_frames_kernel", KT, VEC, VEC * int(sizeof(scalar_t)), 0, (3 * KT - 1) * VEC * int(sizeof(scalar_t))});
      }
    }
  });
}

}  // namespace conv_cuda
}  // namespace st_adapter_fast
