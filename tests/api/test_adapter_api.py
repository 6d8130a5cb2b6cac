"""The adapter API around a model: what is saved and loaded, rebuilding from a folder (from_pretrained),
removing and disabling adapters, placement names, the video layout check."""
import json

import pytest
import torch

import st_adapter_fast as saf

timm = pytest.importorskip("timm")
TINY = dict(img_size=32, depth=2)


def classifier(**kwargs):
    arguments = dict(num_frames=2, adapter_channels=8, dropout=0.0, model_kwargs=TINY, seed=0)
    return saf.build_video_classifier("vit_tiny_patch16_224", 5, **dict(arguments, **kwargs))


def perturb(model, seed=1):
    """Random non-zero values in every adapter and head tensor (the init makes adapters the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".st_adapter_" in name or name.startswith("head."):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


VIDEO = torch.randn(2, 3, 2, 32, 32, generator=torch.Generator().manual_seed(0))
HEAD_AND_ADAPTERS = {"head.weight", "head.bias"} | {
    f"backbone.blocks.{i}.st_adapter_mlp.{layer}.{kind}" for i in range(2) for layer in ("fc1", "conv", "fc2")
    for kind in ("weight", "bias")}


def saved_names(path):
    return set(json.loads((path / "adapter_config.json").read_text())["tensors"])


def test_save_and_load_pick_adapters_and_head_whatever_requires_grad(tmp_path):
    model = perturb(classifier())
    model.requires_grad_(False)                                   # as for inference
    model.backbone.norm.requires_grad_(True)                      # an unfrozen backbone layer is not saved
    saf.save_adapters(model, tmp_path / "frozen")
    assert saved_names(tmp_path / "frozen") == HEAD_AND_ADAPTERS
    fresh = classifier().requires_grad_(False)
    saf.load_adapters(fresh, tmp_path / "frozen")
    assert torch.equal(fresh(VIDEO), model(VIDEO))
    assert not any(p.requires_grad for p in fresh.parameters())  # loading changes no flags


def test_from_pretrained_rebuilds_the_saved_classifier(tmp_path):
    model = perturb(classifier(placement="mlp", pooling="norm_then_mean")).eval()
    saf.save_adapters(model, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "adapter_config.json").read_text())["video_classifier"]
    assert record["model_name"] == "vit_tiny_patch16_224" and record["model_kwargs"] == TINY
    assert (record["num_classes"], record["num_frames"], record["pooling"]) == (5, 2, "norm_then_mean")
    with warnings_as_errors():
        loaded = saf.from_pretrained(tmp_path / "run")        # random backbone from the recorded seed
    assert not loaded.training
    assert torch.equal(loaded(VIDEO), model(VIDEO))
    assert isinstance(loaded, saf.VideoClassifier) and saf.adapter_config(loaded) == saf.adapter_config(model)
    other = saf.from_pretrained(tmp_path / "run", backend="reference", backbone_dtype=torch.bfloat16)
    assert other.backbone.blocks[0].st_adapter_mlp.backend == "reference"
    assert other.backbone.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="adapter_channels"):
        saf.from_pretrained(tmp_path / "run", adapter_channels=4)


def test_from_pretrained_with_local_backbone_weights(tmp_path):
    from safetensors.torch import save_file
    weights = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TINY)
    save_file({k: v.contiguous() for k, v in weights.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    model = perturb(classifier(checkpoint_path=tmp_path / "vit.safetensors", seed=None)).eval()
    saf.save_adapters(model, tmp_path / "run")
    with pytest.warns(UserWarning, match="vit.safetensors.*randomly initialised"):
        saf.from_pretrained(tmp_path / "run")
    loaded = saf.from_pretrained(tmp_path / "run", checkpoint_path=tmp_path / "vit.safetensors")
    assert torch.equal(loaded(VIDEO), model(VIDEO))


def test_from_pretrained_reads_an_older_train_folder_through_its_train_config(tmp_path):
    """A train run's adapters/ folder from before build arguments were recorded: train_config.json."""
    import dataclasses

    from st_adapter_fast.video.train import TrainConfig
    model = perturb(classifier()).eval()
    saf.save_adapters(model, tmp_path / "adapters")
    config_file = tmp_path / "adapters" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    del config["video_classifier"]
    config_file.write_text(json.dumps(config))
    run = TrainConfig(model="vit_tiny_patch16_224", input_size=32, model_kwargs=dict(depth=2), num_classes=5,
                      num_frames=2, adapter_channels=8, dropout=0.0, seed=0)
    (tmp_path / "adapters" / "train_config.json").write_text(json.dumps(dataclasses.asdict(run)))
    assert torch.equal(saf.from_pretrained(tmp_path / "adapters")(VIDEO), model(VIDEO))


