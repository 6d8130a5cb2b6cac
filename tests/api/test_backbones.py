"""ST-Adapters in every supported backbone, as a user builds them: timm (Block, EvaBlock and its post-norm form,
average and attention pooling), Hugging Face (CLIP, SigLIP, Dinov2 with and without registers, DINOv3) and
open_clip, from tiny random-weight configs (nothing downloaded)."""
import copy

import pytest
import torch

import st_adapter_fast as saf
from st_adapter_fast.integrations.backbones import backbone_blocks, backbone_type, create_backbone

HF = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
TIMM = dict(patch_size=8, depth=2, img_size=32)
OPEN_CLIP = dict(width=32, layers=2, head_width=16, image_size=32, patch_size=8)
# name: (model spec, its arguments, library to import)
BACKBONES = {
    "timm-clip": ("vit_base_patch16_clip_quickgelu_224", dict(TIMM, embed_dim=32, num_heads=2), "timm"),
    "timm-registers-gap": ("vit_tiny_patch16_224", dict(TIMM, reg_tokens=2, class_token=False, global_pool="avg"),
                           "timm"),
    "timm-eva02": ("eva02_tiny_patch14_224", TIMM, "timm"),
    "timm-eva-post-norm": ("eva02_enormous_patch14_clip_224", dict(TIMM, embed_dim=32, num_heads=2, mlp_ratio=2),
                           "timm"),
    "timm-dinov3-avg": ("vit_small_patch16_dinov3", dict(TIMM, embed_dim=32, num_heads=2, global_pool="avg"), "timm"),
    "timm-pe-map": ("vit_pe_core_tiny_patch16_384", dict(TIMM, global_pool="map"), "timm"),
    "timm-rope": ("vit_small_patch16_rope_224", dict(TIMM, embed_dim=32, num_heads=2), "timm"),
    "hf-clip": ("hf:clip", dict(HF, intermediate_size=64), "transformers"),
    "hf-siglip": ("hf:siglip", dict(HF, intermediate_size=64), "transformers"),
    "hf-siglip-no-head": ("hf:siglip", dict(HF, intermediate_size=64, vision_use_head=False), "transformers"),
    "hf-dinov2": ("hf:dinov2", dict(HF, mlp_ratio=2), "transformers"),
    "hf-dinov2-registers": ("hf:dinov2_with_registers", dict(HF, mlp_ratio=2, num_register_tokens=2), "transformers"),
    "hf-dinov3": ("hf:dinov3_vit", dict(HF, intermediate_size=64, num_register_tokens=2), "transformers"),
    "open_clip": ("open_clip:ViT-B-16-quickgelu", OPEN_CLIP, "open_clip"),
}
ONE_PER_LIBRARY = ["timm-eva02", "hf-clip", "hf-dinov3", "open_clip"]


def backbone(name, seed=0):
    spec, kwargs, library = BACKBONES[name]
    pytest.importorskip(library)
    torch.manual_seed(seed)
    return create_backbone(spec, **kwargs).eval()


def classifier(name, seed=0, **kwargs):
    spec, model_kwargs, library = BACKBONES[name]
    pytest.importorskip(library)
    arguments = dict(num_frames=3, adapter_channels=8, dropout=0.0, model_kwargs=model_kwargs, seed=seed)
    return saf.build_video_classifier(spec, 5, **dict(arguments, **kwargs))


def features(model, images):
    return backbone_type(model).library.features(model, images)


def randomise_adapters(model, std=0.1):
    torch.manual_seed(7)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, saf.STAdapter):
                for p in module.parameters():
                    p.normal_(0, std)


@pytest.mark.parametrize("name", BACKBONES)
def test_adapters_at_init_or_disabled_give_exactly_the_backbone(name):
    plain = backbone(name)
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = features(plain, images)
    for placement in ("mlp", ("attn", "mlp")):
        model = saf.add_st_adapters(copy.deepcopy(plain), 8, placement=placement, num_frames=3)
        assert len([m for m in model.modules() if isinstance(m, saf.STAdapter)]) == 2 * len(
            saf.adapter_config(model)["placement"])
        with torch.no_grad():
            assert torch.equal(features(model, images), expected), placement
            randomise_adapters(model)
            assert not torch.allclose(features(model, images), expected), placement
            with saf.disable_adapters(model):
                assert torch.equal(features(model, images), expected), placement


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["timm-clip", "hf-dinov2", "open_clip"])
def test_identity_adapters_are_exact_in_low_precision(name, dtype):
    """The branch is corrected by adapter(y) - y, exactly zero at init: no second rounding of x + b."""
    plain = backbone(name).to(dtype)
    images = (3 * torch.randn(6, 3, 32, 32)).to(dtype)
    model = saf.add_st_adapters(copy.deepcopy(plain), 8, placement=("attn", "mlp"), num_frames=3).to(dtype)
    with torch.no_grad():
        assert torch.equal(features(model, images), features(plain, images))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_identity_adapters_are_exact_for_tokens_of_any_magnitude(dtype):
    """Where x + b cancels, x + ((x + b) - x) is not x + b in low precision (one element in a million here); the
    hooks add adapter(y) - y, exactly zero at init, to b instead."""
    plain = backbone("timm-clip").to(dtype)
    model = saf.add_st_adapters(copy.deepcopy(plain), 8, placement="mlp", num_frames=4).to(dtype)
    torch.manual_seed(0)
    x = (torch.randn(2048, 17, 32) * 10 ** (3 * torch.rand(2048, 17, 32) - 1.5)).to(dtype)
    with torch.no_grad():
        assert torch.equal(model.blocks[0](x), plain.blocks[0](x))


