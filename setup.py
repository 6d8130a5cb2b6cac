"""Build of the compiled kernels (st_adapter_fast._C) with torch's cpp_extension and ninja.

The CPU kernels are always built; the CUDA kernels too when a CUDA toolkit is found (CUDA_HOME or
/usr/local/cuda), for the architectures in TORCH_CUDA_ARCH_LIST (default: 8.0 and 9.0, i.e. sm_80 and
sm_90). ST_ADAPTER_FAST_NO_EXTENSION=1 skips the compiled part: the package then runs its reference and
Triton paths only. torch must be installed first (pip install --no-build-isolation), as the extension
is compiled against the torch it will run with.
"""
import os
import sys

from setuptools import setup

SOURCES_CPU = ["csrc/ops.cpp", "csrc/adapter.cpp", "csrc/adapter_autograd.cpp", "csrc/temporal_conv_cpu.cpp", "csrc/python_module.cpp"]
SOURCES_CUDA = ["csrc/temporal_conv_cuda.cu"]
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def _skip():
    return os.environ.get("ST_ADAPTER_FAST_NO_EXTENSION", "0") == "1"


def _has_libmvec():
    """glibc's vector math library (x86-64 Linux), which the CPU kernels' vectorised erf/exp call."""
    import ctypes.util
    import platform
    return platform.system() == "Linux" and platform.machine() == "x86_64" and ctypes.util.find_library("mvec")


def _extension_setup():
    """ext_modules and cmdclass for setup(), or a clear error when the build cannot happen."""
    if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"   # before torch guesses it from an nvcc wrapper on PATH
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as error:
        sys.exit(f"st-adapter-fast: building the compiled kernels needs torch installed first ({error}). Install "
                 "torch, then this package with `pip install --no-build-isolation`, or set "
                 "ST_ADAPTER_FAST_NO_EXTENSION=1 to install without the compiled kernels.")
    cuda_home = cpp_extension.CUDA_HOME
    with_cuda = cuda_home is not None and torch.version.cuda is not None
    # -fno-math-errno lets GCC vectorise erf/exp calls (libmvec, see csrc/temporal_conv_cpu.cpp).
    # -fopenmp: at::parallel_for is inline OpenMP code, serial without it. Not linked: GOMP_* resolve to
    # the OpenMP runtime torch itself loads, so that one thread pool serves both.
    compile_args = {"cxx": ["-O3", "-fno-math-errno", "-fopenmp"]}
    link_args = ["-lmvec"] if _has_libmvec() else []
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        compile_args["cxx"].append("-DST_ADAPTER_FAST_WITH_CUDA")
        compile_args["nvcc"] = ["-O3", "-DST_ADAPTER_FAST_WITH_CUDA"]
        extension = cpp_extension.CUDAExtension("st_adapter_fast._C", SOURCES_CPU + SOURCES_CUDA,
                                                extra_compile_args=compile_args, extra_link_args=link_args)
    else:
        print("st-adapter-fast: no CUDA toolkit found (CUDA_HOME or /usr/local/cuda) or torch without CUDA: "
              "building the CPU kernels only", file=sys.stderr)
        extension = cpp_extension.CppExtension("st_adapter_fast._C", SOURCES_CPU, extra_compile_args=compile_args,
                                               extra_link_args=link_args)
    return [extension], {"build_ext": cpp_extension.BuildExtension}


if _skip():
    setup()
else:
    ext_modules, cmdclass = _extension_setup()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
