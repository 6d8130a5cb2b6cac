"""`STAdapter`: the drop-in module, the authors' parameters with the fast op behind its forward."""
from .ops import BACKENDS, st_adapter
from .reference import STAdapterReference


class STAdapter(STAdapterReference):
    """ST-Adapter with the authors' parameter names and shapes (``fc1``, ``conv``, ``fc2``), so their
    checkpoints load with ``load_state_dict``; ``activation=None`` reproduces their release exactly.

    Args as :class:`~st_adapter_fast.reference.STAdapterReference`, plus
        backend: "auto" (default): the compiled kernels of the tensors' device, else the Triton kernels on a
            GPU, else the reference with a one-time warning saying why. "cpu" / "cuda": the compiled kernels
            of csrc/; "triton": the Triton kernels; "reference": the authors' PyTorch computation. A forced
            backend that cannot run an input raises an error saying why. The kernels cover temporal kernels
            (kt, 1, 1) with odd kt <= 7. (The README's backend table lists every case.)

    ``forward(x, num_frames, grid_size=None)``: (B*T, L, C) -> (B*T, L, C); ``x`` is never written; ``grid_size``:
    this call's patch grid (default: the module's).
    """

    def __init__(self, in_channels, adapter_channels, kernel_size=(3, 1, 1), *, activation="gelu",
                 num_prefix_tokens=1, grid_size=None, backend="auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        super().__init__(in_channels, adapter_channels, kernel_size, activation=activation,
                         num_prefix_tokens=num_prefix_tokens, grid_size=grid_size)
        self.backend = backend

    def forward(self, x, num_frames, grid_size=None):
        return st_adapter(x, num_frames, *self.adapter_params(), activation=self.activation,
                          num_prefix_tokens=self.num_prefix_tokens,
                          grid_size=self.grid_size if grid_size is None else grid_size,
                          backend=self.backend)

    def extra_repr(self):
        return f"{super().extra_repr()}, backend={self.backend!r}"