def _adapted(block, name, x, frames):
    return getattr(block, name)(x, frames) if hasattr(block, name) else x


def _timm_block(block, x, frames):
    x = _adapted(block, "st_adapter_attn", x, frames)
    x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
    x = _adapted(block, "st_adapter_mlp", x, frames)
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _eva_block(block, x, frames):
    def scaled(gamma, y):
        return y if gamma is None else gamma * y
    x = _adapted(block, "st_adapter_attn", x, frames)
    x = x + block.drop_path1(scaled(block.gamma_1, block.attn(block.norm1(x))))
    x = _adapted(block, "st_adapter_mlp", x, frames)
    return x + block.drop_path2(scaled(block.gamma_2, block.mlp(block.norm2(x))))


def _hf_clip_block(block, x, frames):
    x = _adapted(block, "st_adapter_attn", x, frames)
    x = x + block.self_attn(block.layer_norm1(x), attention_mask=None)[0]
    x = _adapted(block, "st_adapter_mlp", x, frames)
    return x + block.mlp(block.layer_norm2(x))


def _hf_dino_block(block, x, frames):
    x = _adapted(block, "st_adapter_attn", x, frames)
    x = x + block.layer_scale1(block.attention(block.norm1(x))[0])
    x = _adapted(block, "st_adapter_mlp", x, frames)
    return x + block.layer_scale2(block.mlp(block.norm2(x)))


def _open_clip_block(block, x, frames):
    x = _adapted(block, "st_adapter_attn", x, frames)
    y = block.ln_1(x)
    x = x + block.ls_1(block.attn(y, y, y, need_weights=False)[0])
    x = _adapted(block, "st_adapter_mlp", x, frames)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


HAND_WRITTEN = {"timm-clip": _timm_block, "timm-eva02": _eva_block, "hf-clip": _hf_clip_block,
                "hf-dinov2-registers": _hf_dino_block, "open_clip": _open_clip_block}


@pytest.mark.parametrize("placement", ["mlp", ("attn", "mlp")])
@pytest.mark.parametrize("name", HAND_WRITTEN)
def test_adapted_block_equals_its_hand_written_forward(name, placement):
    """Every library's block with adapters in it, against the block written out with the adapters in place
    (the authors' order), in fp32: the hooks put them where they belong, and prefix tokens stay prefix tokens."""
    model = saf.add_st_adapters(backbone(name), 8, placement=placement, num_frames=3)
    randomise_adapters(model)
    block = backbone_blocks(model)[1]
    config = saf.adapter_config(model)
    x = torch.randn(6, config["num_prefix_tokens"] + 16, config["embed_dim"])
    with torch.no_grad():
        got = block(x, None) if name == "hf-clip" else block(x)   # CLIP's layer takes its attention mask
        with saf.disable_adapters(model):
            expected = HAND_WRITTEN[name](block, x, 3)
            plain = block(x, None) if name == "hf-clip" else block(x)
    assert (got - expected).norm() / expected.norm() <= 1e-5
    assert (got - plain).abs().max() > 1e-3


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("pooling", ["mean_then_norm", "norm_then_mean"])
def test_one_frame_gives_exactly_the_backbones_own_image_feature(name, pooling):
    """At T = 1 the video feature is the backbone's own pooled feature (class token + final norm, average
    pooling after the norm, attention-pool heads), whichever pooling order."""
    model = classifier(name, pooling=pooling).eval()
    randomise_adapters(model)
    seen = []
    model.head.register_forward_pre_hook(lambda head, args: seen.append(args[0]))
    video = torch.randn(4, 3, 1, 32, 32)
    with torch.no_grad():
        model(video)
        expected = features(model.backbone, video[:, :, 0])
    assert torch.equal(seen[0], expected.float())


