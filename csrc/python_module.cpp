// The Python module st_adapter_fast._C. Importing it loads the library, whose static initialisers
// register the ops (torch.ops.st_adapter_fast.*); the module itself reports how it was built and what its
// kernels cover (see temporal_conv.h), which the package's capability table (backends.py) reads, and the CUDA
// kernels' variants (cuda_variants.h), which the tests and benchmarks/cuda_kernel_sweep.py read.
#include "cuda_variants.h"
#include "temporal_conv.h"

#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "st-adapter-fast compiled kernels (ops registered as torch.ops.st_adapter_fast.*)";
#ifdef ST_ADAPTER_FAST_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("max_kernel_t") = st_adapter_fast::kMaxKernelT;
  pybind11::tuple dtypes(std::size(st_adapter_fast::kKernelDtypes));
  for (size_t i = 0; i < std::size(st_adapter_fast::kKernelDtypes); ++i)
    dtypes[i] = pybind11::cast(st_adapter_fast::kKernelDtypes[i]);   // torch.float32, ...
  m.attr("dtypes") = dtypes;
  pybind11::dict activation_codes;
  for (const auto& entry : st_adapter_fast::kActivationNames)
    activation_codes[entry.name] = static_cast<int>(entry.code);
  m.attr("activation_codes") = activation_codes;

  // CUDA kernel variants (in every build: a CPU-only build still names them): names per direction, the
  // default's, the variables that select them, each one's default threads and summary.
  namespace saf = st_adapter_fast;
  auto variant_names = [](const auto& table) {
    pybind11::tuple names(std::size(table));
    for (size_t i = 0; i < std::size(table); ++i) names[i] = table[i].name;
    return names;
  };
  auto variant_info = [](const auto& table) {
    pybind11::dict info;
    for (const auto& v : table) {
      pybind11::dict entry;
      entry["threads"] = v.threads;
      entry["summary"] = v.summary;
      info[v.name] = entry;
    }
    return info;
  };
  pybind11::dict variants, defaults, variables, info;
  variants["fwd"] = variant_names(saf::kForwardVariants);
  variants["bwd"] = variant_names(saf::kBackwardVariants);
  defaults["fwd"] = saf::kForwardVariants[0].name;
  defaults["bwd"] = saf::kBackwardVariants[0].name;
  variables["fwd"] = saf::kForwardVariantEnv;
  variables["bwd"] = saf::kBackwardVariantEnv;
  info["fwd"] = variant_info(saf::kForwardVariants);
  info["bwd"] = variant_info(saf::kBackwardVariants);
  m.attr("cuda_variants") = variants;
  m.attr("cuda_default_variants") = defaults;
  m.attr("cuda_variant_env") = variables;
  m.attr("cuda_variant_info") = info;
  m.def(
      "selected_cuda_variant",
      [](const std::string& direction) -> std::string {
        // What the next CUDA call of `direction` ("fwd" or "bwd") runs, read from the environment as that call
        // reads it; a name that is no variant raises ValueError, as the call would.
        try {
          if (direction == "fwd") return saf::kForwardVariants[int(saf::selected_forward_variant())].name;
          if (direction == "bwd") return saf::kBackwardVariants[int(saf::selected_backward_variant())].name;
        } catch (const c10::ValueError& error) {
          throw pybind11::value_error(error.what_without_backtrace());
        }
        throw pybind11::value_error("direction must be 'fwd' or 'bwd', got '" + direction + "'");
      },
      pybind11::arg("direction"));
#ifdef ST_ADAPTER_FAST_WITH_CUDA
  // A launch record as a dict: what ran (and why, if not what was asked for), kernel, geometry, attributes.
  auto record_dict = [](const saf::CudaLaunchRecord& r) {
    pybind11::dict d;
    if (r.kernel.empty()) return d;
    d["direction"] = r.direction;
    d["requested"] = r.requested;
    d["ran"] = r.ran;
    d["reason"] = r.reason;
    d["kernel"] = r.kernel;
    d["kt"] = r.kt;
    d["vec"] = r.vec;
    d["vector_bytes"] = r.vector_bytes;
    d["depth"] = r.depth;
    d["inflight_bytes"] = r.inflight_bytes;
    d["grid"] = pybind11::make_tuple(r.grid[0], r.grid[1], r.grid[2]);
    d["block"] = pybind11::make_tuple(r.block[0], r.block[1], r.block[2]);
    d["threads"] = r.block[0] * r.block[1] * r.block[2];
    d["shared_bytes"] = r.shared_bytes;
    d["partial_rows"] = r.partial_rows;
    d["registers"] = r.registers;
    d["local_bytes"] = r.local_bytes;
    d["static_shared_bytes"] = r.static_shared_bytes;
    d["max_threads"] = r.max_threads;
    d["blocks_per_sm"] = r.blocks_per_sm;
    return d;
  };
  // What the last CUDA conv launch of this thread ran (registers etc. as the runtime reports them).
  m.def("last_cuda_launch", [record_dict]() { return record_dict(saf::last_cuda_launch()); });
  // The launch a call would make, computed without a GPU (cuda_variants.h: plan_cuda_launch).
  m.def(
      "cuda_launch_plan",
      [record_dict](const std::string& direction, const std::string& variant, c10::ScalarType dtype, int64_t kt,
                    int64_t channels, int64_t num_tokens, int64_t num_frames, int64_t clips, int aligned_bytes,
                    int threads, int resident_blocks, int max_threads) {
        try {
          return record_dict(saf::plan_cuda_launch(direction, variant, dtype, kt, channels, num_tokens, num_frames,
                                                   clips, aligned_bytes, threads, resident_blocks, max_threads));
        } catch (const c10::ValueError& error) {
          throw pybind11::value_error(error.what_without_backtrace());
        }
      },
      pybind11::arg("direction"), pybind11::arg("variant"), pybind11::arg("dtype"), pybind11::arg("kt"),
      pybind11::arg("channels"), pybind11::arg("num_tokens"), pybind11::arg("num_frames"), pybind11::arg("clips"),
      pybind11::arg("aligned_bytes") = 16, pybind11::arg("threads") = 0, pybind11::arg("resident_blocks") = 264,
      pybind11::arg("max_threads") = 1024);
#endif
}
