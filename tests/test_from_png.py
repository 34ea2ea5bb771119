"""`latentdiff generate --from-png`: our PNGs made again pixel for pixel, A1111's read for their settings."""

import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from latentdiff.cli import main
from latentdiff.core.samplers import SAMPLERS
from latentdiff.pipelines.images import read_params
from latentdiff.pipelines.regenerate import read_regeneration, strip_extra_networks


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


NOISY = ("ddim", "dpmpp-2m-sde-karras", "euler-a")  # deterministic, SDE, ancestral: the rest run with -m slow


@pytest.mark.parametrize("sampler", [s if s in NOISY else pytest.param(s, marks=pytest.mark.slow) for s in SAMPLERS])
def test_our_png_is_made_again_with_the_same_pixels(tiny_models, tmp_path, capsys, sampler):
    model = tiny_models[("v_prediction", 4)]
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    code, _, err = run(capsys, "generate", "a (red:1.3) circle, [blue] background", "--model", model, "--steps", 3,
                       "--sampler", sampler, "--seed", 7, "--guidance", 5, "--negative-prompt", "green square",
                       "--clip-skip", 2, "--width", 40, "-o", first, "-q")
    assert code == 0, err
    code, _, err = run(capsys, "generate", "--from-png", first, "-o", again, "-q")
    assert code == 0 and "warning" not in err, err
    assert pixels(first).std() > 5 and np.array_equal(pixels(first), pixels(again))
    assert read_params(again) == read_params(first)


def test_hires_and_overrides_from_our_png(tiny_models, tmp_path, capsys):
    model = tiny_models[("epsilon", 8)]
    first = tmp_path / "first.png"
    assert run(capsys, "generate", "a blue square", "--model", model, "--steps", 3, "--hires-scale", 1.5,
               "--hires-strength", 0.6, "--hires-upscaler", "latent", "-o", first, "-q")[0] == 0
    assert run(capsys, "generate", "--from-png", first, "-o", tmp_path / "again.png", "-q")[0] == 0
    assert np.array_equal(pixels(first), pixels(tmp_path / "again.png")) and pixels(first).shape == (96, 96, 3)
    code, _, err = run(capsys, "generate", "--from-png", first, "--seed", 9, "-o", tmp_path / "other.png", "-q")
    other = read_params(tmp_path / "other.png")
    assert code == 0 and other["seed"] == 9 and other["hires_upscaler"] == "latent" and other["steps"] == 3
    assert not np.array_equal(pixels(first), pixels(tmp_path / "other.png"))


A1111_TEXT = (
    "masterpiece, (a red circle:1.2) <lora:add_detail:0.8>, [blurry]\n"
    "Negative prompt: lowres, (bad anatomy:1.3)\n"
    "Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 48x32, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Face restoration: CodeFormer, "
    'Lora hashes: "add_detail: 7c6bad76eb54", ENSD: 31337, Version: v1.9.4'
)


def a1111_png(path, text=A1111_TEXT):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (48, 32), "gray").save(path, pnginfo=info)
    return path


def test_an_a1111_png_gives_its_settings_and_names_what_is_not_honoured(tiny_models, tmp_path, capsys):
    source = a1111_png(tmp_path / "a1111.png")
    found = read_regeneration(source)
    assert found.source == "a1111" and found.prompt == "masterpiece, (a red circle:1.2) , [blurry]"
    assert found.settings == dict(negative_prompt="lowres, (bad anatomy:1.3)", steps=4, sampler="dpmpp-2m-karras",
                                  guidance=6.5, seed=1234, width=48, height=32, clip_skip=2)
    assert found.model is None and found.model_hash == "6ce0161689"
    code, out, err = run(capsys, "generate", "--from-png", source, "--model", tiny_models[("epsilon", 8)],
                         "-o", tmp_path / "out.png", "-q")
    assert code == 0, err
    made = read_params(tmp_path / "out.png")
    assert {k: made[k] for k in found.settings} == found.settings and made["prompt"] == found.prompt
    warnings = [line for line in err.splitlines() if "warning" in line]
    unhonoured = next(line for line in warnings if "not honoured" in line)
    for field in ("Face restoration: CodeFormer", "ENSD: 31337", "<lora:add_detail>"):
        assert field in unhonoured, unhonoured
    assert any("LoRA 'add_detail'" in line for line in warnings)
    assert any("hash 6ce0161689" in line for line in warnings)  # made by another model: the image will differ


