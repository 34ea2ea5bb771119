"""LoRA files as users have them (kohya/A1111 and diffusers formats, UNet and text-encoder halves, conv layers,
several at once with weights), checked against diffusers' load_lora_weights; and training that writes them."""

import copy
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from latentdiff.cli import main
from latentdiff.cli.loading import lora_choices, parse_lora
from latentdiff.models import load_components
from latentdiff.models.lora import add_lora, add_text_encoder_lora, load_loras, save_lora
from latentdiff.models.lora_formats import parse_state_dict, save_kohya_lora
from latentdiff.pipelines import Pipeline
from latentdiff.training.config import load_config
from latentdiff.training.validate import validate

PROMPT, STEPS, SEED = "a red circle on a blue background", 3, 3
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "proj_in")  # attention, a 3×3 resnet conv, a 1×1 conv


def random_lora(model, path, *, seed, rank=4, alpha=8.0, targets=UNET_TARGETS, text_encoder=True, fmt="kohya"):
    """A LoRA of random (down, up) on the UNet (and text encoder) of ``model`` (a folder, or components to copy),
    written by our exporters."""
    c = copy.deepcopy(model) if hasattr(model, "unet") else load_components(model, device="cpu")
    cfg = SimpleNamespace(rank=rank, alpha=alpha, target_modules=list(targets))
    torch.manual_seed(seed)
    add_lora(c.unet, cfg)
    te = c.text_encoder if text_encoder else None
    if te is not None:
        add_text_encoder_lora(te, cfg)
    for module in (c.unet, te):
        for name, p in module.named_parameters() if module is not None else ():
            if "lora_B" in name:  # peft starts B at zero; a random B makes every layer count
                torch.nn.init.normal_(p, std=0.05)
    if fmt == "kohya":
        return save_kohya_lora(path, c.unet, te)
    return save_lora(c.unet, path, te, format=fmt)[0]


def diffusers_image(model, loras, fuse=False):
    """diffusers' image with the LoRAs loaded by load_lora_weights (fused, or as adapters with their weights)."""
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path), adapter_name=f"lora{i}")
    if fuse:
        pipe.fuse_lora(lora_scale=loras[0][1])
    elif loras:
        pipe.set_adapters([f"lora{i}" for i in range(len(loras))], adapter_weights=[w for _, w in loras])
    image = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=7.5,
                 generator=torch.Generator().manual_seed(SEED)).images[0]
    return np.asarray(image, int)


def our_image(model, loras):
    pipe = Pipeline.from_pretrained(model, device="cpu", lora=loras)
    return np.asarray(pipe(PROMPT, steps=STEPS, guidance=7.5, sampler="ddim", seed=SEED)[0], int), pipe


@pytest.fixture(scope="module")
def sd1(tiny_models):
    return tiny_models[("epsilon", 8)]


@pytest.fixture(scope="module")
def base(sd1):
    """The tiny SD 1.x model's components, loaded once: tests that change weights work on a copy."""
    return load_components(sd1, device="cpu")


@pytest.fixture(scope="module")
def kohya_a(base, tmp_path_factory):
    return random_lora(base, tmp_path_factory.mktemp("loras") / "style_a.safetensors", seed=1)


@pytest.fixture(scope="module")
def kohya_b(base, tmp_path_factory):  # another rank and alpha, other layers
    return random_lora(base, tmp_path_factory.mktemp("loras") / "style_b.safetensors", seed=2, rank=2, alpha=1.0,
                       targets=("to_v", "to_out.0", "conv2", "proj_out"))


