"""Training and fine-tuning a UNet with Accelerate.

    config.py      typed dataclasses from YAML with --section.key=value overrides; every default
    validate.py    every config value checked before any side effect
    data.py        image–caption folders: scan once, skip bad items with a count, deterministic crops/flips
    cache.py       content-keyed on-disk cache of latents and text embeddings
    inputs.py      what a micro-batch holds: latents and text embeddings, cached or encoded on the fly
    objective.py   noised batches, targets, min-SNR weighting, caption dropout
    ema.py         exponential moving average of the trained weights
    checkpoint.py  atomic checkpoints, resume
    train.py       the one training function, top to bottom
"""
