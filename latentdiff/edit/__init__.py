"""Editing real images: invert an image's latent (DDIM, null-text, negative-prompt, direct inversion), then
sample it again with a new prompt, optionally under prompt-to-prompt attention control.

Modules: ``image_input`` (load and size an input image, encode it), ``inversion`` (the inversions, their
file format and the two-branch edit sampler), ``alignment`` and ``attention`` (prompt-to-prompt).
"""
