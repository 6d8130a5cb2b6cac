"""Activation checkpointing of the backbone's blocks (st_adapter_fast.checkpointing): the plain run's gradients
for every mode and backend, eager and compiled, what the recomputation really runs (counted op by op in
backward), the memory it saves, and the errors."""
import collections
import copy
import io

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import st_adapter_fast as saf
from conftest import DEVICE
from st_adapter_fast.integrations.checkpointing import checkpointing_mode, set_checkpointing
from st_adapter_fast.integrations.timm import build_video_classifier
from st_adapter_fast.measure import LiveTensorBytes

timm = pytest.importorskip("timm")
DEPTH, WIDTH, ADAPTER = 2, 32, 16
# OpenAI CLIP's architecture (QuickGELU MLPs, as the authors' model) in miniature: 4 x 4 patches of 8 px
TINY = dict(img_size=32, patch_size=8, depth=DEPTH, embed_dim=WIDTH, num_heads=2)
aten = torch.ops.aten


def classifier(backend="reference", depth=DEPTH, placement=("attn", "mlp")):
    torch.manual_seed(0)
    model = build_video_classifier("vit_base_patch16_clip_quickgelu_224", 5, num_frames=4, adapter_channels=ADAPTER,
                                   dropout=0.0, model_kwargs=dict(TINY, depth=depth), placement=placement,
                                   activation=None, backend=backend)
    with torch.no_grad():   # random non-zero adapters: the default init is the identity
        for name, p in model.named_parameters():
            if ".st_adapter_" in name:
                p.normal_(0, 0.2)
    return model.to(DEVICE)


VIDEO = torch.randn(2, 3, 4, 32, 32)
LABELS = torch.tensor([1, 3])


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that run (those of compiled aot_eager graphs too), and the output widths of matmuls."""

    @classmethod
    def ignore_compile_internals(cls):
        return True

    def __init__(self):
        super().__init__()
        self.ops, self.matmul_widths = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops[func] += 1
        if func in (aten.mm.default, aten.addmm.default):
            self.matmul_widths[out.shape[-1]] += 1
        return out


def step(model, call=None):
    """Loss and trainable gradients of one step, and the ops its backward ran."""
    loss = torch.nn.functional.cross_entropy((call or model)(VIDEO.to(DEVICE)), LABELS.to(DEVICE))
    with OpCounter() as backward:
        loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, backward


BACKENDS = ["reference", pytest.param(DEVICE, marks=pytest.mark.compiled)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_gives_the_plain_gradients(backend, mode):
    loss, grads, _ = step(classifier(backend))
    model = set_checkpointing(classifier(backend), mode)
    assert checkpointing_mode(model) == mode
    loss_ckpt, grads_ckpt, _ = step(model)
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads_ckpt.keys() == grads.keys() and len(grads) == 2 * DEPTH * 6 + 2
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_selective_recomputes_the_cheap_ops_and_keeps_attention_and_widening_matmuls(backend):
    """Counted in backward against the plain run: selective reruns the QuickGELU's sigmoid and the norms of
    every block, and the attention's output projection (C -> C), but neither attention nor the qkv (C -> 3C)
    and fc1 (C -> 4C) matmuls; full checkpointing reruns all of them."""
    runs = {mode: step(set_checkpointing(classifier(backend), mode))[2] for mode in ("none", "selective", "full")}
    recomputed = {mode: runs[mode].ops - runs["none"].ops for mode in ("selective", "full")}
    widths = {mode: runs[mode].matmul_widths - runs["none"].matmul_widths for mode in ("selective", "full")}
    attention = [op for op in runs["full"].ops if "scaled_dot_product" in str(op) and "backward" not in str(op)]
    assert attention and runs["none"].ops[aten.sigmoid.default] == 0
    for mode in ("selective", "full"):
        assert recomputed[mode][aten.sigmoid.default] == DEPTH, mode                  # QuickGELU
        assert recomputed[mode][aten.native_layer_norm.default] == 2 * DEPTH, mode   # norm1, norm2
        assert widths[mode][WIDTH] >= DEPTH, mode                                    # the output projections
    assert all(recomputed["full"][op] == DEPTH for op in attention)
    assert not any(recomputed["selective"][op] for op in attention)
    assert widths["full"][3 * WIDTH] == widths["full"][4 * WIDTH] == DEPTH
    assert widths["selective"][3 * WIDTH] == widths["selective"][4 * WIDTH] == 0
    if backend == "reference":   # the authors' adapter: its depthwise Conv3d is recomputed
        assert recomputed["selective"][aten.convolution.default] == 2 * DEPTH


@pytest.mark.compiled
def test_selective_under_torch_compile_fullgraph(tmp_path, monkeypatch):
    """The compiled classifier (one graph, aot_eager: the graphs run op by op, so they can be counted) with
    selective checkpointing: the plain eager gradients, attention not rerun, the sigmoid rerun."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    loss, grads, _ = step(classifier(DEVICE))
    model = set_checkpointing(classifier(DEVICE), "selective")
    compiled = saf.compile_model(model, backend="aot_eager")
    step(model, compiled)   # compiles
    model.zero_grad(set_to_none=True)
    loss_c, grads_c, backward = step(model, compiled)
    assert compiled.fullgraph
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], rtol=1e-4, atol=1e-5, msg=name)
    assert backward.ops[aten.sigmoid.default] == DEPTH
    assert not any(n for op, n in backward.ops.items() if "scaled_dot_product" in str(op) and "backward" not in str(op))


