// The Python module st_adapter_fast._C. Importing it loads the library, whose static initialisers
// register the ops (torch.ops.st_adapter_fast.*); the module itself only reports how it was built.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "st-adapter-fast compiled kernels (ops registered as torch.ops.st_adapter_fast.*)";
#ifdef ST_ADAPTER_FAST_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
