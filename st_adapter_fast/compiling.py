"""`torch.compile` of a whole model for training: `compile_model(model, mode)`.

The adapters' ops are registered custom ops (`st_adapter_fast::adapter_fwd` / `adapter_bwd`) with fake
implementations, so a timm classifier with adapters compiles as one graph (fullgraph), checkpointed blocks
included (checkpointing.py). "reduce-overhead" adds CUDA graphs of the compiled forward and backward on a
GPU: the step's host time goes away for fixed shapes (each new input shape is captured once more).
"""
import os
import warnings

import torch
from torch import nn

from .validation import check_module

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# torch.compile backend; "aot_eager" (no code generation) tells a dynamo / AOTAutograd problem from an inductor
# one, and compiles in seconds where inductor takes minutes (tests).
BACKEND_VARIABLE = "ST_ADAPTER_FAST_COMPILE_BACKEND"


def compile_model(model, mode="default", backend=None):
    """`model` under torch.compile, as a `CompiledModel` (a module: call it as the model; other attributes are
    the model's; for DDP wrap the CompiledModel). `mode`: "default", "reduce-overhead" (CUDA graphs on
    a GPU; elsewhere a warning, and plain compilation) or "max-autotune". `backend`: torch.compile's, default
    $ST_ADAPTER_FAST_COMPILE_BACKEND or "inductor" (modes apply to inductor only).

    Compiles lazily, on the first call, as one graph (fullgraph); a model that dynamo cannot trace whole
    is compiled with graph breaks instead, with a warning that says where."""
    check_module(model, "compile_model's model")
    if backend is not None and not isinstance(backend, str) and not callable(backend):
        raise TypeError(f"backend must be None, a torch.compile backend name or a callable, got {backend!r}")
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    backend = backend or os.environ.get(BACKEND_VARIABLE) or "inductor"
    device = next((p.device.type for p in model.parameters()), "cpu")
    if mode == "reduce-overhead" and device != "cuda":
        warnings.warn(f"compile mode reduce-overhead captures CUDA graphs, which need a CUDA device; the model is on "
                      f"{device}: compiled without them", stacklevel=2)
    return CompiledModel(model, mode, backend)


class CompiledModel(nn.Module):
    """A model compiled by `compile_model`: `module` is the model itself (its state_dict keys get the prefix
    "module.", as torch.compile's "_orig_mod."), `mode` and `backend` what it was compiled with, `fullgraph`
    whether it still compiles as one graph. Wrap it, not the model, in DistributedDataParallel: dynamo cannot
    trace DDP's own forward whole."""

    def __init__(self, module, mode, backend):
        super().__init__()
        self.module, self.mode, self.backend, self.fullgraph = module, mode, backend, True
        self._compile()

    def _compile(self):
        options = dict(mode=self.mode) if self.backend == "inductor" else {}
        # torch.compile's own module wrapper, kept out of this module's children (its parameters are `module`'s)
        object.__setattr__(self, "_compiled", torch.compile(self.module, backend=self.backend,
                                                            fullgraph=self.fullgraph, **options))

    def forward(self, *args, **kwargs):
        if self.mode == "reduce-overhead":   # a new step: the previous step's CUDA-graph outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        # The pre-MLP adapters' hooks keep the block input in a list and take it back within the block; inside a
        # checkpointed block dynamo refuses such side effects unless told that skipping them in the recomputation
        # is fine (it is: nothing is left in the list).
        with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):
            try:
                return self._compiled(*args, **kwargs)
            except torch._dynamo.exc.Unsupported as error:   # raised while tracing, before anything ran
                if not self.fullgraph:
                    raise
                reason = str(error).strip().splitlines()[0]
                warnings.warn(f"{type(self.module).__name__} does not compile as one graph ({reason}); compiling it "
                              "with graph breaks (slower, and fewer CUDA graphs)", stacklevel=3)
                self.fullgraph = False
                self._compile()
            return self._compiled(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)   # parameters, buffers, submodules (`module`)
        except AttributeError:
            if name == "module":   # not set yet (copy, unpickling): no recursion
                raise
            return getattr(self.module, name)

    def extra_repr(self):
        return f"mode={self.mode!r}, backend={self.backend!r}, fullgraph={self.fullgraph}"
