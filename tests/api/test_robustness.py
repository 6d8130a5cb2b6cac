"""The adapter API as a careless or hostile user meets it, grouped by what must not happen: damage before the
error (a failed save or load changes nothing), a silently wrong result (convert swaps only what it can prove
equal), a hang (non-regular files are refused), and records that are not what they claim (adapter_config.json
is checked against a schema before any model is built, naming the file and key)."""
import json
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import st_adapter_fast as saf
from st_adapter_fast.checkpoint import CONFIG_NAME, WEIGHTS_NAME

timm = pytest.importorskip("timm")
TINY = dict(img_size=32, patch_size=8, depth=1)
VIDEO = torch.randn(1, 3, 2, 32, 32, generator=torch.Generator().manual_seed(0))


def classifier(**kwargs):
    arguments = dict(num_frames=2, adapter_channels=8, dropout=0.0, model_kwargs=TINY, seed=0)
    return saf.build_video_classifier("vit_tiny_patch16_224", 3, **dict(arguments, **kwargs))


def perturbed(model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".st_adapter_" in name or name.startswith("head."):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


@pytest.fixture
def saved(tmp_path):
    """A good checkpoint folder of a perturbed classifier."""
    return saf.save_adapters(perturbed(classifier()), tmp_path / "run")


def folder_bytes(path):
    return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))}


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(before, model):
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def assert_load_refused_model_untouched(folder, match):
    model = classifier()
    before = state(model)
    with pytest.raises(ValueError, match=match):
        saf.load_adapters(model, folder)
    assert_same_state(before, model)


def edit_config(path, change):
    config = json.loads((path / CONFIG_NAME).read_text())
    change(config)
    (path / CONFIG_NAME).write_text(json.dumps(config))


# Opens a writer on each FIFO after a delay, so that a reader blocked in open() (even one holding the GIL, as a
# native loader may) returns, and a test that would otherwise hang fails.
WATCHDOG = "import os, sys, time\ntime.sleep(float(sys.argv[1]))\nfor fifo in sys.argv[2:]:\n    try:\n" \
           "        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))\n    except OSError:\n        pass\n"


def finishes(call, fifos, seconds=20):
    """call()'s exception (or None); the test fails if the call was blocked (on one of `fifos`) for `seconds`."""
    watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(seconds), *map(str, fifos)])
    started, error = time.monotonic(), None
    try:
        call()
    except Exception as raised:   # noqa: BLE001 -- returned to the test
        error = raised
    finally:
        watchdog.kill()
        watchdog.wait()
    assert time.monotonic() - started < seconds, f"blocked on a FIFO for {seconds} s"
    return error


# ---------------------------------------------------------------- damage: a failed save or load changes nothing

def test_a_failed_save_leaves_the_folders_checkpoint_as_it_was(saved):
    before = folder_bytes(saved)
    bare = timm.create_model("vit_tiny_patch16_224", num_classes=0, **TINY)   # no adapters: nothing to save
    with pytest.raises(ValueError, match="no ST-Adapters"):
        saf.save_adapters(bare, saved)
    diverged = perturbed(classifier())
    with torch.no_grad():
        diverged.backbone.blocks[0].st_adapter_mlp.fc2.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"st_adapter_mlp\.fc2\.weight.*non-finite"):
        saf.save_adapters(diverged, saved)
    unserialisable = perturbed(classifier())
    unserialisable.backbone.st_adapter_config["note"] = object()   # the configuration cannot be written as JSON
    with pytest.raises(ValueError, match="not JSON"):
        saf.save_adapters(unserialisable, saved)
    assert folder_bytes(saved) == before


def test_a_save_replaces_both_files_and_leaves_no_temporary_files(saved):
    other = perturbed(classifier(dropout=0.1))
    with torch.no_grad():
        other.head.bias.fill_(3.0)
    saf.save_adapters(other, saved)
    assert sorted(os.listdir(saved)) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = saf.load_adapters(classifier(), saved)
    assert torch.equal(loaded.head.bias, other.head.bias)


def test_save_into_a_path_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    with pytest.raises(ValueError, match="not a folder"):
        saf.save_adapters(classifier(), target)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("change, match", [
    (lambda t: t.fill_(float("nan")), "non-finite"),
    (lambda t: t.fill_(float("inf")), "non-finite"),
    (lambda t: t.double().fill_(1e300), "non-finite"),   # finite in the file, inf in the model's float32
], ids=["nan", "inf", "overflows float32"])
def test_a_checkpoint_with_non_finite_values_is_refused_and_the_model_is_untouched(saved, change, match):
    tensors = load_file(saved / WEIGHTS_NAME)
    victim = sorted(tensors)[-1]   # the last: a copy-as-you-go loader would have written all the others
    tensors[victim] = change(tensors[victim].clone())
    save_file(tensors, saved / WEIGHTS_NAME)
    edit_config(saved, lambda c: c["tensors"][victim].update(dtype=str(tensors[victim].dtype)))
    assert_load_refused_model_untouched(saved, rf"{WEIGHTS_NAME}.*{victim}.*{match}")


