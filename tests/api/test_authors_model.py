"""The authors' released video model, written here from the architecture's description (OpenAI CLIP's
visual transformer with adapters, the class token averaged over time, then ln_post, dropout, fc), against
ours built from timm and loaded with load_authors_checkpoint: the same logits in fp32.

Written independently of st_adapter_fast: its own adapter (slice the class token off, fc1, depthwise
Conv3d over (T, H, W), fc2, add back), nn.MultiheadAttention blocks, QuickGELU MLPs.
"""
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from st_adapter_fast.integrations.timm import build_video_classifier, load_authors_checkpoint

timm = pytest.importorskip("timm")

WIDTH, HEADS, LAYERS, PATCH, SIZE, FRAMES, CA, CLASSES = 64, 4, 2, 8, 32, 3, 24, 7


class Adapter(nn.Module):
    def __init__(self, width, channels):
        super().__init__()
        self.fc1 = nn.Linear(width, channels)
        self.conv = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0), groups=channels)
        self.fc2 = nn.Linear(channels, width)

    def forward(self, x, frames):
        clips_frames, tokens, width = x.shape
        side = math.isqrt(tokens - 1)
        h = self.fc1(x[:, 1:])
        h = h.reshape(clips_frames // frames, frames, side, side, -1).permute(0, 4, 1, 2, 3)
        h = self.conv(h).permute(0, 2, 3, 4, 1).reshape(clips_frames, tokens - 1, -1)
        return torch.cat([x[:, :1], x[:, 1:] + self.fc2(h)], dim=1)


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, pre_attn, pre_mlp):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(),
                                             c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)
        self.adapter_pre_attn = Adapter(width, CA) if pre_attn else None
        self.adapter_pre_mlp = Adapter(width, CA) if pre_mlp else None

    def forward(self, x, frames):
        if self.adapter_pre_attn is not None:
            x = self.adapter_pre_attn(x, frames)
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        if self.adapter_pre_mlp is not None:
            x = self.adapter_pre_mlp(x, frames)
        return x + self.mlp(self.ln_2(x))


class AuthorsVideoViT(nn.Module):
    def __init__(self, pre_attn, pre_mlp):
        super().__init__()
        grid = SIZE // PATCH
        self.conv1 = nn.Conv2d(3, WIDTH, PATCH, PATCH, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(WIDTH))
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, WIDTH))
        self.ln_pre = nn.LayerNorm(WIDTH)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(
            ResidualAttentionBlock(WIDTH, HEADS, pre_attn, pre_mlp) for _ in range(LAYERS))
        self.ln_post = nn.LayerNorm(WIDTH)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(WIDTH, CLASSES)

    def forward(self, video):
        clips, _, frames = video.shape[:3]
        x = self.conv1(video.transpose(1, 2).flatten(0, 1)).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + self.positional_embedding
        x = self.ln_pre(x)
        for block in self.transformer.resblocks:
            x = block(x, frames)
        x = x.reshape(clips, frames, -1, WIDTH)[:, :, 0].mean(1)
        return self.fc(self.dropout(self.ln_post(x)))


def randomised(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "ln" in name and name.endswith("weight")
                    else 0.2 * torch.randn_like(p))
    return model.eval()


OPEN_CLIP = "open_clip:ViT-B-16-quickgelu"


