// The CUDA kernels of temporal_conv_cuda_kernels.cuh, every variant, run on the CPU and checked against plain
// loops in double: the indexing, the rings, the persistent walks and the partial-sum layout are tested on a
// machine without a GPU (tests/kernels/test_cuda_variants.py builds and runs this program).
//
// How the CUDA execution model is emulated: blocks run one after another; the threads of a block are coroutines
// (ucontext) that switch at __syncthreads, so a barrier orders what it orders on the GPU and nothing more.
// cp.async copies complete as late as the wait counts allow (at cp.async.wait_group, oldest group first), so
// reading a ring slot before its copy was waited for reads stale data; issuing a copy into a slot that still
// has one pending is reported. Shared memory starts as NaN bytes, every buffer ends at a guard page (an
// access past its end faults), outputs start as NaN (an element never written shows), and the storage around
// a strided view is checked untouched.
//
//   emulate_cuda_kernels [--quick] [--variant NAME]    exit status 0 when every case passes
#define SAF_EMULATE 1

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

// ---- the CUDA vocabulary the kernels use, on the CPU ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct EmulatedIndex {
  unsigned x = 0, y = 0, z = 0;
};
inline EmulatedIndex threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

void __syncthreads();

namespace emulation {
unsigned char* shared_memory();
void async_copy(void* dst, const void* src, int bytes);
void async_commit();
void async_wait(int n);
}  // namespace emulation

#include "../temporal_conv_cuda_kernels.cuh"

namespace emulation {

int errors = 0;
std::map<std::string, int> ran_counts;  // "dir asked -> ran (vec N)": cases
std::string current_case;

void report(const std::string& what) {
  ++errors;
  std::printf("FAIL %s: %s\n", current_case.c_str(), what.c_str());
}

// ---- memory with a guard page after it ----
struct Guarded {
  void* map = nullptr;
  size_t map_bytes = 0;
  unsigned char* data = nullptr;  // 16-byte aligned, within 16 bytes of the guard page
  size_t bytes = 0;

  Guarded() = default;
  explicit Guarded(size_t n) : bytes(n) {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    const size_t body = (n + page - 1) / page * page + page;
    map_bytes = body + page;
    map = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) std::abort();
    unsigned char* guard = static_cast<unsigned char*>(map) + body;
    mprotect(guard, page, PROT_NONE);
    data = reinterpret_cast<unsigned char*>(reinterpret_cast<uintptr_t>(guard - n) & ~uintptr_t(15));
  }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
  Guarded(Guarded&& o) noexcept { *this = std::move(o); }
  Guarded& operator=(Guarded&& o) noexcept {
    std::swap(map, o.map);
    std::swap(map_bytes, o.map_bytes);
    std::swap(data, o.data);
    std::swap(bytes, o.bytes);
    return *this;
  }
  ~Guarded() {
    if (map) munmap(map, map_bytes);
  }
};

// ---- threads as coroutines ----
struct Copy {
  unsigned char* dst;
  std::vector<unsigned char> bytes;
};

struct Fiber {
  ucontext_t context;
  std::vector<char> stack;
  bool done = false, at_barrier = false;
  EmulatedIndex index;
  std::vector<Copy> open;                 // issued, not yet committed
  std::vector<std::vector<Copy>> groups;  // committed, pending, oldest first
};

ucontext_t scheduler;
std::vector<Fiber> fibers;
Fiber* running = nullptr;
std::function<void()> body;
Guarded shared;
size_t shared_size = 0;

void complete(std::vector<Copy>& group) {
  for (Copy& c : group) std::memcpy(c.dst, c.bytes.data(), c.bytes.size());
}

void fiber_entry() {
  body();
  complete(running->open);  // (copies left uncommitted or unwaited at exit land anyway; nothing reads them)
  for (auto& g : running->groups) complete(g);
  running->open.clear();
  running->groups.clear();
  running->done = true;
}  // returns to `scheduler` through uc_link

unsigned char* shared_memory() { return shared.data; }

void check_shared(const void* p, int bytes, const char* what) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < shared.data || c + bytes > shared.data + shared_size)
    report(std::string(what) + " outside the block's dynamic shared memory");
}

bool overlaps(const Copy& c, const unsigned char* dst, int bytes) {
  return c.dst < dst + bytes && dst < c.dst + c.bytes.size();
}

