"""The diffusion process as pure math over a denoiser callable: the noise schedule (float64), DDPM / DDIM /
DPM-Solver++ / Euler samplers and DDIM inversion, classifier-free guidance, and the sampler registry.

Nothing here knows about networks, files or devices; it imports nothing of latentdiff's above it.
"""