def ours(placement, model="vit_base_patch16_clip_quickgelu_224", **kwargs):
    if model.startswith("open_clip:"):
        pytest.importorskip("open_clip")
        model_kwargs = dict(image_size=SIZE, patch_size=PATCH, width=WIDTH, layers=LAYERS, head_width=WIDTH // HEADS)
    else:
        model_kwargs = dict(img_size=SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=LAYERS, num_heads=HEADS)
    return build_video_classifier(model, CLASSES, num_frames=FRAMES, adapter_channels=CA, activation=None,
                                  placement=placement, model_kwargs=model_kwargs, **kwargs).eval()


@pytest.mark.parametrize("backbone", ["vit_base_patch16_clip_quickgelu_224", OPEN_CLIP], ids=["timm", "open_clip"])
@pytest.mark.parametrize("placement", [("mlp",), ("attn", "mlp")], ids=["k400 pre-mlp", "ssv2 pre-attn+mlp"])
def test_authors_checkpoint_reproduces_their_logits(placement, backbone):
    theirs = randomised(AuthorsVideoViT(pre_attn="attn" in placement, pre_mlp="mlp" in placement))
    model = load_authors_checkpoint(ours(placement, backbone),
                                    {"module." + k: v for k, v in theirs.state_dict().items()}, prefix="module.")
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        expected, got = theirs(video), model(video)
    assert (got - expected).norm() / expected.norm() < 1e-5
    # the other pooling order is a different model: the test can tell them apart
    model.pooling = "norm_then_mean"
    with torch.no_grad():
        assert (model(video) - expected).norm() / expected.norm() > 1e-3


def test_loading_sets_the_authors_pooling_with_a_warning(tmp_path):
    theirs = randomised(AuthorsVideoViT(pre_attn=False, pre_mlp=True))
    path = tmp_path / "k400.pth"
    torch.save({"model": theirs.state_dict()}, path)
    model = ours(("mlp",), pooling="norm_then_mean")
    with pytest.warns(UserWarning, match="pooling set to 'mean_then_norm'"):
        load_authors_checkpoint(model, path)
    assert model.pooling == "mean_then_norm"


def test_loading_refuses_a_gelu_backbone_or_an_activation():
    state = randomised(AuthorsVideoViT(pre_attn=False, pre_mlp=True)).state_dict()
    with pytest.raises(ValueError, match="QuickGELU"):
        load_authors_checkpoint(ours(("mlp",), model="vit_base_patch16_clip_224"), state)
    with pytest.raises(ValueError, match="activation"):
        load_authors_checkpoint(build_video_classifier(
            "vit_base_patch16_clip_quickgelu_224", CLASSES, num_frames=FRAMES, adapter_channels=CA,
            activation="gelu", model_kwargs=dict(img_size=SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=LAYERS,
                                                 num_heads=HEADS)), state)
    with pytest.warns(UserWarning, match="QuickGELU"):
        load_authors_checkpoint(ours(("mlp",), model="vit_base_patch16_clip_224"), state, strict_architecture=False)


@pytest.mark.parametrize("backbone", ["vit_base_patch16_clip_quickgelu_224", OPEN_CLIP], ids=["timm", "open_clip"])
@pytest.mark.parametrize("case, match", [
    ("nan", r"(in_proj_weight|qkv.weight) holds non-finite values"),
    ("shape", "shape"), ("integer", "dtype torch.int64"), ("missing", "missing"), ("unexpected", "unexpected")])
def test_a_bad_checkpoint_is_refused_before_anything_is_copied(backbone, case, match):
    state = randomised(AuthorsVideoViT(pre_attn=False, pre_mlp=True)).state_dict()
    key = "transformer.resblocks.0.attn.in_proj_weight"
    if case == "nan":
        state[key] = state[key].clone().index_fill_(0, torch.tensor([3]), float("nan"))
    elif case == "shape":
        state["fc.weight"] = torch.randn(CLASSES + 1, WIDTH)
    elif case == "integer":
        state["ln_post.weight"] = torch.ones(WIDTH, dtype=torch.long)
    elif case == "missing":
        del state["transformer.resblocks.1.adapter_pre_mlp.fc2.bias"]
    else:
        state["transformer.resblocks.1.adapter_pre_mlp.extra"] = torch.zeros(1)
    model = ours(("mlp",), backbone, pooling="norm_then_mean")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        load_authors_checkpoint(model, state)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.pooling == "norm_then_mean"


def test_only_a_video_classifier_takes_their_checkpoint():
    state = randomised(AuthorsVideoViT(pre_attn=False, pre_mlp=True)).state_dict()
    bare = timm.create_model("vit_base_patch16_clip_quickgelu_224", img_size=SIZE, patch_size=PATCH, embed_dim=WIDTH,
                             depth=LAYERS, num_heads=HEADS, num_classes=0)
    with pytest.raises(TypeError, match="needs a VideoClassifier"):
        load_authors_checkpoint(bare, state)
    pytest.importorskip("transformers")
    hf = build_video_classifier("hf:clip", CLASSES, adapter_channels=CA, activation=None, model_kwargs=dict(
        hidden_size=WIDTH, num_attention_heads=HEADS, num_hidden_layers=LAYERS, image_size=SIZE, patch_size=PATCH))
    with pytest.raises(TypeError, match="open_clip:ViT-B-16-quickgelu"):
        load_authors_checkpoint(hf, state)