void async_copy(void* dst, const void* src, int bytes) {
  check_shared(dst, bytes, "cp.async destination");
  auto* d = static_cast<unsigned char*>(dst);
  for (const auto& g : running->groups)
    for (const Copy& c : g)
      if (overlaps(c, d, bytes)) report("cp.async into a slot whose previous copy is still pending (ring too small)");
  for (const Copy& c : running->open)
    if (overlaps(c, d, bytes)) report("two cp.async into one slot in one group");
  if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) % bytes)
    report("cp.async with a misaligned address");
  const auto* s = static_cast<const unsigned char*>(src);
  running->open.push_back(Copy{d, std::vector<unsigned char>(s, s + bytes)});  // (the source is read-only)
}

void async_commit() {
  running->groups.push_back(std::move(running->open));
  running->open.clear();
}

void async_wait(int n) {
  while (int(running->groups.size()) > n) {
    complete(running->groups.front());
    running->groups.erase(running->groups.begin());
  }
}

void run_block(const dim3& block, size_t shared_bytes, const std::function<void()>& fn) {
  const int threads = int(block.x * block.y * block.z);
  shared = Guarded(shared_bytes + 16);
  shared_size = shared_bytes;
  std::memset(shared.data, 0xFF, shared_bytes);  // NaN in float, bfloat16 and half
  fibers.resize(threads);
  body = fn;
  int i = 0;
  for (unsigned z = 0; z < block.z; ++z)
    for (unsigned y = 0; y < block.y; ++y)
      for (unsigned x = 0; x < block.x; ++x, ++i) {
        Fiber& f = fibers[i];
        f.done = f.at_barrier = false;
        f.index.x = x, f.index.y = y, f.index.z = z;
        f.open.clear();
        f.groups.clear();
        f.stack.resize(256 * 1024);
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.data();
        f.context.uc_stack.ss_size = f.stack.size();
        f.context.uc_link = &scheduler;
        makecontext(&f.context, fiber_entry, 0);
      }
  while (true) {
    for (int t = 0; t < threads; ++t) {
      Fiber& f = fibers[t];
      if (f.done || f.at_barrier) continue;
      running = &f;
      threadIdx = f.index;
      swapcontext(&scheduler, &f.context);
    }
    bool all_done = true;
    for (int t = 0; t < threads; ++t) all_done = all_done && fibers[t].done;
    if (all_done) break;
    for (int t = 0; t < threads; ++t) fibers[t].at_barrier = false;  // every live thread reached the barrier
  }
  running = nullptr;
}

}  // namespace emulation

void __syncthreads() {
  emulation::Fiber* f = emulation::running;
  f->at_barrier = true;
  swapcontext(&f->context, &emulation::scheduler);
  threadIdx = f->index;
}

// ---- the launcher the kernels' host code calls ----
struct EmuLauncher {
  int resident = 3;  // blocks the "device" holds at once: small, so that persistent blocks walk several items
  int threads_cap = 1024;
  std::string ran, reason;
  int vec = 0;

  int max_threads(const void*) { return threads_cap; }
  int resident_blocks(const void*, int, size_t) { return resident; }

  template <typename Args>
  void launch(void (*kernel)(Args), const st_adapter_fast::conv_cuda::Geometry& g, const Args& args,
              const st_adapter_fast::conv_cuda::KernelNote& note) {
    using emulation::report;
    ran = note.ran;
    reason = note.reason;
    vec = note.vec;
    const unsigned threads = g.block.x * g.block.y * g.block.z;
    if (threads == 0 || threads > 1024) report("block of " + std::to_string(threads) + " threads");
    if (g.grid.y > 65535 || g.grid.z > 65535) report("grid beyond 65535 in y or z");
    if (g.shared_bytes > 227 * 1024) report("more than 227 KB of shared memory");
    blockDim = g.block;
    gridDim = g.grid;
    for (unsigned z = 0; z < g.grid.z; ++z)
      for (unsigned y = 0; y < g.grid.y; ++y)
        for (unsigned x = 0; x < g.grid.x; ++x) {
          blockIdx.x = x, blockIdx.y = y, blockIdx.z = z;
          emulation::run_block(g.block, g.shared_bytes, [&] { kernel(args); });
        }
  }
};

// ---- cases ----
using namespace st_adapter_fast;
using conv_cuda::Layout;

template <typename scalar_t>
double to_double(scalar_t v) {
  return double(static_cast<at::opmath_type<scalar_t>>(v));
}