def test_checkpointing_lowers_the_peak_of_live_activations():
    """Peak bytes of live tensors over a step (forward and backward), counted by storage: selective below
    none, full below selective."""
    peaks = {}
    for mode in ("none", "selective", "full"):
        model = set_checkpointing(classifier(depth=4, placement=("mlp",)), mode)
        with LiveTensorBytes() as live:
            step(model)
        peaks[mode] = live.peak_bytes
    assert peaks["full"] < peaks["selective"] < 0.95 * peaks["none"], peaks


def test_the_model_keeps_its_names_and_hooks_and_none_undoes_it():
    model = classifier()
    keys = list(model.state_dict())
    plain_class = type(model.backbone.blocks[0])
    set_checkpointing(model, True)   # the former boolean: full
    assert checkpointing_mode(model) == "full" and isinstance(model.backbone.blocks[0], plain_class)
    assert list(model.state_dict()) == keys
    copied = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)   # the whole model, pickled
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert checkpointing_mode(loaded) == "full" and list(loaded.state_dict()) == keys
    loss, grads, _ = step(loaded)
    assert grads.keys() == step(classifier())[1].keys()
    set_checkpointing(model, "selective")
    assert checkpointing_mode(copied) == "full" and checkpointing_mode(model) == "selective"
    with torch.no_grad():   # eval runs the blocks as they are
        torch.testing.assert_close(model.eval()(VIDEO), classifier().eval()(VIDEO))
    set_checkpointing(model, "none")
    assert type(model.backbone.blocks[0]) is plain_class and checkpointing_mode(model) == "none"
    assert checkpointing_mode(set_checkpointing(model.backbone, False)) == "none"   # the timm model itself


def test_errors_name_the_mode_and_change_nothing():
    model = classifier()
    with pytest.raises(ValueError, match="mode must be one of none, full, selective.*'partial'"):
        set_checkpointing(model, "partial")
    assert checkpointing_mode(model) == "none"
    model.backbone.set_grad_checkpointing(True)
    with pytest.raises(ValueError, match="set_grad_checkpointing"):
        set_checkpointing(model, "selective")
    assert checkpointing_mode(model) == "none"
    with pytest.raises(TypeError, match="not a supported image backbone"):
        set_checkpointing(torch.nn.Linear(2, 2), "full")
