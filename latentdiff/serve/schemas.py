"""The request and response bodies, as A1111's API names them (``modules/api/models.py``): the fields this server
honours, typed. A field left out takes the model's default (its latentdiff_generation.json), not A1111's 512 px,
Euler, 50 steps. Any other field is accepted, ignored and named in a warning in ``info``."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field


class GenerationRequest(BaseModel):
    """Fields shared by txt2img and img2img."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: Optional[str] = None
    steps: Optional[int] = Field(None, description="sampling steps (default: the model's)")
    cfg_scale: Optional[float] = Field(None, description="classifier-free guidance scale (default: the model's)")
    sampler_name: Optional[str] = Field(None, description="A1111's name ('DPM++ 2M', 'Euler a', 'DDIM', ...) or "
                                                          "ours ('dpmpp-2m-karras'); see GET /sdapi/v1/samplers")
    sampler_index: Optional[str] = Field(None, description="the older name of sampler_name")
    scheduler: Optional[str] = Field(None, description="A1111's schedule type: Automatic, Uniform, Karras, "
                                                       "SGM Uniform; see GET /sdapi/v1/schedulers")
    seed: Optional[int] = Field(-1, description="-1: random (the seed used is in info)")
    width: Optional[int] = None
    height: Optional[int] = None
    batch_size: int = 1
    n_iter: int = 1
    eta: Optional[float] = Field(None, description="DDIM's η (other samplers: ignored, with a warning unless 1)")
    override_settings: dict[str, Any] = Field(default_factory=dict,
                                              description="CLIP_stop_at_last_layers: A1111's clip skip")
    send_images: bool = True
    save_images: bool = Field(False, description="also write the images to the server's outputs folder")


class Txt2ImgRequest(GenerationRequest):
    enable_hr: bool = Field(False, description="hires fix: generate, upscale by hr_scale, rework")
    hr_scale: float = 2.0
    hr_upscaler: Optional[str] = Field(None, description="'Latent' (default) or 'Lanczos'")
    hr_second_pass_steps: int = Field(0, description="0: the first pass's steps")
    denoising_strength: Optional[float] = Field(None, description="hires fix: the second pass's strength (0.7)")


class Img2ImgRequest(GenerationRequest):
    init_images: list[str] = Field(description="one base64 image (PNG/JPEG/WebP/BMP; a data: URL is fine)")
    denoising_strength: float = 0.75
    mask: Optional[str] = Field(None, description="base64 mask, white (or opaque) = repaint: inpainting")
    mask_blur: Optional[float] = Field(None, description="pixels the inpainted region fades over (4)")
    inpainting_mask_invert: int = Field(0, description="1: repaint where the mask is black")
    resize_mode: int = Field(0, description="0: stretch to width×height, 1: cover and center-crop")
    include_init_images: bool = False


class GenerationResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs (no data: prefix), each with its parameters chunk")
    parameters: dict = Field(description="the request's fields as understood")
    info: str = Field(description="JSON: seeds, sizes, infotexts, warnings, ...")


class PNGInfoRequest(BaseModel):
    image: str = Field(description="base64 image (a data: URL is fine)")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict
    parameters: dict


class EditRequest(BaseModel):
    """Real-image editing by inversion and prompt-to-prompt (``latentdiff edit``)."""

    model_config = ConfigDict(extra="allow")

    image: str = Field(description="base64 image to edit (any size: covered and cropped to the model's)")
    source_prompt: str = Field(description="what the image shows")
    target_prompt: str = Field(description="the description with your change")
    method: str = Field("ddpm", description="ddpm, direct, nti, npi or ddim")
    steps: Optional[int] = None
    guidance: Optional[float] = None
    seed: int = 0
    cross_replace: float = 0.8
    self_replace: float = 0.4


class EditResponse(BaseModel):
    image: str = Field(description="the edited image, base64 PNG")
    info: str


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: dict
    current_image: Optional[str] = None
    textinfo: Optional[str] = None


# A1111 request fields this server does not honour, with the values that mean "off" (no warning for those); any
# other value is ignored with a warning. Fields mapped to an empty tuple are bookkeeping: never warned about.
NOT_HONOURED = {
    "restore_faces": (False, None), "tiling": (False, None), "styles": ([], None), "subseed": (-1, None),
    "subseed_strength": (0, None), "seed_resize_from_h": (-1, 0, None), "seed_resize_from_w": (-1, 0, None),
    "s_churn": (0, None), "s_tmax": (0, None), "s_tmin": (0, None), "s_noise": (1, None), "s_min_uncond": (0, None),
    "script_name": (None, ""), "script_args": ([], None), "alwayson_scripts": ({}, None),
    "firstphase_width": (0, None), "firstphase_height": (0, None), "hr_resize_x": (0, None),
    "hr_resize_y": (0, None), "hr_checkpoint_name": (None, "", "Use same checkpoint"),
    "hr_sampler_name": (None, "", "Use same sampler"), "hr_scheduler": (None, "", "Use same scheduler"),
    "hr_prompt": ("", None), "hr_negative_prompt": ("", None), "refiner_checkpoint": (None, ""),
    "refiner_switch_at": (None, 0), "image_cfg_scale": (None, 1.5), "initial_noise_multiplier": (None, 1),
    "latent_mask": (None, ""), "disable_extra_networks": (False, None), "token_merging_ratio": (0, None),
    "token_merging_ratio_hr": (0, None),
    "do_not_save_samples": (), "do_not_save_grid": (), "override_settings_restore_afterwards": (),
    "force_task_id": (), "infotext": (), "comments": (),
}
MASK_ONLY = {"inpainting_fill": (1,), "inpaint_full_res": (False, 0), "inpaint_full_res_padding": ()}
OPTIONS_HONOURED = ("sd_model_checkpoint", "CLIP_stop_at_last_layers")
