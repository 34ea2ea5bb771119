"""Loading model folders: frozen networks, prompt truncation, hub ids from the local cache, dtypes."""

import logging
import shutil

import numpy as np
import torch

from latentdiff.models import load_components
from latentdiff.pipelines import Pipeline
from latentdiff.pipelines.prompts import encode_prompts, tokenize


def test_components_are_frozen_and_read_from_config(tiny_models):
    c = load_components(tiny_models[("v_prediction", 4)], device="cpu")
    for module in (c.unet, c.vae, c.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
    assert c.vae_scale_factor == 4 and c.schedule.prediction_type == "v_prediction"
    assert c.vae.config.scaling_factor == 0.37


def test_long_prompt_is_truncated_with_a_warning_naming_the_dropped_words(tiny_models, caplog):
    c = load_components(tiny_models[("epsilon", 8)], device="cpu")
    limit = c.tokenizer.model_max_length  # 16 in the tiny model
    prompt = " ".join(["red"] * (limit - 2) + ["zebra", "giraffe"])
    with caplog.at_level(logging.WARNING, logger="latentdiff"):
        ids, _ = tokenize(c.tokenizer, [prompt, "a short one"])
    assert ids.shape == (2, limit)
    assert "zebra giraffe" in caplog.text and "truncated" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="latentdiff"):
        tokenize(c.tokenizer, [" ".join(["red"] * (limit - 2))])  # exactly fills the context
    assert caplog.text == ""
    # the truncated prompt encodes like its kept part
    kept = " ".join(["red"] * (limit - 2))
    torch.testing.assert_close(encode_prompts(c, [prompt]), encode_prompts(c, [kept]))


def test_hub_id_resolves_from_local_cache_only(tiny_models, tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--someone--tiny-sd" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_models[("epsilon", 8)], snapshot)
    (tmp_path / "hub" / "models--someone--tiny-sd" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--tiny-sd" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    c = load_components("someone/tiny-sd", device="cpu")
    assert c.path == snapshot.resolve()


def test_bf16_generates_close_to_fp32(tiny_models):
    path = tiny_models[("epsilon", 8)]
    fp32 = np.asarray(Pipeline.from_pretrained(path, device="cpu")("a red circle", steps=10, seed=0)[0]).astype(int)
    pipe = Pipeline.from_pretrained(path, device="cpu", dtype="bf16")
    assert pipe.components.unet.dtype == torch.bfloat16
    bf16 = np.asarray(pipe("a red circle", steps=10, seed=0)[0]).astype(int)
    assert np.abs(bf16 - fp32).mean() < 4


def test_fp16_vae_decode_that_overflows_is_redone_in_fp32(tiny_models, caplog):
    """Decoding is in the VAE's dtype (as diffusers' SD pipeline); an fp16 overflow falls back to fp32, not NaNs."""
    from latentdiff.models import decode_latents

    c = load_components(tiny_models[("epsilon", 8)], device="cpu", dtype="fp16")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    normal = decode_latents(c, latents)
    assert c.vae.dtype == torch.float16 and torch.isfinite(normal).all()
    with torch.no_grad():
        c.vae.post_quant_conv.weight.mul_(3000)  # activations now exceed fp16's 65504 (weights still fit)
        c.vae.decoder.conv_in.weight.mul_(30)
    with torch.no_grad():
        fp32 = c.vae.float().decode(latents / c.vae.config.scaling_factor).sample
        c.vae.half()
    assert not torch.isfinite(c.vae.decode(latents.half() / c.vae.config.scaling_factor).sample).all()
    with caplog.at_level("WARNING", logger="latentdiff"):
        images = decode_latents(c, latents)
    assert "overflowed; decoding again in fp32" in caplog.text
    assert c.vae.dtype == torch.float16  # put back
    torch.testing.assert_close(images, (fp32 / 2 + 0.5).clamp(0, 1), atol=1e-6, rtol=0)


def test_auto_mixed_precision_uses_bf16_only_where_the_hardware_has_it(tmp_path, monkeypatch):
    import latentdiff.models.device as models

    cpuinfo = tmp_path / "cpuinfo"
    for text, native in [("flags\t\t: fpu sse2 avx2 avx512f\n", False), ("flags\t\t: fpu avx512f avx512_bf16\n", True),
                         ("flags\t\t: fpu amx_bf16 amx_tile\n", True), ("Features\t: fp asimd bf16 i8mm\n", True)]:
        cpuinfo.write_text("processor\t: 0\n" + text)
        assert models.cpu_has_native_bf16(str(cpuinfo)) is native, text
    assert models.cpu_has_native_bf16(str(tmp_path / "missing")) is False
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native, expected in [(True, "bf16"), (False, "no")]:
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda native=native: native)
        assert models.pick_mixed_precision("auto", cpu) == expected
    for supported, expected in [(True, "bf16"), (False, "fp16")]:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert models.pick_mixed_precision("auto", cuda) == expected
    assert [models.pick_mixed_precision(c, cpu) for c in ("no", "bf16")] == ["no", "bf16"]