def test_from_pretrained_says_what_a_folder_lacks(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json not found"):
        saf.from_pretrained(tmp_path / "nothing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken/adapter_config.json: not valid JSON"):
        saf.from_pretrained(tmp_path / "broken")
    backbone = saf.add_st_adapters(timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY), 8)
    saf.save_adapters(backbone, tmp_path / "bare")                 # no classifier: nothing to rebuild from
    assert saved_names(tmp_path / "bare") == {n[len("backbone."):] for n in HEAD_AND_ADAPTERS if "adapter" in n}
    with pytest.raises(ValueError, match="does not record how to build the model.*load_adapters"):
        saf.from_pretrained(tmp_path / "bare")
    unrecorded = saf.VideoClassifier(backbone, 5)
    saf.save_adapters(unrecorded, tmp_path / "classifier")
    with pytest.raises(ValueError, match="does not record"):
        saf.from_pretrained(tmp_path / "classifier")


class warnings_as_errors:
    def __enter__(self):
        import warnings
        self.context = warnings.catch_warnings()
        self.context.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        return self.context.__exit__(*exc)


@pytest.mark.parametrize("placement", ["mlp", "attn", ("attn", "mlp")])
def test_remove_st_adapters_restores_the_plain_backbone(placement):
    torch.manual_seed(0)
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY).eval()
    plain.blocks[1].requires_grad_(False)                 # flags as the user had them
    flags = {n: p.requires_grad for n, p in plain.named_parameters()}
    keys = list(plain.state_dict())
    images = torch.randn(4, 3, 32, 32)
    expected = plain(images)
    perturb(saf.add_st_adapters(plain, 8, placement=placement, num_frames=2))
    assert not torch.equal(plain(images), expected)
    assert saf.remove_st_adapters(plain) is plain
    assert list(plain.state_dict()) == keys and torch.equal(plain(images), expected)
    assert {n: p.requires_grad for n, p in plain.named_parameters()} == flags
    assert not any(block._forward_pre_hooks or block.drop_path1._forward_hooks for block in plain.blocks)
    assert not saf.integrations.timm.has_st_adapters(plain)
    saf.add_st_adapters(plain, 8, num_frames=2)          # and it can be adapted again


def test_remove_st_adapters_from_a_classifier_leaves_a_linear_probe():
    model = perturb(classifier())
    saf.remove_st_adapters(model)
    assert {n for n, p in model.named_parameters() if ".st_adapter_" in n} == set()
    assert model(VIDEO).shape == (2, 5)
    with pytest.raises(ValueError, match="no ST-Adapters"):
        saf.remove_st_adapters(model)


def test_disable_adapters_gives_exactly_the_plain_backbone():
    model = perturb(classifier(placement=("attn", "mlp"))).eval()
    adapted = model(VIDEO)
    plain = classifier(placement=("attn", "mlp")).eval()     # same backbone and seed, identity adapters
    plain.head.load_state_dict(model.head.state_dict())
    saf.remove_st_adapters(plain)
    expected = plain(VIDEO)
    with saf.disable_adapters(model):
        assert torch.equal(model(VIDEO), expected)
        with saf.disable_adapters(model):                    # nests
            pass
        assert torch.equal(model(VIDEO), expected)
    assert torch.equal(model(VIDEO), adapted)
    with pytest.raises(KeyError):
        with saf.disable_adapters(model.backbone):
            raise KeyError("inside")
    assert torch.equal(model(VIDEO), adapted)                # back on after an exception


def test_placement_names():
    model = classifier(placement="mlp")
    assert saf.adapter_config(model)["placement"] == ["mlp"]
    assert saf.adapter_config(classifier(placement=["mlp", "attn"]))["placement"] == ["attn", "mlp"]
    with pytest.raises(ValueError, match="placement must be"):
        classifier(placement="ffn")


@pytest.mark.parametrize("name, size", [("eva02_tiny_patch14_224", 28), ("vit_small_patch16_rope_224", 32)])
@pytest.mark.parametrize("placement", ["mlp", "attn"])
def test_eva_blocks_take_both_placements(name, size, placement):
    """EVA and the RoPE ViTs (EVA's blocks): both placements, exactly the plain model at init."""
    torch.manual_seed(0)
    plain = timm.create_model(name, num_classes=0, img_size=size, depth=1).eval()
    images = torch.randn(2, 3, size, size)
    expected = plain(images)
    saf.add_st_adapters(plain, 8, placement=placement, num_frames=2)
    assert torch.equal(plain(images), expected)
    assert saf.VideoClassifier(plain, 3)(torch.randn(1, 3, 2, size, size)).shape == (1, 3)


def test_set_num_frames_and_adapter_config_are_public():
    model = classifier()
    saf.set_num_frames(model, 4)
    assert model.backbone._st_adapter_state.num_frames == 4
    assert saf.adapter_config(model)["adapter_channels"] == 8


def test_video_in_frames_first_layout_gets_a_layout_error():
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\).*looks like \(B, T, C, H, W\).*permute"):
        classifier()(VIDEO.transpose(1, 2))
