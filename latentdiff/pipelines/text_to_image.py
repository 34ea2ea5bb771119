"""Text → image: encode prompts, draw seeded latents, sample with guidance, decode. No diffusion math here."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from PIL import Image

from ..core import samplers
from ..core.guidance import CFGDenoiser, UNetModel
from ..core.samplers import Plan
from ..core.sampling import randn
from ..models import Components, decode_latents, load_components, save_components, to_uint8
from ..models.lora import WEIGHT_NAME as LORA_WEIGHTS
from .parameters import file_hash, lora_hash, model_hash
from .prompts import chunk_count, encode_prompts
from .settings import GENERATION_CONFIG, GenerationConfig, resolve_settings

EmbeddingArg = Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike, tuple[Union[str, os.PathLike],
                                                                                    Optional[str]]]]]
LoraArg = Union[None, str, os.PathLike, Sequence[Union[str, os.PathLike, tuple[Union[str, os.PathLike], float]]]]


@dataclass
class Generated:
    """One image and everything needed to generate it again on its own."""

    image: Image.Image
    params: dict = field(default_factory=dict)


class TextToImage:
    """Stable-Diffusion-style text-to-image over our samplers; same seed, same image as diffusers. The methods
    that other pipelines build on (settings, plans, prompt conditioning, drawing, decoding) live here;
    :class:`latentdiff.pipelines.Pipeline` adds img2img, inpainting and hires fix."""

    def __init__(self, components: Components, defaults: Optional[GenerationConfig] = None):
        self.components = components
        self.defaults = defaults or GenerationConfig.for_model(components.path)
        self.model_name = str(components.path) if components.path is not None else "<in memory>"
        self._plans: dict[tuple, Plan] = {}  # settings validated and planned once: (sampler, steps, eta) -> plan
        self.loras: list[dict] = []  # {"name", "hash", "weight", "path"} of each LoRA fused in (A1111's 'Lora hashes')
        self.embeddings: list[dict] = []  # {"name", "token", "hash", "path"} of each embedding (A1111's 'TI hashes')
        self._model_hash: Optional[str] = None

    @classmethod
    def from_pretrained(cls, model: Union[str, os.PathLike], *, dtype="auto", device="auto",
                        allow_pickle: bool = False, lora: LoraArg = None, lora_scale: float = 1.0,
                        embeddings: EmbeddingArg = None, vae: Optional[Union[str, os.PathLike]] = None,
                        prediction_type: Optional[str] = None, vae_tiling: bool = False,
                        vae_slicing: bool = False) -> "TextToImage":
        """Load a model: a diffusers-layout folder, a cached hub id, or a single checkpoint file (SD 1.x/2.x in the
        original layout; :func:`latentdiff.models.load_components`). ``vae``: another VAE (folder or file);
        ``prediction_type``: overrides the model's.

        ``lora``: LoRA files or folders (diffusers/peft or kohya/A1111) fused into the UNet and the text encoder: one
        path (weight ``lora_scale``), or a list of paths (each ``lora_scale``) and (path, weight) pairs.
        ``embeddings``: textual-inversion files, each a path (token: its stem) or a (path, token) pair.
        ``vae_tiling`` / ``vae_slicing``: diffusers' ``vae.enable_tiling()`` / ``enable_slicing()`` (large images
        decoded and encoded tile by tile; a batch one image at a time), to bound memory."""
        extra = {k: v for k, v in (("vae", vae), ("prediction_type", prediction_type)) if v is not None}
        components = load_components(model, dtype=dtype, device=device, allow_pickle=allow_pickle, **extra)
        if vae_tiling:
            components.vae.enable_tiling()
        if vae_slicing:
            components.vae.enable_slicing()
        pipe = cls(components)
        pipe.load_lora(lora, lora_scale)
        for item in [embeddings] if isinstance(embeddings, (str, os.PathLike)) else embeddings or ():
            path, token = (item, None) if isinstance(item, (str, os.PathLike)) else item
            pipe.load_embedding(path, token, allow_pickle=allow_pickle)
        return pipe

    from_single_file = from_pretrained  # diffusers' name for loading one checkpoint file; the same loader here

    def load_lora(self, lora: LoraArg, weight: float = 1.0) -> list[dict]:
        """Fuse LoRAs into the UNet and the text encoder (see :meth:`from_pretrained`); every image made after
        carries them in its parameters. Returns per LoRA {name, path, weight, matched, unmatched}."""
        loras = lora_list(lora, weight)
        if not loras:
            return []
        from ..models.lora import load_loras

        applied = load_loras(self.components, loras)
        for path, w in loras:
            self.model_name += f" + LoRA {Path(path).resolve()} x{w:g}"
            self.loras.append(lora_record(path, w))
        return applied

    def load_embedding(self, path: Union[str, os.PathLike], token: Optional[str] = None, *,
                       allow_pickle: bool = False) -> dict:
        """Add a textual-inversion embedding (diffusers or A1111 file; ``token`` default: the file's stem), usable in
        prompts and negative prompts. Returns {token, vectors, path, name}."""
        from ..models.embeddings import load_embedding

        found = load_embedding(self.components, path, token, allow_pickle=allow_pickle)
        self.embeddings.append({"name": found["name"], "token": found["token"], "hash": file_hash(found["path"], 12),
                                "path": str(found["path"])})
        return found

    def save_pretrained(self, folder: Union[str, os.PathLike]) -> Path:
        folder = save_components(self.components, folder)
        if self.defaults != GenerationConfig():
            (folder / GENERATION_CONFIG).write_text(json.dumps(asdict(self.defaults), indent=2))
        return folder

    def settings(self, **overrides) -> GenerationConfig:
        """The model's defaults with the given (non-None) overrides, validated; pass the result to
        :meth:`generate` as ``settings=`` to use it without validating again."""
        cfg, plan = resolve_settings(self.defaults, self.components, **overrides)
        self._plans[(cfg.sampler, cfg.steps, cfg.eta)] = plan
        return cfg

    def plan(self, cfg: GenerationConfig, strength: Optional[float] = None) -> Plan:
        """The sampler's plan for validated settings (planned once per settings); ``strength``: image to image."""
        if (cfg.sampler, cfg.steps, cfg.eta) not in self._plans:
            self.settings(**asdict(cfg))
        if strength is None:
            return self._plans[(cfg.sampler, cfg.steps, cfg.eta)]
        key = (cfg.sampler, cfg.steps, cfg.eta, strength)
        if key not in self._plans:
            self._plans[key] = samplers.plan(cfg.sampler, self.components.schedule, cfg.steps, cfg.eta, strength)
        return self._plans[key]

    def generate(self, prompt: Union[str, Sequence[str]], *, settings: Optional[GenerationConfig] = None,
                 progress: bool = False, callback=None, **overrides) -> list[Generated]:
        """Images for each prompt × num_images; image i uses seed + i (reproducible alone).

        ``settings``: what :meth:`settings` returned (already validated); else the defaults with ``overrides``."""
        cfg, prompts, seeds = self.batch(prompt, settings, overrides)
        latents = self.sample(prompts, seeds, cfg, progress=progress, callback=callback)
        return self.decode(latents, prompts, seeds, cfg)

    def batch(self, prompt: Union[str, Sequence[str]], settings: Optional[GenerationConfig],
              overrides: dict) -> tuple[GenerationConfig, list[str], list[int]]:
        """(settings, one prompt per image, one seed per image): prompt-major, image i with seed + i."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("no prompts given; pass at least one prompt")
        if settings is not None and overrides:
            raise ValueError("pass either settings or overrides, not both")
        cfg = settings if settings is not None else self.settings(**overrides)
        prompts = [p for p in prompts for _ in range(cfg.num_images)]  # (B,) prompt-major
        return cfg, prompts, [cfg.seed + i for i in range(len(prompts))]

    def sample(self, prompts: Sequence[str], seeds: Sequence[int], cfg: GenerationConfig, *, progress: bool = False,
               callback=None) -> torch.Tensor:
        """Text to image up to the latents (B, C, H/f, W/f), from noise drawn with each image's seed."""
        plan = self.plan(cfg)
        c = self.components
        self.require_plain_unet()
        generators = [torch.Generator().manual_seed(s) for s in seeds]  # CPU, as diffusers with a CPU generator
        denoiser = self.denoiser(prompts, cfg)
        shape = (len(prompts), latent_channels(c), cfg.height // c.vae_scale_factor, cfg.width // c.vae_scale_factor)
        latents = randn(shape, generators, denoiser.cond.dtype, c.device)  # (B, C, H/f, W/f)
        with torch.inference_mode():
            return plan(denoiser, latents, c.schedule, generator=generators, callback=callback,
                        disable_progress=not progress)

    def require_plain_unet(self) -> None:
        """ValueError unless the UNet takes the latents alone (an inpainting UNet also takes a mask and an image)."""
        c = self.components
        if c.unet.config.in_channels != latent_channels(c):
            raise ValueError(f"model '{self.model_name}' has an inpainting UNet ({c.unet.config.in_channels} input "
                             "channels: latents, mask, masked image); use inpaint (latentdiff inpaint) with it")

    def denoiser(self, prompts: Sequence[str], cfg: GenerationConfig, model=None) -> CFGDenoiser:
        """The guided denoiser of ``prompts`` (one per sample) with ``cfg``'s negative prompt and guidance;
        ``model`` replaces the plain UNet adapter (e.g. an inpainting UNet's extra input channels)."""
        c = self.components
        negatives = [cfg.negative_prompt] * len(prompts) if cfg.guidance != 1 else []
        options = dict(syntax=cfg.prompt_syntax, clip_skip=cfg.clip_skip, max_chunks=None,
                       chunks=max(self.chunk_count(p, cfg) for p in [*prompts, *negatives[:1]]))
        cond = encode_prompts(c, prompts, **options)  # (B, n·L, D)
        uncond = encode_prompts(c, negatives, **options) if negatives else None
        return CFGDenoiser(model or UNetModel(c.unet), cond, uncond, cfg.guidance, cfg.guidance_rescale)

    def chunk_count(self, prompt: str, cfg: GenerationConfig) -> int:
        """Chunks of the text encoder's window ``prompt`` takes. A batch's prompts and negative prompt are all
        padded to the most any of them takes, with the empty prompt's chunk (as A1111 pads them), so an image
        is made again alone exactly when no prompt of its batch took more chunks than it or its negative."""
        return chunk_count(self.components.tokenizer, prompt, cfg.prompt_syntax)

    def decode(self, latents: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int], cfg: GenerationConfig,
               **extra_params) -> list[Generated]:
        """Decoded images, each with the parameters that make it again (``extra_params`` added)."""
        with torch.inference_mode():
            pixels = to_uint8(decode_latents(self.components, latents))
        return [Generated(Image.fromarray(array), self.params(cfg, p, s, **extra_params))
                for p, s, array in zip(prompts, seeds, pixels)]

    def params(self, cfg: GenerationConfig, prompt: str, seed: int, **extra) -> dict:
        """The parameters an image carries (its PNG chunk): enough to make it again alone."""
        identity = {"model_hash": self.model_hash()} if self.model_hash() else {}
        if self.loras:
            identity["loras"] = self.loras
        if self.embeddings:
            identity["embeddings"] = self.embeddings
        return dict(asdict(cfg), prompt=prompt, seed=seed, num_images=1, model=self.model_name,
                    dtype=str(self.components.dtype).removeprefix("torch."), **identity, **extra)

    def model_hash(self) -> str:
        """A1111's short model hash of the model's file (of its UNet weights for a folder), computed once; '' for a
        model held only in memory or whose UNet weights are not one file (sharded)."""
        if self._model_hash is None:
            try:
                self._model_hash = model_hash(self.components.path) if self.components.path is not None else ""
            except ValueError:
                self._model_hash = ""
        return self._model_hash

    def __call__(self, prompt: Union[str, Sequence[str]], **kwargs) -> list[Image.Image]:
        return [g.image for g in self.generate(prompt, **kwargs)]


def lora_record(path: Union[str, os.PathLike], weight: float) -> dict:
    """A LoRA as an image's parameters name it: its name (file stem or folder), A1111's hash, the weight applied."""
    path = Path(path)
    file = path if path.is_file() else path / LORA_WEIGHTS
    return {"name": path.stem if path.is_file() else path.name, "hash": lora_hash(file), "weight": weight,
            "path": str(path.resolve())}


def lora_list(lora: LoraArg, weight: float = 1.0) -> list[tuple[Path, float]]:
    """(path, weight) of each LoRA given as one path, or as a list of paths (weight ``weight``) and (path, weight)."""
    if lora is None:
        return []
    if isinstance(lora, (str, os.PathLike)):
        return [(Path(lora), float(weight))]
    if isinstance(lora, tuple) and len(lora) == 2 and isinstance(lora[1], (int, float)):
        lora = [lora]  # one (path, weight) pair
    found = []
    for item in lora:
        if isinstance(item, (str, os.PathLike)):
            found.append((Path(item), float(weight)))
        elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], (int, float)):
            found.append((Path(item[0]), float(item[1])))
        else:
            raise ValueError(f"lora={item!r} is neither a path nor a (path, weight) pair; pass paths or pairs")
    return found


def latent_channels(components: Components) -> int:
    """Channels of the diffusion latents: the VAE's (an inpainting UNet takes more, its input has mask channels)."""
    return components.vae.config.latent_channels
