"""Single-file Stable Diffusion checkpoints in and out (the original latent-diffusion layout), and VAE swaps, checked
against diffusers' own single-file loader (``from_single_file``) on tiny models that keep SD's conventions."""

import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny import tiny_components, tiny_sd_components

from latentdiff.cli import main
from latentdiff.models import ModelError, load_components, save_components
from latentdiff.models.single_file_save import save_single_file
from latentdiff.pipelines import Pipeline

PROMPT, SEED, STEPS = "a red circle on a blue square", 7, 4
SIZE = 32  # pixels: 4 × 4 latents


FOLDERS = {}  # name -> the folder's Components, loaded once (read only)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (folder, file written by us)} for an SD 1.x ε, an SD 2.x v and an SD 1.x inpainting model."""
    root = tmp_path_factory.mktemp("single")
    out = {}
    for name, kwargs in {"sd1": {}, "sd2": {"sd2": True, "prediction_type": "v_prediction"},
                         "inpaint": {"inpainting": True, "seed": 1}}.items():
        tiny_sd_components(sample_size=SIZE // 8, **kwargs).save_pretrained(root / name, safe_serialization=True)
        FOLDERS[name] = load_components(root / name, device="cpu")
        out[name] = (root / name, save_single_file(FOLDERS[name], root / f"{name}.safetensors"))
    return out


def diffusers_pixels(pipe):
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, generator=torch.Generator().manual_seed(SEED), num_inference_steps=STEPS).images[0]
    return np.asarray(image).astype(int)


@pytest.fixture(scope="module")
def reference(models):
    """diffusers' pixels from each model folder."""
    return {name: diffusers_pixels(StableDiffusionPipeline.from_pretrained(models[name][0])) for name in ("sd1", "sd2")}


def our_pixels(model):
    pipe = model if isinstance(model, Pipeline) else Pipeline.from_pretrained(model, device="cpu")
    return np.asarray(pipe(PROMPT, steps=STEPS, seed=SEED, sampler="ddim", height=SIZE, width=SIZE)[0]).astype(int)


def from_single_file(file, folder):
    return StableDiffusionPipeline.from_single_file(str(file), config=str(folder), local_files_only=True)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:3]


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_our_file_loads_in_diffusers_and_ours_with_the_folders_pixels(models, reference, name):
    folder, file = models[name]
    assert reference[name].std() > 5  # a real image
    assert np.abs(diffusers_pixels(from_single_file(file, folder)) - reference[name]).max() <= 1
    assert np.abs(our_pixels(file) - reference[name]).max() <= 1
    assert (name == "sd2") == file.with_suffix(".yaml").is_file()  # v-prediction: the YAML A1111 reads
    ours = load_components(file, device="cpu")
    assert ours.path == file.resolve()  # so A1111's Model hash hashes the file itself
    assert ours.scheduler_config["prediction_type"] == ("v_prediction" if name == "sd2" else "epsilon")


# An original-layout file built here from diffusers' mapping tables, by walking the LDM block structure (not by our
# writer), with what real files carry besides: EMA copies, schedule buffers, position_ids, SD 2.x's unused last
# OpenCLIP block, text_projection and logit_scale.
RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def moved(state, src, dst, renames=()):
    out = {}
    for key, value in state.items():
        if key.startswith(src + "."):
            rest = key[len(src) + 1:]
            for a, b in renames:
                rest = rest.replace(a, b)
            out[f"{dst}.{rest}"] = value
    return out


