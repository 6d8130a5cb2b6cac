"""What an adapted model records about its adapters, read by the adapter API (checkpoints) and written by the
integrations that add adapters to model families.

The contract: the module that an integration adapted carries `st_adapter_config`, a JSON-able dict of the
adapters' configuration (channels, kernel size, placement, layers, ...); a module whose own parameters are
saved with the adapters (a classifier's head) names those children in `checkpoint_children`; a module that can
say how it was built has `build_record()` (JSON-able arguments) and names in `record_identity_keys` those
that decide what it computes, which load_adapters requires a folder's record to agree on. Nothing here
knows any model library.
"""
from .validation import check_module


def adapted_module(model):
    """`model` or the module inside it whose adapters an integration added (it carries `st_adapter_config`)."""
    check_module(model, "model (a model with ST-Adapters)")
    for m in model.modules():
        if getattr(m, "st_adapter_config", None) is not None:
            return m
    raise ValueError("the model has no ST-Adapters (use add_st_adapters or build_video_classifier)")


def has_st_adapters(model):
    """Whether `model` or a module inside it has ST-Adapters (from add_st_adapters)."""
    return any(getattr(m, "st_adapter_config", None) is not None for m in model.modules())


def adapter_config(model):
    """The adapter configuration that add_st_adapters recorded on `model` (or on the adapted module inside
    it): adapter_channels, kernel_size, placement, layers (block indices), activation, num_prefix_tokens,
    embed_dim, num_blocks. save_adapters writes it; load_adapters requires the model's to be equal."""
    return adapted_module(model).st_adapter_config
