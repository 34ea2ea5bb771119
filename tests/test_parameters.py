"""Generation parameters in AUTOMATIC1111's format: our PNGs read as A1111's, A1111's texts read as our settings."""

import hashlib
import json

import pytest
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import save_file

from latentdiff.cli import main
from latentdiff.core.samplers import SAMPLERS
from latentdiff.pipelines.images import read_png_parameters, save_png
from latentdiff.pipelines.parameters import (
    A1111_SAMPLERS,
    file_hash,
    format_parameters,
    lora_hash,
    model_hash,
    parse_parameters,
    quote,
    settings_from_parameters,
)

PARAMS = dict(prompt="a red circle, big: bold\n(second line:1.2)", negative_prompt='blurry, "ugly"\nlow: quality',
              steps=12, sampler="ddim", guidance=7.5, guidance_rescale=0.0, seed=5, width=64, height=96, eta=0.0,
              clip_skip=1, model="/models/my-model", num_images=1, dtype="float32", prompt_syntax="a1111")


def read(text):
    return settings_from_parameters(parse_parameters(text))


# --- our parameters → A1111 text → our settings ---------------------------------------------------------------

def test_every_registry_sampler_has_an_a1111_name():
    assert set(A1111_SAMPLERS) == set(SAMPLERS)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("extra", [{}, dict(eta=0.5, clip_skip=3, guidance_rescale=0.7, strength=0.6, mask_blur=4.0),
                                   dict(hires_scale=1.5, hires_steps=8, hires_upscaler="latent", hires_strength=0.35)])
def test_round_trip_gives_back_our_settings(sampler, extra):
    params = dict(PARAMS, sampler=sampler, **extra)
    settings, unhonoured = read(format_parameters(params))
    assert unhonoured == []
    assert settings["sampler"] == sampler
    expected = {k: params[k] for k in ("prompt", "negative_prompt", "steps", "guidance", "seed", "width", "height",
                                       "clip_skip", *extra) if k != "eta"}
    if extra.get("guidance_rescale") == 0.0:
        expected.pop("guidance_rescale")
    assert {k: settings[k] for k in expected} == expected
    assert settings["model"] == "my-model" and settings["version"].startswith("latentdiff ")
    if sampler == "ddim":  # η is DDIM's alone; A1111 writes it only when it is not 0
        assert settings["eta"] == params["eta"]
    else:
        assert "eta" not in settings and "Eta" not in format_parameters(params)


def test_written_as_a1111_writes_it():
    text = format_parameters(dict(PARAMS, sampler="dpmpp-2m-karras", clip_skip=2, model_hash="6ce0161689",
                                  model="/x/v1-5-pruned-emaonly.safetensors + LoRA /l/a.safetensors x0.8",
                                  loras=[{"name": "add_detail", "hash": "7c6bad76eb54", "weight": 0.5}]))
    assert text.startswith(PARAMS["prompt"] + "\nNegative prompt: " + PARAMS["negative_prompt"] + "\n")
    assert text.split("\n")[-1] == (
        'Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 5, Size: 64x96, '
        'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, '
        'Lora hashes: "add_detail: 7c6bad76eb54", Version: latentdiff 0.1.0')
    names = {s: format_parameters(dict(PARAMS, sampler=s)).split("\n")[-1].split(", CFG")[0] for s in SAMPLERS}
    assert names == {"ddim": "Steps: 12, Sampler: DDIM", "ddpm": "Steps: 12, Sampler: DDPM",
                     "dpmpp-2m": "Steps: 12, Sampler: DPM++ 2M, Schedule type: SGM Uniform",
                     "dpmpp-2m-karras": "Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras",
                     "dpmpp-2m-sde": "Steps: 12, Sampler: DPM++ 2M SDE, Schedule type: SGM Uniform",
                     "dpmpp-2m-sde-karras": "Steps: 12, Sampler: DPM++ 2M SDE, Schedule type: Karras",
                     "euler": "Steps: 12, Sampler: Euler", "euler-a": "Steps: 12, Sampler: Euler a"}


@pytest.mark.parametrize("value", ["plain", "a, b", "key: value", "two\nlines", '"quoted"', 'say "hi", then: go',
                                   "back\\slash, x", " padded ", "ünïcödé, 猫"])
def test_quoted_values_read_back_the_same(value):
    assert quote("plain") == "plain" and quote("a, b") == '"a, b"'
    fields = parse_parameters(f"p\nSteps: 1, Odd: {quote(value)}, Sampler: Euler, After: {quote(value)}, Seed: 2")
    assert fields["Odd"] == fields["After"] == value
    assert fields["Sampler"] == "Euler" and fields["Seed"] == "2"


