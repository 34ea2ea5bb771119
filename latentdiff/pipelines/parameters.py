"""Generation parameters as AUTOMATIC1111 writes and reads them: the ``parameters`` text of a PNG.

The format (A1111's ``processing.create_infotext`` writes it, ``infotext_utils.parse_generation_parameters`` reads
it, and model sites read the same): the prompt (it may span lines), then ``Negative prompt: ...`` (it may span lines;
absent when empty), then one line of ``Key: value`` pairs joined by ", ", a value holding ',', ':' or a newline
written as a JSON string. A reader takes the last line for the settings when at least 3 pairs parse from it.

Samplers. A1111 >= 1.9 writes ``Sampler: DPM++ 2M, Schedule type: Karras``; older versions wrote one name,
``Sampler: DPM++ 2M Karras``. Both read back to our names (table :data:`A1111_SAMPLERS`):

    ddim → DDIM, ddpm → DDPM (A1111 has no DDPM: only we read it back), euler → Euler, euler-a → Euler a,
    dpmpp-2m(-sde) → DPM++ 2M (SDE) + SGM Uniform, dpmpp-2m(-sde)-karras → DPM++ 2M (SDE) + Karras.

Our plain samplers step uniformly in timestep, spaced as the model's scheduler config says; A1111's nearest name is
SGM Uniform (N + 1 divisions, the last dropped, as diffusers' DPM-Solver ``linspace``). Uniform and SGM Uniform
read as the plain sampler; another schedule (Exponential, Normal, ...) reads as the plain sampler, reported.

"Automatic" is, in A1111 >= 1.9, the sampler's default schedule (the ``'scheduler'`` option of its row in
``modules/sd_samplers_kdiffusion.py``, resolved in ``KDiffusionSampler.get_sigmas``): Karras for DPM++ 2M,
Exponential for DPM++ 2M SDE, none (the model's own timesteps) for Euler, Euler a and DDIM. Since A1111 then writes
the resolved name whenever there is one, a *missing* Schedule type means the sampler's own timesteps (an A1111
older than 1.9, where ``DPM++ 2M`` was the uniform one, or a sampler without a default) and reads as our plain
sampler; an explicit ``Automatic`` reads as the >= 1.9 default (DPM++ 2M → dpmpp-2m-karras; DPM++ 2M SDE's
Exponential is not ours: dpmpp-2m-sde, reported).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

from .. import __version__
from ..core.guidance import check_rescale
from ..core.sampling import check_eta

# our sampler → (A1111 sampler, A1111 schedule type or None)
A1111_SAMPLERS = {
    "ddim": ("DDIM", None), "ddpm": ("DDPM", None),
    "dpmpp-2m": ("DPM++ 2M", "SGM Uniform"), "dpmpp-2m-karras": ("DPM++ 2M", "Karras"),
    "dpmpp-2m-sde": ("DPM++ 2M SDE", "SGM Uniform"), "dpmpp-2m-sde-karras": ("DPM++ 2M SDE", "Karras"),
    "euler": ("Euler", None), "euler-a": ("Euler a", None),
}
AUTOMATIC = {"DPM++ 2M": "Karras", "DPM++ 2M SDE": "Exponential"}  # A1111 >= 1.9's default schedule of a sampler
_FROM_A1111: dict[str, dict] = {}  # A1111 sampler (lower case) → {its schedule type or None: our sampler}
for _ours, (_name, _schedule) in A1111_SAMPLERS.items():
    _FROM_A1111.setdefault(_name.lower(), {})[_schedule] = _ours
del _ours, _name, _schedule
# A1111's schedule types (modules/sd_schedulers.py): label → its other spellings (name, aliases)
SCHEDULES = {"Automatic": (), "Uniform": (), "Karras": (), "Exponential": (), "Polyexponential": (),
             "SGM Uniform": ("sgm_uniform", "SGMUniform"), "KL Optimal": ("kl_optimal",),
             "Align Your Steps": ("align_your_steps",), "Simple": (), "Normal": (), "DDIM": (), "Beta": ()}
_SCHEDULE_NAMES = {s.lower(): label for label, others in SCHEDULES.items() for s in (label, *others)}
_UNIFORM = {"Uniform", "SGM Uniform"}
UPSCALERS = {"latent": "Latent", "lanczos": "Lanczos"}  # our hires upscaler → A1111's (bilinear latents; PIL Lanczos)
# read as data for the caller (which model, LoRA, VAE made the image), never reported as unhonoured
INFORMATIONAL = {"Version", "Model", "Model hash", "VAE", "VAE hash", "Lora hashes", "TI hashes", "Hashes", "User",
                 "Template", "Negative Template", "Init image hash", "Civitai resources", "Civitai metadata"}
WEIGHT_SUFFIXES = {".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf"}
UNET_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
              "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")
BLOCK = 1 << 20  # hash files in 1 MiB reads

_KEY = re.compile(r"\s*(\w[^:,\"\n]*?)\s*:\s*")  # a key starts with a word character and holds no , : "
_json = json.JSONDecoder()


def quote(value) -> str:
    """A settings value as A1111 writes it: JSON-quoted when it holds ',', ':' or a newline (and, so that it reads
    back the same, when it starts with '"' or has white space around it)."""
    text = str(value)
    if any(c in text for c in ",:\n") or text.startswith('"') or text != text.strip():
        return json.dumps(text, ensure_ascii=False)
    return text


def _number(value) -> str:
    """7.0 → '7', 0.35 → '0.35' (the shortest text that reads back the same float)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def model_name(model: str) -> str | None:
    """A1111's ``Model``: the checkpoint's name, the stem of a weights file or the name of a model folder (a hub id's
    last part); ``model`` may carry our ' + LoRA ...' suffix. None for a model with no path."""
    path = str(model).split(" + LoRA ")[0].strip()
    if not path or path.startswith("<"):
        return None
    p = Path(path)
    return p.stem if p.suffix.lower() in WEIGHT_SUFFIXES else p.name