// A (frames, N, Ca) view into guarded storage: element (f, n, c) at data[offset + f * frame + n * token + c].
template <typename scalar_t>
struct View {
  emulation::Guarded storage;
  int64_t offset, frame, token, frames, tokens, channels, elements;
  scalar_t* ptr() { return reinterpret_cast<scalar_t*>(storage.data) + offset; }
  scalar_t& at(int64_t f, int64_t n, int64_t c) { return ptr()[f * frame + n * token + c]; }
  Layout layout() const { return {frame, token}; }
};

enum class LayoutKind { kContiguous, kPatchRows, kPadded, kMisaligned };

template <typename scalar_t>
View<scalar_t> make_view(LayoutKind kind, int64_t frames, int64_t tokens, int64_t channels) {
  View<scalar_t> v;
  v.frames = frames, v.tokens = tokens, v.channels = channels;
  int64_t lead = 0;
  switch (kind) {
    case LayoutKind::kContiguous: v.token = channels, v.frame = tokens * channels; break;
    case LayoutKind::kPatchRows: v.token = channels, v.frame = (tokens + 1) * channels, lead = channels; break;  // x[:, 1:]
    case LayoutKind::kPadded: v.token = channels + 8, v.frame = tokens * (channels + 8) + 16; break;
    case LayoutKind::kMisaligned: v.token = channels, v.frame = tokens * channels, lead = 1; break;
  }
  v.offset = lead;
  v.elements = lead + (frames - 1) * v.frame + (tokens - 1) * v.token + channels;
  v.storage = emulation::Guarded(size_t(v.elements) * sizeof(scalar_t));
  scalar_t* base = reinterpret_cast<scalar_t*>(v.storage.data);
  for (int64_t i = 0; i < v.elements; ++i) base[i] = scalar_t(-7.25f);  // a sentinel outside the view
  return v;
}

template <typename scalar_t>
bool in_view(const View<scalar_t>& v, int64_t i) {  // is storage element i one of the view's?
  const int64_t r = i - v.offset;
  if (r < 0) return false;
  const int64_t f = r / v.frame, rest = r % v.frame;
  const int64_t n = rest / v.token, c = rest % v.token;
  return f < v.frames && n < v.tokens && c < v.channels;
}

template <typename scalar_t>
int aligned_bytes(std::initializer_list<View<scalar_t>*> views) {
  for (int bytes : {16, 8, 4, 2}) {
    bool ok = true;
    for (auto* v : views) {
      const int64_t e = sizeof(scalar_t);
      ok = ok && reinterpret_cast<uintptr_t>(v->ptr()) % bytes == 0 && (v->frame * e) % bytes == 0 &&
           (v->token * e) % bytes == 0 && (v->channels * e) % bytes == 0;
    }
    if (ok) return bytes;
  }
  return 1;
}

struct Case {
  int kt, frames_per_clip, clips, tokens, channels, threads, resident;
  LayoutKind layout;
  Activation act;
};

const char* layout_name(LayoutKind k) {
  switch (k) {
    case LayoutKind::kContiguous: return "contiguous";
    case LayoutKind::kPatchRows: return "patch-rows";
    case LayoutKind::kPadded: return "padded";
    default: return "misaligned";
  }
}

double tolerance(const char* dtype) {
  const std::string d(dtype);
  return d == "float" ? 1e-5 : d == "double" ? 1e-12 : d == "bfloat16" ? 2e-2 : 3e-3;
}

template <typename scalar_t>
void fill_random(View<scalar_t>& v, std::mt19937& gen) {
  std::normal_distribution<float> normal;
  for (int64_t f = 0; f < v.frames; ++f)
    for (int64_t n = 0; n < v.tokens; ++n)
      for (int64_t c = 0; c < v.channels; ++c) v.at(f, n, c) = scalar_t(normal(gen));
}

template <typename scalar_t>
void fill_nan(View<scalar_t>& v) {
  for (int64_t f = 0; f < v.frames; ++f)
    for (int64_t n = 0; n < v.tokens; ++n)
      for (int64_t c = 0; c < v.channels; ++c) v.at(f, n, c) = scalar_t(NAN);
}