@pytest.mark.parametrize("prompt,negative", [("a, b: c", ""), ("line one,\nline two: (x:1.1)", "neg, one\nneg: two"),
                                             ('"quoted", with commas', 'and "quotes"'), ("", "only a negative")])
def test_prompts_read_back_the_same(prompt, negative):
    fields = parse_parameters(format_parameters(dict(PARAMS, prompt=prompt, negative_prompt=negative)))
    assert fields["Prompt"] == prompt and fields["Negative prompt"] == negative


# --- A1111's texts → our settings -------------------------------------------------------------------------------

SD15 = """masterpiece, best quality, 1girl, <lora:add_detail:0.5>
Negative prompt: lowres, bad anatomy
Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, Model hash: 6ce0161689, \
Model: v1-5-pruned-emaonly, Clip skip: 2, Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.9.4"""

OLD_STYLE = """a photo of a castle on a hill
Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 768x512, Model hash: e6e99610c4, \
Model: sd_xl_base_1.0, ENSD: 31337, Version: v1.6.0"""

IMG2IMG = """a watercolor painting of a fox
Negative prompt: blurry
Steps: 20, Sampler: Euler a, CFG scale: 6, Seed: 99, Size: 512x512, Model hash: 6ce0161689, \
Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Mask blur: 4, Version: v1.10.1"""

HIRES = """a cozy cabin in the woods, snow
Negative prompt: (worst quality:1.4)
Steps: 20, Sampler: DPM++ 2M SDE, Schedule type: Exponential, CFG scale: 7, Seed: 3141592653, Size: 512x512, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.55, Hires upscale: 2, Hires steps: 15, \
Hires upscaler: Latent, Version: v1.9.4"""

MULTILINE = """masterpiece, best quality,
1girl, solo, looking at viewer
BREAK red dress
Negative prompt: lowres, bad hands,
text, error
Steps: 28, Sampler: Euler a, CFG scale: 5.5, Seed: 2657011785, Size: 832x1216, Model hash: 529c72f6c3, \
Model: mfcgPDXL_v10, VAE hash: 735e4c3a44, VAE: sdxl_vae.safetensors, Clip skip: 2, \
Version: f0.0.17v1.8.0rc-latest-277-g0af28699"""

EXTENSIONS = """portrait of an old man
Negative prompt: cartoon
Steps: 30, Sampler: UniPC, CFG scale: 8, Seed: 7, Face restoration: CodeFormer, Size: 512x512, \
Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, ADetailer model: face_yolov8n.pt, \
ADetailer prompt: "detailed face, sharp eyes", ADetailer confidence: 0.3, ENSD: 31337, Variation seed: 1, \
Variation seed strength: 0.1, Hashes: {"model": "6ce0161689", "lora:x": "aa"}, Version: v1.7.0"""


def test_a_typical_sd15_txt2img():
    assert read(SD15) == ({
        "prompt": "masterpiece, best quality, 1girl, <lora:add_detail:0.5>", "negative_prompt": "lowres, bad anatomy",
        "steps": 25, "sampler": "dpmpp-2m-karras", "guidance": 7.0, "seed": 1234, "width": 512, "height": 768,
        "model_hash": "6ce0161689", "model": "v1-5-pruned-emaonly", "clip_skip": 2, "version": "v1.9.4",
        "loras": [{"name": "add_detail", "hash": "7c6bad76eb54"}]}, [])


def test_old_style_sampler_names_carry_their_schedule():
    settings, unhonoured = read(OLD_STYLE)
    assert settings["sampler"] == "dpmpp-2m-karras" and settings["negative_prompt"] == ""
    assert settings["clip_skip"] == 1 and settings["guidance"] == 7.5
    assert (settings["width"], settings["height"]) == (768, 512)
    assert unhonoured == ["ENSD: 31337"]
    for old, ours in [("DPM++ 2M SDE Karras", "dpmpp-2m-sde-karras"), ("DPM++ 2M", "dpmpp-2m"),
                      ("DPM++ 2M SDE", "dpmpp-2m-sde"), ("Euler a", "euler-a"), ("DDIM", "ddim")]:
        assert read(OLD_STYLE.replace("DPM++ 2M Karras", old)) == (dict(settings, sampler=ours, **(
            {"eta": 0.0} if ours == "ddim" else {})), unhonoured)
    settings, unhonoured = read(OLD_STYLE.replace("DPM++ 2M Karras", "DPM++ 2M SDE Exponential"))
    assert settings["sampler"] == "dpmpp-2m-sde" and unhonoured[0].startswith("Sampler: DPM++ 2M SDE Exponential (")


def test_an_img2img():
    settings, unhonoured = read(IMG2IMG)
    assert unhonoured == [] and settings["sampler"] == "euler-a"
    assert settings["strength"] == 0.45 and settings["mask_blur"] == 4.0 and "hires_strength" not in settings


