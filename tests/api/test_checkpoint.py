"""load_adapters refuses a damaged checkpoint with a ValueError/TypeError naming the file (and the tensor),
and leaves the model untouched: everything is checked before anything is copied."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import st_adapter_fast as saf
from st_adapter_fast.checkpoint import CONFIG_NAME, WEIGHTS_NAME

timm = pytest.importorskip("timm")


def classifier():
    torch.manual_seed(0)
    return saf.integrations.timm.build_video_classifier("vit_tiny_patch16_224", 5, num_frames=2, adapter_channels=16,
                                                        model_kwargs=dict(img_size=32))


@pytest.fixture
def checkpoint(tmp_path):
    model = classifier()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    return saf.save_adapters(model, tmp_path / "ckpt")


def assert_refused_and_untouched(path, error, match):
    model = classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        saf.load_adapters(model, path)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a refused checkpoint changed the model"


def rewrite_tensor(path, convert):
    tensors = load_file(path / WEIGHTS_NAME)
    names = sorted(tensors)
    victim = names[-1]   # the last one: every earlier tensor is valid, so a copy-as-you-go loader would write them
    tensors[victim] = convert(tensors[victim])
    save_file(tensors, path / WEIGHTS_NAME)
    return victim


@pytest.mark.parametrize("convert", [lambda t: t.to(torch.int64), lambda t: t > 0, lambda t: t.to(torch.complex64)],
                         ids=["int64", "bool", "complex64"])
def test_tensor_of_a_non_floating_dtype_is_refused(checkpoint, convert):
    victim = rewrite_tensor(checkpoint, convert)
    assert_refused_and_untouched(checkpoint, TypeError, rf"{WEIGHTS_NAME}.*{victim}.*dtype")


def test_tensor_of_a_wrong_shape_is_refused(checkpoint):
    victim = rewrite_tensor(checkpoint, lambda t: torch.zeros(*t.shape, 2))
    assert_refused_and_untouched(checkpoint, ValueError, rf"{WEIGHTS_NAME}.*{victim}.*shape")


@pytest.mark.parametrize("content, match", [
    ([1, 2], "JSON object.*list"),
    ({"format_version": 1}, "st_adapter_config"),
    ({"format_version": 1, "st_adapter_config": [1]}, "st_adapter_config"),
    ({"format_version": 2, "st_adapter_config": {}}, "format"),
    ("not json at all", "not valid JSON"),
])
def test_bad_config_file_is_refused(checkpoint, content, match):
    with open(checkpoint / CONFIG_NAME, "w") as f:
        f.write(content if isinstance(content, str) else json.dumps(content))
    assert_refused_and_untouched(checkpoint, ValueError, rf"{CONFIG_NAME}.*{match}")


def test_unreadable_weights_file_is_refused(checkpoint):
    (checkpoint / WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    assert_refused_and_untouched(checkpoint, ValueError, rf"{WEIGHTS_NAME}.*safetensors")


def test_good_checkpoint_loads(checkpoint):
    model = classifier()
    saf.load_adapters(model, checkpoint)
    saved = load_file(checkpoint / WEIGHTS_NAME)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[name], t) for name, t in saved.items())