// Output `got` against `want` (frames, N, Ca in double), every element written, nothing around it touched.
template <typename scalar_t>
void check_output(View<scalar_t>& got, const std::vector<double>& want, double tol, const char* name) {
  double scale = 1.0, worst = 0.0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  int64_t unwritten = 0, i = 0;
  for (int64_t f = 0; f < got.frames; ++f)
    for (int64_t n = 0; n < got.tokens; ++n)
      for (int64_t c = 0; c < got.channels; ++c, ++i) {
        const double g = to_double(got.at(f, n, c));
        if (std::isnan(g)) ++unwritten;
        else worst = std::max(worst, std::abs(g - want[i]));
      }
  if (unwritten) emulation::report(std::string(name) + ": " + std::to_string(unwritten) + " elements never written");
  if (worst > tol * scale) {
    char text[160];
    std::snprintf(text, sizeof text, "%s: max error %.3e > %.1e x scale %.3e", name, worst, tol, scale);
    emulation::report(text);
  }
  const scalar_t* base = reinterpret_cast<const scalar_t*>(got.storage.data);
  for (int64_t k = 0; k < got.elements; ++k)
    if (!in_view(got, k) && to_double(base[k]) != -7.25) {
      emulation::report(std::string(name) + ": wrote outside its view");
      break;
    }
}

template <typename scalar_t>
struct Inputs {
  View<scalar_t> h, grad_a;
  std::vector<scalar_t> weight, bias;
};

template <typename scalar_t>
Inputs<scalar_t> make_inputs(const Case& k, std::mt19937& gen) {
  const int64_t frames = int64_t(k.clips) * k.frames_per_clip;
  Inputs<scalar_t> in{make_view<scalar_t>(k.layout, frames, k.tokens, k.channels),
                      make_view<scalar_t>(k.layout, frames, k.tokens, k.channels), {}, {}};
  fill_random(in.h, gen);
  fill_random(in.grad_a, gen);
  std::normal_distribution<float> normal;
  for (int i = 0; i < k.channels * k.kt; ++i) in.weight.push_back(scalar_t(0.5f * normal(gen)));
  for (int i = 0; i < k.channels; ++i) in.bias.push_back(scalar_t(0.1f * normal(gen)));
  return in;
}

// pre-activations in double: pre[f][n][c]
template <typename scalar_t>
std::vector<double> reference_pre(const Case& k, Inputs<scalar_t>& in) {
  const int pad = k.kt / 2, T = k.frames_per_clip;
  const int64_t frames = int64_t(k.clips) * T;
  std::vector<double> pre(frames * k.tokens * k.channels);
  int64_t i = 0;
  for (int64_t f = 0; f < frames; ++f)
    for (int n = 0; n < k.tokens; ++n)
      for (int c = 0; c < k.channels; ++c, ++i) {
        const int64_t clip = f / T, t = f % T;
        double s = to_double(in.bias[c]);
        for (int d = 0; d < k.kt; ++d) {
          const int64_t u = t + d - pad;
          if (u >= 0 && u < T) s += to_double(in.weight[c * k.kt + d]) * to_double(in.h.at(clip * T + u, n, c));
        }
        pre[i] = s;
      }
  return pre;
}

template <typename scalar_t>
void run_forward_case(ForwardVariant variant, const Case& k, const char* dtype, std::mt19937& gen) {
  Inputs<scalar_t> in = make_inputs<scalar_t>(k, gen);
  View<scalar_t> out = make_view<scalar_t>(k.layout, in.h.frames, k.tokens, k.channels);
  fill_nan(out);
  const conv_cuda::ForwardArgs<scalar_t> args{in.h.ptr(), in.h.layout(), in.weight.data(), in.bias.data(), out.ptr(),
                                              out.layout(), k.frames_per_clip, k.tokens, k.channels, k.clips, k.act};
  EmuLauncher launcher;
  launcher.resident = k.resident;
  conv_cuda::run_forward<scalar_t>(variant, args, k.kt, aligned_bytes<scalar_t>({&in.h, &out}), k.threads, launcher);
  std::vector<double> want = reference_pre(k, in);
  for (double& v : want) v = activation_forward(v, k.act);
  check_output(out, want, tolerance(dtype), "out");
  if (launcher.ran != kForwardVariants[int(variant)].name && std::string(launcher.reason).empty())
    emulation::report("ran another variant without saying why");
  ++emulation::ran_counts["fwd " + std::string(kForwardVariants[int(variant)].name) + " -> " + launcher.ran + " (vec " +
                          std::to_string(launcher.vec) + ")"];
}