def test_a_hires_run_and_a_schedule_we_do_not_have():
    settings, unhonoured = read(HIRES)
    assert settings["sampler"] == "dpmpp-2m-sde"
    assert (settings["hires_scale"], settings["hires_steps"], settings["hires_upscaler"]) == (2.0, 15, "latent")
    assert settings["hires_strength"] == 0.55 and "strength" not in settings and settings["seed"] == 3141592653
    assert len(unhonoured) == 1 and unhonoured[0].startswith("Schedule type: Exponential (")
    settings, unhonoured = read(HIRES.replace("Hires upscaler: Latent", "Hires upscaler: R-ESRGAN 4x+"))
    assert "hires_upscaler" not in settings and any(u.startswith("Hires upscaler: R-ESRGAN 4x+") for u in unhonoured)
    assert read(HIRES.replace("Hires upscaler: Latent", "Hires upscaler: Lanczos"))[0]["hires_upscaler"] == "lanczos"


def test_multi_line_prompt_and_negative_prompt():
    settings, unhonoured = read(MULTILINE)
    assert settings["prompt"] == "masterpiece, best quality,\n1girl, solo, looking at viewer\nBREAK red dress"
    assert settings["negative_prompt"] == "lowres, bad hands,\ntext, error"
    assert (settings["vae"], settings["vae_hash"], settings["clip_skip"]) == ("sdxl_vae.safetensors", "735e4c3a44", 2)
    assert unhonoured == [] and settings["guidance"] == 5.5 and settings["sampler"] == "euler-a"


def test_an_unknown_sampler_and_extension_fields_are_reported():
    fields = parse_parameters(EXTENSIONS)
    assert fields["ADetailer prompt"] == "detailed face, sharp eyes"
    assert json.loads(fields["Hashes"]) == {"model": "6ce0161689", "lora:x": "aa"}
    settings, unhonoured = settings_from_parameters(fields)
    assert "sampler" not in settings and settings["steps"] == 30 and settings["seed"] == 7
    assert unhonoured[0].startswith("Sampler: UniPC (")
    assert unhonoured[1:] == ["Face restoration: CodeFormer", "ADetailer model: face_yolov8n.pt",
                              "ADetailer prompt: detailed face, sharp eyes", "ADetailer confidence: 0.3",
                              "ENSD: 31337", "Variation seed: 1", "Variation seed strength: 0.1"]


def test_automatic_is_the_samplers_a1111_default():
    line = "Steps: 20, Sampler: {}, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512"
    assert read("p\n" + line.format("DPM++ 2M"))[0]["sampler"] == "dpmpp-2m-karras"
    settings, unhonoured = read("p\n" + line.format("Euler"))
    assert settings["sampler"] == "euler" and unhonoured == []
    settings, unhonoured = read("p\n" + line.format("DPM++ 2M SDE"))
    assert settings["sampler"] == "dpmpp-2m-sde" and unhonoured[0].startswith("Schedule type: Automatic (")
    for uniform in ("Uniform", "SGM Uniform"):
        assert read("p\n" + line.format("DPM++ 2M").replace("Automatic", uniform)) == (
            dict(prompt="p", negative_prompt="", steps=20, sampler="dpmpp-2m", guidance=7.0, seed=1, width=512,
                 height=512, clip_skip=1), [])


def test_eta():
    ddim = "p\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 1, Size: 512x512"
    assert read(ddim)[0]["eta"] == 0.0 and read(ddim + ", Eta DDIM: 0.3")[0]["eta"] == 0.3
    settings, unhonoured = read(ddim.replace("DDIM", "Euler a") + ", Eta: 0.67")
    assert "eta" not in settings and unhonoured == ["Eta: 0.67 (only DDIM's η is ours)"]


def test_malformed_values_are_reported_not_raised():
    settings, unhonoured = read("a cat\nSteps: many, Sampler: Euler, CFG scale: 7, Size: big, Seed: 3, Clip skip: 0")
    assert settings == {"prompt": "a cat", "negative_prompt": "", "sampler": "euler", "guidance": 7.0, "seed": 3}
    assert unhonoured == ["Steps: many (not a whole number)", "Clip skip: 0 (must be >= 1)",
                          "Size: big (not WIDTHxHEIGHT in pixels)"]


def test_texts_without_settings():
    assert parse_parameters("just a prompt, with commas\nand: a second line") == {
        "Prompt": "just a prompt, with commas\nand: a second line", "Negative prompt": ""}
    assert read("a prompt\nNegative prompt: a negative") == (
        {"prompt": "a prompt", "negative_prompt": "a negative"}, [])
    for bad in ("", "  \n ", None):
        with pytest.raises(ValueError, match="parameters text is empty"):
            parse_parameters(bad)