def format_parameters(params: dict) -> str:
    """The A1111 ``parameters`` text of our generation ``params`` (the dict a generated image carries)."""
    get = params.get
    sampler, schedule = A1111_SAMPLERS.get(get("sampler"), (get("sampler"), None))
    hires = get("hires_scale") is not None
    fields = {
        "Steps": get("steps"), "Sampler": sampler, "Schedule type": schedule,
        "CFG scale": get("guidance"), "Seed": get("seed"),
        "Size": f"{get('width')}x{get('height')}" if get("width") and get("height") else None,
        "Model hash": get("model_hash"), "Model": model_name(get("model")) if get("model") else None,
        # a hires run's second-pass strength is A1111's Denoising strength (its txt2img has no other)
        "Denoising strength": get("hires_strength") if hires else get("strength"),
        "Clip skip": get("clip_skip") if (get("clip_skip") or 1) > 1 else None,  # 1 (off) unwritten, as A1111
        "Mask blur": get("mask_blur"),
        "Hires upscale": get("hires_scale"), "Hires steps": get("hires_steps") if hires else None,
        "Hires upscaler": UPSCALERS.get(get("hires_upscaler"), get("hires_upscaler")) if hires else None,
        "Lora hashes": ", ".join(f"{re.sub('[:,]', '', str(lora['name']))}: {lora['hash']}"
                                 for lora in get("loras") or () if lora.get("hash")) or None,
        "TI hashes": ", ".join(f"{re.sub('[:,]', '', str(e['token']))}: {e['hash']}"
                               for e in get("embeddings") or () if e.get("hash")) or None,
        "Eta DDIM": get("eta") if get("sampler") == "ddim" and get("eta") else None,  # A1111: only when != 0
        "CFG Rescale": get("guidance_rescale") or None,  # the CFG_Rescale_webui extension: only when > 0
        "Version": f"latentdiff {__version__}",
    }
    settings = ", ".join(f"{key}: {quote(_number(value))}" for key, value in fields.items() if value is not None)
    negative = f"\nNegative prompt: {get('negative_prompt')}" if get("negative_prompt") else ""
    return f"{get('prompt') or ''}{negative}\n{settings}".strip()


def _settings_line(line: str) -> dict[str, str]:
    """The ``Key: value`` pairs of one line (values unquoted); a piece that is no pair is skipped, as A1111 does."""
    out, pos, end = {}, 0, len(line)
    while pos < end:
        match = _KEY.match(line, pos)
        if not match:
            comma = line.find(",", pos)
            pos = end if comma == -1 else comma + 1
            continue
        key, pos = match.group(1), match.end()
        value = None
        if pos < end and line[pos] in '"{[':  # a JSON string (A1111's quoting), or an extension's JSON object
            try:
                decoded, stop = _json.raw_decode(line, pos)
                if line[stop:].lstrip().startswith(",") or not line[stop:].strip():
                    value = decoded if isinstance(decoded, str) else line[pos:stop]
                    pos = stop
            except ValueError:
                pass
        comma = line.find(",", pos)
        if value is None:
            value = line[pos:end if comma == -1 else comma].strip()
        out[key] = value
        pos = end if comma == -1 else comma + 1
    return out