def test_weights_that_are_not_the_ones_the_config_lists_are_refused(saved):
    tensors = load_file(saved / WEIGHTS_NAME)
    save_file({k: v.double() for k, v in tensors.items()}, saved / WEIGHTS_NAME)   # files of two saves
    assert_load_refused_model_untouched(saved, f"{WEIGHTS_NAME} does not hold the tensors that .*{CONFIG_NAME} lists")


def test_unknown_keys_in_the_adapter_config_are_refused(saved):
    edit_config(saved, lambda c: c.update(adapters_from="elsewhere"))
    with pytest.raises(ValueError, match=rf"{CONFIG_NAME}: unknown keys \['adapters_from'\]"):
        saf.load_adapters(classifier(), saved)
    with pytest.raises(ValueError, match="unknown keys"):
        saf.from_pretrained(saved)


def test_loading_into_a_model_without_values_is_refused(saved):
    with torch.device("meta"):
        model = classifier()
    with pytest.raises(ValueError, match="meta device"):
        saf.load_adapters(model, saved)


def test_a_path_that_is_not_a_path_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="path must be a folder path"):
        saf.load_adapters(classifier(), None)
    with pytest.raises(TypeError, match="path must be a folder path"):
        saf.save_adapters(classifier(), 3)


@pytest.mark.parametrize("bad, match", [
    (dict(fc2_weight=torch.zeros(16, 4)), "fc2.weight has shape"),          # the last key: fc1 would be copied
    (dict(fc2_bias=torch.zeros(16, dtype=torch.long)), "fc2.bias has dtype torch.int64"),
    (dict(fc2_bias=torch.full((16,), float("nan"))), "fc2.bias holds non-finite"),
    (dict(fc2_bias=torch.zeros(16, device="meta")), "fc2.bias is on the meta device"),
    (dict(extra=torch.zeros(1)), "unexpected extra"),
    (dict(fc2_bias=None), "missing fc2.bias"),
], ids=["shape", "int", "nan", "meta", "unexpected", "missing"])
def test_adapter_load_state_dict_checks_everything_before_the_first_copy(bad, match):
    source = perturbed_adapter()
    given = dict(source.state_dict())
    for key, value in bad.items():
        key = key.replace("_", ".") if key != "extra" else key
        given.pop(key) if value is None else given.__setitem__(key, value)
    for cls in (saf.STAdapter, saf.STAdapterReference):
        adapter = cls(16, 8)
        before = state(adapter)
        with pytest.raises(ValueError, match=match):
            adapter.load_state_dict(given)
        assert_same_state(before, adapter)
    assert saf.STAdapter(16, 8).load_state_dict({k: v.half() for k, v in source.state_dict().items()}) is not None


def perturbed_adapter():
    adapter = saf.STAdapterReference(16, 8)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_()
    return adapter


def test_a_compiled_or_wrapped_model_saves_and_loads_under_the_models_own_names(tmp_path):
    model = perturbed(classifier())
    saf.save_adapters(torch.compile(model), tmp_path / "compiled")
    saf.save_adapters(saf.compile_model(model), tmp_path / "compile_model")
    for folder in ("compiled", "compile_model"):
        loaded = saf.from_pretrained(tmp_path / folder)
        assert torch.equal(loaded.head.weight, model.head.weight)
    target = classifier()
    saf.load_adapters(torch.compile(target), tmp_path / "compiled")
    assert torch.equal(target.head.weight, model.head.weight)


def test_a_format_version_of_another_type_is_refused(saved):
    edit_config(saved, lambda c: c.update(format_version=True))
    assert_load_refused_model_untouched(saved, "unknown adapter checkpoint format True")


def test_a_model_that_is_not_a_module_is_a_type_error():
    for call in (lambda: saf.save_adapters(None, "x"), lambda: saf.load_adapters("model", "x"),
                 lambda: saf.adapter_config(None), lambda: saf.parameter_report(None), lambda: saf.convert(None),
                 lambda: saf.compile_model(None)):
        with pytest.raises(TypeError, match="Module"):
            call()


