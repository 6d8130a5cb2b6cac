// The Python module st_adapter_fast._C. Importing it loads the library, whose static initialisers
// register the ops (torch.ops.st_adapter_fast.*); the module itself reports how it was built and what its
// kernels cover (see temporal_conv.h), which the package's capability table (backends.py) reads.
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
}