@pytest.mark.parametrize("name", ["timm-dinov3-avg", "timm-pe-map", "hf-clip", "hf-siglip", "hf-dinov3", "open_clip"])
def test_mean_then_norm_averages_what_reaches_the_final_norm(name):
    """The authors' order, generalised: what the backbone's final norm takes (every token, or the pooled token)
    is averaged over each clip's frames, then the norm and the rest of the backbone's own pooling run."""
    model = classifier(name, pooling="norm_then_mean").eval()
    randomise_adapters(model)
    video = torch.randn(2, 3, 3, 32, 32)
    taken = []
    backbone_type(model.backbone).final_norm(model.backbone).register_forward_hook(
        lambda norm, args, out: taken.append(args[0]))   # runs after the averaging pre-hook
    with torch.no_grad():
        per_frame_logits = model(video)
        model.pooling = "mean_then_norm"
        logits = model(video)
    per_frame, averaged = taken
    assert per_frame.shape[0] == 6 and averaged.shape[0] == 2
    assert torch.equal(averaged, per_frame.reshape(2, 3, *per_frame.shape[1:]).mean(1))
    assert not torch.allclose(logits, per_frame_logits)


@pytest.mark.parametrize("name", ONE_PER_LIBRARY + ["hf-siglip-no-head", "timm-registers-gap"])
def test_gradients_reach_every_adapter_that_can_change_the_output(name):
    model = classifier(name, placement=("attn", "mlp")).train()
    randomise_adapters(model)
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 3, 32, 32)), torch.tensor([1, 3])).backward()
    blocks = backbone_blocks(model.backbone)
    # with class-token pooling, the last block's pre-MLP adapter (patch tokens only) cannot reach the output
    class_token_only = name in ("hf-clip", "hf-dinov3", "open_clip")
    for i, block in enumerate(blocks):
        for where in ("st_adapter_attn", "st_adapter_mlp"):
            if class_token_only and i == len(blocks) - 1 and where == "st_adapter_mlp":
                continue
            for pname, p in getattr(block, where).named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, f"block {i} {where}.{pname}"
    assert all(p.grad is None for n, p in model.named_parameters() if ".st_adapter_" not in n and "head" not in n)


def _own_checkpointing_switch(model):
    backbone = model.backbone
    if hasattr(backbone, "set_grad_checkpointing"):    # timm, open_clip
        backbone.set_grad_checkpointing(True)
    elif hasattr(backbone, "activation_checkpointing_enable"):   # transformers >= 5.x
        backbone.activation_checkpointing_enable()
    else:
        backbone.gradient_checkpointing_enable()


@pytest.mark.parametrize("switch", ["library", "st_adapter_fast"])
@pytest.mark.parametrize("name", ONE_PER_LIBRARY + ["hf-dinov2"])
def test_gradient_checkpointing_gives_the_same_gradients(name, switch):
    """Each library's own checkpointing switch (Hugging Face's wraps the layers' forward, not their __call__:
    the hooks inside still run in the recomputation) and saf's set_grad_checkpointing, which calls it."""
    video, labels = torch.randn(2, 3, 3, 32, 32), torch.tensor([0, 4])

    def gradients(checkpointing):
        model = classifier(name, placement=("attn", "mlp")).train()
        randomise_adapters(model)
        if checkpointing and switch == "library":
            _own_checkpointing_switch(model)
        elif checkpointing:
            saf.integrations.backbones.set_grad_checkpointing(model)
        torch.nn.functional.cross_entropy(model(video), labels).backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 2
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=1e-6, atol=1e-7, msg=n)


@pytest.mark.parametrize("name", ["hf-dinov3", "hf-clip", "open_clip"])
def test_save_and_from_pretrained_round_trip(name, tmp_path):
    model = classifier(name, placement=("attn", "mlp")).eval()
    randomise_adapters(model)
    with torch.no_grad():
        model.head.weight.normal_()
    saf.save_adapters(model, tmp_path / "run")
    again = saf.from_pretrained(tmp_path / "run")
    video = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(video), model(video))
    assert type(again.backbone) is type(model.backbone)


@pytest.mark.parametrize("name", ["hf-clip", "hf-dinov2-registers", "open_clip"])
def test_compile_fullgraph(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    model = classifier(name, placement=("attn", "mlp"), backend="reference").eval()
    randomise_adapters(model)
    video = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        expected = model(video)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(video), expected, rtol=1e-5, atol=1e-5)
        with saf.disable_adapters(model):   # dynamo guards on the adapters' state: toggling recompiles
            torch.testing.assert_close(compiled(video), model(video), rtol=1e-5, atol=1e-5)


def test_adding_adapters_to_a_compiled_model_warns():
    pytest.importorskip("timm")
    model = backbone("timm-clip")
    compiled = torch.compile(model)
    with pytest.warns(UserWarning, match="torch.compile'd module.*compile the model again"):
        assert saf.add_st_adapters(compiled, 8) is compiled
    assert saf.adapter_config(model)["layers"] == [0, 1]
    with pytest.warns(UserWarning, match="torch.compile'd module"):
        saf.remove_st_adapters(compiled)
    assert not saf.integrations.adapters.has_st_adapters(model)