def parse_parameters(text: str) -> dict[str, str]:
    """The fields of an A1111 ``parameters`` text: {"Prompt": ..., "Negative prompt": ..., "Steps": "20", ...},
    every value a string, unquoted ("Negative prompt" is "" when there is none)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the generation parameters text is empty; expected a prompt line and 'Steps: ..., ' settings")
    *lines, last = text.strip().split("\n")
    settings = _settings_line(last)
    if len(settings) < 3:  # A1111's rule: fewer than 3 pairs is prompt text
        lines.append(last)
        settings = {}
    prompt, negative, in_negative = [], [], False
    for line in (line.strip() for line in lines):
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    return {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative), **settings}


def _sampler(name: str, schedule: str | None) -> tuple[str | None, list[str]]:
    """Our sampler for an A1111 sampler name (old style: its schedule at the end) and Schedule type (or None)."""
    base, said = name.strip(), f"Schedule type: {schedule}"
    if base.lower() not in _FROM_A1111:  # 'DPM++ 2M Karras' → 'DPM++ 2M' + Karras (the name's schedule wins)
        for spelling, label in _SCHEDULE_NAMES.items():
            if base.lower().endswith(" " + spelling):
                base, schedule, said = base[:-len(spelling) - 1].strip(), label, f"Sampler: {name}"
                break
    row = _FROM_A1111.get(base.lower())
    if row is None:
        given = [said] if said.startswith("Schedule") and schedule and schedule.lower() != "automatic" else []
        return None, [f"Sampler: {name} (not ours; the default sampler is used)", *given]
    plain = row.get(None) or row["SGM Uniform"]
    label = _SCHEDULE_NAMES.get((schedule or "").strip().lower(), schedule)
    if label == "Automatic":
        automatic = next((v for k, v in AUTOMATIC.items() if k.lower() == base.lower()), None)
        label, said = automatic, f"{said} (that is {automatic} for {base} in A1111 >= 1.9)"
    if label is None or label in _UNIFORM:
        return plain, []
    if label in row:
        return row[label], []
    return plain, [f"{said} (not ours; {plain} on the model's own timesteps is used)"]


def _typed(key: str, value: str, kind, check=None):
    """(``value`` as ``kind``, None), or (None, 'Key: value (why)') when it is not one or fails ``check``."""
    try:
        typed = kind(value)
    except ValueError:
        return None, f"{key}: {value} (not {'a whole number' if kind is int else 'a number'})"
    try:
        if not math.isfinite(typed):
            raise ValueError("not a finite number")
        if check:
            check(typed)
    except ValueError as error:
        return None, f"{key}: {value} ({error})"
    return typed, None


def _at_least(low: float, above: bool = False):
    def check(v):
        if v < low or (above and v == low):
            raise ValueError(f"must be {'>' if above else '>='} {low:g}")
    return check


def _in_unit(v: float) -> None:
    if not 0 < v <= 1:
        raise ValueError("must be in (0, 1]")


def settings_from_parameters(fields: dict[str, str]) -> tuple[dict, list[str]]:
    """Our settings from :func:`parse_parameters`' fields, and a description of every field we cannot honour.

    Keys: prompt, negative_prompt, steps, sampler, guidance, guidance_rescale, seed, width, height, eta,
    clip_skip, strength, mask_blur, hires_scale, hires_steps, hires_upscaler; and, as data for the caller to check
    (never reported here): model (the checkpoint's name), model_hash, loras ([{"name", "hash"}]), vae, vae_hash,
    version. An unknown sampler is left out (the default is used) and reported; so is a malformed value."""
    fields = dict(fields)
    out, unhonoured = {}, []
    text = {"Prompt": "prompt", "Negative prompt": "negative_prompt", "Model": "model", "Model hash": "model_hash",
            "VAE": "vae", "VAE hash": "vae_hash", "Version": "version"}
    for key, name in text.items():
        if key in fields:
            out[name] = fields.pop(key)
    has_settings = bool(set(fields) - INFORMATIONAL)
    hires = any(k in fields for k in ("Hires upscale", "Hires resize", "Hires upscaler", "Hires steps"))
    numbers = {"Steps": ("steps", int, _at_least(1)), "CFG scale": ("guidance", float, None),
               "Seed": ("seed", int, None), "Clip skip": ("clip_skip", int, _at_least(1)),
               "CFG Rescale": ("guidance_rescale", float, check_rescale),
               "CFG Rescale φ": ("guidance_rescale", float, check_rescale),  # the extension's older name
               "Denoising strength": ("hires_strength" if hires else "strength", float, _in_unit),
               "Mask blur": ("mask_blur", float, _at_least(0)),
               "Hires upscale": ("hires_scale", float, _at_least(0, True)),
               "Hires steps": ("hires_steps", int, _at_least(1))}
    for key, (name, kind, check) in numbers.items():
        if key in fields:
            value, problem = _typed(key, fields.pop(key), kind, check)
            if problem:
                unhonoured.append(problem)
            else:
                out[name] = value
    if "Size" in fields:
        size = fields.pop("Size")
        w, _, h = size.partition("x")
        width, bad_w = _typed("Size", w, int, _at_least(1, True))
        height, bad_h = _typed("Size", h, int, _at_least(1, True))
        if bad_w or bad_h:
            unhonoured.append(f"Size: {size} (not WIDTHxHEIGHT in pixels)")
        else:
            out["width"], out["height"] = width, height
    if "Sampler" in fields:
        sampler, problems = _sampler(fields.pop("Sampler"), fields.pop("Schedule type", None))
        unhonoured += problems
        if sampler:
            out["sampler"] = sampler
    for key in ("Eta DDIM", "Eta"):  # DDIM's η (A1111 writes Eta DDIM when != 0); an ancestral sampler's η is 'Eta'
        if key in fields:
            value = fields.pop(key)
            eta, problem = _typed(key, value, float, check_eta)
            if out.get("sampler") == "ddim" and not problem:
                out.setdefault("eta", eta)
            elif not (key == "Eta" and eta == 1.0):  # 1 is what our ancestral and SDE samplers use
                unhonoured.append(problem or f"{key}: {value} (only DDIM's η is ours)")
    if out.get("sampler") == "ddim" and "eta" not in out and has_settings:
        out["eta"] = 0.0  # A1111 writes DDIM's η only when it is not 0
    if has_settings and "clip_skip" not in out and not any(u.startswith("Clip skip:") for u in unhonoured):
        out["clip_skip"] = 1  # A1111 writes Clip skip only when > 1
    if "Hires upscaler" in fields:
        value = fields.pop("Hires upscaler")
        ours = {v.lower(): k for k, v in UPSCALERS.items()}.get(value.strip().lower())
        if ours:
            out["hires_upscaler"] = ours
        else:
            unhonoured.append(f"Hires upscaler: {value} (ours are {' and '.join(UPSCALERS.values())})")
    if "Lora hashes" in fields:
        pairs = (item.partition(":") for item in fields.pop("Lora hashes").split(","))
        out["loras"] = [{"name": n.strip(), "hash": h.strip()} for n, _, h in pairs if n.strip()]
    if "TI hashes" in fields:
        pairs = (item.partition(":") for item in fields.pop("TI hashes").split(","))
        out["embeddings"] = [{"token": n.strip(), "hash": h.strip()} for n, _, h in pairs if n.strip()]
    unhonoured += [f"{key}: {value}" for key, value in fields.items() if key not in INFORMATIONAL]
    return out, unhonoured


def _sha256(path: str | os.PathLike, safetensors_data: bool = False) -> str:
    """The sha256 of a file read in 1 MiB blocks (with ``safetensors_data``, of what follows its header)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            if safetensors_data:
                f.seek(8 + int.from_bytes(f.read(8), "little"))  # a u64 header length, then the JSON header
            while block := f.read(BLOCK):
                digest.update(block)
    except OSError as error:
        raise ValueError(f"cannot hash '{path}': {error.strerror or error}") from None
    return digest.hexdigest()


def file_hash(path: str | os.PathLike, digits: int = 64) -> str:
    """The first ``digits`` hex digits of the sha256 of the file at ``path`` (read in 1 MiB blocks)."""
    return _sha256(path)[:digits]


def model_hash(path: str | os.PathLike) -> str:
    """A1111's ``Model hash``: the first 10 hex digits of the checkpoint file's sha256 (``sd_models``' shorthash).

    A diffusers folder has no single checkpoint file: its hash is that of its UNet weights file
    (``unet/diffusion_pytorch_model.safetensors``, else the fp16 or .bin one). That hash is ours only: it matches no
    A1111 or model-site hash of the same model as one file."""
    path = Path(path)
    if path.is_dir():
        unet = next((path / "unet" / name for name in UNET_FILES if (path / "unet" / name).is_file()), None)
        if unet is None:
            raise ValueError(f"model folder '{path}' has no unet/ weights file ({', '.join(UNET_FILES)}) to hash")
        path = unet
    return file_hash(path, 10)


def lora_hash(path: str | os.PathLike) -> str:
    """A1111's LoRA hash (``Lora hashes``): 12 hex digits of, for a .safetensors file, the sha256 of everything after
    its header (kohya's "addnet" hash, which A1111 and model sites use), else of the whole file."""
    return _sha256(path, Path(path).suffix.lower() == ".safetensors")[:12]