def test_load_adapters_refuses_a_model_built_otherwise_than_the_folders_record(saved):
    """The tensors fit, but the record says another model: another pooling computes another function."""
    assert_load_refused_model_untouched_by(classifier(pooling="norm_then_mean"), saved, r"records another model.*pooling")
    assert_load_refused_model_untouched_by(classifier(model_kwargs=dict(TINY, qkv_bias=False)), saved, "model_kwargs")
    edit_config(saved, lambda c: c["video_classifier"].update(num_classes=5))   # a record edited by hand
    assert_load_refused_model_untouched_by(classifier(), saved, r"num_classes.*\(5, 3\)")


def test_how_a_model_runs_may_differ_from_the_record_and_overrides_are_the_callers_choice(saved):
    saf.load_adapters(classifier(backend="reference", num_frames=4, dropout=0.2, seed=3), saved)
    model = saf.from_pretrained(saved, pooling="norm_then_mean")
    assert model.pooling == "norm_then_mean"


def test_one_model_spelled_two_ways_is_one_model(saved):
    """timm's names with or without the `timm:` prefix build the same model: the record keeps one spelling."""
    arguments = dict(num_frames=2, adapter_channels=8, dropout=0.0, model_kwargs=TINY, seed=0)
    prefixed = saf.build_video_classifier("timm:vit_tiny_patch16_224", 3, **arguments)
    saf.load_adapters(prefixed, saved)
    assert prefixed.build_record()["model_name"] == "vit_tiny_patch16_224"


def assert_load_refused_model_untouched_by(model, folder, match):
    before = state(model)
    with pytest.raises(ValueError, match=match):
        saf.load_adapters(model, folder)
    assert_same_state(before, model)


# ------------------------------------------------------------------- hangs: only regular files are read

@pytest.mark.parametrize("name", [CONFIG_NAME, WEIGHTS_NAME])
def test_a_fifo_in_a_checkpoint_folder_is_refused_without_blocking(saved, name):
    (saved / name).unlink()
    os.mkfifo(saved / name)
    model = classifier()
    before = state(model)
    error = finishes(lambda: saf.load_adapters(model, saved), [saved / name])
    assert isinstance(error, ValueError) and "FIFO" in str(error) and name in str(error), error
    assert_same_state(before, model)
    assert isinstance(finishes(lambda: saf.from_pretrained(saved), [saved / name]), ValueError)


