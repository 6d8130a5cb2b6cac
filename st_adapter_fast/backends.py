"""What each backend runs, in one table, and the choice of the backend for a call.

A `Capability` per backend says the devices its tensors may be on, its dtypes, the kernel sizes it covers
and whether this installation can run it at all, and why not:

    "cpu", "cuda"   the compiled kernels of csrc/ (st_adapter_fast._C, kernels/compiled.py); what they cover
                    is what the extension states (its `max_kernel_t`, `dtypes`, `with_cuda`)
    "triton"        the Triton kernels (kernels/triton/); what they cover is what kernels/triton/__init__.py
                    states; CUDA tensors, and CPU tensors under TRITON_INTERPRET=1
    "reference"     the authors' computation in PyTorch (reference.py): every device, dtype and kernel size

`choose_backend` (also for backend="auto"), the op's dtype check (validation.py), `st-adapter-fast check`
and the CLI's backend listing all ask this table; the table is built when asked, so it sees the extension,
triton and TRITON_INTERPRET as they are at that moment.
"""
import importlib.util
import warnings
from typing import NamedTuple

import torch

from .kernels import compiled
from .kernels import triton as triton_kernels   # what the Triton kernels cover; imports no triton

BACKENDS = ("auto", "triton", "cuda", "cpu", "reference")
# The backends in the table, in the order `st-adapter-fast check` reports them.
TABLE_ORDER = ("reference", "cpu", "cuda", "triton")
# What the op takes at all: the reference runs every one of them (validation.py refuses the rest).
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

# Looked up, not imported: triton reads TRITON_INTERPRET when it is first imported, which must stay
# up to the caller (the CLI's --interpret, the tests' conftest). Without triton the reference path works.
HAS_TRITON = importlib.util.find_spec("triton") is not None
interpreting = triton_kernels.interpreting


class Capability(NamedTuple):
    """What one backend runs in this installation."""

    name: str                 # the backend= value
    kernels: str              # how messages name what runs: "the compiled kernels", ...
    devices: tuple            # device types its tensors may be on; None: any
    dtypes: tuple             # compute dtypes
    max_kernel_t: int | None  # temporal kernels (kt, 1, 1) with odd kt up to this; None: any kernel size
    unavailable: str | None   # why this installation cannot run it at all; None if it can
    extension_missing: bool = False   # unavailable because st_adapter_fast._C is not loaded (a RuntimeError)
    device_note: str = ""     # what messages add to the devices (how to run on others)

    @property
    def available(self):
        return self.unavailable is None

    def why_not(self, x, compute_dtype, kernel_size):
        """Why this backend cannot run a call on `x` in `compute_dtype` with `kernel_size`, or None if it can."""
        if self.unavailable is not None:
            return self.unavailable
        device = device_type(x)
        if self.devices is not None and device not in self.devices:
            return (f"backend={self.name!r} runs on {' or '.join(self.devices)} tensors{self.device_note}, "
                    f"x is on {x.device}")
        if compute_dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            return f"dtype {compute_dtype} is not supported by {self.kernels} ({names} are)"
        return self.kernel_size_reason(kernel_size)

    def kernel_size_reason(self, kernel_size):
        """Why this backend cannot run `kernel_size`: it covers temporal kernels (kt, 1, 1) with kt <=
        max_kernel_t only; None if it can."""
        if self.max_kernel_t is None:
            return None
        kt, kh, kw = kernel_size
        if (kh, kw) != (1, 1) or kt > self.max_kernel_t:
            return (f"kernel_size {tuple(kernel_size)} is not temporal (kt, 1, 1) with kt <= {self.max_kernel_t}, "
                    f"which is what {self.kernels} cover")
        return None


def device_type(x):
    """The device type of `x` as the backend choice sees it ("cuda" for any CUDA tensor)."""
    return "cuda" if x.is_cuda else x.device.type


def _compiled(name):
    module, error = compiled.EXTENSION
    unavailable = error
    if module is not None and name == "cuda" and not module.with_cuda:
        unavailable = ("this build of st_adapter_fast._C has no CUDA kernels (no CUDA toolkit was found when it "
                       "was built)")
    return Capability(name, "the compiled kernels", (name,), tuple(module.dtypes) if module else (),
                      module.max_kernel_t if module else None, unavailable, extension_missing=module is None)


def _triton():
    on_cpu = interpreting()
    return Capability("triton", "the fused Triton kernels", ("cuda", "cpu") if on_cpu else ("cuda",),
                      triton_kernels.DTYPES, triton_kernels.MAX_KERNEL_T, None if HAS_TRITON else "triton is not installed",
                      device_note="" if on_cpu else " (and cpu tensors under TRITON_INTERPRET=1)")


def capability(name):
    """The Capability of backend `name` ("cpu", "cuda", "triton" or "reference") in this installation, now."""
    if name in ("cpu", "cuda"):
        return _compiled(name)
    if name == "triton":
        return _triton()
    if name == "reference":
        return Capability("reference", "the reference", None, SUPPORTED_DTYPES, None, None)
    raise ValueError(f"backend must be one of {TABLE_ORDER}, got {name!r}")


def capabilities():
    """Every backend's Capability, in TABLE_ORDER."""
    return tuple(capability(name) for name in TABLE_ORDER)


def available_on(device):
    """The Capabilities of the backends that can run tensors on `device` ("cpu" or "cuda") here, in TABLE_ORDER."""
    return tuple(c for c in capabilities() if c.available and (c.devices is None or device in c.devices))


_warned = set()


def warn_once(message, stacklevel=3):
    """warnings.warn(message) the first time this message comes up in the process."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=stacklevel)


def choose_backend(backend, x, compute_dtype, kernel_size):
    """Resolve `backend` to the path that runs ("triton", "cuda", "cpu" or "reference"), or raise why it cannot.

    "auto": the compiled kernels of the tensors' device (csrc/), else on a GPU the Triton kernels; the
    reference (with a one-time warning) where none of those can run the call. Meta tensors (shape
    inference, deferred init) take the reference path under "auto", without a warning. A forced backend
    that cannot run the call raises a ValueError saying why (a RuntimeError when the compiled extension
    it needs is missing).
    """
    path, fallback_warning = resolve_backend(backend, x, compute_dtype, kernel_size)
    if fallback_warning is not None:
        warn_once(fallback_warning)
    return path


def resolve_backend(backend, x, compute_dtype, kernel_size):
    """(path, warning): `choose_backend`'s path, and the warning it gives for a fallback to the reference
    (None otherwise), without giving it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference" or (backend == "auto" and x.device.type == "meta"):
        return "reference", None
    if backend != "auto":
        forced = capability(backend)
        reason = forced.why_not(x, compute_dtype, kernel_size)
        if reason is not None:
            error = RuntimeError if forced.extension_missing else ValueError
            raise error(f"backend={backend!r} cannot run this input: {reason}")
        return backend, None
    # On a GPU the compiled CUDA kernels come first: they measured faster than the Triton ones (H200, ViT-B/16
    # bf16 fwd+bwd: 0.951 vs 1.017 ms of GPU time, 2.08 vs 2.49 ms launched; benchmarks/results/nvidia-h200.json).
    # Triton is next where the extension was built without CUDA.
    candidates = ("cuda", "triton") if x.is_cuda else ("cpu",)
    reasons = []
    for name in candidates:
        reasons.append(capability(name).why_not(x, compute_dtype, kernel_size))
        if reasons[-1] is None:
            return name, None
    return "reference", "st_adapter_fast: falling back to the (slower) reference path: " + "; ".join(reasons)