template <typename scalar_t>
void run_backward_case(BackwardVariant variant, const Case& k, const char* dtype, std::mt19937& gen) {
  using acc_t = at::opmath_type<scalar_t>;
  Inputs<scalar_t> in = make_inputs<scalar_t>(k, gen);
  View<scalar_t> grad_h = make_view<scalar_t>(k.layout, in.h.frames, k.tokens, k.channels);
  View<scalar_t> a = make_view<scalar_t>(k.layout, in.h.frames, k.tokens, k.channels);
  fill_nan(grad_h);
  fill_nan(a);
  conv_cuda::BackwardArgs<scalar_t> args{in.grad_a.ptr(), in.grad_a.layout(), in.h.ptr(), in.h.layout(),
                                         in.weight.data(), in.bias.data(), grad_h.ptr(), grad_h.layout(), a.ptr(),
                                         a.layout(), nullptr, k.frames_per_clip, k.tokens, k.channels, k.clips, k.act};
  EmuLauncher launcher;
  launcher.resident = k.resident;
  emulation::Guarded partials;
  int64_t rows = 0;
  const int rows_width = (k.kt + 2) * k.channels;
  conv_cuda::run_backward<scalar_t>(variant, args, k.kt, aligned_bytes<scalar_t>({&in.grad_a, &in.h, &grad_h, &a}),
                                    k.threads, launcher, [&](int64_t n) {
                                      rows = n;
                                      partials = emulation::Guarded(size_t(n) * rows_width * sizeof(acc_t));
                                      acc_t* p = reinterpret_cast<acc_t*>(partials.data);
                                      for (int64_t i = 0; i < n * rows_width; ++i) p[i] = acc_t(NAN);
                                      return p;
                                    });
  if (launcher.ran != kBackwardVariants[int(variant)].name && std::string(launcher.reason).empty())
    emulation::report("ran another variant without saying why");
  ++emulation::ran_counts["bwd " + std::string(kBackwardVariants[int(variant)].name) + " -> " + launcher.ran + " (vec " +
                          std::to_string(launcher.vec) + ")"];

  // Reference in double.
  const int pad = k.kt / 2, T = k.frames_per_clip;
  const std::vector<double> pre = reference_pre(k, in);
  const int64_t frames = in.h.frames, plane = int64_t(k.tokens) * k.channels;
  std::vector<double> want_a(pre.size()), grad_pre(pre.size()), want_gh(pre.size(), 0.0);
  for (size_t i = 0; i < pre.size(); ++i) {
    double value, slope;
    activation_forward_and_grad(pre[i], k.act, value, slope);
    want_a[i] = value;
    const int64_t f = int64_t(i) / plane, n = (int64_t(i) % plane) / k.channels, c = int64_t(i) % k.channels;
    grad_pre[i] = to_double(in.grad_a.at(f, n, c)) * slope;
  }
  std::vector<double> sums(rows_width, 0.0), magnitude(rows_width, 0.0);
  for (int64_t f = 0; f < frames; ++f)
    for (int n = 0; n < k.tokens; ++n)
      for (int c = 0; c < k.channels; ++c) {
        const int64_t clip = f / T, s = f % T, i = f * plane + int64_t(n) * k.channels + c;
        double g = 0.0;
        for (int d = 0; d < k.kt; ++d) {
          const int64_t u = s + pad - d;
          if (u >= 0 && u < T) g += to_double(in.weight[c * k.kt + d]) * grad_pre[(clip * T + u) * plane + n * k.channels + c];
        }
        want_gh[i] = g;
        for (int d = 0; d < k.kt; ++d) {
          const int64_t u = s + d - pad;
          if (u >= 0 && u < T) {
            const double term = grad_pre[i] * to_double(in.h.at(clip * T + u, n, c));
            sums[d * k.channels + c] += term;
            magnitude[d * k.channels + c] += std::abs(term);
          }
        }
        sums[k.kt * k.channels + c] += grad_pre[i];
        magnitude[k.kt * k.channels + c] += std::abs(grad_pre[i]);
        sums[(k.kt + 1) * k.channels + c] += g;
        magnitude[(k.kt + 1) * k.channels + c] += std::abs(g);
      }
  check_output(a, want_a, tolerance(dtype), "a");
  check_output(grad_h, want_gh, tolerance(dtype), "grad_h");
  // The partials: every row written, and their sum the gradients (fp32 sums: a looser tolerance than fp64).
  const acc_t* p = reinterpret_cast<const acc_t*>(partials.data);
  const double tol = std::is_same_v<acc_t, double> ? 1e-12 : 2e-5;
  int64_t unwritten = 0;
  for (int j = 0; j < rows_width; ++j) {
    double s = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      const double v = double(p[r * rows_width + j]);
      if (std::isnan(v)) ++unwritten;
      s += v;
    }
    if (!std::isnan(s) && std::abs(s - sums[j]) > tol * (magnitude[j] + 1e-3)) {
      char text[200];
      std::snprintf(text, sizeof text, "partials row %d channel %d: sum %.6e, want %.6e", j / k.channels,
                    j % k.channels, s, sums[j]);
      emulation::report(text);
      break;
    }
  }
  if (unwritten) emulation::report("partials: " + std::to_string(unwritten) + " entries never written");
}

