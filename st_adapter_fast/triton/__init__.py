"""Moved to st_adapter_fast.kernels.triton: this old package's submodules are aliases of the new ones, for
code outside the repository. (The package itself is not replaced by the new one: its submodules would then be
found in the new folder and loaded a second time under the old names.)"""
from ..kernels import triton as _package


def __getattr__(name):
    return getattr(_package, name)
