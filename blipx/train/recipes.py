"""Training recipes that depart from the official ones, each with the measurements behind it."""

# Pretraining a from-scratch blip_mini on one-shape scenes in minutes (measured on 2 CPU cores;
# the numbers are in the README). Where it departs from the official recipe, and why:
SHAPES_RECIPE = dict(
    # blip_mini: 48 px with patch 16, so each shape lies in one patch of the scenes' 3x3 grid;
    # initializer_range 0.1 (at 0.02 ITC first collapses all features); pos_embed_init_std 0.5
    # (at 0.1 position drowns in the patch features); no dropout.
    model="blip_mini",
    lr=1e-3, min_lr=1e-5,
    queue_size=0, momentum=0.9, alpha=0.0,  # a 0.995 EMA and a queue lag a 1000-step run
    itm_hardness_warmup_steps=400,  # ITM stays at its prior under hard negatives from step 0
    label_smoothing=0.0,  # 0.1 caps p(token) at ~0.9, right at the nucleus-0.9 edge
    randaugment=False, crop_scale=[1.0, 1.0], flip="swap",  # captions name positions
)
SHAPES_DATA = {"max_objects": 1}
