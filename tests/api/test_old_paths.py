"""The module paths from before the package was split by concern keep working for outside code: each is the
new module itself (sys.modules aliases), so attributes set through the old path reach the new module."""
import importlib
import pathlib

import pytest

MOVED = {"train": "video.train", "data": "video.data", "synthetic": "video.synthetic", "demo": "video.demo",
         "benchmark": "bench.benchmark", "e2e": "bench.e2e", "parity": "bench.parity", "compiled": "kernels.compiled",
         "triton.adapter": "kernels.triton.adapter", "triton.common": "kernels.triton.common",
         "triton.temporal_conv": "kernels.triton.temporal_conv",
         "triton.matmul_residual": "kernels.triton.matmul_residual"}


@pytest.mark.parametrize("old, new", MOVED.items())
def test_old_path_is_the_new_module(old, new):
    module = importlib.import_module(f"st_adapter_fast.{old}")
    assert module is importlib.import_module(f"st_adapter_fast.{new}")
    shim = pathlib.Path(importlib.import_module("st_adapter_fast").__file__).parent / (old.replace(".", "/") + ".py")
    assert f"st_adapter_fast.{new}" in shim.read_text().splitlines()[0]   # its docstring names the new home


def test_setting_through_an_old_path_reaches_the_new_module(monkeypatch):
    import st_adapter_fast.benchmark
    from st_adapter_fast.bench import benchmark
    configs = {"tiny": (1, 2, 10, 16, 8)}
    monkeypatch.setattr(st_adapter_fast.benchmark, "CPU_CONFIGS", configs)
    assert benchmark.CPU_CONFIGS is configs
    from st_adapter_fast.train import TrainConfig, train
    from st_adapter_fast.video import train as video_train
    assert TrainConfig is video_train.TrainConfig and train is video_train.train


def test_old_triton_package_reads_the_new_one():
    import st_adapter_fast.triton
    from st_adapter_fast.kernels import triton
    assert st_adapter_fast.triton.MAX_KERNEL_T == triton.MAX_KERNEL_T
    assert "st_adapter_fast.kernels.triton" in st_adapter_fast.triton.__doc__
