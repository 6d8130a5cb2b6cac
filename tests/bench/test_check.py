"""`st-adapter-fast check` end to end (small config; Triton interpreted on a CPU-only machine)."""
import os
import subprocess
import sys

import pytest

from st_adapter_fast import cli
from conftest import DEVICE


@pytest.mark.triton
def test_check_reports_every_backend(capsys):
    assert cli.main(["check", "--config", "small", "--device", DEVICE]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "triton" in out and f"\n{DEVICE} " in out   # compiled backend rows
    assert "FAIL" not in out


def test_check_runs_with_the_kernel_library_alone():
    """The main job needs no extra: without av, pyyaml, tqdm, matplotlib and timm `check` still reports."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = ("import sys\nsys.modules.update(dict.fromkeys(('av', 'yaml', 'tqdm', 'matplotlib', 'timm')))\n"
            "from st_adapter_fast.cli import main\nsys.exit(main(['check', '--device', 'cpu']))")
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), TRITON_INTERPRET="0")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "reference" in result.stdout and "\ncpu " in result.stdout and "FAIL" not in result.stdout
    assert "10/10 within tolerance" in result.stdout   # reference in float32 and bfloat16, cpu in three dtypes