def test_an_a1111_model_that_is_not_here_falls_back_to_the_default_with_a_warning(tmp_path, capsys):
    found = read_regeneration(a1111_png(tmp_path / "a.png"))
    assert found.model is None
    assert any("'v1-5-pruned-emaonly' is not available here" in note for note in found.notes)


def test_an_unknown_sampler_is_a_warning_and_the_default_is_used(tiny_models, tmp_path, capsys):
    text = "a red circle\nSteps: 3, Sampler: UniPC, CFG scale: 5, Seed: 3, Size: 64x64"
    code, _, err = run(capsys, "generate", "--from-png", a1111_png(tmp_path / "u.png", text),
                       "--model", tiny_models[("epsilon", 8)], "-o", tmp_path / "out.png", "-q")
    assert code == 0 and "Sampler: UniPC" in err, err
    assert read_params(tmp_path / "out.png")["sampler"] == "ddim"


@pytest.mark.parametrize("make,message", [
    (lambda p: Image.new("RGB", (8, 8)).save(p / "bare.png") or p / "bare.png", "has no generation parameters"),
    (lambda p: (p / "notes.png").write_text("hello") and p / "notes.png", "is not a PNG/image"),
    (lambda p: p / "missing.png", "does not exist"),
])
def test_bad_images_are_one_line_errors(tiny_models, tmp_path, capsys, make, message):
    code, _, err = run(capsys, "generate", "--from-png", make(tmp_path), "--model", tiny_models[("epsilon", 8)],
                       "-o", tmp_path / "out.png")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    code, _, err = run(capsys, "info", make(tmp_path))
    assert code == 2 and message in err, err


def test_from_png_and_from_file_together_is_refused(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "--from-png", "a.png", "--from-file", "b.txt")
    assert code == 2 and "either --from-png or --from-file" in err


def test_extra_network_tags_are_removed_from_a1111_prompts():
    assert strip_extra_networks("a <lora:x:0.5> cat, <hypernet:y:1>") == ("a cat,", [("lora", "x"), ("hypernet", "y")])
    assert strip_extra_networks("a  cat") == ("a  cat", [])


def test_info_prints_our_parameters_as_a1111_writes_them(tiny_models, tmp_path, capsys):
    made = tmp_path / "m.png"
    assert run(capsys, "generate", "a blue square", "--model", tiny_models[("epsilon", 8)], "--steps", 2,
               "--sampler", "dpmpp-2m-karras", "--clip-skip", 2, "-o", made, "-q")[0] == 0
    code, out, _ = run(capsys, "info", made)
    assert code == 0 and out.startswith("a blue square\nSteps: 2, Sampler: DPM++ 2M, Schedule type: Karras, ")
    assert "Clip skip: 2" in out and "Model hash: " in out
    code, out, _ = run(capsys, "info", made, "--json")
    assert json.loads(out) == read_params(made)


def test_an_embedding_travels_with_the_png_and_is_loaded_again(tiny_models, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(0))
    save_file({"emb_params": vectors}, tmp_path / "qzvstyle.safetensors")  # an A1111 embedding of 2 vectors
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    code, _, err = run(capsys, "generate", "a <shiny> circle", "--negative-prompt", "qzvstyle", "--model",
                       tiny_models[("epsilon", 8)], "--embedding", f"{tmp_path / 'qzvstyle.safetensors'}:<shiny>",
                       "--embedding", tmp_path / "qzvstyle.safetensors", "--steps", 3, "-o", first, "-q")
    assert code == 0, err
    params = read_params(first)
    assert [e["token"] for e in params["embeddings"]] == ["<shiny>", "qzvstyle"]
    assert 'TI hashes: "<shiny>: ' in Image.open(first).text["parameters"]
    code, _, err = run(capsys, "generate", "--from-png", first, "-o", again, "-q")
    assert code == 0 and "warning" not in err, err
    assert np.array_equal(pixels(first), pixels(again))
    code, _, err = run(capsys, "generate", "a circle", "--model", tiny_models[("epsilon", 8)], "--steps", 3,
                       "-o", tmp_path / "plain.png", "-q")
    assert not np.array_equal(pixels(first), pixels(tmp_path / "plain.png"))