const char* act_name(Activation a) {
  return a == Activation::kGelu ? "gelu" : a == Activation::kQuickGelu ? "quick_gelu" : "none";
}

template <typename scalar_t>
void run_cases(const char* dtype, bool quick, const std::string& only, int& cases) {
  std::mt19937 gen(1234);
  // Shapes: T = 1, 2 (under kt's reach), odd and even T; token counts that leave a partial token group; channel
  // counts that leave partial channel blocks; 32-thread blocks (several channel blocks and token groups) to
  // 256; 1 to 5 resident blocks (persistent blocks walking 1 to many items).
  std::vector<Case> shapes = {
      {3, 8, 2, 7, 64, 64, 3, LayoutKind::kContiguous, Activation::kGelu},
      {3, 5, 3, 13, 40, 32, 2, LayoutKind::kPatchRows, Activation::kQuickGelu},
      {3, 1, 4, 6, 24, 128, 1, LayoutKind::kContiguous, Activation::kNone},
      {3, 2, 3, 9, 48, 64, 5, LayoutKind::kPadded, Activation::kGelu},
      {3, 3, 2, 5, 33, 64, 3, LayoutKind::kContiguous, Activation::kGelu},     // odd channels: no vectors
      {3, 4, 2, 5, 32, 64, 2, LayoutKind::kMisaligned, Activation::kQuickGelu},
      {3, 6, 2, 11, 136, 256, 4, LayoutKind::kPatchRows, Activation::kGelu},   // 2 channel blocks of 64 vectors
  };
  std::vector<Case> cases_list;
  for (int kt : {1, 3, 5, 7})
    for (size_t i = 0; i < shapes.size(); ++i) {
      if (quick && i % 2 == 1) continue;
      Case c = shapes[i];
      c.kt = kt;
      if (kt == 7 && i == 0) c.frames_per_clip = 9;
      cases_list.push_back(c);
    }
  for (const Case& k : cases_list) {
    auto name = [&](const char* dir, const char* variant) {
      char text[256];
      std::snprintf(text, sizeof text, "%s %s %s kt=%d T=%d clips=%d N=%d Ca=%d threads=%d resident=%d %s %s", dir,
                    variant, dtype, k.kt, k.frames_per_clip, k.clips, k.tokens, k.channels, k.threads, k.resident,
                    layout_name(k.layout), act_name(k.act));
      return std::string(text);
    };
    for (size_t v = 0; v < std::size(kForwardVariants); ++v) {
      if (!only.empty() && only != kForwardVariants[v].name) continue;
      emulation::current_case = name("fwd", kForwardVariants[v].name);
      run_forward_case<scalar_t>(ForwardVariant(v), k, dtype, gen);
      ++cases;
    }
    for (size_t v = 0; v < std::size(kBackwardVariants); ++v) {
      if (!only.empty() && only != kBackwardVariants[v].name) continue;
      emulation::current_case = name("bwd", kBackwardVariants[v].name);
      run_backward_case<scalar_t>(BackwardVariant(v), k, dtype, gen);
      ++cases;
    }
  }
}

int main(int argc, char** argv) {
  bool quick = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") quick = true;
    else if (arg == "--variant" && i + 1 < argc) only = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--variant NAME]\n", argv[0]);
      return 2;
    }
  }
  int cases = 0;
  run_cases<float>("float", quick, only, cases);
  run_cases<c10::BFloat16>("bfloat16", quick, only, cases);
  run_cases<c10::Half>("float16", quick, only, cases);
  run_cases<double>("double", true, only, cases);
  for (const auto& [what, count] : emulation::ran_counts) std::printf("ran: %s: %d cases\n", what.c_str(), count);
  std::printf("emulated %d cases (fwd variants:", cases);
  for (const auto& v : kForwardVariants) std::printf(" %s", v.name);
  std::printf("; bwd variants:");
  for (const auto& v : kBackwardVariants) std::printf(" %s", v.name);
  std::printf("): %d failures\n", emulation::errors);
  return emulation::errors ? 1 : 0;
}