@pytest.mark.parametrize("name", ["timm-rope", "hf-clip", "hf-dinov2"])
def test_the_grid_is_read_from_each_input(name):
    """Models that take other image sizes (timm's dynamic_img_size, Hugging Face's position-embedding
    interpolation) give the adapters the grid of each input: a spatial kernel sees non-square frames right."""
    spec, kwargs, library = BACKBONES[name]
    kwargs = dict(kwargs, dynamic_img_size=True) if library == "timm" else kwargs
    pytest.importorskip(library)
    model = saf.build_video_classifier(spec, 5, num_frames=2, adapter_channels=8, kernel_size=(3, 3, 3),
                                       backend="reference", model_kwargs=kwargs, seed=0).eval()
    randomise_adapters(model)
    grids = []
    adapter = backbone_blocks(model.backbone)[0].st_adapter_mlp
    adapter.register_forward_pre_hook(lambda m, args, kwargs: grids.append(kwargs["grid_size"]), with_kwargs=True)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 2, 32, 48)).shape == (1, 5)
        assert model(torch.randn(1, 3, 2, 32, 32)).shape == (1, 5)
    assert grids == [(4, 6), (4, 4)]


def test_library_model_specs():
    pytest.importorskip("transformers")
    pytest.importorskip("open_clip")
    from st_adapter_fast.integrations.backbones import check_model_name
    check_model_name("hf:dinov2")
    check_model_name("open_clip:ViT-B-16-quickgelu")
    check_model_name("timm:vit_tiny_patch16_224")
    for spec, match in [("hf:nope", "supported model type"), ("open_clip:nope", "unknown model"),
                        ("hf:", "names no model"), ("vit_nope", "unknown timm model")]:
        with pytest.raises(ValueError, match=match):
            check_model_name(spec)
    with pytest.raises(TypeError, match="no field 'depth'"):
        create_backbone("hf:dinov2", depth=2)
    with pytest.raises(TypeError, match="vision_cfg has no field 'depth'"):
        create_backbone("open_clip:ViT-B-16-quickgelu", depth=2)
    with pytest.raises(ValueError, match="hf:clip: the config does not take"):
        create_backbone("hf:clip", hidden_size=30)   # not a multiple of the 12 heads


def test_open_clip_model_config_file(tmp_path):
    """A local open_clip model-config JSON is a model spec, recorded with its absolute path."""
    import json
    pytest.importorskip("open_clip")
    path = tmp_path / "tiny-vit.json"
    path.write_text(json.dumps(dict(embed_dim=16, quick_gelu=True, vision_cfg=OPEN_CLIP)))
    model = saf.build_video_classifier(f"open_clip:{path}", 5, num_frames=2, adapter_channels=8, seed=0)
    assert model.build_arguments["model_name"] == f"open_clip:{path}"
    assert type(model.backbone.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert model(torch.randn(1, 3, 2, 32, 32)).shape == (1, 5)


def test_hf_config_folder_and_checkpoint_file(tmp_path):
    """A local transformers config folder is a model spec; a checkpoint file loads strictly, every tensor
    checked before the first copy."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file
    folder = tmp_path / "dinov2"
    transformers.Dinov2Config(**dict(HF, mlp_ratio=2)).save_pretrained(folder)
    source = backbone("hf-dinov2", seed=3)
    save_file({f"vision_model.{k}": v.contiguous() for k, v in source.state_dict().items()},
              str(tmp_path / "weights.safetensors"))
    model = saf.build_video_classifier(f"hf:{folder}", 5, num_frames=2, adapter_channels=8,
                                       checkpoint_path=tmp_path / "weights.safetensors", seed=0)
    for k, v in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert model.build_arguments["model_name"] == f"hf:{folder}"
    bad = {f"vision_model.{k}": v.contiguous() for k, v in source.state_dict().items()}
    bad["vision_model.layernorm.weight"] = torch.full_like(bad["vision_model.layernorm.weight"], float("nan"))
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="layernorm.weight holds non-finite values"):
        saf.build_video_classifier(f"hf:{folder}", 5, checkpoint_path=tmp_path / "bad.safetensors")


def test_unsupported_models_are_refused_naming_what_is_supported():
    pytest.importorskip("open_clip")
    with pytest.raises(TypeError, match="supported: timm VisionTransformer and Eva.*open_clip VisionTransformer"):
        saf.add_st_adapters(torch.nn.Linear(4, 4), 8)
    with pytest.raises(TypeError, match="backbone"):
        saf.add_st_adapters(classifier("open_clip"), 8)
    with pytest.raises(TypeError, match="not a supported image backbone"):   # open_clip's ResNet tower
        create_backbone("open_clip:RN50", image_size=64)
