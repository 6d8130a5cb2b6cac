// CUDA entry points of the conv + activation kernels: tensors to kernel arguments, the variant the environment
// asks for (cuda_variants.h), and the launcher that runs the kernels of temporal_conv_cuda_kernels.cuh (where
// the kernels, every variant's, and the choice of launch geometry live, shared with the CPU emulation test).
#include "temporal_conv_cuda_kernels.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

namespace st_adapter_fast {
namespace {

using conv_cuda::Geometry;
using conv_cuda::KernelNote;

// ST_ADAPTER_FAST_CUDA_{FWD,BWD}_THREADS as a number (0 when unset or not a number).
int threads_from_env(const char* variable) {
  const char* value = std::getenv(variable);
  return value ? std::atoi(value) : 0;
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

// The widest vector, in bytes (16, 8, 4, 2 or 1), that every tensor allows.
int aligned_bytes(std::initializer_list<const at::Tensor*> tensors) {
  for (int bytes : {16, 8, 4, 2})
    if (aligned_for(bytes, tensors)) return bytes;
  return 1;
}

conv_cuda::Layout layout_of(const at::Tensor& t) { return {t.stride(0), t.stride(1)}; }

thread_local CudaLaunchRecord last_record;

// Kernel attributes and occupancy, asked of the runtime once per (kernel, device, threads, shared memory).
struct KernelFacts {
  cudaFuncAttributes attributes;
  int blocks_per_sm;
};

std::mutex facts_mutex;
std::map<std::tuple<const void*, int, int, size_t>, KernelFacts> facts_cache;

const KernelFacts& kernel_facts(const void* kernel, int threads, size_t shared_bytes) {
  const int device = c10::cuda::current_device();
  const std::lock_guard<std::mutex> lock(facts_mutex);
  const auto key = std::make_tuple(kernel, device, threads, shared_bytes);
  auto found = facts_cache.find(key);
  if (found != facts_cache.end()) return found->second;
  KernelFacts facts{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&facts.attributes, kernel));
  facts.blocks_per_sm = 0;
  if (threads > 0) {
    if (shared_bytes > 48 * 1024)  // more than the default limit of dynamic shared memory: opt in
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared_bytes)));
    const cudaError_t status =
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&facts.blocks_per_sm, kernel, threads, shared_bytes);
    if (status != cudaSuccess) {
      (void)cudaGetLastError();  // a configuration the kernel cannot run: 0 blocks
      facts.blocks_per_sm = 0;
    }
  }
  return facts_cache.emplace(key, facts).first->second;
}

int multiprocessors(int device) {
  static std::mutex mutex;
  static std::map<int, int> counts;
  const std::lock_guard<std::mutex> lock(mutex);
  auto found = counts.find(device);
  if (found != counts.end()) return found->second;
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return counts.emplace(device, count).first->second;
}

// What a launch ran and with which geometry, into `r` (the real launcher and the planner both record it).
void record_launch(CudaLaunchRecord& r, const Geometry& g, const KernelNote& note) {
  r.ran = note.ran;
  r.reason = note.reason;
  r.kernel = note.kernel;
  r.kt = note.kt;
  r.vec = note.vec;
  r.vector_bytes = note.vector_bytes;
  r.depth = note.depth;
  r.inflight_bytes = note.inflight_bytes;
  r.grid[0] = g.grid.x, r.grid[1] = g.grid.y, r.grid[2] = g.grid.z;
  r.block[0] = g.block.x, r.block[1] = g.block.y, r.block[2] = g.block.z;
  r.shared_bytes = int64_t(g.shared_bytes);
  r.partial_rows = g.partial_rows;
}

struct CudaLauncher {
  cudaStream_t stream;
  const char* direction;
  const char* requested;

  int max_threads(const void* kernel) { return kernel_facts(kernel, 0, 0).attributes.maxThreadsPerBlock; }

  int resident_blocks(const void* kernel, int threads, size_t shared_bytes) {
    return kernel_facts(kernel, threads, shared_bytes).blocks_per_sm *
           multiprocessors(c10::cuda::current_device());
  }

  template <typename Args>
  void launch(void (*kernel)(Args), const Geometry& g, const Args& args, const KernelNote& note) {
    const int threads = int(g.block.x * g.block.y * g.block.z);
    const KernelFacts& facts = kernel_facts(reinterpret_cast<const void*>(kernel), threads, g.shared_bytes);
    kernel<<<g.grid, g.block, g.shared_bytes, stream>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    CudaLaunchRecord& r = last_record;
    r.direction = direction;
    r.requested = requested;
    record_launch(r, g, note);
    r.registers = facts.attributes.numRegs;
    r.local_bytes = int(facts.attributes.localSizeBytes);
    r.static_shared_bytes = int(facts.attributes.sharedSizeBytes);
    r.max_threads = facts.attributes.maxThreadsPerBlock;
    r.blocks_per_sm = facts.blocks_per_sm;
  }
};

// Records the launch instead of making it (plan_cuda_launch).
struct PlanLauncher {
  int resident, most_threads;
  CudaLaunchRecord record;

