"""Every argument of add_st_adapters, VideoClassifier and build_video_classifier is checked at the boundary with
an error naming it, and a call that fails leaves the model exactly as it was."""
import pytest
import torch

import st_adapter_fast as saf
from st_adapter_fast.integrations import adapters as adapters_module

timm = pytest.importorskip("timm")
TINY = dict(patch_size=8, depth=2, img_size=32)


def tiny_vit(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **dict(TINY, **kwargs)).eval()


def snapshot(model):
    """Everything add_st_adapters could change: modules, parameters and flags, hooks, attributes."""
    return dict(modules=[name for name, _ in model.named_modules()],
                params={name: (p.requires_grad, p.detach().clone()) for name, p in model.named_parameters()},
                hooks=[(name, len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()],
                attributes=sorted(vars(model)))


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after["modules"] == before["modules"] and after["hooks"] == before["hooks"]
    assert after["attributes"] == before["attributes"]
    for name, (flag, value) in before["params"].items():
        assert after["params"][name][0] == flag and torch.equal(after["params"][name][1], value), name


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(adapter_channels=0), ValueError, "adapter_channels"),
    (dict(adapter_channels="16"), TypeError, "adapter_channels"),
    (dict(kernel_size=(2, 1, 1)), ValueError, "kernel_size"),
    (dict(placement="ffn"), ValueError, "placement"),
    (dict(placement=3), ValueError, "placement"),
    (dict(layers=[0, 5]), ValueError, "layers"),
    (dict(layers="0"), TypeError, "layers"),
    (dict(layers=[0.5]), TypeError, "layers"),
    (dict(layers=0), ValueError, "layers"),
    (dict(num_frames=0), ValueError, "num_frames"),
    (dict(num_frames=2.0), TypeError, "num_frames"),
    (dict(activation="relu"), ValueError, "activation"),
    (dict(backend="gpu"), ValueError, "backend"),
    (dict(freeze="yes"), TypeError, "freeze"),
    (dict(layers=[]), ValueError, "layers=.*selects no block"),   # it froze the whole model and added nothing
    (dict(kernel_size=None), TypeError, "kernel_size"),
    (dict(kernel_size=True), TypeError, "kernel_size"),
    (dict(kernel_size=(3, 1)), ValueError, "kernel_size"),
])
def test_add_st_adapters_checks_every_argument_before_touching_the_model(kwargs, error, match):
    model = tiny_vit()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        saf.add_st_adapters(model, **dict(dict(adapter_channels=8), **kwargs))
    assert_unchanged(model, before)


def test_a_block_without_the_mlp_hook_points_is_refused_before_anything_changes():
    model = tiny_vit(block_fn=timm.models.vision_transformer.ParallelScalingBlock)
    before = snapshot(model)
    with pytest.raises(TypeError, match="block 0 is a ParallelScalingBlock.*placement 'attn' works with any block"):
        saf.add_st_adapters(model, 8, placement=("attn", "mlp"))
    assert_unchanged(model, before)
    images = torch.randn(2, 3, 32, 32)
    expected = model(images)
    saf.add_st_adapters(model, 8, placement="attn", num_frames=2)   # before attention: any block
    assert torch.equal(model(images), expected)


def test_a_failure_while_attaching_rolls_everything_back(monkeypatch):
    model = tiny_vit()
    before = snapshot(model)
    attach, calls = adapters_module._attach, []

    def failing_attach(block, adapters, state):
        calls.append(block)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return attach(block, adapters, state)

    monkeypatch.setattr(adapters_module, "_attach", failing_attach)
    with pytest.raises(RuntimeError, match="injected"):
        saf.add_st_adapters(model, 8, placement=("attn", "mlp"))
    assert_unchanged(model, before)


def test_already_adapted_and_remove_restore_exactly():
    model = tiny_vit()
    model.blocks[0].requires_grad_(False)
    before = snapshot(model)
    saf.add_st_adapters(model, 8)
    with pytest.raises(ValueError, match="already has ST-Adapters"):
        saf.add_st_adapters(model, 8)
    saf.remove_st_adapters(model)
    assert_unchanged(model, before)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_classes=0), ValueError, "num_classes"),
    (dict(num_classes="5"), TypeError, "num_classes"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(dropout="0.1"), ValueError, "dropout"),
    (dict(pooling="max"), ValueError, "pooling"),
    (dict(backbone_dtype=torch.int8), ValueError, "backbone_dtype"),
    (dict(backbone_dtype="half-ish"), ValueError, "backbone_dtype"),
])
def test_video_classifier_checks_its_arguments_before_changing_the_backbone(kwargs, error, match):
    backbone = saf.add_st_adapters(tiny_vit(), 8, num_frames=2)
    before = snapshot(backbone)
    with pytest.raises(error, match=match):
        saf.VideoClassifier(backbone, **dict(dict(num_classes=5), **kwargs))
    assert_unchanged(backbone, before)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(model_name=5), TypeError, "model_name"),
    (dict(model_name="hf:"), ValueError, "model_name"),
    (dict(num_classes=0), ValueError, "num_classes"),
    (dict(num_frames=0), ValueError, "num_frames"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(pooling="max"), ValueError, "pooling"),
    (dict(backbone_dtype="int8"), ValueError, "backbone_dtype"),
    (dict(model_kwargs=[("depth", 1)]), TypeError, "model_kwargs"),
    (dict(model_kwargs=dict(TINY, not_an_argument=1)), TypeError, "cannot be created"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(checkpoint_path="nope.safetensors"), FileNotFoundError, "checkpoint_path"),
    (dict(adapter_channels=0), ValueError, "adapter_channels"),
    (dict(placement="ffn"), ValueError, "placement"),
    (dict(layers=[]), ValueError, "layers"),
    (dict(checkpoint_path=5), TypeError, "checkpoint_path"),
    (dict(checkpoint_path="."), ValueError, "checkpoint_path . is a folder"),
    # what the record of a saved classifier may not hold, refused for a direct call too
    (dict(model_kwargs=dict(TINY, device="meta")), ValueError, "model_kwargs: 'device' is not allowed"),
    (dict(model_kwargs=dict(TINY, dtype=torch.float16)), ValueError, "model_kwargs: 'dtype' is not allowed"),
    (dict(model_kwargs=dict(TINY, pretrained=True)), ValueError, "model_kwargs: 'pretrained' is not allowed"),
    (dict(model_kwargs=dict(TINY, checkpoint_path="w.pth")), ValueError, "'checkpoint_path' is not allowed"),
    (dict(model_kwargs={1: 2}), TypeError, "model_kwargs"),
    # values timm itself fails on deep inside (ZeroDivisionError, AssertionError)
    (dict(model_kwargs=dict(TINY, patch_size=0)), ValueError, "cannot be created.*check model_kwargs"),
    (dict(model_kwargs=dict(TINY, class_token=False)), ValueError, "cannot be created.*check model_kwargs"),
    (dict(model_kwargs=dict(TINY, depth=0)), ValueError, "no blocks"),
])
def test_build_video_classifier_names_the_argument(kwargs, error, match):
    arguments = dict(model_name="vit_tiny_patch16_224", num_classes=5, num_frames=2, adapter_channels=8,
                     model_kwargs=TINY)
    with pytest.raises(error, match=match):
        saf.build_video_classifier(**dict(arguments, **kwargs))


