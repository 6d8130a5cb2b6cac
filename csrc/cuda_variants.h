// The CUDA conv kernels' variants: names, what each is, and how a call picks one. Plain C++ (no CUDA):
// the Python module exports this table (python_module.cpp: _C.cuda_variants, _C.cuda_default_variants,
// _C.cuda_variant_env) in every build, so that the package, the tests and benchmarks/cuda_kernel_sweep.py
// read the names instead of restating them.
//
// A call of the CUDA kernels reads ST_ADAPTER_FAST_CUDA_FWD_VARIANT / ST_ADAPTER_FAST_CUDA_BWD_VARIANT
// (unset or empty: the default, the first entry of each table) before it launches anything; a name not in the
// table raises ValueError naming the known ones. Every variant computes the same function in fp32
// (temporal_conv.h): pre = bias + sum_d w[d] h[t + d - PAD], the taps summed in the same order, and the
// backward writes its per-block partial sums in the one layout (blocks, kt + 2, Ca) that the caller adds in a
// fixed order; variants differ in how threads map to the work and where their data waits. A variant covers
// the vector path of float, bfloat16 and float16; float64 and tensors whose alignment allows no vector of
// the variant's width run the default kernels (the last-launch record says which kernel ran).
#pragma once

#include "temporal_conv.h"

#include <cstdlib>
#include <iterator>
#include <string>

namespace st_adapter_fast {

struct CudaVariant {
  const char* name;
  int threads;          // threads per block when ST_ADAPTER_FAST_CUDA_{FWD,BWD}_THREADS is unset
  const char* summary;  // what it changes, for the sweep's table and the README
};

// Forward (conv + activation). Index 0 is the default.
constexpr CudaVariant kForwardVariants[] = {
    {"window", 128,
     "one thread per 16-byte vector of channels (8 for kt >= 5) of one token, walking the clip's frames with "
     "the kt-frame window in registers and the next frame's load in flight (the kernel of issue 20's start)"},
    {"async", 256,
     "the same walk, h staged through a per-thread ring in shared memory by cp.async, 4 frames ahead; taps in "
     "shared memory; a persistent grid walks (clip, token group) items without draining the ring between them"},
    {"frames", 256,
     "one thread per output frame: its kt frames of h loaded at once (neighbours re-read, mostly from L2), no "
     "window and no serial dependency between frames"},
};

// Backward (recomputed conv + activation, the conv's transpose, the weight/bias partial sums).
constexpr CudaVariant kBackwardVariants[] = {
    {"window", 256,
     "one thread per 16-byte vector (8 for kt >= 5) of one token, rolling windows of h and of the "
     "pre-activation gradient and all kt + 2 partial sums in registers, one frame of loads in flight; one "
     "partial row per (clip, token block)"},
    {"window8", 256, "the default kernel with 8-byte vectors for every kt: half the registers per thread"},
    {"window_capped", 256,
     "the default kernel under __launch_bounds__(256, 2): at most 128 registers, two blocks per multiprocessor"},
    {"async", 256,
     "h and grad_a staged through per-thread rings in shared memory by cp.async, 3 frames ahead; taps in shared "
     "memory; 16-byte vectors (8 for kt >= 5); a persistent grid of (clip, token group) items, one partial row "
     "per block"},
    {"async8", 256, "the async kernel with 8-byte vectors and 4 frames ahead: fewer registers, more threads"},
    {"frames", 256,
     "one thread per output frame, 8-byte vectors: all 3kt - 1 loads of a frame issued at once (neighbours "
     "re-read, mostly from L2), kt activations recomputed per frame, no windows; persistent grid"},
};

constexpr const char* kForwardVariantEnv = "ST_ADAPTER_FAST_CUDA_FWD_VARIANT";
constexpr const char* kBackwardVariantEnv = "ST_ADAPTER_FAST_CUDA_BWD_VARIANT";

enum class ForwardVariant : int { kWindow = 0, kAsync = 1, kFrames = 2 };
enum class BackwardVariant : int { kWindow = 0, kWindow8 = 1, kWindowCapped = 2, kAsync = 3, kAsync8 = 4, kFrames = 5 };

static_assert(std::size(kForwardVariants) == 3 && std::size(kBackwardVariants) == 6,
              "the enums above and the dispatch in temporal_conv_cuda_kernels.cuh list every variant");

// The index of `name` in `table`, or a ValueError naming the known variants and the variable it came from.
template <size_t N>
int variant_index(const CudaVariant (&table)[N], const char* name, const char* variable) {
  if (name == nullptr || name[0] == '\0') return 0;
  std::string known;
  for (size_t i = 0; i < N; ++i) {
    if (std::string(name) == table[i].name) return int(i);
    known += (i ? ", " : "") + std::string(table[i].name);
  }
  SAF_CHECK_VALUE(false, "st_adapter_fast: ", variable, "='", name, "' is not a CUDA kernel variant; known: ", known,
                  " (unset for the default, ", table[0].name, ")");
  return 0;
}

// The variants the environment selects now (read at every CUDA call, before any launch).
inline ForwardVariant selected_forward_variant() {
  return ForwardVariant(variant_index(kForwardVariants, std::getenv(kForwardVariantEnv), kForwardVariantEnv));
}
inline BackwardVariant selected_backward_variant() {
  return BackwardVariant(variant_index(kBackwardVariants, std::getenv(kBackwardVariantEnv), kBackwardVariantEnv));
}

// What the last CUDA launch of this thread ran (temporal_conv_cuda.cu fills it; _C.last_cuda_launch() reads it):
// the variant asked for and the one that ran (they differ when a variant falls back to the default kernels),
// the kernel's compile-time shape, the launch geometry, and the kernel's attributes as the runtime reports them.
struct CudaLaunchRecord {
  std::string direction, requested, ran, reason, kernel;
  int kt = 0, vec = 0, vector_bytes = 0, depth = 0, inflight_bytes = 0;
  unsigned grid[3] = {0, 0, 0}, block[3] = {0, 0, 0};
  int64_t shared_bytes = 0, partial_rows = 0;
  int registers = -1, local_bytes = -1, static_shared_bytes = -1, max_threads = -1, blocks_per_sm = -1;
};

#ifdef ST_ADAPTER_FAST_WITH_CUDA
CudaLaunchRecord last_cuda_launch();
// The launch a call would make, without a GPU and without launching: kernel, vector width, geometry, shared
// memory, partial rows, for `dtype` (float, bfloat16, float16, float64) and the given shape; `aligned_bytes` the
// widest vector the tensors allow; `threads` as ST_ADAPTER_FAST_CUDA_*_THREADS (0: unset); `resident_blocks` the
// blocks the device would hold at once (sizes the persistent grids); `max_threads` a kernel's own limit.
CudaLaunchRecord plan_cuda_launch(const std::string& direction, const std::string& variant, c10::ScalarType dtype,
                                  int64_t kt, int64_t channels, int64_t num_tokens, int64_t num_frames, int64_t clips,
                                  int aligned_bytes, int threads, int resident_blocks, int max_threads);
#endif

}  // namespace st_adapter_fast