def test_list_and_config_files_that_are_fifos_are_refused_without_blocking(tmp_path):
    from st_adapter_fast.video.data import read_video_list
    from st_adapter_fast.video.train import load_config_file
    (tmp_path / "a.mp4").write_bytes(b"")
    fifos = [tmp_path / name for name in ("list.txt", "run.yaml", "run.json")]
    for fifo in fifos:
        os.mkfifo(fifo)
    for call in (lambda: read_video_list(str(tmp_path / "list.txt"), str(tmp_path)),
                 lambda: load_config_file(str(tmp_path / "run.yaml")),
                 lambda: load_config_file(str(tmp_path / "run.json"))):
        error = finishes(call, fifos)
        assert isinstance(error, ValueError) and "FIFO" in str(error), error
    os.mkfifo(tmp_path / "b.mp4")                   # a listed "video" that would block the decoder
    (tmp_path / "videos.txt").write_text("a.mp4 0\nb.mp4 1\n")
    with pytest.raises(ValueError, match=r"videos.txt:2.*b.mp4"):
        read_video_list(str(tmp_path / "videos.txt"), str(tmp_path))


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_list_files_with_a_byte_order_mark_read_as_plain_utf8(tmp_path, encoding):
    from st_adapter_fast.video.data import read_video_list
    for name in ("clip é 1.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "plain.txt").write_text("clip é 1.mp4 0\nb.mp4 1\n", encoding="utf-8")
    (tmp_path / "marked.txt").write_text("clip é 1.mp4 0\r\nb.mp4 1\r\n", encoding=encoding)
    read = lambda name: [(r.path, r.label) for r in read_video_list(str(tmp_path / name), str(tmp_path))]
    assert read("marked.txt") == read("plain.txt")


def test_a_list_file_in_another_encoding_is_an_error_naming_file_and_line(tmp_path):
    from st_adapter_fast.video.data import read_video_list
    (tmp_path / "list.txt").write_bytes("a.mp4 0\ncafé.mp4 1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"list.txt: line 2 is not UTF-8"):
        read_video_list(str(tmp_path / "list.txt"), str(tmp_path))


# ------------------------------------------------------- silently wrong: convert swaps only what it can prove

class AuthorsAdapter(nn.Module):
    """The authors' release: slice the class token off, fc1, depthwise Conv3d over (T, H, W), fc2, add back."""

    def __init__(self, width=16, channels=8, **conv_options):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, channels), nn.Linear(channels, width)
        options = dict(dict(padding=(1, 0, 0), groups=channels), **conv_options)
        self.conv = nn.Conv3d(channels, channels, (3, 1, 1), **options)

    def forward(self, x, frames):
        clips_frames, tokens, width = x.shape
        side = round((tokens - 1) ** 0.5)
        h = self.fc1(x[:, 1:]).reshape(clips_frames // frames, frames, side, side, -1).permute(0, 4, 1, 2, 3)
        h = self.conv(h).permute(0, 2, 3, 4, 1).reshape(clips_frames, tokens - 1, -1)
        if hasattr(self, "act"):
            h = self.act(h)
        return torch.cat([x[:, :1], x[:, 1:] + self.fc2(h)], dim=1)


class GeluAdapter(AuthorsAdapter):
    def __init__(self):
        super().__init__()
        self.act = nn.GELU()


class MyReference(saf.STAdapterReference):
    def forward(self, x, num_frames):
        return super().forward(x, num_frames) * 2


class MyLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x).relu()


def with_my_linear():
    adapter = AuthorsAdapter()
    adapter.fc1 = MyLinear(16, 8)
    return adapter


def hooked():
    adapter = AuthorsAdapter()
    adapter.register_forward_hook(lambda module, args, out: out * 0)
    return adapter


UNPROVABLE = {
    "dilation": (lambda: AuthorsAdapter(dilation=(2, 1, 1), padding=(2, 0, 0)), "dilation"),
    "circular padding": (lambda: AuthorsAdapter(padding_mode="circular"), "padding_mode"),
    "stride": (lambda: AuthorsAdapter(stride=(2, 1, 1)), "stride"),
    "no temporal padding": (lambda: AuthorsAdapter(padding=(0, 0, 0)), "padding"),
    "not depthwise": (lambda: AuthorsAdapter(groups=1), "groups"),
    "no conv bias": (lambda: AuthorsAdapter(bias=False), "bias"),
    "GELU child": (GeluAdapter, "act"),
    "subclass of the reference": (lambda: MyReference(16, 8), "subclasses"),
    "Linear subclass": (with_my_linear, "MyLinear"),
    "hook": (hooked, "hook"),
}


class FunctionalGelu(AuthorsAdapter):
    """The authors' structure, but a GELU in the forward: no child module shows it."""

    def forward(self, x, frames):
        self.act = nn.GELU()
        try:
            return AuthorsAdapter.forward(self, x, frames)
        finally:
            del self.act


class NoResidual(AuthorsAdapter):
    def forward(self, x, frames):
        return self.fc2(self.fc1(x))


class StoredFrames(AuthorsAdapter):
    """Called as adapter(x): an STAdapter in its place would fail at the first call."""

    def forward(self, x):
        return AuthorsAdapter.forward(self, x, 3)


UNPROVABLE.update({
    "functional GELU": (FunctionalGelu, "computes something else"),
    "no residual": (NoResidual, "computes something else"),
    "another call signature": (StoredFrames, r"cannot be run as adapter\(x, num_frames\)"),
})


@pytest.mark.parametrize("case", sorted(UNPROVABLE))
def test_convert_leaves_an_adapter_it_cannot_prove_equal_and_says_why(case):
    make, reason = UNPROVABLE[case]
    torch.manual_seed(0)
    model = nn.ModuleDict(dict(kept=make(), swapped=saf.STAdapterReference(16, 8)))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    kept = model["kept"]
    with pytest.warns(UserWarning, match=rf"convert: left 1 adapter-like module.*kept: .*{reason}"):
        report = saf.convert(model)
    assert report == 1 and report.converted == ["swapped"] and list(report.skipped) == ["kept"]
    assert model["kept"] is kept and isinstance(model["swapped"], saf.STAdapter)


def test_convert_says_it_does_not_replace_the_model_itself():
    adapter = saf.STAdapterReference(16, 8)
    with pytest.warns(UserWarning, match="not that model itself"):
        report = saf.convert(adapter)
    assert report == 0 and list(report.skipped) == [""]


def test_convert_swaps_a_shared_adapter_under_every_name_and_keeps_it_shared():
    shared = saf.STAdapterReference(16, 8)
    model = nn.ModuleDict(dict(a=shared, b=shared))
    assert saf.convert(model) == 1
    assert isinstance(model["a"], saf.STAdapter) and model["a"] is model["b"]


def test_convert_swaps_the_authors_adapter_for_the_same_function():
    torch.manual_seed(0)
    model = nn.ModuleDict(dict(a=AuthorsAdapter(), same=AuthorsAdapter(padding="same")))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    x = torch.randn(2 * 3, 5, 16)
    expected = {name: module(x, 3) for name, module in model.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert saf.convert(model) == 2
    for name, module in model.items():
        assert isinstance(module, saf.STAdapter)
        torch.testing.assert_close(module(x, 3), expected[name], rtol=1e-5, atol=1e-5)


def test_a_failing_convert_changes_nothing():
    model = nn.ModuleDict(dict(a=saf.STAdapterReference(16, 8), b=saf.STAdapterReference(16, 8)))
    with pytest.raises(ValueError, match="backend"):
        saf.convert(model, backend="fastest")
    assert all(type(m) is saf.STAdapterReference for m in model.values())


# ------------------------------------------- records: checked against a schema before any model is built

def no_model_may_be_built(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the record was checked")
    monkeypatch.setattr(timm, "create_model", refuse)


BAD_RECORDS = {
    "not an object": (lambda c: c.update(video_classifier="vit_tiny_patch16_224"), "video_classifier"),
    "num_classes a string": (lambda c: c["video_classifier"].update(num_classes="3"), "num_classes"),
    "num_classes 0": (lambda c: c["video_classifier"].update(num_classes=0), "num_classes"),
    "num_frames 0": (lambda c: c["video_classifier"].update(num_frames=0), "num_frames"),
    "no model_name": (lambda c: c["video_classifier"].pop("model_name"), "model_name"),
    "unknown key": (lambda c: c["video_classifier"].update(weights_url="http://x"), "weights_url"),
    "model_kwargs a list": (lambda c: c["video_classifier"].update(model_kwargs=[1]), "model_kwargs"),
    "other weights": (lambda c: c["video_classifier"]["model_kwargs"].update(checkpoint_path="/x.pth"),
                      "model_kwargs.*checkpoint_path"),
    "pretrained": (lambda c: c["video_classifier"]["model_kwargs"].update(pretrained=True), "pretrained"),
    "meta device": (lambda c: c["video_classifier"]["model_kwargs"].update(device="meta"), "device"),
    "dtype": (lambda c: c["video_classifier"]["model_kwargs"].update(dtype="float16"), "dtype"),
    "backbone_dtype": (lambda c: c["video_classifier"].update(backbone_dtype="int8"), "backbone_dtype"),
    "dropout nan": (lambda c: c["video_classifier"].update(dropout=float("nan")), "dropout"),
    "seed a float": (lambda c: c["video_classifier"].update(seed=1.5), "seed"),
    "kernel_size a string": (lambda c: c["video_classifier"].update(kernel_size="3"), "kernel_size"),
    "layers a string": (lambda c: c["video_classifier"].update(layers="all"), "layers"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_a_malformed_record_is_refused_naming_file_and_key_before_any_model_is_built(saved, case, monkeypatch):
    change, key = BAD_RECORDS[case]
    edit_config(saved, change)
    no_model_may_be_built(monkeypatch)
    with pytest.raises(ValueError, match=rf"{CONFIG_NAME}.*{key}"):
        saf.from_pretrained(saved)


def test_overrides_are_checked_like_the_record(saved, monkeypatch):
    no_model_may_be_built(monkeypatch)
    with pytest.raises(TypeError, match="unknown argument.*'num_clases'"):
        saf.from_pretrained(saved, num_clases=4)
    with pytest.raises(ValueError, match="num_classes must be an integer"):
        saf.from_pretrained(saved, num_classes="4")
    with pytest.raises(ValueError, match="model_kwargs.*'pretrained' is not allowed"):
        saf.from_pretrained(saved, model_kwargs=dict(TINY, pretrained=True))
    with pytest.raises(FileNotFoundError, match="checkpoint_path not found: .*missing.safetensors"):
        saf.from_pretrained(saved, checkpoint_path=saved / "missing.safetensors")


def test_a_good_record_with_overrides_still_rebuilds_the_model(saved):
    model = perturbed(classifier()).eval()
    loaded = saf.from_pretrained(saved, backend="reference", kernel_size=(3, 1, 1), placement=("mlp",))
    torch.testing.assert_close(loaded(VIDEO), model(VIDEO))
    half = saf.from_pretrained(saved, backbone_dtype=torch.bfloat16)
    assert half.backbone.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