# --- hashes ---------------------------------------------------------------------------------------------------

def test_hashes(tmp_path):
    data = bytes(range(256)) * 5000  # > 1 MiB, so more than one block
    (tmp_path / "model.safetensors").write_bytes(data)
    assert file_hash(tmp_path / "model.safetensors") == hashlib.sha256(data).hexdigest()
    assert model_hash(tmp_path / "model.safetensors") == hashlib.sha256(data).hexdigest()[:10]
    (tmp_path / "folder" / "unet").mkdir(parents=True)
    (tmp_path / "folder" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(data[:10])
    assert model_hash(tmp_path / "folder") == hashlib.sha256(data[:10]).hexdigest()[:10]
    with pytest.raises(ValueError, match="has no unet/ weights file"):
        model_hash(tmp_path)
    with pytest.raises(ValueError, match="cannot hash"):
        model_hash(tmp_path / "missing.safetensors")
    # a LoRA's hash is of its tensors, not of its header: metadata does not change it
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    save_file(tensors, tmp_path / "a.safetensors", metadata={"ss_output_name": "a"})
    save_file(tensors, tmp_path / "b.safetensors", metadata={"ss_output_name": "bee"})
    raw = (tmp_path / "a.safetensors").read_bytes()
    body = raw[8 + int.from_bytes(raw[:8], "little"):]
    assert lora_hash(tmp_path / "a.safetensors") == lora_hash(tmp_path / "b.safetensors")
    assert lora_hash(tmp_path / "a.safetensors") == hashlib.sha256(body).hexdigest()[:12]
    assert file_hash(tmp_path / "a.safetensors") != file_hash(tmp_path / "b.safetensors")


# --- images and `latentdiff info` -------------------------------------------------------------------------------

def png_with(path, **chunks):
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_read_png_parameters(tmp_path):
    save_png(Image.new("RGB", (8, 8)), tmp_path / "ours.png", PARAMS)
    ours, text = read_png_parameters(tmp_path / "ours.png")
    assert ours == PARAMS and text == format_parameters(PARAMS)
    assert read_png_parameters(png_with(tmp_path / "a1111.png", parameters=SD15)) == (None, SD15)
    # A1111 writes a JPEG's or WebP's text into EXIF UserComment: 'UNICODE\0', then UTF-16 big-endian
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + MULTILINE.encode("utf-16-be")
    for suffix in ("jpg", "webp"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"a.{suffix}", exif=exif.tobytes())
        assert read_png_parameters(tmp_path / f"a.{suffix}") == (None, MULTILINE)
    (tmp_path / "x.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"^'.*x.txt' is not a PNG/image: "):
        read_png_parameters(tmp_path / "x.txt")
    with pytest.raises(ValueError, match=r"^'.*bare.png' has no generation parameters \(no 'parameters' or "):
        read_png_parameters(png_with(tmp_path / "bare.png"))
    with pytest.raises(ValueError, match="does not exist"):
        read_png_parameters(tmp_path / "missing.png")


def test_info_command(tmp_path, capsys):
    save_png(Image.new("RGB", (8, 8)), tmp_path / "ours.png", dict(PARAMS, sampler="euler-a"))
    code, out, err = run(capsys, "info", tmp_path / "ours.png")
    assert code == 0 and "Steps: 12, Sampler: Euler a, CFG scale: 7.5" in out and err == ""
    assert out.startswith(PARAMS["prompt"])
    code, out, _ = run(capsys, "info", tmp_path / "ours.png", "--json")
    assert code == 0 and json.loads(out) == dict(PARAMS, sampler="euler-a")
    # only our JSON: the A1111 text is made from it; only A1111's text: settings read from it, with what we cannot do
    code, out, _ = run(capsys, "info", png_with(tmp_path / "json.png", latentdiff=json.dumps(PARAMS)))
    assert code == 0 and out == format_parameters(PARAMS) + "\n"
    code, out, _ = run(capsys, "info", png_with(tmp_path / "a1111.png", parameters=EXTENSIONS), "--json")
    shown = json.loads(out)
    assert code == 0 and shown["steps"] == 30 and "sampler" not in shown and "ENSD: 31337" in shown["unhonoured"]


@pytest.mark.parametrize("name,message", [("x.txt", "is not a PNG/image"), ("bare.png", "has no generation parameters"),
                                          ("missing.png", "does not exist")])
def test_info_command_bad_input_is_one_line_and_exit_2(tmp_path, capsys, name, message):
    (tmp_path / "x.txt").write_text("hello")
    png_with(tmp_path / "bare.png")
    code, out, err = run(capsys, "info", tmp_path / name)
    assert code == 2 and out == ""
    assert err.startswith("latentdiff info: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