def test_build_video_classifier_has_no_catch_all_keyword():
    """Its signature lists every argument (what a recorded build may hold is read from it)."""
    import inspect
    parameters = inspect.signature(saf.build_video_classifier).parameters.values()
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in parameters)
    assert {"adapter_channels", "kernel_size", "placement", "layers", "activation", "backend"} <= {
        p.name for p in parameters}
    with pytest.raises(TypeError, match="unexpected keyword argument 'adapter_chanels'"):
        saf.build_video_classifier("vit_tiny_patch16_224", 5, adapter_chanels=8)


def classifier(**kwargs):
    return saf.build_video_classifier("vit_tiny_patch16_224", 5, num_frames=2, adapter_channels=8, dropout=0.0,
                                      model_kwargs=TINY, seed=0, **kwargs).eval()


def test_integer_video_is_refused_and_half_precision_video_is_taken():
    model = classifier()
    video = torch.rand(2, 3, 2, 32, 32)
    with pytest.raises(TypeError, match="video must be a floating-point tensor.*uint8"):
        model((video * 255).to(torch.uint8))
    with torch.no_grad():
        half = video.half()
        assert torch.equal(model(half), model(half.float()))
        low = classifier(backbone_dtype=torch.bfloat16)
        assert low(video.double()).dtype == torch.float32


def test_frames_of_another_size_are_refused_where_the_model_takes_one_size():
    with pytest.raises(ValueError, match=r"takes \(32, 32\) frames, got \(48, 48\).*dynamic_img_size"):
        classifier()(torch.randn(1, 3, 2, 48, 48))


def test_a_video_on_another_device_is_refused_naming_both():
    with pytest.raises(ValueError, match="video is on meta but the classifier is on cpu"):
        classifier()(torch.randn(1, 3, 2, 32, 32, device="meta"))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(grid_size=(4,)), ValueError, "grid_size"),
    (dict(grid_size=(0, 4)), ValueError, "grid_size"),
    (dict(grid_size=(2.5, 2)), TypeError, "grid_size"),
    (dict(grid_size=4), ValueError, "grid_size"),
    (dict(kernel_size=(True, 1, 1)), TypeError, "kernel_size"),
    (dict(kernel_size=None), TypeError, "kernel_size"),
])
def test_adapter_constructor_checks_grid_and_kernel_size(kwargs, error, match):
    with pytest.raises(error, match=match):
        saf.STAdapter(16, 8, **kwargs)


def test_authors_checkpoint_files_that_are_not_checkpoints_are_refused_naming_the_file(tmp_path):
    from st_adapter_fast.integrations.authors import load_authors_checkpoint
    model = saf.build_video_classifier("vit_base_patch16_clip_quickgelu_224", 5, num_frames=2, adapter_channels=8,
                                       activation=None, model_kwargs=dict(TINY, embed_dim=32, num_heads=2), seed=0)
    before = snapshot(model)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint" * 8)
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint" * 8)
    for name in ("garbage.pth", "garbage.safetensors"):
        with pytest.raises(ValueError, match=f"{name}: not a readable"):
            load_authors_checkpoint(model, tmp_path / name)
    with pytest.raises(ValueError, match="checkpoint file .* is a folder"):
        load_authors_checkpoint(model, tmp_path)
    with pytest.raises(TypeError, match="keys must be str"):
        load_authors_checkpoint(model, {1: torch.zeros(1)})
    with pytest.raises(TypeError, match="strict_architecture"):
        load_authors_checkpoint(model, {}, strict_architecture="no")
    assert_unchanged(model, before)


def test_a_backbone_a_library_fails_to_build_is_a_value_error_naming_model_kwargs():
    pytest.importorskip("transformers")
    kwargs = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=0)   # transformers divides by it: ZeroDivisionError deep inside
    with pytest.raises(ValueError, match="hf:clip cannot be created .*ZeroDivisionError.*check model_kwargs"):
        saf.build_video_classifier("hf:clip", 5, num_frames=2, adapter_channels=8, model_kwargs=kwargs)
