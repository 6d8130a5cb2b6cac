"""The CMake build of csrc/ against libtorch (the pip-installed torch's) and its ctest of the CPU kernels,
run with exactly the command the README gives."""
import os
import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.compiled

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARK = "<!-- cmake: tests/kernels/test_cmake_build.py runs this block as written (with its own build directory) -->"


def readme_cmake_block():
    with open(os.path.join(ROOT, "README.md")) as f:
        after = f.read().split(MARK, 1)
    assert len(after) == 2, "README has no CMake block"
    return re.match(r"\s*```bash\n(.*?)```", after[1], flags=re.S).group(1)


def test_cmake_build_and_ctest(tmp_path):
    assert shutil.which("cmake"), "cmake is needed for this test (pip install cmake)"
    script = readme_cmake_block()
    assert script.count("build/cmake") == 3
    script = script.replace("build/cmake", str(tmp_path / "build"))
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"the README's CMake command failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert "100% tests passed" in result.stdout, result.stdout[-4000:]