  int max_threads(const void*) { return most_threads; }
  int resident_blocks(const void*, int, size_t) { return resident; }

  template <typename Args>
  void launch(void (*)(Args), const Geometry& g, const Args&, const KernelNote& note) { record_launch(record, g, note); }
};

}  // namespace

CudaLaunchRecord last_cuda_launch() { return last_record; }

CudaLaunchRecord plan_cuda_launch(const std::string& direction, const std::string& variant, c10::ScalarType dtype,
                                  int64_t kt, int64_t channels, int64_t num_tokens, int64_t num_frames, int64_t clips,
                                  int aligned, int threads, int resident_blocks, int max_threads) {
  SAF_CHECK_VALUE(direction == "fwd" || direction == "bwd", "direction must be 'fwd' or 'bwd', got '", direction, "'");
  SAF_CHECK_VALUE(kt >= 1 && kt <= kMaxKernelT && kt % 2 == 1, "kt must be odd and <= ", kMaxKernelT, ", got ", kt);
  PlanLauncher launcher{resident_blocks, max_threads, {}};
  launcher.record.direction = direction;
  launcher.record.requested = variant;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "plan_cuda_launch", [&] {
    if (direction == "fwd") {
      conv_cuda::ForwardArgs<scalar_t> args{};
      args.num_frames = int(num_frames), args.num_tokens = int(num_tokens), args.channels = int(channels),
      args.clips = int(clips);
      const auto v = ForwardVariant(variant_index(kForwardVariants, variant.c_str(), "variant"));
      conv_cuda::run_forward<scalar_t>(v, args, kt, aligned, threads, launcher);
    } else {
      conv_cuda::BackwardArgs<scalar_t> args{};
      args.num_frames = int(num_frames), args.num_tokens = int(num_tokens), args.channels = int(channels),
      args.clips = int(clips);
      const auto v = BackwardVariant(variant_index(kBackwardVariants, variant.c_str(), "variant"));
      conv_cuda::run_backward<scalar_t>(v, args, kt, aligned, threads, launcher,
                                        [](int64_t) { return static_cast<at::opmath_type<scalar_t>*>(nullptr); });
    }
  });
  return launcher.record;
}

void conv_act_forward_cuda(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& out, const ConvShape& s, Activation act) {
  const ForwardVariant variant = selected_forward_variant();  // a bad name raises here, before any launch
  const c10::cuda::CUDAGuard guard(h.device());
  const int aligned = aligned_bytes({&h, &out});
  const int threads = threads_from_env("ST_ADAPTER_FAST_CUDA_FWD_THREADS");
  CudaLauncher launcher{c10::cuda::getCurrentCUDAStream(), "fwd", kForwardVariants[int(variant)].name};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "temporal_conv_act_cuda", [&] {
    const conv_cuda::ForwardArgs<scalar_t> args{
        h.data_ptr<scalar_t>(), layout_of(h), weight.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
        out.data_ptr<scalar_t>(), layout_of(out), int(s.num_frames), int(s.num_tokens), int(s.channels),
        int(s.clips), act};
    conv_cuda::run_forward<scalar_t>(variant, args, s.kernel_t, aligned, threads, launcher);
  });
}

at::Tensor conv_act_backward_cuda(const at::Tensor& grad_a, const at::Tensor& h, const at::Tensor& weight,
                                  const at::Tensor& bias, const at::Tensor& grad_h, const at::Tensor& a,
                                  const ConvShape& s, Activation act) {
  const BackwardVariant variant = selected_backward_variant();  // a bad name raises here, before any launch
  const c10::cuda::CUDAGuard guard(h.device());
  const int aligned = aligned_bytes({&grad_a, &h, &grad_h, &a});
  const int threads = threads_from_env("ST_ADAPTER_FAST_CUDA_BWD_THREADS");
  const auto acc_type = at::toOpMathType(h.scalar_type());
  CudaLauncher launcher{c10::cuda::getCurrentCUDAStream(), "bwd", kBackwardVariants[int(variant)].name};
  at::Tensor partials;
  // Every (block, row, channel) of the partials is written by exactly one thread, so no zeroing is needed.
  auto alloc_partials = [&](int64_t rows) {
    partials = at::empty({rows, s.kernel_t + 2, s.channels}, h.options().dtype(acc_type));
    return partials;
  };
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "temporal_conv_act_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const conv_cuda::BackwardArgs<scalar_t> args{
        grad_a.data_ptr<scalar_t>(), layout_of(grad_a), h.data_ptr<scalar_t>(), layout_of(h),
        weight.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), grad_h.data_ptr<scalar_t>(), layout_of(grad_h),
        a.data_ptr<scalar_t>(), layout_of(a), nullptr, int(s.num_frames), int(s.num_tokens), int(s.channels),
        int(s.clips), act};
    conv_cuda::run_backward<scalar_t>(variant, args, s.kernel_t, aligned, threads, launcher,
                                      [&](int64_t rows) { return alloc_partials(rows).template data_ptr<acc_t>(); });
  });
  // The sum over blocks runs in ATen's reduction, whose order is fixed for a given shape.
  return partials.sum(0);
}

}  // namespace st_adapter_fast
