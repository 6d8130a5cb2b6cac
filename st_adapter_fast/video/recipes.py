"""The authors' training recipes (their released scripts for ST-Adapter on CLIP ViT-B/16) as presets of
TrainConfig values: `train --recipe authors-k400` or `--recipe authors-ssv2`.

A preset fills the fields a config does not give; every value given (a flag, a config-file key, a
keyword argument) wins. Of two ways to say one thing (`lr` or `blr`; `steps` and `warmup_steps` or `epochs`
and `warmup_epochs`), giving one drops the preset's other. The model is not part of a recipe: the authors' is
`--model vit_base_patch16_clip_quickgelu_224 --activation none --adapter-channels 384` with `--placement mlp`
(Kinetics-400) or `--placement attn mlp` (SSv2; see README).
"""

_COMMON = dict(num_frames=8, interpolation="bicubic", batch_size=64, amp="fp16", weight_decay=0.01, blr=1e-3,
               warmup_epochs=2)
RECIPES = {
    # 8 frames every 16th, short side jittered to 1-1.15 x 224 then a random 224 crop, flips; 3 temporal
    # views x 1 crop in eval; 12 epochs
    "authors-k400": dict(_COMMON, sampling_rate=16, train_crop="short-side-jitter", scale_jitter=[1.0, 1.15],
                         flip=True, eval_views=3, eval_crops=1, epochs=12),
    # 8 frames evenly covering the video, RandAugment, random resized crop of 8-100% of the area, no flips
    # (a flip changes the label of many SSv2 classes); 1 temporal view x 3 crops in eval; 50 epochs
    "authors-ssv2": dict(_COMMON, sampling_rate=None, train_crop="random-resized", crop_scale=[0.08, 1.0],
                         rand_augment="rand-m7-n4-mstd0.5-inc1", flip=False, eval_views=1, eval_crops=3, epochs=50),
}
# fields that say one thing two ways: the second group, when set, decides (blr sets lr, epochs the steps)
ALTERNATIVES = ((("lr",), ("blr",)), (("steps", "warmup_steps"), ("epochs", "warmup_epochs")))


def with_recipe(values):
    """`values` (the fields given, by name) completed with the preset `values["recipe"]` names, if any: the
    preset's values for the fields not given, except the alternative of one given."""
    preset = RECIPES.get(values.get("recipe"))
    if preset is None:   # no recipe (or an unknown name, which the config's checks refuse)
        return values
    dropped = set()
    for first, second in ALTERNATIVES:
        for given, other in ((first, second), (second, first)):
            if any(name in values for name in given):
                dropped.update(other)
    return dict({k: v for k, v in preset.items() if k not in dropped}, **values)
