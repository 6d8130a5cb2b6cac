"""The CMake build of csrc/ against libtorch (the pip-installed torch's), and its ctest of the CPU kernels."""
import glob
import os
import shutil
import subprocess

import pytest
import torch

pytestmark = pytest.mark.compiled

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def configure_args():
    """cmake -D arguments for a libtorch from pip. A CUDA build of torch makes find_package(Torch) look for
    the CUDA toolkit and nvrtc, which pip keeps in site-packages/nvidia."""
    args = [f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    if torch.version.cuda:
        cuda_home = os.environ.get("CUDA_HOME") or ("/usr/local/cuda" if os.path.isdir("/usr/local/cuda") else None)
        assert cuda_home, "torch was built with CUDA: its CMake config needs a CUDA toolkit (set CUDA_HOME)"
        args += [f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}", f"-DCUDAToolkit_ROOT={cuda_home}"]
        site = os.path.dirname(os.path.dirname(torch.__file__))
        nvrtc = sorted(glob.glob(os.path.join(site, "nvidia", "**", "libnvrtc.so*"), recursive=True))
        if nvrtc:
            args.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc[0]}")
    return args


def run(cmd, **kwargs):
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def test_cmake_build_and_ctest(tmp_path):
    cmake = shutil.which("cmake")
    assert cmake, "cmake is needed for this test (pip install cmake)"
    build = str(tmp_path / "build")
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0"))
    run([cmake, "-S", ROOT, "-B", build, *configure_args()], env=env)
    run([cmake, "--build", build, "-j", str(max(2, os.cpu_count() or 1))], env=env)
    out = run([shutil.which("ctest") or "ctest", "--test-dir", build, "--output-on-failure", "-V"], env=env)
    assert "all checks passed" in out and "100% tests passed" in out, out