def ldm_unet(unet):
    sd, n, levels = unet.state_dict(), unet.config.layers_per_block, len(unet.config.block_out_channels)
    out = {ldm: sd[d] for d, ldm in DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"].items()}
    i = 1
    for b in range(levels):
        for j in range(n):
            out |= moved(sd, f"down_blocks.{b}.resnets.{j}", f"input_blocks.{i}.0", RESNET)
            out |= moved(sd, f"down_blocks.{b}.attentions.{j}", f"input_blocks.{i}.1")
            i += 1
        if b < levels - 1:
            out |= moved(sd, f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{i}.0.op")
            i += 1
    out |= moved(sd, "mid_block.resnets.0", "middle_block.0", RESNET) | moved(sd, "mid_block.resnets.1", "middle_block.2",
                                                                                RESNET)
    out |= moved(sd, "mid_block.attentions.0", "middle_block.1")
    i = 0
    for u in range(levels):
        for j in range(n + 1):
            out |= moved(sd, f"up_blocks.{u}.resnets.{j}", f"output_blocks.{i}.0", RESNET)
            attention = moved(sd, f"up_blocks.{u}.attentions.{j}", f"output_blocks.{i}.1")
            out |= attention
            if j == n and u < levels - 1:
                out |= moved(sd, f"up_blocks.{u}.upsamplers.0.conv", f"output_blocks.{i}.{2 if attention else 1}.conv")
            i += 1
    assert len(out) == len(sd)
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def ldm_vae(vae, prefix="first_stage_model."):
    sd, levels = vae.state_dict(), len(vae.config.block_out_channels)
    out = {ldm: sd[d] for d, ldm in DIFFUSERS_TO_LDM_MAPPING["vae"].items()}
    for side, kind in (("encoder", "down"), ("decoder", "up")):
        for b in range(levels):
            level = b if kind == "down" else levels - 1 - b
            out |= moved(sd, f"{side}.{kind}_blocks.{b}.resnets", f"{side}.{kind}.{level}.block",
                         [("conv_shortcut", "nin_shortcut")])
            out |= moved(sd, f"{side}.{kind}_blocks.{b}.{kind}samplers.0.conv", f"{side}.{kind}.{level}.{kind}sample.conv")
        out |= moved(sd, f"{side}.mid_block.resnets.0", f"{side}.mid.block_1")
        out |= moved(sd, f"{side}.mid_block.resnets.1", f"{side}.mid.block_2")
        attention = moved(sd, f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", VAE_ATTENTION)
        out |= {k: v[:, :, None, None] if v.ndim == 2 else v for k, v in attention.items()}  # 1×1 convolutions
    assert len(out) == len(sd)
    return {prefix + k: v for k, v in out.items()}


def ldm_text(text, sd2):
    sd, layers, width = text.state_dict(), text.config.num_hidden_layers, text.config.hidden_size
    if not sd2:
        out = {"cond_stage_model.transformer.text_model." + k: v for k, v in sd.items()}
        return out | {"cond_stage_model.transformer.text_model.embeddings.position_ids": text.embeddings.position_ids}
    out = {ldm: sd[d.removeprefix("text_model.")] for d, ldm in DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"].items()
           if d.removeprefix("text_model.") in sd}
    for i in range(layers + 1):  # the last block is SD 2.x's unused one: random here, as in a real file
        layer, block = f"encoder.layers.{min(i, layers - 1)}.", {}
        for kind in ("weight", "bias"):
            for theirs, ours in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                block[f"{theirs}.{kind}"] = sd[f"{layer}{ours}.{kind}"]
            block[f"attn.in_proj_{kind}"] = torch.cat([sd[f"{layer}self_attn.{x}_proj.{kind}"] for x in "qkv"])
        if i == layers:
            block = {k: torch.randn_like(v) for k, v in block.items()}
        out |= {f"transformer.resblocks.{i}.{k}": v for k, v in block.items()}
    out |= {"text_projection": torch.randn(width, width), "logit_scale": torch.tensor(4.6)}
    return {"cond_stage_model.model." + k: v for k, v in out.items()}


def independent_file(name, path, sd2):
    c = FOLDERS[name]
    tensors = ldm_unet(c.unet) | ldm_vae(c.vae) | ldm_text(c.text_encoder, sd2)
    tensors |= {"model_ema.decay": torch.tensor(0.9999), "alphas_cumprod": torch.rand(1000),
                "model_ema.input_blocks00weight": torch.randn(64, 4, 3, 3)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return c, path


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_a_file_written_independently_loads_in_ours(models, reference, name, tmp_path):
    folder = models[name][0]
    folder_components, file = independent_file(name, tmp_path / "model.safetensors", name == "sd2")
    theirs = from_single_file(file, folder)  # the file is right: diffusers reads the folder's weights from it
    for ours, other in [(folder_components.unet, theirs.unet), (folder_components.vae, theirs.vae),
                        (folder_components.text_encoder, theirs.text_encoder)]:
        assert_same_weights(ours, other)
    kwargs = {"prediction_type": "v_prediction"} if name == "sd2" else {}  # no YAML, no metadata: SD's ε otherwise
    loaded = load_components(file, device="cpu", **kwargs)
    for ours, other in [(folder_components.unet, loaded.unet), (folder_components.vae, loaded.vae),
                        (folder_components.text_encoder, loaded.text_encoder)]:
        assert_same_weights(ours, other)
    assert loaded.scheduler_config["prediction_type"] == folder_components.scheduler_config["prediction_type"]
    assert loaded.unet.config.sample_size == (768 if name == "sd2" else 512) // 8  # SD's sizes: no metadata here
    assert np.abs(our_pixels(Pipeline(loaded)) - reference[name]).max() <= 1


def test_prediction_type_from_argument_yaml_metadata_else_epsilon(models, tmp_path):
    """A file alone cannot say v (a 512 SD 2.x base is ε): A1111's YAML beside it, our ModelSpec metadata or the
    argument does; the argument wins."""
    file = models["sd2"][1]
    tensors, metadata = tensors_of(file)
    bare = tmp_path / "bare.safetensors"
    save_file(tensors, str(bare))  # as a merge tool writes it: no metadata

    def prediction(path, **kwargs):
        return load_components(path, device="cpu", with_unet=False, **kwargs).scheduler_config["prediction_type"]

    assert metadata["modelspec.prediction_type"] == "v" and 'parameterization: v' in file.with_suffix(".yaml").read_text()
    assert prediction(bare) == "epsilon"
    shutil.copy(file.with_suffix(".yaml"), bare.with_suffix(".yaml"))
    assert prediction(bare) == "v_prediction"
    assert prediction(bare, prediction_type="epsilon") == "epsilon"
    assert prediction(models["sd1"][1], prediction_type="v_prediction") == "v_prediction"


def test_inpainting_file_has_the_nine_channel_unet(models):
    folder, file = models["inpaint"]
    loaded = load_components(file, device="cpu")
    assert loaded.unet.config.in_channels == 9
    assert_same_weights(loaded.unet, from_single_file(file, folder).unet)
    assert_same_weights(loaded.unet, FOLDERS["inpaint"].unet)


def test_vae_swap_from_a_file_in_either_layout_or_a_folder(models, tmp_path):
    donor = AutoencoderKL.from_pretrained(models["inpaint"][0], subfolder="vae")  # another model's VAE
    save_file(ldm_vae(donor, prefix=""), str(tmp_path / "original.safetensors"))
    save_file(donor.state_dict(), str(tmp_path / "diffusers.safetensors"))
    donor.save_pretrained(tmp_path / "vae_folder")
    for vae, model in [("original.safetensors", 1), ("diffusers.safetensors", 0), ("vae_folder", 1),
                       (models["inpaint"][1], 0)]:  # a whole checkpoint's VAE too
        c = load_components(models["sd1"][model], device="cpu", vae=tmp_path / vae)
        assert_same_weights(c.vae, donor)
        assert c.vae.config.scaling_factor == donor.config.scaling_factor


def tensors_of(file):
    with safe_open(str(file), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def folder_tensors(folder):
    return {f"{p.parent.name}/{k}": v for p in sorted(folder.glob("*/*.safetensors")) for k, v in load_file(p).items()}


RELEVANT_SCHEDULE = ("prediction_type", "num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                     "steps_offset", "timestep_spacing", "clip_sample", "set_alpha_to_one", "_class_name")


@pytest.mark.parametrize("name", ["sd1", "sd2", "inpaint"])
def test_round_trips_are_bit_exact(models, name, tmp_path):
    folder, file = models[name]
    back = save_components(load_components(file, device="cpu"), tmp_path / "folder")
    a, b = folder_tensors(folder), folder_tensors(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    orig, again = FOLDERS[name], load_components(back, device="cpu")
    for part in ("unet", "vae", "text_encoder"):
        x, y = getattr(orig, part).config, getattr(again, part).config
        x, y = (dict(c.to_dict() if hasattr(c, "to_dict") else c) for c in (x, y))
        assert {k: v for k, v in x.items() if not k.startswith("_") and k != "dtype"} == \
            {k: v for k, v in y.items() if not k.startswith("_") and k != "dtype"}, part
    assert {k: orig.scheduler_config[k] for k in RELEVANT_SCHEDULE} == \
        {k: again.scheduler_config[k] for k in RELEVANT_SCHEDULE}
    assert orig.tokenizer.pad_token == again.tokenizer.pad_token
    second = save_single_file(again, tmp_path / "again.safetensors")  # file → folder → file
    (t1, m1), (t2, m2) = tensors_of(file), tensors_of(second)
    assert t1.keys() == t2.keys() and all(torch.equal(t1[k], t2[k]) and t1[k].dtype == t2[k].dtype for k in t1)
    assert {k: v for k, v in m1.items() if k != "modelspec.title"} == {k: v for k, v in m2.items()
                                                                        if k != "modelspec.title"}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_convert_fp16_keeps_the_stored_dtype_both_ways(models, tmp_path, capsys):
    folder = models["sd2"][0]
    code, out, err = run(capsys, "convert", folder, tmp_path / "half.safetensors", "--dtype", "fp16")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'half.safetensors'} and its .yaml"), err
    half, _ = tensors_of(tmp_path / "half.safetensors")
    assert {v.dtype for k, v in half.items() if v.is_floating_point()} == {torch.float16}
    assert run(capsys, "convert", tmp_path / "half.safetensors", tmp_path / "folder")[0] == 0
    assert {v.dtype for v in folder_tensors(tmp_path / "folder").values()} == {torch.float16}
    assert run(capsys, "convert", tmp_path / "folder", tmp_path / "again.safetensors")[0] == 0
    again, _ = tensors_of(tmp_path / "again.safetensors")
    assert half.keys() == again.keys() and all(torch.equal(half[k], again[k]) for k in half)


def test_ema_weights_beside_the_models_are_not_read_and_a_pickle_needs_allow_pickle(models, tmp_path):
    file = models["sd1"][1]
    half = {k: v.bfloat16() if v.is_floating_point() else v for k, v in tensors_of(file)[0].items()}
    save_file(half, str(tmp_path / "half.safetensors"))  # a bf16 file, loaded as fp32
    with_ema = dict(half) | {"model_ema." + k.removeprefix("model.diffusion_model.").replace(".", ""): v.neg()
                             for k, v in half.items() if k.startswith("model.diffusion_model.")}
    save_file(with_ema, str(tmp_path / "ema.safetensors"))
    torch.save({"state_dict": with_ema, "global_step": 1}, tmp_path / "ema.ckpt")
    plain = load_components(tmp_path / "half.safetensors", device="cpu")
    for file in ["ema.safetensors", "ema.ckpt"]:
        assert_same_weights(load_components(tmp_path / file, device="cpu", allow_pickle=True).unet, plain.unet)
    assert torch.equal(plain.unet.conv_in.weight, half["model.diffusion_model.input_blocks.0.0.weight"].float())


def test_models_a_file_cannot_describe_are_refused(tmp_path):
    tiny_components().save_pretrained(tmp_path / "odd", safe_serialization=True)  # 8 GroupNorm groups, 8 ch/head
    with pytest.raises(ModelError, match="a single-file checkpoint cannot hold this model: .*; keep it as a folder"):
        save_single_file(load_components(tmp_path / "odd", device="cpu"), tmp_path / "odd.safetensors")
    assert list(tmp_path.iterdir()) == [tmp_path / "odd"]


@pytest.fixture()
def bad_inputs(models, tmp_path):
    file = models["sd1"][1]
    (tmp_path / "text.safetensors").write_text("this is not a model\n" * 20)
    data = file.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    tensors, _ = tensors_of(file)
    sdxl = {k: v for k, v in tensors.items() if k.startswith("model.diffusion_model.")}
    sdxl |= {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(4),
             "model.diffusion_model.label_emb.0.0.weight": torch.ones(4, 4)}
    save_file(sdxl, str(tmp_path / "sdxl.safetensors"))
    save_file({"lora_unet_down.weight": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    save_file({k: v for k, v in tensors.items() if k.startswith("first_stage_model.")}, str(tmp_path / "vae.safetensors"))
    torch.save(tensors, tmp_path / "model.ckpt")
    five = AutoencoderKL(latent_channels=5, block_out_channels=(32,), norm_num_groups=32)
    save_file(five.state_dict(), str(tmp_path / "five.safetensors"))
    return {"MODEL": file, "DIR": tmp_path}


@pytest.mark.parametrize("model,vae,message", [
    ("DIR/text.safetensors", None, "is not a readable .safetensors checkpoint (Error while deserializing header"),
    ("DIR/cut.safetensors", None, "is not a readable .safetensors checkpoint"),
    ("DIR/sdxl.safetensors", None, "is an SDXL checkpoint (conditioner.embedders.*)"),
    ("DIR/other.safetensors", None, "has no Stable Diffusion UNet (model.diffusion_model.*)"),
    ("DIR/vae.safetensors", None, "holds a VAE alone, not a whole model; pass it as vae="),
    ("DIR/model.ckpt", None, "is a pickle checkpoint (.ckpt), which is not loaded by default"),
    ("MODEL", "DIR/five.safetensors", "has 5 latent channels but the model's UNet works on 4"),
    ("DIR/missing.safetensors", None, "does not exist"),
    ("MODEL", "DIR/missing.safetensors", "does not exist"),
])
def test_bad_inputs_are_one_line_errors_and_exit_2(bad_inputs, model, vae, message, capsys):
    model = str(bad_inputs[model] if model == "MODEL" else model.replace("DIR", str(bad_inputs["DIR"])))
    vae = vae and vae.replace("DIR", str(bad_inputs["DIR"]))
    with pytest.raises(ModelError) as error:
        load_components(model, device="cpu", vae=vae)
    assert message in str(error.value) and "\n" not in str(error.value)
    if vae is None:
        code, _, err = run(capsys, "generate", "x", "--model", model, "--quiet", "-o", bad_inputs["DIR"] / "x.png")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow  # 10–20 s: a training run; the conversion itself is tested above
def test_training_from_a_single_file_converts_it_once_and_fine_tunes(models, dataset, tmp_path, monkeypatch):
    """model.pretrained may be a single checkpoint: it is written out once as a folder in the cache (keyed by the
    file), the run fine-tunes that UNet, and a second run reuses the folder."""
    from latentdiff.training.config import load_config
    from latentdiff.training.train import train

    monkeypatch.setenv("LATENTDIFF_CACHE", str(tmp_path / "cache"))
    _, file = models["sd1"]
    overrides = [f"model.pretrained={file}", f"data.root={dataset}", "data.resolution=32", "train.batch_size=2",
                 "train.max_steps=2", "train.checkpoint_every=2", "train.progress=false", "train.ema_decay=null"]
    first = train(load_config(None, overrides + [f"train.output_dir={tmp_path / 'a'}", "train.export_format=both"]))
    assert_same_weights(load_components(first.model_file, device="cpu").unet,  # train.export_format: both
                        load_components(first.model_dir, device="cpu").unet)
    [converted] = (tmp_path / "cache" / "converted").iterdir()
    assert converted.name.startswith("sd1-") and (converted / "unet").is_dir()
    assert_same_weights(load_components(converted, device="cpu").unet, FOLDERS["sd1"].unet)
    stamp = (converted / "model_index.json").stat().st_mtime_ns
    second = train(load_config(None, overrides + [f"train.output_dir={tmp_path / 'b'}"]))
    assert (converted / "model_index.json").stat().st_mtime_ns == stamp  # reused, not written again
    assert first.global_step == second.global_step == 2 and first.loss == second.loss


def test_an_unknown_export_format_is_refused_before_training(models, dataset, tmp_path):
    from latentdiff.training.config import load_config
    from latentdiff.training.validate import validate

    config = load_config(None, [f"model.pretrained={models['sd1'][0]}", f"data.root={dataset}", "data.resolution=32",
                                f"train.output_dir={tmp_path}", "train.export_format=ckpt"])
    with pytest.raises(ValueError, match=r"^train.export_format='ckpt' .*diffusers.*single_file.*both"):
        validate(config)