def test_kohya_file_is_what_a1111_reads_and_fuses_as_diffusers_loads_it(sd1, base, kohya_a):
    keys = load_file(str(kohya_a))
    assert keys["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape == (4, 32, 3, 3)  # LoCon
    assert keys["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"].shape == (32, 4, 1, 1)
    assert keys["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape == (4, 32, 1, 1)
    assert keys["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha"].item() == 8
    assert keys["lora_te_text_model_encoder_layers_1_self_attn_q_proj.lora_up.weight"].shape == (32, 4)
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    with safe_open(str(kohya_a), framework="pt") as f:
        assert {k: f.metadata()[k] for k in ("ss_network_dim", "ss_network_alpha")} == {"ss_network_dim": "4",
                                                                                        "ss_network_alpha": "8"}
    ours, pipe = our_image(sd1, [(kohya_a, 1.0)])
    assert np.abs(ours - diffusers_image(sd1, [(kohya_a, 1.0)], fuse=True)).max() <= 1
    for model, key in ((base.text_encoder, "text_encoder.encoder.layers.0.self_attn.q_proj.weight"),
                       (base.unet, "unet.down_blocks.0.resnets.0.conv1.weight")):  # both halves, a conv
        component, name = key.split(".", 1)
        fused = getattr(pipe.components, component).state_dict()[name]
        assert (fused - model.state_dict()[name]).abs().max() > 1e-3
    assert pipe.loras[0]["name"] == "style_a" and pipe.loras[0]["weight"] == 1.0


def test_two_loras_with_weights_match_diffusers_set_adapters(sd1, kohya_a, kohya_b):
    loras = [(kohya_a, 0.7), (kohya_b, -0.4)]
    ours, pipe = our_image(sd1, loras)
    assert np.abs(ours - diffusers_image(sd1, loras)).max() <= 1
    assert [(r["name"], r["weight"]) for r in pipe.loras] == [("style_a", 0.7), ("style_b", -0.4)]
    assert pipe.model_name.count(" + LoRA ") == 2


def test_diffusers_format_with_text_encoder_and_alpha_fuses_the_weights_diffusers_fuses(sd1, base, tmp_path):
    """Our diffusers-format file (peft config in its metadata: alpha 8, rank 4) fused by us and by diffusers'
    load_lora_weights + fuse_lora: the same UNet and text-encoder weights."""
    path = random_lora(base, tmp_path / "lora", seed=4, fmt="diffusers")
    assert path.name == "pytorch_lora_weights.safetensors"
    c = copy.deepcopy(base)
    [record] = load_loras(c, [(path.parent, 0.6)])
    assert record["unmatched"] == [] and record["matched"] == len(load_file(str(path)))
    pipe = StableDiffusionPipeline.from_pretrained(sd1, safety_checker=None)
    pipe.load_lora_weights(str(path.parent))
    pipe.fuse_lora(lora_scale=0.6)
    pipe.unload_lora_weights()
    for ours, theirs in ((c.unet, pipe.unet), (c.text_encoder, pipe.text_encoder)):
        theirs = theirs.state_dict()
        for key, value in ours.state_dict().items():
            torch.testing.assert_close(value, theirs[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("key,expected", [
    ("lora_unet_mid_block_attentions_0_proj_in.lora_down.weight", ("unet", "mid_block_attentions_0_proj_in", "down")),
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha", ("text_encoder", "text_model_encoder_layers_0_mlp_fc1",
                                                            "alpha")),
    ("unet.down_blocks.0.attentions.0.proj_in.lora_B.weight", ("unet", "down_blocks.0.attentions.0.proj_in", "up")),
    ("down_blocks.0.attentions.0.proj_in.lora_A.weight", ("unet", "down_blocks.0.attentions.0.proj_in", "down")),
    ("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight",
     ("unet", "mid_block.attentions.0.transformer_blocks.0.attn1.to_q", "down")),
    ("unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.to_out_lora.up.weight",
     ("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0", "up")),
    ("text_encoder.text_model.encoder.layers.1.self_attn.k_proj.lora_linear_layer.down.weight",
     ("text_encoder", "text_model.encoder.layers.1.self_attn.k_proj", "down")),
    ("text_encoder.text_model.encoder.layers.1.self_attn.to_v_lora.up.weight",
     ("text_encoder", "text_model.encoder.layers.1.self_attn.v_proj", "up")),
    ("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", None),  # SDXL's second text encoder
    ("lora_unet_down_blocks_0_resnets_0_conv1.hada_w1_a", None),  # LoHa
])
def test_key_spellings_of_both_formats(key, expected):
    read = parse_state_dict({key: torch.ones(())}, {}, Path("x.safetensors"))
    found = [(layer.half, layer.name, "alpha" if layer.alpha is not None else "down" if layer.down is not None
              else "up") for layer in read.layers]
    assert found == ([expected] if expected else []) and read.unrecognized == ([] if expected else [key])


def test_unmatched_keys_are_named_and_counted_in_one_warning(base, kohya_a, tmp_path, caplog):
    state = load_file(str(kohya_a))
    junk = {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 32),
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(32, 4),
            "lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32, 1, 1),
            "lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4, 1, 1),
            "lora_unet_down_blocks_0_resnets_0_conv2.hada_w1_a": torch.zeros(4, 32),
            "lora_unet_mid_block_attentions_0_proj_out.lora_down.weight": torch.zeros(4, 64, 1, 1),  # no up
            "lora_unet_mid_block_attentions_0_proj_out.alpha": torch.tensor(4.0)}
    path = tmp_path / "partly.safetensors"
    save_file({**state, **junk}, str(path))
    c = copy.deepcopy(base)
    with caplog.at_level(logging.WARNING, logger="latentdiff"):
        [record] = load_loras(c, [(path, 1.0)])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "7 keys match nothing in this model and were not applied" in warnings[0]
    assert "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight" in warnings[0]
    assert "… and 2 more" in warnings[0] and str(path) in warnings[0]
    assert sorted(record["unmatched"]) == sorted(junk) and record["matched"] == len(state)


def test_a_lora_for_another_architecture_is_a_one_line_error(sd1, base, tiny_models, tmp_path, capsys):
    sd2 = random_lora(tiny_models["sd2"], tmp_path / "sd2_style.safetensors", seed=5, targets=("to_q", "proj_in"),
                      text_encoder=False)  # SD 2.x projects with a Linear, SD 1.x with a 1×1 conv
    c = copy.deepcopy(base)
    before = c.unet.state_dict()["mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"].clone()
    with pytest.raises(ValueError, match=r"sd2_style.safetensors' was made for another model: its layer .*proj_in"):
        load_loras(c, [(sd2, 1.0)])
    after = c.unet.state_dict()["mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
    assert torch.equal(before, after)  # checked before anything was fused
    sdxl = tmp_path / "sdxl_style.safetensors"  # kohya's SDXL names (its sgm UNet), which no SD 1.x module has
    save_file({f"lora_unet_input_blocks_{i}_1_transformer_blocks_0_attn1_to_q.lora_{kind}.weight": torch.zeros(4, 32)
               if kind == "down" else torch.zeros(32, 4) for i in (1, 2, 4, 5, 7, 8) for kind in ("down", "up")}
              | {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 64, 1, 1),
                 "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(64, 4, 1, 1)}, str(sdxl))
    with pytest.raises(ValueError, match=r"sdxl_style.safetensors' does not fit this model: 12 of its 14 keys match "
                                         r"no layer \(e.g. lora_unet_input_blocks_1"):
        load_loras(c, [(sdxl, 1.0)])
    capsys.readouterr()
    code = main(["generate", "x", "--model", str(sd1), "--lora", f"{sd2}:0.5", "--steps", "2", "-o",
                 str(tmp_path / "x.png"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "sd2_style.safetensors' was made for another model" in err
    assert not (tmp_path / "x.png").exists()


def test_lora_path_and_weight_parsing(tmp_path):
    odd = tmp_path / "odd:2"
    odd.write_bytes(b"")
    assert parse_lora("style.safetensors:0.7") == (Path("style.safetensors"), 0.7)
    assert parse_lora("style.safetensors:-0.4") == (Path("style.safetensors"), -0.4)
    assert parse_lora("a:b/style.safetensors:1e-1") == (Path("a:b/style.safetensors"), 0.1)
    assert parse_lora("C:\\loras\\style.safetensors") == (Path("C:\\loras\\style.safetensors"), None)
    assert parse_lora("style.safetensors") == (Path("style.safetensors"), None)
    assert parse_lora("style:nan") == (Path("style:nan"), None)
    assert parse_lora(str(odd)) == (odd, None)  # an existing path is a path, even when it ends in ':<number>'
    args = SimpleNamespace(lora=["a.safetensors:0.7", "b.safetensors"], lora_scale=0.5)
    assert lora_choices(args) == [(Path("a.safetensors"), 0.7), (Path("b.safetensors"), 0.5)]
    assert lora_choices(SimpleNamespace(lora=None, lora_scale=1.0)) == []


def test_cli_two_loras_and_from_png_makes_the_same_pixels(sd1, kohya_a, kohya_b, tmp_path):
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    assert main(["generate", PROMPT, "--model", str(sd1), "--lora", f"{kohya_a}:0.7", "--lora", str(kohya_b),
                 "--lora-scale", "-0.4", "--steps", str(STEPS), "--seed", str(SEED), "-o", str(first), "--quiet"]) == 0
    assert main(["generate", "--from-png", str(first), "-o", str(again), "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    with Image.open(again) as image:
        text, params = image.text["parameters"], json.loads(image.text["latentdiff"])
    assert "style_a:" in text and "style_b:" in text  # both in 'Lora hashes'
    assert [(Path(r["path"]), r["weight"]) for r in params["loras"]] == [(kohya_a, 0.7), (kohya_b, -0.4)]


def test_training_config_checks_the_lora_options(sd1, dataset, tmp_path):
    base = [f"model.pretrained={sd1}", f"data.root={dataset}", f"train.output_dir={tmp_path}", "data.resolution=64"]
    with pytest.raises(ValueError, match=r"lora.format='a1111' is not supported; choose one of 'diffusers', 'kohya'"):
        validate(load_config(None, base + ["lora.enabled=true", "lora.format=a1111"]))
    with pytest.raises(ValueError, match=r"lora.train_text_encoder=True trains LoRA adapters on the text encoder; "
                                         r"set lora.enabled=true"):
        validate(load_config(None, base + ["lora.train_text_encoder=true"]))


def test_captions_encoded_in_the_step_equal_the_cached_text(base, dataset):
    from latentdiff.training.data import Transform, scan_dataset
    from latentdiff.training.inputs import TrainingInputs, encode_captions

    c = base
    items = scan_dataset(dataset).items
    cached = TrainingInputs(items, Transform(64), c, seed=0)
    raw = TrainingInputs(items, Transform(64), c, seed=0, encode_text=False)
    samples = [(0, i) for i in range(4)]
    _, text = cached.batch(samples, torch.Generator().manual_seed(0))
    _, captions = raw.batch(samples, torch.Generator().manual_seed(0))
    assert isinstance(captions, list) and len(captions) == 4
    torch.testing.assert_close(encode_captions(c.text_encoder, c.tokenizer, captions), text, rtol=0, atol=1e-6)


def test_training_the_text_encoder_writes_both_formats_that_load_alike(sd1, base, dataset, tmp_path, caplog):
    """lora.train_text_encoder + lora.format=both (rank 4, alpha 8): both files, a trained text-encoder half, and the
    same fused weights from either file, read by diffusers' load_lora_weights + fuse_lora and by us."""
    from latentdiff.training.train import train

    overrides = [f"model.pretrained={sd1}", f"data.root={dataset}", "data.resolution=64",
                 f"train.output_dir={tmp_path / 'style'}", "train.batch_size=2", "train.max_steps=2",
                 "train.checkpoint_every=2", "train.learning_rate=1e-2", "train.ema_decay=null", "train.progress=false",
                 "lora.enabled=true", "lora.rank=4", "lora.alpha=8", "lora.train_text_encoder=true", "lora.format=both"]
    with caplog.at_level(logging.INFO, logger="latentdiff"):
        result = train(load_config(None, overrides))
    assert any("text embeddings are not cached" in r.getMessage() for r in caplog.records)
    diffusers_file, kohya_file = result.lora_paths
    assert (diffusers_file.name, kohya_file.name) == ("pytorch_lora_weights.safetensors", "style.safetensors")
    kohya = load_file(str(kohya_file))
    te_up = [v for k, v in kohya.items() if k.startswith("lora_te_") and k.endswith("lora_up.weight")]
    assert len(te_up) == 2 * 4 and all(v.abs().max() > 0 for v in te_up)  # 2 layers × q/k/v/out_proj, trained
    fused = []
    for path in (diffusers_file, kohya_file):
        pipe = StableDiffusionPipeline.from_pretrained(sd1, safety_checker=None)
        pipe.load_lora_weights(str(path))
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        c = copy.deepcopy(base)
        [record] = load_loras(c, [(path, 1.0)])
        assert record["unmatched"] == []
        for ours, theirs in ((c.unet, pipe.unet), (c.text_encoder, pipe.text_encoder)):
            theirs = theirs.state_dict()
            for key, value in ours.state_dict().items():
                torch.testing.assert_close(value, theirs[key], rtol=0, atol=1e-6)
        fused.append(c.text_encoder.state_dict())
    key = "encoder.layers.1.self_attn.v_proj.weight"
    assert not torch.equal(fused[0][key], base.text_encoder.state_dict()[key])
    for key in fused[0]:
        torch.testing.assert_close(fused[0][key], fused[1][key], rtol=0, atol=1e-6)
