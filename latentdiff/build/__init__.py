"""The offline default model's recipe (``latentdiff shapes build``): the VAE and CLIP training stages and the
orchestration that runs them and then the ordinary trainer.

    recipe.py  the recipe folder (with inheritance) and the build, stage by stage, resumable
    vae.py     stage 1: an AutoencoderKL on uint8 images
    clip.py    stage 2: a CLIP trained with open_clip, its text tower exported as a transformers CLIPTextModel
    lr.py      the stages' learning-rate schedule

Stages take in-memory data — uint8 images (N, H, W, 3) and a list of captions — so they do not depend on how the
images were made.
"""
