"""Editing real images: invert an image's latent (DDIM, null-text, negative-prompt, direct, edit-friendly DDPM
inversion), then sample it again with a new prompt, optionally under prompt-to-prompt attention control.

    inversion.py       the inversion methods and the two-branch edit sampler
    null_text.py       null-text optimization and its presets
    denoise.py         the UNet as a float32 function, the step plan, the guided step
    inversion_file.py  the saved inversion and its model fingerprint
    attention.py       prompt-to-prompt through diffusers attention processors
    alignment.py       prompt-to-prompt's token bookkeeping
    metrics.py         PSNR and SSIM, how reconstructions are scored

Images come in through :mod:`latentdiff.pipelines.image_input`; ``eval-edit`` (on the shapes world) is
:mod:`latentdiff.shapes.evaluate_edit`.
"""
